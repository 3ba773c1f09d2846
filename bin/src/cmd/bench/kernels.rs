//! `frugal bench kernels`: every non-matmul kernel of a training step (RMSNorm, RoPE,
//! SwiGLU, embedding, fused cross-entropy, the vanilla-attention softmax, the gradient
//! norm and AdamW) at the shapes one step of a preset launches it with, through the
//! runtime's one launch path (`Device::launch`) on `cuda` or `emu`.
//!
//! The cases are the step program's own operations (`Program::plan_only`, see
//! [`step_cases`]): each distinct launch once, with its shape, eps and theta as the
//! step passes them and how many times one step makes it (the `count` column).
//!
//! Per kernel: the bytes its real operands move per launch (reads + writes, each
//! formula written next to its case below; the compulsory traffic, not what caches or
//! a second pass add), the time per launch from device timing (CUDA events around
//! `iters` launches, after warm-up and a synchronise; the end event is waited for
//! before the clock is read), and bytes / time in GB/s (10^9 bytes per second).
//!
//! Shapes (N = B·T rows): activations (N, C) and (N, F) bf16, logits (N, V) bf16, scores
//! (B·NH, T, T) bf16, the optimizer's P = parameter count of f32 master weights. Each
//! case allocates its buffers, runs, and frees them before the next, so the peak is one
//! kernel's operands (AdamW's 31·P bytes for the paper presets).
//!
//! On `emu` the same launches run under the PTX emulator: the harness, the shapes and
//! the launch code are exercised, and every time and GB/s is the host's emulation speed,
//! labelled as such; it says nothing about a GPU.

use super::counters::{with_counters, Summary};
use super::shared::{json_str, kernel_device, open_kernel_device};
use crate::error::CliError;
use crate::flags::text;
use crate::train::options::MAX_DIM;
use frugal_model::config::{Attention, Config, Preset};
use frugal_model::device::program::{Program, Work};
use frugal_model::device::StepOptions;
use frugal_model::rng::Rng;
use frugal_model::ModelError;
use frugal_ptx::kernels::{
    adamw, cross_entropy, embedding, rmsnorm, rope, softmax, swiglu, Launch,
};
use frugal_runtime::buffer::{DeviceBuffer, Element};
use frugal_runtime::device::{Backend, Device, DeviceSpec};
use frugal_runtime::host::try_zeroed_vec;
use frugal_runtime::RuntimeError;
use half::bf16;

/// What `frugal bench kernels --help` says first.
pub const ABOUT: &str = "\
Times each non-matmul kernel at the shapes of one training step of the preset, through
the runtime's launch path, and reports bytes moved per launch, time per launch and GB/s.";

/// `frugal bench kernels`'s flags.
#[derive(Debug, clap::Args)]
pub struct KernelsFlags {
    /// auto (a CUDA GPU if there is one, else the emulator), cuda[:N] or emu
    #[arg(long, value_name = "D", default_value = "auto", value_parser = text::<DeviceSpec>())]
    device: DeviceSpec,
    /// preset (default paper-100m on a GPU, tiny on the emulator)
    #[arg(long, value_name = "NAME", value_parser = text::<String>())]
    model: Option<String>,
    /// sequences per step (default: the preset's on a GPU, 1 on the emulator)
    #[arg(long, value_name = "B", value_parser = text::<usize>())]
    batch: Option<usize>,
    /// tokens per sequence (default: the preset's)
    #[arg(long, value_name = "T", value_parser = text::<usize>())]
    seq: Option<usize>,
    /// timed launches per kernel (default 50 on a GPU, 1 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    iters: Option<usize>,
    /// untimed launches first (default 5 on a GPU, 0 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    warmup: Option<usize>,
    /// one JSON object per kernel instead of the table
    #[arg(long)]
    json: bool,
    /// (emu only) one more launch of each kernel with the emulator's hardware counters
    /// on: sectors/request, coalescing, bank conflicts/request, DRAM sectors, printed
    /// under the row and in its --json line
    #[arg(long)]
    counters: bool,
}

