//! `frugal bench matmul`: every matmul of one training step at its real shapes, through
//! the dispatcher (`frugal_ptx::matmul::plan`) and the runtime's launch path.
//!
//! The products are the step program's own (`frugal_model::device::program`, flash
//! attention), deduplicated by shape (N = B*T tokens, W (C_out, C_in)): for each linear
//! (Q: C -> C, K and V: C -> NKV*HS, the attention output C -> C, the SwiGLU gate and up
//! C -> F, down F -> C) its forward `Y = X W^T` (Nt), input gradient `dX = dY W` (Nn,
//! overwrite or accumulate) and weight gradient `dW += dY^T X` (Tn, fp32, accumulate); once
//! per step the LM head's forward, dX and dW with C_out = V. A row is named by the step's
//! operations it serves and launched `count` times per step (e.g. 2L for Q's and the
//! output projection's forward when NKV = NH: one shape).
//!
//! Per row: microseconds per launch from device timing (events on `cuda`, after warm-up and
//! a synchronise) and TFLOP/s = 2*M*N*K*batch / time; the total is FLOP-weighted:
//! sum(count * flops) / sum(count * time). On the emulator every figure is host emulation
//! speed, labelled EMULATED: the run checks the shapes, dispatch and launches, not speed.
//!
//! Products run through `frugal_ptx::matmul::plan_split` with a workspace, so split-K runs
//! where the dispatcher picks it (the `split` column). `--variants` times every eligible
//! (kernel, tile, split) per shape instead of the dispatcher's pick; `--autotune` (a GPU
//! only) does the same and writes the fastest per shape as rules of the dispatch table file
//! (`ptx/src/matmul/dispatch_table.txt`, embedded by the next build). `--json` prints one JSON
//! object per product (and a summary) in the schema `scripts/torch/matmul.py` also prints;
//! `--compare FILE` reads such lines (the torch script's) and adds their time and the ratio.
//! `--list --json` prints the products alone, with no device: the torch script times
//! those, so its list of shapes is this one.

use super::counters::{self, with_counters, Summary};
use super::shared::json_str;
use super::shared::kernel_device;
use crate::error::CliError;
use crate::flags::text;
use crate::train::options::MAX_DIM;
use frugal_model::config::{Config, Preset};
use frugal_model::device::program::Program;
use frugal_model::device::StepOptions;
use frugal_model::rng::Rng;
use frugal_model::ModelError;
use frugal_ptx::kernels::Launch;
use frugal_ptx::matmul::table::{self, ArchMatch, SizeRange, TableRule};
use frugal_ptx::matmul::{self, Choice, Epilogue, Gemm, KernelKind, OutType, TILE_CONFIGS};
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::device::{Backend, Device, DeviceSpec};
use half::bf16;
use serde_json::Value;

/// What `frugal bench matmul --help` says first.
pub const ABOUT: &str = "\
Times every matmul of one training step of the preset, as the device step runs them
(forward, input and weight gradients of Q, K, V, the output projection, gate, up, down
and the LM head; one row per distinct shape), through the dispatcher, and reports
TFLOP/s per shape and the FLOP-weighted total.";

