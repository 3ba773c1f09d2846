//! The plan as tables or one JSON object. Rows that fit come first, by tokens per dollar
//! (best first; rows without a price after those with one, by tokens/s); rows that do not
//! fit come last, and only rows that fit are ever named best.

use serde_json::{json, Value};

use super::calibrate::{percent_error, Calibration};
use super::links::NODE_SIZE;
use super::memory::RESERVED_BYTES;
use super::predict::Row;
use super::Grid;

/// What every plan rests on, printed with it.
pub const ASSUMPTIONS: &[&str] = &[
    "every figure is predicted, none measured",
    "memory: one rank's arena plan of the device step (as train --dry-run), against the GPU's nominal memory less 1.5 GiB for the CUDA context and driver",
    "compute: each operation of the step on the roofline of frugal profile (frugal's mma.sync kernels: 2/3 of Hopper's wgmma peak), work derived from shapes, one launch per operation (the floor), times the GPU's efficiency factor for its kernel family derived from frugal profile runs (factors); a --profile's kernel times where it covers the row (profile)",
    "communication: rings (NCCL's, or frugal's TCP ring) or frugal's shared memory as --comm says, at the link rates of the links section (nominal for GPU links: a floor), one network adapter per GPU, 8 GPUs per node; all gradient buckets but the last overlap with backward; staged copies between device and host never overlap",
    "MFU: 3x the forward FLOPs per token (as the trainer counts) over the GPU's dense BF16 peak",
    "prices: one provider's on-demand list price per GPU-hour (see each source), or --prices",
];

pub struct Report<'a> {
    grid: &'a Grid,
    /// Fitting rows in order, then the rest.
    rows: Vec<Row>,
    top: Option<usize>,
    calibration: Option<Calibration>,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Orders rows: fitting before not, then tokens per dollar (descending), then tokens/s.
fn order(a: &Row, b: &Row) -> std::cmp::Ordering {
    let key = |r: &Row| {
        (
            r.fits(),
            r.tokens_per_usd().unwrap_or(f64::NEG_INFINITY),
            r.speed.map_or(f64::NEG_INFINITY, |s| s.tokens_per_s),
        )
    };
    let (ka, kb) = (key(a), key(b));
    kb.0.cmp(&ka.0)
        .then(kb.1.total_cmp(&ka.1))
        .then(kb.2.total_cmp(&ka.2))
}