/// One kernel launch of the step with everything it is launched with, taken from the
/// step program's operations (an operation may be several launches: RMSNorm's backward
/// is the backward and the gain's reduction, the loss is the fused cross-entropy and its
/// mean, the optimizer is the two gradient-norm kernels and AdamW).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Case {
    EmbeddingFwd {
        rows: usize,
        c: usize,
        vocab: usize,
    },
    RmsnormFwd {
        rows: usize,
        c: usize,
        eps: f32,
        residual: bool,
    },
    Rope {
        rows: usize,
        t: usize,
        heads: usize,
        hs: usize,
        theta: f64,
        direction: rope::Direction,
    },
    /// The vanilla attention's softmax over B·NH causal (T, T) matrices.
    SoftmaxFwd {
        heads: usize,
        t: usize,
        hs: usize,
    },
    SoftmaxBwd {
        heads: usize,
        t: usize,
        hs: usize,
    },
    SwigluFwd {
        len: usize,
    },
    SwigluBwd {
        len: usize,
    },
    CrossEntropy {
        rows: usize,
        vocab: usize,
    },
    CrossEntropyMean {
        rows: usize,
    },
    RmsnormBwd {
        rows: usize,
        c: usize,
    },
    RmsnormDgReduce {
        rows: usize,
        c: usize,
    },
    EmbeddingBwd {
        rows: usize,
        c: usize,
        vocab: usize,
    },
    GradNormPartial {
        params: usize,
    },
    GradNormFinish {
        params: usize,
    },
    Adamw {
        params: usize,
    },
}

impl Case {
    /// The case's name in the table and the JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Case::EmbeddingFwd { .. } => "embedding_fwd",
            Case::RmsnormFwd {
                residual: false, ..
            } => "rmsnorm_fwd",
            Case::RmsnormFwd { residual: true, .. } => "rmsnorm_fwd_residual",
            Case::Rope {
                direction: rope::Direction::Forward,
                ..
            } => "rope_fwd",
            Case::Rope { .. } => "rope_bwd",
            Case::SoftmaxFwd { .. } => "attn_softmax_fwd",
            Case::SoftmaxBwd { .. } => "attn_softmax_bwd",
            Case::SwigluFwd { .. } => "swiglu_fwd",
            Case::SwigluBwd { .. } => "swiglu_bwd",
            Case::CrossEntropy { .. } => "cross_entropy",
            Case::CrossEntropyMean { .. } => "cross_entropy_mean",
            Case::RmsnormBwd { .. } => "rmsnorm_bwd",
            Case::RmsnormDgReduce { .. } => "rmsnorm_dg_reduce",
            Case::EmbeddingBwd { .. } => "embedding_bwd",
            Case::GradNormPartial { .. } => "grad_norm_partial",
            Case::GradNormFinish { .. } => "grad_norm_finish",
            Case::Adamw { .. } => "adamw",
        }
    }

    /// The launches one program operation makes, as cases. Matmuls (`bench matmul`),
    /// flash attention (`bench attention`) and host transfers are not cases.
    fn of(work: &Work) -> Vec<Case> {
        match *work {
            Work::Embedding { rows, c, vocab } => vec![Case::EmbeddingFwd { rows, c, vocab }],
            Work::RmsNorm {
                rows,
                c,
                eps,
                residual,
            } => vec![Case::RmsnormFwd {
                rows,
                c,
                eps,
                residual,
            }],
            Work::RmsNormBackward { rows, c } => vec![
                Case::RmsnormBwd { rows, c },
                Case::RmsnormDgReduce { rows, c },
            ],
            Work::Rope {
                rows,
                t,
                heads,
                hs,
                theta,
                direction,
            } => vec![Case::Rope {
                rows,
                t,
                heads,
                hs,
                theta,
                direction,
            }],
            Work::Attention {
                attention: Attention::Vanilla,
                shape,
            } => vec![Case::SoftmaxFwd {
                heads: shape.b * shape.nh,
                t: shape.t,
                hs: shape.hs,
            }],
            Work::AttentionBackward {
                attention: Attention::Vanilla,
                shape,
                ..
            } => vec![Case::SoftmaxBwd {
                heads: shape.b * shape.nh,
                t: shape.t,
                hs: shape.hs,
            }],
            Work::SwiGlu { len } => vec![Case::SwigluFwd { len }],
            Work::SwiGluBackward { len } => vec![Case::SwigluBwd { len }],
            Work::CrossEntropy { rows, vocab } => vec![
                Case::CrossEntropy { rows, vocab },
                Case::CrossEntropyMean { rows },
            ],
            Work::EmbeddingBackward { rows, c, vocab } => {
                vec![Case::EmbeddingBwd { rows, c, vocab }]
            }
            Work::Optimizer { params } => vec![
                Case::GradNormPartial { params },
                Case::GradNormFinish { params },
                Case::Adamw { params },
            ],
            Work::Attention { .. }
            | Work::AttentionBackward { .. }
            | Work::Matmul(_)
            | Work::UploadBatch { .. }
            | Work::GradsReady(_)
            | Work::GatherWeights(_)
            | Work::AwaitWeights(_) => Vec::new(),
        }
    }
}

