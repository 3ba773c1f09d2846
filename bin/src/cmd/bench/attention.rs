//! `frugal bench attention`: causal attention through frugal's own kernels, FlashAttention-2
//! (`frugal_ptx::flash`) against the vanilla path that materialises the scores
//! (`frugal_ptx::vanilla`, the paper's "FlashAttention off"), forward and
//! forward+backward, at the paper's head counts (the four `paper-*` presets: NH = 13, 24, 30,
//! 39, HS = 64) and T = 1024.
//!
//! FLOPs are counted as FlashAttention's benchmarks count them, for both paths: forward
//! 4·B·NH·T²·HS halved for causal, backward 2.5× forward, so forward+backward is 3.5×
//! forward; TFLOP/s = those FLOPs / time. (The vanilla path computes the full T×T scores, so
//! its TFLOP/s is "useful" FLOP/s, the figure that compares the two.) Default batch: 16384
//! tokens per call (B = 16384 / T), as FlashAttention's benchmark. Time: device timing (CUDA
//! events on `cuda`) around `iters` repetitions of the whole launch list after `warmup`
//! untimed ones and a synchronise. Memory: the bytes each path needs beyond Q, K, V, O and
//! their gradients (flash: LSE and D, plus the atomic dQ accumulator; vanilla: the saved
//! probabilities and its scratch).
//!
//! `--json` prints one object per (model, attention, pass) in the schema that
//! `scripts/torch/attention.py` prints for PyTorch's `scaled_dot_product_attention` (flash
//! backend) and eager attention, so `scripts/bench-join.py` can join them into ratios.
//! On the emulator every time and TFLOP/s is host emulation speed, labelled EMULATED.

use super::counters::{self, with_counters, Summary};
use super::kernels::{human_bytes, rate};
use super::shared::json_str;
use super::shared::{kernel_device, open_kernel_device, Repeats};
use crate::error::CliError;
use crate::flags::text;
use crate::train::options::MAX_DIM;
use frugal_model::config::{Attention, Preset};
use frugal_model::rng::Rng;
use frugal_ptx::flash::{self, AttnShape, DqMode, FlashBwd, FlashFwd};
use frugal_ptx::kernels::Launch;
use frugal_ptx::matmul::wgmma::LaunchArgs;
use frugal_ptx::vanilla::{self, VanillaBuffers, VanillaBwd, VanillaFwd};
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::device::{Backend, Device, DeviceSpec};
use half::bf16;

/// What `frugal bench attention --help` says first.
pub const ABOUT: &str = "\
Times causal attention, FlashAttention-2 against the vanilla path (materialised scores),
forward and forward+backward, and reports TFLOP/s as FlashAttention's benchmarks count them
(forward 4*B*NH*T^2*HS / 2 for causal, backward 2.5x forward).";