/// `frugal bench matmul`'s flags.
#[derive(Debug, clap::Args)]
pub struct MatmulFlags {
    /// auto (a CUDA GPU if there is one, else the emulator), cuda[:N] or emu
    #[arg(long, value_name = "D", default_value = "auto", value_parser = text::<DeviceSpec>())]
    device: DeviceSpec,
    /// preset (default paper-100m on a GPU, tiny on the emulator)
    #[arg(long, value_name = "NAME", value_parser = text::<String>())]
    model: Option<String>,
    /// sequences per step (default: the preset's on a GPU, 1 on the emulator)
    #[arg(long, value_name = "B", value_parser = text::<usize>())]
    batch: Option<usize>,
    /// tokens per sequence (default: the preset's on a GPU, 32 on the emulator)
    #[arg(long, value_name = "T", value_parser = text::<usize>())]
    seq: Option<usize>,
    /// timed launches per shape (default 20 on a GPU, 1 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    iters: Option<usize>,
    /// untimed launches first (default 3 on a GPU, 0 on the emulator)
    #[arg(long, value_name = "N", value_parser = text::<usize>())]
    warmup: Option<usize>,
    /// override the preset's FFN width (e.g. an odd one, to see the staged kernels)
    #[arg(long, value_name = "F", value_parser = text::<usize>())]
    ffn: Option<usize>,
    /// time every eligible (kernel, tile, split) per shape, not only the pick
    #[arg(long)]
    variants: bool,
    /// one JSON object per product and a summary line (the torch script's schema)
    #[arg(long)]
    json: bool,
    /// print the products (name, shape, launches per step) and time nothing: no device
    /// is opened and the defaults are a GPU's; with --json one object per product
    /// (what scripts/torch/matmul.py reads)
    #[arg(long, conflicts_with_all = ["variants", "compare", "autotune"])]
    list: bool,
    /// JSON lines of another run (scripts/torch/matmul.py): add its time and ratio
    #[arg(long, value_name = "FILE", value_parser = text::<String>())]
    compare: Option<String>,
    /// (GPU only) time every variant, write the fastest per shape to the dispatch
    /// table (default ptx/src/matmul/dispatch_table.txt; rebuild to embed it)
    #[arg(long, verbatim_doc_comment)]
    autotune: bool,
    /// where --autotune writes the table
    #[arg(long, value_name = "FILE", value_parser = text::<String>())]
    out: Option<String>,
    /// (emu only) one more launch of each pick with the emulator's hardware counters
    /// on: sectors/request, coalescing, bank conflicts/request, tensor FLOPs, DRAM
    /// sectors, printed under the row and in its --json line
    #[arg(long, conflicts_with = "list")]
    counters: bool,
    /// pick with the sm_90a TMA dispatch: the wgmma + TMA kernel where its shape and
    /// 16-byte alignment rules hold (tensor maps encoded for the device), the usual pick
    /// elsewhere; the emulator then plans for sm_90
    #[arg(long, conflicts_with_all = ["variants", "autotune", "counters"])]
    tma: bool,
}

/// The dispatch table file `--autotune` writes by default (relative to the repository root).
const TABLE_PATH: &str = "ptx/src/matmul/dispatch_table.txt";

/// One product of the step.
#[derive(Clone, Debug, PartialEq)]
pub struct Product {
    /// What it computes, e.g. "ffn_down dX".
    pub name: String,
    /// The product.
    pub gemm: Gemm,
    /// Launches per step.
    pub count: usize,
}

/// Every distinct matmul of one step of `cfg` at `b` sequences of `t` tokens, as the
/// device step runs it (flash attention): the step program's matmul operations,
/// deduplicated by shape, each with its launches per step and the operations it serves.
///
/// # Errors
/// The step's own refusal of the config (e.g. a head size without flash kernels).
pub fn step_products(cfg: &Config, b: usize, t: usize) -> Result<Vec<Product>, ModelError> {
    let prog = Program::plan_only(cfg, b, t, StepOptions::default())?;
    Ok(prog
        .matmuls()
        .into_iter()
        .map(|m| Product {
            name: m.labels.join(" | "),
            gemm: m.gemm,
            count: m.count,
        })
        .collect())
}