/// A distinct launch of the step and how many times one step makes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCase {
    pub case: Case,
    pub count: usize,
}

/// The distinct launches of one step and, when the vanilla step refuses the shape, its
/// words (its softmax rows are then left out).
pub struct StepCases {
    pub cases: Vec<StepCase>,
    pub vanilla_refused: Option<ModelError>,
}

/// Every distinct non-matmul launch of one step of `cfg` (B = `b`, T = `t`), in the
/// order the step first makes it, with its launches per step: the flash step's program,
/// then the softmax launches of the vanilla step's (the one kernel family only vanilla
/// attention runs), where the vanilla step can run the shape.
///
/// # Errors
/// The flash step's own refusal of the config.
pub fn step_cases(cfg: &Config, b: usize, t: usize) -> Result<StepCases, ModelError> {
    let mut out: Vec<StepCase> = Vec::new();
    let mut add = |case: Case| match out.iter_mut().find(|c| c.case == case) {
        Some(c) => c.count += 1,
        None => out.push(StepCase { case, count: 1 }),
    };
    let flash = Program::plan_only(cfg, b, t, StepOptions::deterministic(Attention::Flash))?;
    flash
        .ops()
        .flat_map(|op| Case::of(op.work()))
        .for_each(&mut add);
    let vanilla =
        match Program::plan_only(cfg, b, t, StepOptions::deterministic(Attention::Vanilla)) {
            Ok(p) => p,
            Err(e) => {
                return Ok(StepCases {
                    cases: out,
                    vanilla_refused: Some(e),
                })
            }
        };
    vanilla
        .ops()
        .filter(|op| {
            matches!(
                op.work(),
                Work::Attention { .. } | Work::AttentionBackward { .. }
            )
        })
        .flat_map(|op| Case::of(op.work()))
        .for_each(&mut add);
    Ok(StepCases {
        cases: out,
        vanilla_refused: None,
    })
}

/// One case ready to run: its launch, the bytes it moves and the buffers it uses
/// (kept alive until the case is dropped).
pub(crate) struct Built {
    pub(crate) shape: String,
    pub(crate) bytes: u64,
    pub(crate) launch: Launch,
    _buffers: Vec<DeviceBuffer>,
}

/// One measured kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The case's name.
    pub op: &'static str,
    /// Launches of this case per step.
    pub count: usize,
    /// The PTX `.entry` launched.
    pub kernel: &'static str,
    /// The shape, in the B/T/C/NH/HS/F/V/P vocabulary.
    pub shape: String,
    /// Bytes read + written per launch.
    pub bytes: u64,
    /// Timed launches.
    pub iters: usize,
    /// Microseconds per launch.
    pub time_us: f64,
    /// Warp instructions per launch (emulator only).
    pub emu_warp_instructions: Option<u64>,
    /// `--counters`: one counted launch's figures.
    pub counters: Option<Summary>,
    /// The words `frugal profile --kernel NAME --shape DIMS` profiles this launch with.
    pub profile: (String, String),
}