/// `frugal bench attention`'s flags.
#[derive(Debug, clap::Args)]
pub struct AttentionFlags {
    /// auto (a CUDA GPU if there is one, else the emulator), cuda[:N] or emu
    #[arg(long, value_name = "D", default_value = "auto", value_parser = text::<DeviceSpec>())]
    device: DeviceSpec,
    /// presets whose head counts to use, PRESET[,PRESET...]; `paper` = the four paper
    /// presets (default on a GPU; paper-100m on the emulator)
    #[arg(long, value_name = "M", value_parser = text::<String>(), verbatim_doc_comment)]
    model: Option<String>,
    /// sequences per call (default 16384 / T on a GPU, 1 on the emulator)
    #[arg(long, value_name = "B", value_parser = text::<usize>())]
    batch: Option<usize>,
    /// tokens per sequence (default 1024 on a GPU, 64 on the emulator)
    #[arg(long, value_name = "T", value_parser = text::<usize>())]
    seq: Option<usize>,
    /// override the presets' query heads (HS stays the preset's)
    #[arg(long, value_name = "NH", value_parser = text::<usize>())]
    heads: Option<usize>,
    /// key/value heads (default: the preset's, or NH with --heads; must divide NH)
    #[arg(long, value_name = "NKV", value_parser = text::<usize>())]
    kv_heads: Option<usize>,
    /// both, flash or vanilla
    #[arg(long, value_name = "A", default_value = "both", value_parser = text::<String>())]
    attention: String,
    /// flash backward's dQ: deterministic or atomic
    #[arg(long, value_name = "MODE", default_value = "deterministic", value_parser = text::<String>())]
    dq: String,
    /// timed repetitions (default 20 on a GPU, 1 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    iters: Option<usize>,
    /// untimed repetitions first (default 3 on a GPU, 0 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    warmup: Option<usize>,
    /// flash rows run the sm_90a wgmma forward (TMA + wgmma, what the sm_90 step runs,
    /// head sizes 64 and 128) instead of FlashAttention-2's; forward+backward adds FA-2's
    /// backward, as the step does. Before sm_90 the rows stay FA-2's (with a note); the
    /// emulator runs sm_90a. --counters leaves these rows uncounted
    #[arg(long)]
    tma: bool,
    /// one JSON object per row instead of the table
    #[arg(long)]
    json: bool,
    /// (emu only) one more repetition of each row with the emulator's hardware counters
    /// on: sectors/request, coalescing, bank conflicts/request, tensor FLOPs, DRAM sectors,
    /// printed under the row and in its --json line
    #[arg(long)]
    counters: bool,
}

/// What a row times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The forward launches.
    Forward,
    /// Forward then backward launches.
    ForwardBackward,
}

impl Pass {
    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "fwd",
            Pass::ForwardBackward => "fwd_bwd",
        }
    }
}

/// FLOPs of one call as FlashAttention's benchmarks count them: forward
/// 4·B·NH·T²·HS / 2 (causal), backward 2.5× forward.
pub fn flops(shape: AttnShape, pass: Pass) -> f64 {
    let fwd = 4.0 * (shape.b * shape.nh) as f64 * (shape.t as f64).powi(2) * shape.hs as f64 / 2.0;
    match pass {
        Pass::Forward => fwd,
        Pass::ForwardBackward => 3.5 * fwd,
    }
}

/// One measured row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Preset whose head count this is.
    pub model: String,
    /// The call's sizes.
    pub shape: AttnShape,
    /// Flash or vanilla.
    pub attention: Attention,
    /// Forward or forward+backward.
    pub pass: Pass,
    /// Kernel launches per repetition.
    pub launches: usize,
    /// Bytes beyond Q, K, V, O, dO and dQ, dK, dV (see the module docs).
    pub extra_bytes: usize,
    /// Timed repetitions.
    pub iters: usize,
    /// Milliseconds per repetition.
    pub time_ms: f64,
    /// `--counters`: one counted repetition's figures (all its launches summed).
    pub counters: Option<Summary>,
    /// The forward kernel when `--tma` ran the wgmma one (`None`: the usual launches).
    pub kernel: Option<&'static str>,
}

impl Row {
    /// TFLOP/s (FlashAttention's count over the time).
    pub fn tflops(&self) -> f64 {
        flops(self.shape, self.pass) / (self.time_ms * 1e-3) / 1e12
    }
}