impl<'a> Report<'a> {
    pub fn new(
        grid: &'a Grid,
        mut rows: Vec<Row>,
        top: Option<usize>,
        calibration: Option<Calibration>,
    ) -> Report<'a> {
        rows.sort_by(order);
        Report {
            grid,
            rows,
            top,
            calibration,
        }
    }

    /// The best fitting row per (model, GPU type), in the grid's order.
    pub fn best(&self) -> Vec<&Row> {
        let mut best = Vec::new();
        for m in &self.grid.models {
            for g in &self.grid.gpus {
                // Rows are sorted: the first fitting one of the pair is its best.
                if let Some(r) = self.rows.iter().find(|r| {
                    r.fits()
                        && r.config.model.preset.name == m.preset.name
                        && r.config.gpu.label() == g.label()
                }) {
                    best.push(r);
                }
            }
        }
        best
    }

    fn shown(&self) -> impl Iterator<Item = &Row> {
        let fitting = self.rows.iter().filter(|r| r.fits());
        let n = self.top.unwrap_or(usize::MAX);
        fitting
            .take(n)
            .chain(self.rows.iter().filter(|r| !r.fits()))
    }

    pub fn text(&self) -> String {
        let mut s = String::from(if self.calibration.is_some() {
            "PREDICTED by frugal plan (only the calibration's \"measured ms\" column is measured; \
             see the assumptions at the end)\n"
        } else {
            "PREDICTED by frugal plan (no figure below is measured; see the assumptions at the end)\n"
        });
        if let Some(c) = &self.calibration {
            s += &calibration_text(c);
            for f in &c.factors {
                s += &format!(
                    "CALIBRATED: the {} step times below are the prediction x {:.3} (fitted to {} measured point(s))\n",
                    f.kind, f.factor, f.points
                );
            }
        }
        s += "\n";
        s += &header();
        for r in self.shown() {
            s += &line(r);
        }
        let hidden = self.rows.iter().filter(|r| r.fits()).count();
        if let Some(n) = self.top.filter(|&n| n < hidden) {
            s += &format!(
                "({} more configurations that fit not shown: --top {n})\n",
                hidden - n
            );
        }
        s += "\nbest configuration per model and GPU type (predicted, by tokens per dollar):\n";
        s += &header();
        let best = self.best();
        for r in &best {
            s += &line(r);
        }
        for m in &self.grid.models {
            for g in &self.grid.gpus {
                let any = best.iter().any(|r| {
                    r.config.model.preset.name == m.preset.name && r.config.gpu.label() == g.label()
                });
                if !any {
                    s += &format!(
                        "{:<11} {:<14} no configuration of the grid fits\n",
                        m.preset.name,
                        g.label()
                    );
                }
            }
        }
        s += &profiles_text(self.grid);
        s += "\nlinks:\n";
        for g in self.grid.gpus.iter().filter(|g| g.facts().is_some()) {
            if let Some(l) = g.inside {
                s += &format!(
                    "  {} {} inside a node of {NODE_SIZE}: {:.1} GB/s, {:.0} us per hop ({})\n",
                    g.label(),
                    l.name,
                    l.bytes_per_s / 1e9,
                    l.latency_s * 1e6,
                    l.source
                );
            }
        }
        s += &format!(
            "  collectives: --comm {}: {}\n",
            self.grid.comm.name(),
            comm_note(self.grid.comm)
        );
        let n = self.grid.network;
        s += &format!(
            "  network {} between nodes: {:.3} GB/s per GPU, {:.0} us per hop ({})\n",
            n.name,
            n.bytes_per_s / 1e9,
            n.latency_s * 1e6,
            n.source
        );
        s += "prices (per GPU-hour):\n";
        for g in &self.grid.gpus {
            if let Some(r) = self.rows.iter().find(|r| r.config.gpu.label() == g.label()) {
                match (r.usd_per_hour, &r.price_source) {
                    (Some(p), Some(src)) => {
                        s += &format!(
                            "  {}: ${:.3} ({src})\n",
                            g.label(),
                            p / r.config.devices as f64
                        )
                    }
                    _ => s += &format!("  {}: unknown (give --prices)\n", g.label()),
                }
            }
        }
        if self
            .grid
            .gpus
            .iter()
            .any(|g| matches!(g.hw, super::Hardware::Cpu { .. }))
        {
            let path = super::host::cpu_path(self.grid.comm, 1, 1);
            s += &format!(
                "CPU (this host, {} core(s)): {:.0} GFLOP/s and {:.0} GB/s per core for the \
                 optimizer before calibration; ranks over {} ({:.1} GB/s, {:.0} us per {}: {})\n",
                super::cpu::host_cores(),
                super::cpu::FLOPS_PER_CORE / 1e9,
                super::cpu::BYTES_PER_CORE / 1e9,
                path.link.name,
                path.link.bytes_per_s / 1e9,
                path.link.latency_s * 1e6,
                if path.shared_memory {
                    "barrier"
                } else {
                    "ring step"
                },
                path.link.source
            );
        }
        s += "assumptions:\n";
        for a in ASSUMPTIONS {
            s += &format!("  - {a}\n");
        }
        s
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self.shown().map(row_json).collect();
        let best: Vec<Value> = self.best().into_iter().map(row_json).collect();
        let links: Vec<Value> = self
            .grid
            .gpus
            .iter()
            .filter_map(|g| {
                g.inside.map(|l| {
                    json!({"gpu": g.label(), "interconnect": l.name,
                           "bytes_per_s": l.bytes_per_s, "latency_s": l.latency_s, "source": l.source})
                })
            })
            .collect();
        let n = self.grid.network;
        json!({
            "predicted": true,
            "rows": rows,
            "best": best,
            "interconnect": match self.grid.interconnect {
                super::links::Interconnect::NvLink => "nvlink",
                super::links::Interconnect::Pcie => "pcie",
            },
            "interconnects": links,
            "comm": self.grid.comm.name(),
            "comm_note": comm_note(self.grid.comm),
            "network": {"name": n.name, "bytes_per_s": n.bytes_per_s, "latency_s": n.latency_s, "source": n.source},
            "reserved_bytes": RESERVED_BYTES,
            "assumptions": ASSUMPTIONS,
            "profiles": self.grid.profiles.iter().map(|p| json!({
                "source": p.source, "model": p.model, "gpu": p.gpu, "batch": p.batch,
                "attention": p.attention, "predicted_s": p.total_s,
                "implied_factors": family_json(&p.implied_factors()),
            })).collect::<Vec<_>>(),
            "efficiency_factors": super::efficiency::TABLE.iter().map(|f| json!({
                "gpu": f.gpu, "factors": family_json(&f.factors),
            })).collect::<Vec<_>>(),
            "calibrated": self.calibration.is_some(),
            "calibration": self.calibration.as_ref().map(calibration_json),
        })
    }
}