/// The width of the product column: the longest name (names list every op a product
/// serves, so they vary a lot), at least the header's.
fn name_width(products: &[Product]) -> usize {
    products
        .iter()
        .map(|p| p.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(18)
}

fn failed(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CliError {
    CliError::Bench {
        bench: "bench matmul",
        what: Some(what.to_string()),
        source: e.into(),
    }
}

/// A buffer of `n` bf16 (or f32 when `f32s`) values from a tiled random pattern.
fn buffer(
    dev: &Device,
    rng: &mut Rng,
    label: &str,
    n: usize,
    out: OutType,
) -> Result<DeviceBuffer, CliError> {
    const CHUNK: usize = 1 << 20;
    let mut buf = dev
        .alloc(n.max(1) * out.size(), label)
        .map_err(|e| failed(label, e))?;
    let len = n.clamp(1, CHUNK);
    let mut at = 0;
    match out {
        OutType::Bf16 => {
            let chunk: Vec<bf16> = (0..len).map(|_| bf16::from_f64(rng.normal())).collect();
            while at < n {
                let k = chunk.len().min(n - at);
                buf.write(at * 2, &chunk[..k])
                    .map_err(|e| failed(label, e))?;
                at += k;
            }
        }
        OutType::F32 => {
            let chunk: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            while at < n {
                let k = chunk.len().min(n - at);
                buf.write(at * 4, &chunk[..k])
                    .map_err(|e| failed(label, e))?;
                at += k;
            }
        }
    }
    Ok(buf)
}

/// One measured (product, choice).
struct Row {
    kernel: &'static str,
    choice: Choice,
    us: f64,
    /// `--counters`: the counted launch's figures (the pick only).
    counters: Option<Summary>,
}

/// Device buffers for one product: A, B, C and a split-K workspace.
pub(crate) struct Operands {
    a: DeviceBuffer,
    b: DeviceBuffer,
    c: DeviceBuffer,
    workspace: DeviceBuffer,
}

/// The split-K workspace bytes the dispatcher's pick for `g` on `arch` needs (buffers
/// are 256-byte aligned, so the operands' alignment is their strides').
pub(crate) fn pick_workspace(arch: u32, g: &Gemm) -> usize {
    matmul::workspace_bytes(&matmul::choose(arch, g, g.alignment(0, 0)), g)
}

/// The launches of `choice` (with `None`, the dispatcher's pick on `arch`) for `g` on
/// `ops`; errors name `what`.
pub(crate) fn plan(
    arch: u32,
    g: &Gemm,
    ops: &Operands,
    choice: Option<Choice>,
    what: &str,
) -> Result<(Choice, Vec<Launch>), CliError> {
    let (a, b, c, w) = (ops.a.ptr(), ops.b.ptr(), ops.c.ptr(), ops.workspace.ptr());
    match choice {
        None => matmul::plan_split(arch, g, a, b, c, Some(w)),
        Some(ch) => matmul::launch_split(&ch, g, a, b, c, w).map(|l| (ch, l)),
    }
    .map_err(|e| failed(what, e))
}

/// Buffers for `g` with a workspace of `workspace` bytes (at least 4: never null).
pub(crate) fn operands(dev: &Device, g: &Gemm, workspace: usize) -> Result<Operands, CliError> {
    let mut rng = Rng::new(0x6d61_746d_756c);
    let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
    let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
    let ws = workspace.max(4);
    Ok(Operands {
        a: buffer(dev, &mut rng, "a", a_len, OutType::Bf16)?,
        b: buffer(dev, &mut rng, "b", b_len, OutType::Bf16)?,
        c: buffer(dev, &mut rng, "c", g.c_elements(), g.out)?,
        workspace: dev
            .alloc(ws, "split-K workspace")
            .map_err(|e| failed("workspace", e))?,
    })
}

/// Times `choice` (or, with `None`, the dispatcher's pick) on `p`.
fn measure(
    dev: &Device,
    arch: u32,
    p: &Product,
    ops: &Operands,
    choice: Option<Choice>,
    iters: usize,
    warmup: usize,
) -> Result<Row, CliError> {
    let (choice, launches) = plan(arch, &p.gemm, ops, choice, &p.name)?;
    let run = || -> Result<(), CliError> {
        for l in &launches {
            dev.run(l).map_err(|e| failed(&p.name, e))?;
        }
        Ok(())
    };
    for _ in 0..warmup {
        run()?;
    }
    dev.synchronize().map_err(|e| failed(&p.name, e))?;
    let timer = dev.start_timer().map_err(|e| failed(&p.name, e))?;
    for _ in 0..iters {
        run()?;
    }
    let (ms, _) = dev.elapsed_ms(timer).map_err(|e| failed(&p.name, e))?;
    dev.synchronize().map_err(|e| failed(&p.name, e))?;
    Ok(Row {
        kernel: launches.first().map_or("-", |l| l.kernel),
        choice,
        us: ms * 1e3 / iters.max(1) as f64,
        counters: None,
    })
}

/// Every (kernel, tile, split) that can run `g` on `arch` with operands of `align` bytes:
/// each shipped tile the alignment allows, unsplit and (unbatched) split 2, 3, 4, 6, 8 where
/// that gives distinct slice counts; SIMT only where no tensor-core kernel runs.
pub fn candidates(arch: u32, g: &Gemm, align: u32) -> Vec<Choice> {
    let mut out = Vec::new();
    for cfg in TILE_CONFIGS {
        let kernel = KernelKind::MmaSync(cfg);
        if !matmul::feasible(kernel, arch, align) {
            continue;
        }
        out.push(Choice {
            kernel,
            split_k: None,
        });
        if g.batch != 1 {
            continue;
        }
        let mut seen = vec![1];
        for split in [2, 3, 4, 6, 8] {
            let choice = Choice {
                kernel,
                split_k: Some(split),
            };
            let (_, slices) = matmul::split_slices(&choice, g.k);
            if !seen.contains(&slices) {
                seen.push(slices);
                out.push(choice);
            }
        }
    }
    if out.is_empty() {
        out.push(Choice {
            kernel: KernelKind::Simt,
            split_k: None,
        });
    }
    out
}

/// The table's name of a choice's kernel and tile, e.g. `mma 128x64x32_rs`.
fn variant_name(choice: &Choice) -> String {
    match choice.kernel {
        KernelKind::Simt => "simt".to_string(),
        KernelKind::MmaSync(cfg) => format!("mma {}", cfg.short_name()),
        KernelKind::Wgmma(cfg) => format!("wgmma {}", cfg.short_name()),
    }
}

/// The `--json` line of one measured product (the schema `scripts/torch/matmul.py` prints).
pub fn json_line(
    model: &str,
    p: &Product,
    kernel: &str,
    split: u32,
    us: f64,
    emulated: bool,
) -> String {
    let g = &p.gemm;
    format!(
        "{},\"kernel\":{},\"split\":{split},\"us\":{},\"flops\":{},\
         \"tflops\":{},\"emulated\":{emulated}}}",
        product_fields(model, p),
        json_str(kernel),
        json_num(us),
        g.flops(),
        json_num(g.flops() / (us * 1e-6) / 1e12),
    )
}

/// The JSON object of `p` as `--list --json` prints it: what it computes, never a time.
pub fn list_line(model: &str, p: &Product) -> String {
    format!("{}}}", product_fields(model, p))
}

/// The opening of a product's JSON object, up to its count (no closing brace): the
/// fields `--list --json` and the timed lines share.
fn product_fields(model: &str, p: &Product) -> String {
    let g = &p.gemm;
    let epilogue = match g.epilogue {
        Epilogue::Overwrite => "overwrite",
        Epilogue::Accumulate => "accumulate",
    };
    format!(
        "{{\"bench\":\"matmul\",\"model\":{},\"product\":{},\"layout\":\"{}\",\"m\":{},\"n\":{},\
         \"k\":{},\"batch\":{},\"lda\":{},\"ldb\":{},\"ldc\":{},\"out\":\"{}\",\"epilogue\":\"{epilogue}\",\
         \"alpha\":{},\"count\":{}",
        json_str(model),
        json_str(&p.name),
        g.layout.name(),
        g.m,
        g.n,
        g.k,
        g.batch,
        g.lda,
        g.ldb,
        g.ldc,
        g.out.suffix(),
        g.alpha,
        p.count,
    )
}

/// A JSON number, or `null` for NaN and infinities (which JSON cannot spell).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}

/// One JSON object per line (what `--json` and the torch script print), as serde_json
/// reads it.
///
/// # Errors
/// serde_json's message saying what was expected where, or that the line is not an object.
pub fn parse_json_object(line: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str::<Value>(line).map_err(|e| e.to_string())? {
        Value::Object(fields) => Ok(fields),
        other => Err(format!("expected a JSON object, found {other}")),
    }
}

/// One line of a `--compare` file: the product's name and shape, and its time.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Product name (`q = a·Wqᵀ | o·Woᵀ`, ...).
    pub product: String,
    /// (M, N, K, batch).
    pub shape: [usize; 4],
    /// Microseconds per launch.
    pub us: f64,
}

impl Measured {
    /// True when this line measured `p` (same name and shape).
    pub fn is(&self, p: &Product) -> bool {
        let g = &p.gemm;
        self.product == p.name && self.shape == [g.m, g.n, g.k, g.batch]
    }
}

/// The products and times of JSON lines (summary lines and blank lines skipped).
///
/// # Errors
/// The file and line of a malformed line.
pub fn read_compare(path: &str, text: &str) -> Result<Vec<Measured>, CliError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| CliError::CompareLine {
            path: path.to_string(),
            line: n + 1,
            why,
        };
        let fields = parse_json_object(line).map_err(bad)?;
        if fields.get("summary") == Some(&Value::Bool(true)) {
            continue;
        }
        let size = |k: &str| match fields.get(k).and_then(Value::as_f64) {
            Some(v) if v >= 1.0 && v.fract() == 0.0 => Some(v as usize),
            _ => None,
        };
        let name = fields.get("product").and_then(Value::as_str);
        let us = fields.get("us").and_then(Value::as_f64);
        match (name, us, size("m"), size("n"), size("k"), size("batch")) {
            (Some(name), Some(us), Some(m), Some(n), Some(k), Some(batch)) if us > 0.0 => {
                out.push(Measured {
                    product: name.to_string(),
                    shape: [m, n, k, batch],
                    us,
                })
            }
            _ => {
                return Err(bad(
                    "needs \"product\" (string), \"m\", \"n\", \"k\", \"batch\" (sizes) and \
                     \"us\" (> 0)"
                        .into(),
                ))
            }
        }
    }
    Ok(out)
}