fn failed(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CliError {
    CliError::Bench {
        bench: "bench attention",
        what: Some(what.to_string()),
        source: e.into(),
    }
}

/// Device buffers of one shape (freed on drop).
pub(crate) struct Operands {
    held: Vec<DeviceBuffer>,
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    dout: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    lse: u64,
    d: u64,
    dq_accum: u64,
    vanilla: Option<VanillaBuffers>,
    extra_flash: usize,
    extra_vanilla: usize,
}

/// Largest host chunk of random values written at once (inputs are tiled with it).
const FILL_CHUNK: usize = 1 << 20;

fn alloc(
    dev: &Device,
    held: &mut Vec<DeviceBuffer>,
    bytes: usize,
    label: &str,
) -> Result<u64, CliError> {
    let buf = dev
        .alloc(bytes.max(16), label)
        .map_err(|e| failed(label, e))?;
    let ptr = buf.ptr();
    held.push(buf);
    Ok(ptr)
}

/// A bf16 buffer of `n` values ~ N(0, 1), tiled every [`FILL_CHUNK`] values.
fn random_bf16(
    dev: &Device,
    held: &mut Vec<DeviceBuffer>,
    rng: &mut Rng,
    n: usize,
    label: &str,
) -> Result<u64, CliError> {
    let mut buf = dev
        .alloc(2 * n.max(8), label)
        .map_err(|e| failed(label, e))?;
    let chunk: Vec<bf16> = (0..n.min(FILL_CHUNK))
        .map(|_| bf16::from_f64(rng.normal()))
        .collect();
    let mut at = 0;
    while at < n {
        let len = chunk.len().min(n - at);
        buf.write(2 * at, &chunk[..len])
            .map_err(|e| failed(label, e))?;
        at += len;
    }
    let ptr = buf.ptr();
    held.push(buf);
    Ok(ptr)
}

pub(crate) fn operands(
    dev: &Device,
    shape: AttnShape,
    which: &[Attention],
    dq_mode: DqMode,
) -> Result<Operands, CliError> {
    let mut held = Vec::new();
    let mut rng = Rng::new(0x6174_746e);
    let nq = shape.b * shape.t * shape.nh * shape.hs;
    let nk = shape.b * shape.t * shape.nkv * shape.hs;
    let rows = shape.b * shape.nh * shape.t;
    let q = random_bf16(dev, &mut held, &mut rng, nq, "q")?;
    let k = random_bf16(dev, &mut held, &mut rng, nk, "k")?;
    let v = random_bf16(dev, &mut held, &mut rng, nk, "v")?;
    let dout = random_bf16(dev, &mut held, &mut rng, nq, "dout")?;
    let o = alloc(dev, &mut held, 2 * nq, "o")?;
    let dq = alloc(dev, &mut held, 2 * nq, "dq")?;
    let dk = alloc(dev, &mut held, 2 * nk, "dk")?;
    let dv = alloc(dev, &mut held, 2 * nk, "dv")?;
    let accum_bytes = flash::dq_accum_bytes(shape, dq_mode);
    let extra_flash = 8 * rows + accum_bytes;
    let (lse, d, dq_accum) = if which.contains(&Attention::Flash) {
        (
            alloc(dev, &mut held, 4 * rows, "lse")?,
            alloc(dev, &mut held, 4 * rows, "d")?,
            if accum_bytes > 0 {
                alloc(dev, &mut held, accum_bytes, "dq_accum")?
            } else {
                0
            },
        )
    } else {
        (0, 0, 0)
    };
    let needs = vanilla::buffers(shape);
    let extra_vanilla = needs.iter().map(|n| n.bytes).sum();
    let vanilla = if which.contains(&Attention::Vanilla) {
        let mut at = |name: &str| -> Result<u64, CliError> {
            let bytes = needs.iter().find(|n| n.name == name).map_or(0, |n| n.bytes);
            alloc(dev, &mut held, bytes, name)
        };
        Some(VanillaBuffers {
            probs: at("probs")?,
            q_heads: at("q_heads")?,
            k_heads: at("k_heads")?,
            v_heads: at("v_heads")?,
            dout_heads: at("dout_heads")?,
            heads_f32: at("heads_f32")?,
            dscores: at("dscores")?,
        })
    } else {
        None
    };
    Ok(Operands {
        held,
        q,
        k,
        v,
        o,
        dout,
        dq,
        dk,
        dv,
        lse,
        d,
        dq_accum,
        vanilla,
        extra_flash,
        extra_vanilla,
    })
}

/// The launches of one repetition of (`attention`, `pass`).
pub(crate) fn launches(
    arch: u32,
    shape: AttnShape,
    m: &Operands,
    attention: Attention,
    pass: Pass,
    dq_mode: DqMode,
) -> Result<Vec<Launch>, CliError> {
    let what = attention.name();
    let err = |e| failed(what, e);
    let mut out = Vec::new();
    match attention {
        Attention::Flash => {
            out.push(
                flash::forward(
                    &FlashFwd {
                        q: m.q,
                        k: m.k,
                        v: m.v,
                        o: m.o,
                        lse: m.lse,
                    },
                    shape,
                )
                .map_err(err)?,
            );
            if pass == Pass::ForwardBackward {
                out.extend(
                    flash::backward(
                        dq_mode,
                        &FlashBwd {
                            q: m.q,
                            k: m.k,
                            v: m.v,
                            o: m.o,
                            dout: m.dout,
                            lse: m.lse,
                            d: m.d,
                            dq: m.dq,
                            dk: m.dk,
                            dv: m.dv,
                            dq_accum: m.dq_accum,
                        },
                        shape,
                    )
                    .map_err(err)?,
                );
            }
        }
        Attention::Vanilla => {
            let bufs = m
                .vanilla
                .as_ref()
                .ok_or_else(|| failed(what, "vanilla buffers were not allocated"))?;
            out.extend(
                vanilla::forward(
                    arch,
                    shape,
                    &VanillaFwd {
                        q: m.q,
                        k: m.k,
                        v: m.v,
                        o: m.o,
                    },
                    bufs,
                )
                .map_err(err)?,
            );
            if pass == Pass::ForwardBackward {
                out.extend(
                    vanilla::backward(
                        arch,
                        shape,
                        &VanillaBwd {
                            q: m.q,
                            k: m.k,
                            v: m.v,
                            dout: m.dout,
                            dq: m.dq,
                            dk: m.dk,
                            dv: m.dv,
                        },
                        bufs,
                    )
                    .map_err(err)?,
                );
            }
        }
    }
    Ok(out)
}

/// Times `repeats.iters` repetitions of `list` on `dev` after `repeats.warmup` untimed
/// ones; ms per repetition.
fn time_launches(
    dev: &Device,
    first: Option<&LaunchArgs>,
    list: &[Launch],
    repeats: Repeats,
    what: &str,
) -> Result<f64, CliError> {
    let Repeats { iters, warmup } = repeats;
    let run_all = || -> Result<(), CliError> {
        if let Some(l) = first {
            super::attention_tma::run(dev, l, what)?;
        }
        for l in list {
            dev.run(l).map_err(|e| failed(what, e))?;
        }
        Ok(())
    };
    for _ in 0..warmup {
        run_all()?;
    }
    dev.synchronize().map_err(|e| failed(what, e))?;
    let timer = dev.start_timer().map_err(|e| failed(what, e))?;
    for _ in 0..iters {
        run_all()?;
    }
    // `elapsed_ms` records the end event behind the last launch and waits for it.
    let (ms, _) = dev.elapsed_ms(timer).map_err(|e| failed(what, e))?;
    dev.synchronize().map_err(|e| failed(what, e))?;
    Ok(ms / iters.max(1) as f64)
}

/// Measures every (attention, pass) of `which` for one shape; with `counters`, counts
/// one more repetition of each on the emulator.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    dev: &Device,
    arch: u32,
    model: &str,
    shape: AttnShape,
    which: &[Attention],
    dq_mode: DqMode,
    repeats: Repeats,
    counters: bool,
    tma: bool,
) -> Result<Vec<Row>, CliError> {
    let m = operands(dev, shape, which, dq_mode)?;
    let mut rows = Vec::new();
    for &attention in which {
        for pass in [Pass::Forward, Pass::ForwardBackward] {
            let all = launches(arch, shape, &m, attention, pass, dq_mode)?;
            let what = format!("{model} {} {}", attention.name(), pass.name());
            // --tma: the wgmma forward replaces FA-2's (the list's first launch).
            let fwd = FlashFwd {
                q: m.q,
                k: m.k,
                v: m.v,
                o: m.o,
                lse: m.lse,
            };
            let wgmma = match attention {
                Attention::Flash if tma => {
                    super::attention_tma::forward_args(dev, shape, &fwd, &what)?
                }
                _ => None,
            };
            let list = if wgmma.is_some() { &all[1..] } else { &all[..] };
            let time_ms = time_launches(dev, wgmma.as_ref(), list, repeats, &what)?;
            let counted = if counters && wgmma.is_none() {
                Some(Summary::of(&counters::count("bench attention", dev, list)?))
            } else {
                None
            };
            rows.push(Row {
                model: model.to_string(),
                shape,
                attention,
                pass,
                launches: list.len() + usize::from(wgmma.is_some()),
                extra_bytes: match attention {
                    Attention::Flash => m.extra_flash,
                    Attention::Vanilla => m.extra_vanilla,
                },
                iters: repeats.iters.max(1),
                time_ms,
                counters: counted,
                kernel: wgmma.map(|l| l.kernel),
            });
        }
    }
    drop(m.held);
    Ok(rows)
}