/// The compute sources, and what each `--profile` implies.
fn profiles_text(grid: &Grid) -> String {
    use super::efficiency;
    let mut s = String::from(
        "\ncompute: profile = a --profile's kernel times; factors = the roofline of each \
         operation x the GPU's efficiency factors per family; floor = the roofline alone\n",
    );
    for g in &grid.gpus {
        if let Some(f) = g.facts().and_then(|f| efficiency::of(f.label)) {
            s += &format!("  factors {}: {}\n", g.label(), efficiency::describe(f));
        }
    }
    for p in &grid.profiles {
        s += &format!(
            "  profile {} ({} batch {} {}, {}): {:.3} ms predicted; the profile implies factors {}\n",
            p.source,
            p.model,
            p.batch,
            p.attention,
            p.gpu,
            p.total_s * 1e3,
            efficiency::describe(&p.implied_factors())
        );
    }
    s
}

fn family_json(factors: &[f64; 4]) -> Value {
    let map: serde_json::Map<String, Value> = super::compute::Family::ALL
        .iter()
        .zip(factors)
        .map(|(f, x)| (f.name().to_string(), json!(x)))
        .collect();
    Value::Object(map)
}

/// What `--comm` models, for the links section.
fn comm_note(comm: super::host::CommKind) -> String {
    use super::host::{pcie_host, CommKind, LOOPBACK_TCP, SHARED_MEMORY};
    let staged = format!(
        "GPU gradients staged through host memory: device -> host per finished range, \
         reduced on the host, host -> device before the optimizer ({}; {})",
        pcie_host(80).source,
        pcie_host(90).source
    );
    let link = |l: super::links::Link| {
        format!(
            "{}: {:.2} GB/s, {:.0} us ({})",
            l.name,
            l.bytes_per_s / 1e9,
            l.latency_s * 1e6,
            l.source
        )
    };
    match comm {
        CommKind::Nccl => "NCCL rings on the GPUs' links, device to device (as frugal's trainer \
             runs them in every shard mode)"
            .to_string(),
        CommKind::Socket => format!(
            "frugal's TCP ring, one lane, loopback inside a node ({}), the network between \
             nodes; {staged}",
            link(LOOPBACK_TCP)
        ),
        CommKind::Shm => format!(
            "frugal's shared-memory collectives inside a node, 1 MiB pieces, 2 barriers per \
             all-reduce piece ({}), the TCP ring between nodes; {staged}",
            link(SHARED_MEMORY)
        ),
    }
}

fn header() -> String {
    format!(
        "{:<11} {:<14} {:>4} {:>5} {:<7} {:<7} {:>10} {:>5} {:>9} {:>10} {:>9} {:>6} {:>8} {:>10} {:<9} {}\n",
        "model", "gpu", "devs", "batch", "attn", "shard", "mem/rank", "max b", "step ms",
        "tok/s", "tok/s/dev", "MFU", "$/hour", "tokens/$", "compute", "limit (all predicted)"
    )
}

fn line(r: &Row) -> String {
    let c = &r.config;
    let largest = r.largest_batch.map_or("-".to_string(), |b| b.to_string());
    let head = format!(
        "{:<11} {:<14} {:>4} {:>5} {:<7} {:<7} {:>10} {:>5}",
        c.model.preset.name,
        c.gpu.label(),
        c.devices,
        c.batch,
        c.attention.name(),
        c.shard.name(),
        gib(r.peak_bytes).replace(" GiB", "G"),
        largest
    );
    let price = r
        .usd_per_hour
        .map_or("?".to_string(), |p| format!("{p:.2}"));
    match r.speed {
        Some(s) => format!(
            "{head} {:>9.1} {:>10.0} {:>9.0} {:>6} {:>8} {:>10} {:<9} {}\n",
            s.step_s * 1e3,
            s.tokens_per_s,
            s.tokens_per_s_per_device,
            s.mfu.map_or("?".into(), |m| format!("{:.1}%", m * 100.0)),
            price,
            r.tokens_per_usd()
                .map_or("?".into(), |t| format!("{:.3e}", t)),
            s.compute_source.as_str(),
            s.limit.as_str()
        ),
        None => format!(
            "{head} does not fit ({} of {})\n",
            gib(r.peak_bytes),
            gib(r.usable_bytes)
        ),
    }
}