/// `--list`: the products of one step at a GPU's defaults (paper-100m, the preset's
/// batch and T), as text or, with `json`, one [`list_line`] each.
fn list_products(
    model: Option<&str>,
    batch: Option<usize>,
    seq: Option<usize>,
    ffn: Option<usize>,
    json: bool,
) -> Result<(), CliError> {
    let preset = Preset::by_name(model.unwrap_or("paper-100m"))
        .map_err(|e| super::shared::usage("bench matmul", e))?;
    let mut cfg = preset.config();
    let b = batch.unwrap_or(preset.default_batch);
    let t = seq.unwrap_or(preset.seq_len);
    cfg.ffn_dim = ffn.unwrap_or(cfg.ffn_dim);
    cfg.seq_len = t;
    let products = step_products(&cfg, b, t).map_err(|e| failed("the step", e))?;
    let w = name_width(&products);
    if !json {
        println!(
            "bench matmul: model {} B={b} T={t}: {} products",
            preset.name,
            products.len()
        );
        println!(
            "{:<w$} {:>6} {:>6} {:>6} {:>5} {:>3} {:>5}",
            "product", "M", "N", "K", "batch", "lay", "count"
        );
    }
    for p in &products {
        let g = &p.gemm;
        if json {
            println!("{}", list_line(preset.name, p));
        } else {
            println!(
                "{:<w$} {:>6} {:>6} {:>6} {:>5} {:>3} {:>5}",
                p.name,
                g.m,
                g.n,
                g.k,
                g.batch,
                g.layout.name(),
                p.count
            );
        }
    }
    Ok(())
}