/// One JSON object for `row` (the schema `scripts/torch/attention.py` shares: the shape
/// fields `name`, `attention`, `pass`, `model`, `batch`, `seq`, `heads`, `kv_heads`,
/// `head_dim`, `causal` join the two; `impl`, `time_ms`, `tflops` are measurements).
pub fn json_line(row: &Row, device: &str, timing: &str, emulated: bool, dq_mode: DqMode) -> String {
    let s = row.shape;
    let dq = match (row.attention, dq_mode) {
        (Attention::Vanilla, _) => "null",
        (Attention::Flash, DqMode::Deterministic) => "\"deterministic\"",
        (Attention::Flash, DqMode::Atomic) => "\"atomic\"",
    };
    format!(
        "{{\"bench\": \"attention\", \"name\": {}, \"attention\": \"{}\", \"pass\": \"{}\", \
         \"model\": {}, \"batch\": {}, \"seq\": {}, \"heads\": {}, \"kv_heads\": {}, \
         \"head_dim\": {}, \"causal\": true, \"impl\": \"frugal\", \"dq\": {dq}, \
         \"device\": {}, \"timing\": {}, \"emulated\": {emulated}, \"launches\": {}, \
         \"extra_bytes\": {}, \"iters\": {}, \"flops\": {:.0}, \"time_ms\": {:.6}, \
         \"tflops\": {:.6e}, \"kernel\": {}}}",
        json_str(&format!(
            "{} {} {}",
            row.model,
            row.attention.name(),
            row.pass.name()
        )),
        row.attention.name(),
        row.pass.name(),
        json_str(&row.model),
        s.b,
        s.t,
        s.nh,
        s.nkv,
        s.hs,
        json_str(device),
        json_str(timing),
        row.launches,
        row.extra_bytes,
        row.iters,
        flops(s, row.pass),
        row.time_ms,
        row.tflops(),
        row.kernel.map_or("null".to_string(), json_str),
    )
}