fn row_json(r: &Row) -> Value {
    let c = &r.config;
    let mut v = json!({
        "model": c.model.preset.name,
        "gpu": c.gpu.label(),
        "devices": c.devices,
        "batch": c.batch,
        "attention": c.attention.name(),
        "shard": c.shard.name(),
        "fits": r.fits(),
        "predicted_peak_bytes": r.peak_bytes,
        "usable_bytes": r.usable_bytes,
        "predicted_largest_batch": r.largest_batch,
        "usd_per_hour": r.usd_per_hour,
        "price_source": r.price_source,
        "calibration_factor": r.calibration,
    });
    if let (Some(s), Value::Object(map)) = (r.speed, &mut v) {
        let more = json!({
            "predicted_step_s": s.step_s,
            "predicted_forward_s": s.compute.forward_s,
            "predicted_backward_s": s.compute.backward_s,
            "predicted_optimizer_s": s.compute.optimizer_s,
            "predicted_comm_s": s.comm.total_s,
            "predicted_comm_exposed_s": s.comm.exposed_s,
            "predicted_staging_s": s.comm.staging_s,
            "compute_source": s.compute_source.as_str(),
            "predicted_tokens_per_s": s.tokens_per_s,
            "predicted_tokens_per_s_per_device": s.tokens_per_s_per_device,
            "predicted_mfu": s.mfu,
            "predicted_tokens_per_usd": r.tokens_per_usd(),
            "limit": s.limit.as_str(),
            "link": s.link.name,
        });
        if let Value::Object(m) = more {
            map.extend(m);
        }
    }
    v
}

/// The measured points against the prediction, before and after the fit.
fn calibration_text(c: &Calibration) -> String {
    let mut s = String::new();
    if !c.comm.points.is_empty() {
        s += &super::comm_fit::text(&c.comm);
    }
    if c.points.is_empty() {
        return s + &skipped_text(c);
    }
    s += "\ncalibration: measured step time against the plan's\n";
    s += &format!(
        "{:<11} {:<10} {:>4} {:>5} {:<7} {:<7} {:>11} {:>12} {:>8} {:>13} {:>8}  {}\n",
        "model",
        "device",
        "devs",
        "batch",
        "attn",
        "shard",
        "measured ms",
        "predicted ms",
        "error",
        "calibrated ms",
        "error",
        "source"
    );
    for p in &c.points {
        let cfg = &p.config;
        let device = match p.threads {
            Some(t) => format!("{}-{t}t", cfg.gpu.kind()),
            None => cfg.gpu.kind().to_string(),
        };
        let after = c.calibrated_s(p);
        s += &format!(
            "{:<11} {:<10} {:>4} {:>5} {:<7} {:<7} {:>11.1} {:>12.1} {:>7.1}% {:>13.1} {:>7.1}%  {}\n",
            cfg.model.preset.name,
            device,
            cfg.devices,
            cfg.batch,
            cfg.attention.name(),
            cfg.shard.name(),
            p.measured_s * 1e3,
            p.predicted_s * 1e3,
            percent_error(p.predicted_s, p.measured_s),
            after * 1e3,
            percent_error(after, p.measured_s),
            p.source
        );
    }
    for f in &c.factors {
        s += &format!(
            "factor {}: {:.4} (fitted to {} point(s): the factor with the least mean absolute percentage error)\n",
            f.kind, f.factor, f.points
        );
    }
    s += &format!(
        "mean absolute percentage error: {:.1}% before calibration, {:.1}% after\n",
        c.mape(false),
        c.mape(true)
    );
    s + &skipped_text(c)
}

fn skipped_text(c: &Calibration) -> String {
    let mut s = String::new();
    if !c.skipped.is_empty() {
        s += &format!("skipped {} measured line(s):\n", c.skipped.len());
        for k in &c.skipped {
            s += &format!("  {} {}: {}\n", k.source, k.what, k.reason);
        }
    }
    s
}

fn calibration_json(c: &Calibration) -> Value {
    let points: Vec<Value> = c
        .points
        .iter()
        .map(|p| {
            let cfg = &p.config;
            let after = c.calibrated_s(p);
            json!({
                "source": p.source,
                "model": cfg.model.preset.name,
                "device": cfg.gpu.kind(),
                "threads": p.threads,
                "devices": cfg.devices,
                "batch": cfg.batch,
                "attention": cfg.attention.name(),
                "shard": cfg.shard.name(),
                "measured_step_s": p.measured_s,
                "predicted_step_s": p.predicted_s,
                "error_percent": percent_error(p.predicted_s, p.measured_s),
                "calibrated_step_s": after,
                "calibrated_error_percent": percent_error(after, p.measured_s),
            })
        })
        .collect();
    let factors: Vec<Value> = c
        .factors
        .iter()
        .map(|f| json!({"device": f.kind, "factor": f.factor, "points": f.points}))
        .collect();
    let skipped: Vec<Value> = c
        .skipped
        .iter()
        .map(|k| json!({"source": k.source, "what": k.what, "reason": k.reason}))
        .collect();
    json!({
        "factors": factors,
        "points": points,
        "skipped": skipped,
        "mape_before_percent": c.mape(false),
        "mape_after_percent": c.mape(true),
        "communication": super::comm_fit::json(&c.comm),
    })
}