/// Runs `frugal bench matmul` with its flags.
pub fn run(flags: MatmulFlags) -> Result<(), CliError> {
    check_flags(&flags)?;
    counters::check_device("bench matmul", flags.counters, flags.device)?;
    let compare = match &flags.compare {
        Some(path) => Some(read_compare_file(path)?),
        None => None,
    };
    if flags.list {
        return list_products(
            flags.model.as_deref(),
            flags.batch,
            flags.seq,
            flags.ffn,
            flags.json,
        );
    }
    let (dev, note) = open_device(flags.device)?;
    if flags.autotune && dev.backend() != Backend::Cuda {
        return Err(CliError::AutotuneNeedsGpu {
            backend: dev.backend().as_str(),
        });
    }
    let bench = Bench::resolve(&flags, dev, compare)?;
    bench.print_header(note);
    let mut totals = Totals::default();
    let mut rules = Vec::new();
    for p in &bench.products {
        let (rows, best) = bench.time_product(p, flags.variants || flags.autotune)?;
        bench.report_product(p, &rows, best, &mut totals);
        if flags.autotune {
            rules.push(bench.table_rule(p, rows[best].choice));
        }
    }
    bench.print_summary(&totals);
    if flags.autotune {
        bench.write_table(flags.out.as_deref(), &rules)?;
    }
    Ok(())
}

/// Refuses sizes of 0 or beyond [`MAX_DIM`], and `--out` without `--autotune`.
fn check_flags(flags: &MatmulFlags) -> Result<(), CliError> {
    let usage = |m: String| super::shared::usage("bench matmul", m);
    for (name, v) in [
        ("batch", flags.batch),
        ("seq", flags.seq),
        ("iters", flags.iters),
        ("ffn", flags.ffn),
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
    if flags.out.is_some() && !flags.autotune {
        return Err(usage(
            "--out is where --autotune writes; add --autotune".into(),
        ));
    }
    Ok(())
}

/// The measured products of the `--compare` file at `path`.
fn read_compare_file(path: &str) -> Result<Vec<Measured>, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| failed(&format!("--compare {path}"), e))?;
    read_compare(path, &text)
}

/// Opens `device` (cuda or emu; auto falls back to the emulator with a note saying so).
fn open_device(device: DeviceSpec) -> Result<(Device, Option<String>), CliError> {
    let spec = kernel_device("bench matmul", device)?;
    match (spec, Device::open(spec)) {
        (_, Ok(d)) if d.backend() != Backend::Cpu => Ok((d, None)),
        (DeviceSpec::Auto, _) => Ok((
            Device::open(DeviceSpec::Emu).map_err(|e| failed("open", e))?,
            Some("device auto: no usable GPU; using the emulator".to_string()),
        )),
        (_, Ok(_)) => Err(super::shared::usage(
            "bench matmul",
            "this benchmark needs cuda or emu".to_string(),
        )),
        (_, Err(e)) => Err(failed("open", e)),
    }
}