/// Runs `frugal bench attention` with its flags.
pub fn run(flags: AttentionFlags) -> Result<(), CliError> {
    let AttentionFlags {
        device,
        model,
        batch,
        seq,
        heads,
        kv_heads,
        attention,
        dq,
        iters,
        warmup,
        tma,
        json,
        counters,
    } = flags;
    let usage = |m: String| super::shared::usage("bench attention", m);
    counters::check_device("bench attention", counters, device)?;
    let device = kernel_device("bench attention", device)?;
    for (name, v) in [
        ("batch", batch),
        ("seq", seq),
        ("iters", iters),
        ("heads", heads),
        ("kv-heads", kv_heads),
    ] {
        if v == Some(0) {
            return Err(usage(format!("--{name} must be at least 1")));
        }
        // Far above any real shape, low enough that the sizes derived from them (and
        // the host buffers they fill) cannot overflow; as `train` bounds its dimensions.
        if let Some(v) = v.filter(|&v| v > MAX_DIM) {
            return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
        }
    }
    let which: Vec<Attention> = match attention.as_str() {
        "both" => Attention::ALL.to_vec(),
        word => vec![word
            .parse::<Attention>()
            .map_err(|_| usage(format!("--attention '{word}': use both, flash or vanilla")))?],
    };
    let dq_mode = match dq.as_str() {
        "deterministic" => DqMode::Deterministic,
        "atomic" => DqMode::Atomic,
        other => {
            return Err(usage(format!(
                "--dq '{other}': use deterministic or atomic"
            )))
        }
    };

    let (dev, note) = open_kernel_device(device)?;
    let emulated = dev.backend() == Backend::Emu;
    let paper = || {
        ["paper-100m", "paper-500m", "paper-1b", "paper-2b"]
            .map(String::from)
            .to_vec()
    };
    let names: Vec<String> = match model.as_deref() {
        Some("paper") => paper(),
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None if emulated => vec!["paper-100m".to_string()],
        None => paper(),
    };
    let t = seq.unwrap_or(if emulated { 64 } else { 1024 });
    let b = batch.unwrap_or(if emulated { 1 } else { (16384 / t).max(1) });
    let iters = iters.unwrap_or(if emulated { 1 } else { 20 });
    let warmup = warmup.unwrap_or(if emulated { 0 } else { 3 });
    let arch = dev.facts().map_or(80, |f| f.sm);
    // --tma needs sm_90a: an sm_90 GPU, or the emulator (which runs it).
    let tma_runs = tma && (emulated || arch == 90);
    let mut shapes = Vec::new();
    for name in &names {
        let preset = Preset::by_name(name).map_err(|e| usage(e.to_string()))?;
        // The model's own head size and key/value heads (--heads keeps HS and, without
        // --kv-heads, runs plain multi-head attention).
        let cfg = preset.config();
        let hs = cfg.head_dim();
        let nh = heads.unwrap_or(cfg.n_heads);
        let nkv = kv_heads.unwrap_or(if heads.is_some() { nh } else { cfg.n_kv_heads });
        if nkv > nh || !nh.is_multiple_of(nkv) {
            return Err(usage(format!(
                "--kv-heads {nkv} must divide the {nh} query heads"
            )));
        }
        shapes.push((preset.name, AttnShape { b, t, nh, nkv, hs }));
    }
    let timing = dev.timing_source().label();
    let dev_name = dev.name();
    let preamble = [
        note.unwrap_or_default(),
        format!(
            "bench attention: {dev_name}; causal, B={b} T={t}, dQ {}; sm_{arch} matmul dispatch \
             for vanilla; {iters} timed repetition(s) after {warmup} warm-up; timing: {timing}; \
             FLOPs as FlashAttention's benchmarks (fwd 4*B*NH*T^2*HS/2, bwd 2.5x fwd)",
            match dq_mode {
                DqMode::Deterministic => "deterministic",
                DqMode::Atomic => "atomic",
            }
        ),
        if tma && !tma_runs {
            format!(
                "--tma: this sm_{arch} GPU cannot run the sm_90a wgmma forward; the flash rows \
                 are FlashAttention-2's"
            )
        } else {
            String::new()
        },
        if emulated {
            "EMULATED: times and TFLOP/s below measure the PTX emulator on the host; they are \
             meaningless for GPU speed (this run checks that the launches work)"
                .to_string()
        } else {
            String::new()
        },
    ];
    for line in preamble.iter().filter(|l| !l.is_empty()) {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    let (ms_head, tf_head) = if emulated {
        ("ms(EMU)", "TFLOP/s(EMU)")
    } else {
        ("ms", "TFLOP/s")
    };
    if !json {
        println!(
            "{:<12} {:>4} {:>4} {:>4} {:<8} {:<8} {:>9} {:>12} {:>14} {:>12}",
            "model", "NH", "NKV", "HS", "attn", "pass", "launches", "extra", ms_head, tf_head
        );
    }
    for (model, shape) in shapes {
        let rows = measure(
            &dev,
            arch,
            model,
            shape,
            &which,
            dq_mode,
            Repeats { iters, warmup },
            counters,
            tma_runs,
        )?;
        for row in &rows {
            if json {
                let line = json_line(row, &dev_name, timing, emulated, dq_mode);
                println!("{}", with_counters(line, row.counters.as_ref()));
            } else {
                println!(
                    "{:<12} {:>4} {:>4} {:>4} {:<8} {:<8} {:>9} {:>12} {:>14.3} {:>12}",
                    row.model,
                    row.shape.nh,
                    row.shape.nkv,
                    row.shape.hs,
                    row.attention.name(),
                    row.pass.name(),
                    row.launches,
                    human_bytes(row.extra_bytes as u64),
                    row.time_ms,
                    rate(row.tflops())
                );
                if let Some(c) = &row.counters {
                    println!("{:<12} {}", "", c.text());
                }
            }
        }
        if !json && which.len() == 2 {
            let t = |a, p| {
                rows.iter()
                    .find(|r| r.attention == a && r.pass == p)
                    .map_or(f64::NAN, |r| r.time_ms)
            };
            for p in [Pass::Forward, Pass::ForwardBackward] {
                println!(
                    "{:<12} vanilla/flash time, {}: {:.2}x",
                    model,
                    p.name(),
                    t(Attention::Vanilla, p) / t(Attention::Flash, p)
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_follow_flash_attention_benchmarks() {
        let s = AttnShape {
            b: 2,
            t: 1024,
            nh: 13,
            nkv: 13,
            hs: 64,
        };
        let fwd = 4.0 * 2.0 * 13.0 * 1024.0 * 1024.0 * 64.0 / 2.0;
        assert_eq!(flops(s, Pass::Forward), fwd);
        assert_eq!(flops(s, Pass::ForwardBackward), fwd + 2.5 * fwd);
    }

    #[test]
    fn both_paths_run_on_the_emulator_with_positive_figures() {
        let dev = Device::open(DeviceSpec::Emu).unwrap_or_else(|e| panic!("{e}"));
        let shape = AttnShape {
            b: 1,
            t: 20,
            nh: 2,
            nkv: 1,
            hs: 64,
        };
        let rows = measure(
            &dev,
            80,
            "test",
            shape,
            &[Attention::Flash, Attention::Vanilla],
            DqMode::Atomic,
            Repeats {
                iters: 1,
                warmup: 0,
            },
            true,
            false,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.time_ms > 0.0 && r.tflops().is_finite(), "{r:?}");
            // Both paths run on the tensor cores; the counted repetition says so.
            let c = r
                .counters
                .as_ref()
                .unwrap_or_else(|| panic!("no counters: {r:?}"));
            assert!(c.tensor_flops > 0 && c.instructions > 0, "{c:?}");
            let line = json_line(r, "emu", "host", true, DqMode::Atomic);
            assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        }
        // Vanilla keeps the (B, NH, T, T) probabilities; flash only 8 bytes per row plus
        // the atomic accumulator.
        assert!(rows[2].extra_bytes >= 2 * 2 * 20 * 20);
        assert_eq!(rows[0].extra_bytes, 8 * 2 * 20 + 4 * 20 * 2 * 64);
        assert_eq!(rows[1].launches, 1 + 4);
    }
}