impl Row {
    /// GB/s: bytes per launch over time per launch.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.time_us * 1e-6) / 1e9
    }
}

#[path = "kernels/build.rs"]
mod build;
pub(crate) use self::build::build;
use self::build::failed;

/// Builds, warms up and times `op` on `dev`: `iters` launches between two device
/// timestamps (events on `cuda`), after `warmup` untimed launches and a synchronise;
/// with `counters`, one more launch counted on the emulator.
///
/// # Errors
/// Allocation, launch (sanitizer findings on `emu`) and driver errors, naming the op.
pub fn measure(
    step: &StepCase,
    dev: &Device,
    iters: usize,
    warmup: usize,
    counters: bool,
) -> Result<Row, CliError> {
    let op = &step.case;
    let case = build(op, dev)?;
    let launch = || dev.run(&case.launch).map_err(|e| failed(op, e));
    for _ in 0..warmup {
        launch()?;
    }
    dev.synchronize().map_err(|e| failed(op, e))?;
    let timer = dev.start_timer().map_err(|e| failed(op, e))?;
    let mut instructions = 0u64;
    for _ in 0..iters {
        if let Some(stats) = launch()?.emulated {
            instructions += stats.instructions;
        }
    }
    // Launches are asynchronous on `cuda`: `elapsed_ms` records the end event right
    // behind the last launch and waits for it before reading the two timestamps (a
    // host-side synchronise first would add its own latency to the interval). The
    // synchronise after it reports any error the launches left behind.
    let (ms, _) = dev.elapsed_ms(timer).map_err(|e| failed(op, e))?;
    dev.synchronize().map_err(|e| failed(op, e))?;
    let iters = iters.max(1);
    let counted = if counters {
        let c = super::counters::count("bench kernels", dev, std::slice::from_ref(&case.launch))?;
        Some(Summary::of(&c))
    } else {
        None
    };
    Ok(Row {
        op: op.name(),
        count: step.count,
        kernel: case.launch.kernel,
        shape: case.shape,
        bytes: case.bytes,
        iters,
        time_us: ms * 1e3 / iters as f64,
        emu_warp_instructions: (dev.backend() == Backend::Emu).then(|| instructions / iters as u64),
        counters: counted,
        profile: op.profile_words(),
    })
}

/// One JSON object for `row` measured on `device` with timing labelled `timing`.
pub fn json_line(
    row: &Row,
    model: &str,
    (b, t): (usize, usize),
    device: &str,
    timing: &str,
    emulated: bool,
) -> String {
    let instr = row
        .emu_warp_instructions
        .map_or("null".to_string(), |i| i.to_string());
    format!(
        "{{\"op\": {}, \"kernel\": {}, \"model\": {}, \"batch\": {}, \"seq\": {}, \"shape\": {}, \
         \"count\": {}, \"device\": {}, \"timing\": {}, \"emulated\": {emulated}, \"bytes\": {}, \"iters\": {}, \
         \"time_us\": {:.4}, \"gbps\": {:.6e}, \"emu_warp_instructions\": {instr}, \
         \"profile_kernel\": {}, \"profile_shape\": {}}}",
        json_str(row.op),
        json_str(row.kernel),
        json_str(model),
        b,
        t,
        json_str(&row.shape),
        row.count,
        json_str(device),
        json_str(timing),
        row.bytes,
        row.iters,
        row.time_us,
        row.gbps(),
        json_str(&row.profile.0),
        json_str(&row.profile.1),
    )
}