/// A timed run: the device, the flags with the device's defaults filled in, and the
/// products of the step they give.
struct Bench {
    dev: Device,
    /// The architecture the dispatcher picks for.
    arch: u32,
    emulated: bool,
    json: bool,
    /// `--counters`: count one more launch of each pick.
    counters: bool,
    /// `--tma`: the TMA dispatch's pick (wgmma on sm_90).
    tma: bool,
    preset: &'static Preset,
    cfg: Config,
    b: usize,
    t: usize,
    iters: usize,
    warmup: usize,
    products: Vec<Product>,
    /// The width of the product column.
    width: usize,
    compare: Option<Vec<Measured>>,
}

/// The FLOP-weighted sums over the products' picks that the summary reports.
#[derive(Default)]
struct Totals {
    /// FLOP per step.
    flops: f64,
    /// Microseconds per step.
    us: f64,
    /// FLOP per step of the products the `--compare` file also measured.
    cmp_flops: f64,
    /// Our microseconds per step on those products.
    cmp_ours: f64,
    /// The other run's microseconds per step on those products.
    cmp_theirs: f64,
    /// Products whose pick is a register-staged kernel.
    staged: usize,
}

impl Bench {
    /// Fills in the defaults of `flags` for `dev` (a GPU's, or the emulator's small
    /// ones) and lists the step's products.
    fn resolve(
        flags: &MatmulFlags,
        dev: Device,
        compare: Option<Vec<Measured>>,
    ) -> Result<Bench, CliError> {
        let emulated = dev.backend() == Backend::Emu;
        // The emulator runs the sm_80 code path (it implements mma.sync, ldmatrix, cp.async).
        let arch = dev.facts().map_or(80, |f| f.sm);
        // --tma on the emulator plans for sm_90 (it runs wgmma and TMA too).
        let arch = if flags.tma && emulated { 90 } else { arch };
        let preset = match &flags.model {
            Some(m) => m.as_str(),
            None if emulated => "tiny",
            None => "paper-100m",
        };
        let preset = Preset::by_name(preset)
            .map_err(|e| super::shared::usage("bench matmul", e.to_string()))?;
        let b = flags
            .batch
            .unwrap_or(if emulated { 1 } else { preset.default_batch });
        let t = flags
            .seq
            .unwrap_or(if emulated { 32 } else { preset.seq_len });
        let iters = flags.iters.unwrap_or(if emulated { 1 } else { 20 });
        let warmup = flags.warmup.unwrap_or(if emulated { 0 } else { 3 });
        let mut cfg = preset.config();
        cfg.ffn_dim = flags.ffn.unwrap_or(cfg.ffn_dim);
        cfg.seq_len = t;
        let products = step_products(&cfg, b, t).map_err(|e| failed("the step", e))?;
        Ok(Bench {
            dev,
            arch,
            emulated,
            json: flags.json,
            counters: flags.counters,
            tma: flags.tma,
            preset,
            cfg,
            b,
            t,
            iters,
            warmup,
            width: name_width(&products),
            products,
            compare,
        })
    }

    /// One line of the human report: with --json, stdout carries only JSON lines and
    /// the report goes to stderr.
    fn say(&self, line: String) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    /// The device's note, the run's settings, the emulator's warning and the column heads.
    fn print_header(&self, note: Option<String>) {
        let (cfg, arch, b, t) = (&self.cfg, self.arch, self.b, self.t);
        let (iters, warmup) = (self.iters, self.warmup);
        let (f, hs) = (cfg.ffn_dim, cfg.head_dim());
        if let Some(n) = note {
            self.say(n);
        }
        self.say(format!(
            "bench matmul: {}; model {} (B={b} T={t} C={} NH={} HS={hs} F={f} V={} L={}), sm_{arch} \
             dispatch; {iters} timed launch(es) after {warmup} warm-up; timing: {}",
            self.dev.name(),
            self.preset.name,
            cfg.dim,
            cfg.n_heads,
            cfg.vocab_size,
            cfg.n_layers,
            self.dev.timing_source().label()
        ));
        if self.emulated {
            self.say(
                "EMULATED: times and TFLOP/s below measure the PTX emulator on the host; they are \
                 meaningless for GPU speed (this run checks shapes, dispatch and launches)"
                    .to_string(),
            );
        }
        let w = self.width;
        let tf_head = if self.emulated {
            "TFLOP/s(EMU)"
        } else {
            "TFLOP/s"
        };
        let cmp_head = if self.compare.is_some() {
            format!(" {:>12} {:>7}", "other us", "ratio")
        } else {
            String::new()
        };
        self.say(format!(
            "{:<w$} {:>6} {:>6} {:>6} {:>5} {:>3} {:<38} {:>5} {:>5} {:>12} {:>12}{cmp_head}",
            "product",
            "M",
            "N",
            "K",
            "batch",
            "lay",
            "kernel",
            "split",
            "count",
            "us/launch",
            tf_head
        ));
    }

    /// Times the dispatcher's pick for `p` and, with `all_variants`, every other
    /// candidate; returns the rows (the pick first) and the index of the fastest.
    fn time_product(&self, p: &Product, all_variants: bool) -> Result<(Vec<Row>, usize), CliError> {
        let (dev, arch, g) = (&self.dev, self.arch, &p.gemm);
        // Buffers are 256-byte aligned, so the operands' alignment is their strides'.
        let align = g.alignment(0, 0);
        let others = if all_variants {
            candidates(arch, g, align)
        } else {
            Vec::new()
        };
        let workspace = others
            .iter()
            .chain([&matmul::choose(arch, g, align)])
            .map(|c| matmul::workspace_bytes(c, g))
            .max()
            .unwrap_or(0);
        let ops = operands(dev, g, workspace)?;
        let wgmma = if self.tma {
            let at = [ops.a.ptr(), ops.b.ptr(), ops.c.ptr()];
            super::matmul_tma::time_wgmma(dev, arch, g, at, self.iters, self.warmup, &p.name)?
        } else {
            None
        };
        let mut picked = match wgmma {
            Some((choice, kernel, us)) => Row {
                kernel,
                choice,
                us,
                counters: None,
            },
            None => measure(dev, arch, p, &ops, None, self.iters, self.warmup)?,
        };
        if self.counters {
            let (_, launches) = plan(arch, g, &ops, Some(picked.choice), &p.name)?;
            let c = counters::count("bench matmul", dev, &launches)?;
            picked.counters = Some(Summary::of(&c));
        }
        let mut rows = vec![picked];
        for choice in others {
            if choice != rows[0].choice {
                rows.push(measure(
                    dev,
                    arch,
                    p,
                    &ops,
                    Some(choice),
                    self.iters,
                    self.warmup,
                )?);
            }
        }
        let best = rows
            .iter()
            .enumerate()
            .min_by(|x, y| x.1.us.total_cmp(&y.1.us))
            .map_or(0, |(i, _)| i);
        Ok((rows, best))
    }

    /// Prints `p`'s rows (the pick, then its variants, marked pick and fastest), its
    /// JSON line, and adds the pick to `totals`.
    fn report_product(&self, p: &Product, rows: &[Row], best: usize, totals: &mut Totals) {
        let (g, w) = (&p.gemm, self.width);
        for (i, row) in rows.iter().enumerate() {
            let tflops = g.flops() / (row.us * 1e-6) / 1e12;
            let split = row.choice.split_k.unwrap_or(1);
            let mark = match (rows.len() > 1, i == 0, i == best) {
                (true, true, true) => " (pick, fastest)",
                (true, true, false) => " (pick)",
                (true, false, true) => " (fastest)",
                _ => "",
            };
            let theirs = self
                .compare
                .as_ref()
                .and_then(|c| c.iter().find(|x| x.is(p)).map(|x| x.us));
            let cmp = match (&self.compare, theirs) {
                (None, _) => String::new(),
                (Some(_), Some(t)) => format!(" {t:>12.3} {:>7.3}", t / row.us),
                (Some(_), None) => format!(" {:>12} {:>7}", "-", "-"),
            };
            let name = if i == 0 {
                p.name.clone()
            } else {
                format!("  {}", variant_name(&row.choice))
            };
            self.say(format!(
                "{:<w$} {:>6} {:>6} {:>6} {:>5} {:>3} {:<38} {:>5} {:>5} {:>12.3} {:>12.3e}{cmp}{mark}",
                name,
                g.m,
                g.n,
                g.k,
                g.batch,
                g.layout.name(),
                row.kernel,
                split,
                p.count,
                row.us,
                tflops
            ));
            if i == 0 {
                if let Some(c) = &row.counters {
                    self.say(format!("{:<w$} {}", "", c.text()));
                }
                if self.json {
                    let line = json_line(
                        self.preset.name,
                        p,
                        row.kernel,
                        split,
                        row.us,
                        self.emulated,
                    );
                    println!("{}", with_counters(line, row.counters.as_ref()));
                }
                totals.flops += g.flops() * p.count as f64;
                totals.us += row.us * p.count as f64;
                if let Some(t) = theirs {
                    totals.cmp_flops += g.flops() * p.count as f64;
                    totals.cmp_ours += row.us * p.count as f64;
                    totals.cmp_theirs += t * p.count as f64;
                }
                if matches!(row.choice.kernel, KernelKind::MmaSync(c) if c.staged()) {
                    totals.staged += 1;
                }
            }
        }
    }