/// A rate with at least three significant digits: emulated GB/s are far below 0.001.
pub(crate) fn rate(x: f64) -> String {
    if x >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.3e}")
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The table's column heads (marked EMU on the emulator).
fn print_table_head(emulated: bool) {
    let gbps_head = if emulated { "GB/s(EMU)" } else { "GB/s" };
    let us_head = if emulated {
        "us/launch(EMU)"
    } else {
        "us/launch"
    };
    println!(
        "{:<22} {:<40} {:>5} {:>12} {:>6} {:>14} {:>10}",
        "kernel", "shape", "count", "bytes", "iters", us_head, gbps_head
    );
}

/// One measured kernel as a row of the table.
fn print_table_row(row: &Row) {
    println!(
        "{:<22} {:<40} {:>5} {:>12} {:>6} {:>14.3} {:>10}",
        row.op,
        row.shape,
        row.count,
        human_bytes(row.bytes),
        row.iters,
        row.time_us,
        rate(row.gbps())
    );
}

/// Runs `frugal bench kernels` with its flags.
pub fn run(flags: KernelsFlags) -> Result<(), CliError> {
    let KernelsFlags {
        device,
        model,
        batch,
        seq,
        iters,
        warmup,
        json,
        counters,
    } = flags;
    let usage = |m: String| super::shared::usage("bench kernels", m);
    super::counters::check_device("bench kernels", counters, device)?;
    let device = kernel_device("bench kernels", device)?;
    for (name, v) in [("batch", batch), ("seq", seq), ("iters", iters)] {
        if v == Some(0) {
            return Err(usage(format!("--{name} must be at least 1")));
        }
        // Far above any real shape, low enough that the sizes derived from them (and
        // the host buffers they fill) cannot overflow; as `train` bounds its dimensions.
        if let Some(v) = v.filter(|&v| v > MAX_DIM) {
            return Err(usage(format!("--{name} {v} is more than {MAX_DIM}")));
        }
    }

    let (dev, note) = open_kernel_device(device)?;
    let emulated = dev.backend() == Backend::Emu;
    let preset = match &model {
        Some(m) => m.as_str(),
        None if emulated => "tiny",
        None => "paper-100m",
    };
    let preset = Preset::by_name(preset).map_err(|e| usage(e.to_string()))?;
    let mut cfg = preset.config();
    let b = batch.unwrap_or(if emulated { 1 } else { preset.default_batch });
    let t = seq.unwrap_or(preset.seq_len);
    cfg.seq_len = t;
    let StepCases {
        cases,
        vanilla_refused,
    } = step_cases(&cfg, b, t).map_err(|e| CliError::Bench {
        bench: "bench kernels",
        what: None,
        source: Box::new(e),
    })?;
    let iters = iters.unwrap_or(if emulated { 1 } else { 50 });
    let warmup = warmup.unwrap_or(if emulated { 0 } else { 5 });
    let timing = dev.timing_source().label();
    let name = dev.name();

    let preamble = [
        note.unwrap_or_default(),
        format!(
            "bench kernels: {name}; model {} (B={b} T={t} C={} NH={} HS={} F={} V={} P={}); \
             {iters} timed launch(es) after {warmup} warm-up; timing: {timing}",
            preset.name,
            cfg.dim,
            cfg.n_heads,
            cfg.head_dim(),
            cfg.ffn_dim,
            cfg.vocab_size,
            cfg.param_count()
        ),
        if emulated {
            "EMULATED: times and GB/s below measure the PTX emulator on the host; they are \
             meaningless for GPU speed (this run checks that the harness and launches work)"
                .to_string()
        } else {
            String::new()
        },
        vanilla_refused.map_or_else(String::new, |e| {
            format!("no attn_softmax rows: the vanilla-attention step cannot run this shape ({e})")
        }),
    ];
    for line in preamble.iter().filter(|l| !l.is_empty()) {
        // Keep stdout pure JSON lines under --json.
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    if !json {
        print_table_head(emulated);
    }
    for step in &cases {
        let row = measure(step, &dev, iters, warmup, counters)?;
        if json {
            let line = json_line(&row, preset.name, (b, t), &name, timing, emulated);
            println!("{}", with_counters(line, row.counters.as_ref()));
        } else {
            print_table_row(&row);
            if let Some(c) = &row.counters {
                println!("{:<22} {}", "", c.text());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model small enough that every case runs under the emulator in a moment, with
    /// T not a multiple of 8, an odd F so the kernels' scalar paths run too, and GQA so
    /// that Q's and K's RoPE are distinct launches.
    fn small_config() -> Config {
        Config {
            vocab_size: 100,
            dim: 128,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_dim: 90,
            seq_len: 12,
            rope_theta: 500000.0,
            norm_eps: 1e-6,
        }
    }

    /// The cases are the flash program's operations of each kind, launch for launch
    /// (each distinct one once, with its count), plus the vanilla program's softmax.
    #[test]
    fn the_cases_are_the_programs_operations() {
        let cfg = small_config();
        let (b, t) = (2, 12);
        let cases = step_cases(&cfg, b, t).unwrap().cases;
        let flash =
            Program::plan_only(&cfg, b, t, StepOptions::deterministic(Attention::Flash)).unwrap();
        let launches: Vec<Case> = flash.ops().flat_map(|op| Case::of(op.work())).collect();
        for c in &cases {
            assert_eq!(
                cases.iter().filter(|d| d.case == c.case).count(),
                1,
                "{c:?} listed twice"
            );
        }
        for launch in &launches {
            let listed = cases.iter().find(|c| c.case == *launch).expect("listed");
            let runs = launches.iter().filter(|l| *l == launch).count();
            assert_eq!(listed.count, runs, "{launch:?}");
        }
        // Everything but the softmax is the flash step's; the softmax runs once per layer
        // each way in the vanilla step.
        for c in &cases {
            match c.case {
                Case::SoftmaxFwd { heads, t: tt, hs } | Case::SoftmaxBwd { heads, t: tt, hs } => {
                    assert_eq!((heads, tt, hs, c.count), (b * 2, t, 64, cfg.n_layers));
                }
                other => assert!(launches.contains(&other), "{other:?}"),
            }
        }
        // The constants are the step's: RMSNorm's eps and RoPE's theta, Q and K apart.
        let norms: Vec<f32> = cases
            .iter()
            .filter_map(|c| match c.case {
                Case::RmsnormFwd { eps, .. } => Some(eps),
                _ => None,
            })
            .collect();
        assert!(!norms.is_empty() && norms.iter().all(|&e| e == cfg.norm_eps as f32));
        let ropes: Vec<(usize, f64)> = cases
            .iter()
            .filter_map(|c| match c.case {
                Case::Rope { heads, theta, .. } => Some((heads, theta)),
                _ => None,
            })
            .collect();
        assert_eq!(ropes.len(), 4, "Q and K, forward and backward: {ropes:?}");
        assert!(ropes.iter().all(|&(_, th)| th == cfg.rope_theta));
        assert!(ropes.iter().any(|&(h, _)| h == 1) && ropes.iter().any(|&(h, _)| h == 2));
    }

    #[test]
    fn every_kernel_of_the_families_is_benchmarked() {
        let dev = Device::open(DeviceSpec::Emu).unwrap();
        let cases = step_cases(&small_config(), 2, 12).unwrap().cases;
        let covered: Vec<&str> = cases
            .iter()
            .map(|c| build(&c.case, &dev).unwrap().launch.kernel)
            .collect();
        for spec in frugal_ptx::kernels::specs() {
            assert!(
                covered.contains(&spec.kernel),
                "kernel {} has no case in `frugal bench kernels`",
                spec.kernel
            );
        }
    }

    #[test]
    fn every_case_runs_on_the_emulator_with_positive_finite_figures() {
        let dev = Device::open(DeviceSpec::Emu).unwrap();
        for step in step_cases(&small_config(), 2, 12).unwrap().cases {
            let row = measure(&step, &dev, 2, 1, true).unwrap();
            let c = row
                .counters
                .as_ref()
                .unwrap_or_else(|| panic!("no counters: {row:?}"));
            assert!(
                c.instructions > 0 && c.dram_read_sectors > 0,
                "{}: {c:?}",
                row.op
            );
            assert!(row.bytes > 0, "{row:?}");
            assert!(row.time_us.is_finite() && row.time_us > 0.0, "{row:?}");
            assert!(row.gbps().is_finite() && row.gbps() > 0.0, "{row:?}");
            assert!(row.emu_warp_instructions.is_some_and(|i| i > 0), "{row:?}");
            let line = json_line(&row, "custom", (2, 12), &dev.name(), "emulated", true);
            assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
            assert!(line.contains("\"emulated\": true"), "{line}");
        }
    }

    #[test]
    fn byte_counts_follow_the_shapes() {
        // The per-row kernels' traffic is affine in B (rows) plus per-model terms such
        // as a norm's gain; the softmax's is proportional to B·NH·T²; the optimizer's
        // does not depend on B. A formula that ignored a shape would fail here.
        let dev = Device::open(DeviceSpec::Emu).unwrap();
        let cfg = small_config();
        let bytes_at = |b: usize, t: usize| -> Vec<(&'static str, u64)> {
            step_cases(&cfg, b, t)
                .unwrap()
                .cases
                .iter()
                .map(|c| (c.case.name(), build(&c.case, &dev).unwrap().bytes))
                .collect()
        };
        let (b1, b2, b3) = (bytes_at(2, 12), bytes_at(4, 12), bytes_at(6, 12));
        let affine = [
            "embedding_fwd",
            "rmsnorm_fwd",
            "rmsnorm_fwd_residual",
            "rope_fwd",
            "swiglu_fwd",
            "swiglu_bwd",
            "cross_entropy",
            "cross_entropy_mean",
            "rmsnorm_bwd",
        ];
        for (i, &(name, a)) in b1.iter().enumerate() {
            let (b, c) = (b2[i].1, b3[i].1);
            if affine.contains(&name) {
                assert!(b > a && c - b == b - a, "{name}: {a} {b} {c}");
            }
            if [
                "swiglu_fwd",
                "swiglu_bwd",
                "cross_entropy",
                "attn_softmax_fwd",
                "attn_softmax_bwd",
            ]
            .contains(&name)
            {
                assert_eq!(b, 2 * a, "{name}");
            }
            if name == "adamw" {
                assert_eq!(a, b);
                // AdamW: 31 bytes per parameter (+4 for the scale), the figure the paper
                // presets' optimizer memory traffic is planned with.
                assert_eq!(a, 31 * cfg.param_count() as u64 + 4);
            }
        }
        // SwiGLU forward: gate and up read, out written, three bf16 (N, F) tensors.
        let swiglu = b1.iter().find(|(n, _)| *n == "swiglu_fwd").unwrap().1;
        assert_eq!(swiglu, 3 * 2 * (2 * 12 * cfg.ffn_dim) as u64);
        let softmax =
            |v: &[(&str, u64)]| v.iter().find(|(n, _)| *n == "attn_softmax_fwd").unwrap().1;
        let (sa, sb) = (softmax(&b1), softmax(&bytes_at(2, 24)));
        assert!(sb > 3 * sa && sb < 4 * sa + 1, "quadratic in T: {sa} {sb}");
    }

    #[test]
    fn cpu_is_refused_with_a_pointer_to_bench_step() {
        let e = kernel_device("bench kernels", DeviceSpec::Cpu).unwrap_err();
        assert!(e.to_string().contains("bench step"), "{e}");
        assert_eq!(e.exit_code(), 2);
        for spec in [DeviceSpec::Emu, DeviceSpec::Cuda(1), DeviceSpec::LocalCuda] {
            assert_eq!(kernel_device("bench kernels", spec).unwrap(), spec);
        }
    }
}