    /// The dispatch table's rule for exactly `p`'s shape on this architecture.
    fn table_rule(&self, p: &Product, choice: Choice) -> TableRule {
        let g = &p.gemm;
        TableRule {
            arch: ArchMatch::Exactly(self.arch),
            layout: Some(g.layout),
            m: SizeRange::exactly(g.m),
            n: SizeRange::exactly(g.n),
            k: SizeRange::exactly(g.k),
            // Buffers are 256-byte aligned, so the operands' alignment is their strides'.
            min_alignment: g.alignment(0, 0),
            choice,
        }
    }

    /// The FLOP-weighted total, the comparison with the other run and the JSON summary.
    fn print_summary(&self, totals: &Totals) {
        let (arch, products, emulated) = (self.arch, &self.products, self.emulated);
        let (flops, us, staged) = (totals.flops, totals.us, totals.staged);
        let simt = products
            .iter()
            .filter(|p| {
                let g = &p.gemm;
                // Buffers are 256-byte aligned, so the operands' alignment is their strides'.
                matmul::select(arch, g.layout, g.m, g.n, g.k, g.alignment(0, 0)).kernel
                    == KernelKind::Simt
            })
            .count();
        let total_tflops = flops / (us * 1e-6) / 1e12;
        self.say(format!(
            "total: {:.3e} FLOP per step in {:.3} ms of matmul: {:.3e} TFLOP/s{} (FLOP-weighted); \
             {simt} of {} shapes on the SIMT fallback, {staged} on the register-staged kernels",
            flops,
            us * 1e-3,
            total_tflops,
            if emulated { " EMULATED" } else { "" },
            products.len()
        ));
        if self.compare.is_some() {
            let (cmp_flops, cmp_ours, cmp_theirs) =
                (totals.cmp_flops, totals.cmp_ours, totals.cmp_theirs);
            if cmp_ours > 0.0 {
                self.say(format!(
                    "compare: on the {:.3e} FLOP found in both: ours {:.3e} TFLOP/s, other {:.3e} \
                     TFLOP/s, ratio {:.3} (FLOP-weighted; > 1 = ours faster)",
                    cmp_flops,
                    cmp_flops / (cmp_ours * 1e-6) / 1e12,
                    cmp_flops / (cmp_theirs * 1e-6) / 1e12,
                    cmp_theirs / cmp_ours
                ));
            } else {
                self.say("compare: no product of this run is in the --compare file".to_string());
            }
        }
        if self.json {
            println!(
                "{{\"bench\":\"matmul\",\"summary\":true,\"model\":{},\"kernel\":\"frugal\",\"flops\":{flops},\
                 \"us\":{},\"tflops\":{},\"emulated\":{emulated}}}",
                json_str(self.preset.name),
                json_num(us),
                json_num(total_tflops)
            );
        }
    }

    /// `--autotune`: merges `rules` into the dispatch table at `out` (default
    /// [`TABLE_PATH`]).
    fn write_table(&self, out: Option<&str>, rules: &[TableRule]) -> Result<(), CliError> {
        let path = out.unwrap_or(TABLE_PATH);
        let existing = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(failed(&format!("read {path}"), e)),
        };
        let text = table::merge(&existing, rules)
            .map_err(|e| failed(&format!("{path} is not a valid dispatch table"), e))?;
        std::fs::write(path, text).map_err(|e| {
            failed(
                &format!("write {path} (run from the repository root, or pass --out FILE)"),
                e,
            )
        })?;
        self.say(format!(
            "autotune: wrote {} rule(s) for sm_{} to {path}; rebuild to embed them",
            rules.len(),
            self.arch
        ));
        Ok(())
    }
}

#[cfg(test)]
#[path = "matmul_tests.rs"]
mod tests;
