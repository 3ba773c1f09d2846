//! `frugal bench matmul`: every matmul of one training step at its real shapes, through
//! the dispatcher (`frugal_ptx::matmul::plan`) and the runtime's launch path.
//!
//! Products per layer (N = B*T tokens, W (C_out, C_in)): for each linear (QKV: C -> 3C, the
//! attention output C -> C, the SwiGLU gate and up C -> F, down F -> C) its forward
//! `Y = X W^T` (Nt), input gradient `dX = dY W` (Nn) and weight gradient `dW += dY^T X` (Tn,
//! fp32, accumulate); the vanilla attention's batched products over B*NH matrices of
//! (T, HS): S = Q K^T, O = P V, dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q; once per
//! step the LM head's three products with C_out = V. Each row is launched `count` times per
//! step (L for per-layer products).
//!
//! Per row: microseconds per launch from device timing (events on `cuda`, after warm-up and
//! a synchronise) and TFLOP/s = 2*M*N*K*batch / time; the total is FLOP-weighted:
//! sum(count * flops) / sum(count * time). On the emulator every figure is host emulation
//! speed, labelled EMULATED: the run checks the shapes, dispatch and launches, not speed.

use crate::args::{Args, UsageError};
use crate::CliError;
use frugal_model::config::Preset;
use frugal_model::rng::Rng;
use frugal_ptx::kernels::Arg;
use frugal_ptx::matmul::{self, Epilogue, Gemm, KernelKind, Layout, OutType};
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::device::{Backend, Device, DeviceSpec};
use frugal_runtime::launch::KernelArg;
use half::bf16;

const USAGE: &str = "\
usage: frugal bench matmul [--device auto|cuda[:N]|emu] [--model PRESET] [--batch B] [--seq T]
                           [--iters N] [--warmup N]

Times every matmul of one training step of the preset (forward, input and weight gradients
of each linear, the LM head, the vanilla attention's batched products) through the
dispatcher, and reports TFLOP/s per shape and the FLOP-weighted total.
  --device D    auto (a CUDA GPU if there is one, else the emulator), cuda[:N] or emu
  --model NAME  preset (default paper-100m on a GPU, tiny on the emulator)
  --batch B     sequences per step (default: the preset's on a GPU, 1 on the emulator)
  --seq T       tokens per sequence (default: the preset's on a GPU, 32 on the emulator)
  --iters N     timed launches per shape (default 20 on a GPU, 1 on the emulator)
  --warmup N    untimed launches first (default 3 on a GPU, 0 on the emulator)
On the emulator every time and TFLOP/s is the host's emulation speed, not a GPU's.";

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

/// Every matmul of one step of a model with hidden size `c`, `nh` heads of `hs`, FFN width
/// `f`, vocabulary `v`, `l` layers, `b` sequences of `t` tokens.
#[allow(clippy::too_many_arguments)]
pub fn step_products(
    c: usize,
    nh: usize,
    hs: usize,
    f: usize,
    v: usize,
    l: usize,
    b: usize,
    t: usize,
) -> Vec<Product> {
    let n = b * t;
    let mut out = Vec::new();
    let mut linear = |name: &str, c_in: usize, c_out: usize, count: usize| {
        out.push(Product {
            name: format!("{name} fwd"),
            gemm: Gemm::dense(Layout::Nt, OutType::Bf16, n, c_out, c_in),
            count,
        });
        out.push(Product {
            name: format!("{name} dX"),
            gemm: Gemm::dense(Layout::Nn, OutType::Bf16, n, c_in, c_out),
            count,
        });
        out.push(Product {
            name: format!("{name} dW"),
            gemm: Gemm::dense(Layout::Tn, OutType::F32, c_out, c_in, n)
                .with_epilogue(Epilogue::Accumulate, 1.0),
            count,
        });
    };
    linear("qkv", c, 3 * nh * hs, l);
    linear("attn_out", nh * hs, c, l);
    linear("ffn_gate", c, f, l);
    linear("ffn_up", c, f, l);
    linear("ffn_down", f, c, l);
    linear("lm_head", c, v, 1);
    let heads = b * nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let attn = |name: &str, layout: Layout, m: usize, nn: usize, k: usize, alpha: f32| Product {
        name: name.to_string(),
        gemm: Gemm::dense(layout, OutType::Bf16, m, nn, k)
            .with_epilogue(Epilogue::Overwrite, alpha)
            .batched(heads),
        count: l,
    };
    out.push(attn("attn S=QK^T", Layout::Nt, t, t, hs, scale));
    out.push(attn("attn O=PV", Layout::Nn, t, hs, t, 1.0));
    out.push(attn("attn dP=dO V^T", Layout::Nt, t, t, hs, 1.0));
    out.push(attn("attn dV=P^T dO", Layout::Tn, t, hs, t, 1.0));
    out.push(attn("attn dQ=dS K", Layout::Nn, t, hs, t, scale));
    out.push(attn("attn dK=dS^T Q", Layout::Tn, t, hs, t, scale));
    out
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("bench matmul: {what}: {e}"))
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

/// One measured product.
struct Row {
    kernel: &'static str,
    us: f64,
}

fn measure(
    dev: &Device,
    arch: u32,
    p: &Product,
    iters: usize,
    warmup: usize,
) -> Result<Row, CliError> {
    let g = &p.gemm;
    let mut rng = Rng::new(0x6d61_746d_756c);
    let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
    let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
    let a = buffer(dev, &mut rng, "a", a_len, OutType::Bf16)?;
    let b = buffer(dev, &mut rng, "b", b_len, OutType::Bf16)?;
    let c = buffer(dev, &mut rng, "c", g.c_elements(), g.out)?;
    let (_, launch) =
        matmul::plan(arch, g, a.ptr(), b.ptr(), c.ptr()).map_err(|e| failed(&p.name, e))?;
    let args: Vec<KernelArg> = launch
        .args
        .iter()
        .map(|&x| match x {
            Arg::Ptr(v) => KernelArg::Ptr(v),
            Arg::U32(v) => KernelArg::U32(v),
            Arg::U64(v) => KernelArg::U64(v),
            Arg::F32(v) => KernelArg::F32(v),
        })
        .collect();
    let run = || {
        dev.launch(launch.kernel, &launch.dims, &args)
            .map_err(|e| failed(&p.name, e))
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
        kernel: launch.kernel,
        us: ms * 1e3 / iters.max(1) as f64,
    })
}

/// Runs `frugal bench matmul` with its flags.
pub fn run(mut args: Args) -> Result<(), CliError> {
    if args.wants_help() {
        println!("{USAGE}");
        return Ok(());
    }
    let device = args.string("device")?.unwrap_or_else(|| "auto".into());
    let model: Option<String> = args.string("model")?;
    let batch: Option<usize> = args.value("batch")?;
    let seq: Option<usize> = args.value("seq")?;
    let iters: Option<usize> = args.value("iters")?;
    let warmup: Option<usize> = args.value("warmup")?;
    args.finish()?;
    let usage = |m: String| CliError::Usage(UsageError(format!("bench matmul: {m}\n{USAGE}")));
    for (name, v) in [("batch", batch), ("seq", seq), ("iters", iters)] {
        if v == Some(0) {
            return Err(usage(format!("--{name} must be at least 1")));
        }
    }
    let spec: DeviceSpec = device.parse().map_err(|e| usage(format!("{e}")))?;
    if spec == DeviceSpec::Cpu {
        return Err(usage(
            "--device cpu has no PTX kernels to time; use cuda or emu".into(),
        ));
    }
    let (dev, note) = match (spec, Device::open(spec)) {
        (_, Ok(d)) if d.backend() != Backend::Cpu => (d, None),
        (DeviceSpec::Auto, _) => (
            Device::open(DeviceSpec::Emu).map_err(|e| failed("open", e))?,
            Some("device auto: no usable GPU; using the emulator".to_string()),
        ),
        (_, Ok(_)) => return Err(usage("this benchmark needs cuda or emu".into())),
        (_, Err(e)) => return Err(failed("open", e)),
    };
    let emulated = dev.backend() == Backend::Emu;
    // The emulator runs the sm_80 code path (it implements mma.sync, ldmatrix, cp.async).
    let arch = dev.facts().map_or(80, |f| f.sm);
    let preset = match &model {
        Some(m) => m.as_str(),
        None if emulated => "tiny",
        None => "paper-100m",
    };
    let preset = Preset::by_name(preset).map_err(|e| usage(e.to_string()))?;
    let cfg = preset.config();
    let b = batch.unwrap_or(if emulated { 1 } else { preset.default_batch });
    let t = seq.unwrap_or(if emulated { 32 } else { preset.seq_len });
    let iters = iters.unwrap_or(if emulated { 1 } else { 20 });
    let warmup = warmup.unwrap_or(if emulated { 0 } else { 3 });
    let hs = cfg.head_dim();
    let products = step_products(
        cfg.dim,
        cfg.n_heads,
        hs,
        cfg.ffn_dim,
        cfg.vocab_size,
        cfg.n_layers,
        b,
        t,
    );
    if let Some(n) = note {
        println!("{n}");
    }
    println!(
        "bench matmul: {}; model {} (B={b} T={t} C={} NH={} HS={hs} F={} V={} L={}), sm_{arch} \
         dispatch; {iters} timed launch(es) after {warmup} warm-up; timing: {}",
        dev.name(),
        preset.name,
        cfg.dim,
        cfg.n_heads,
        cfg.ffn_dim,
        cfg.vocab_size,
        cfg.n_layers,
        dev.timing_source().label()
    );
    if emulated {
        println!(
            "EMULATED: times and TFLOP/s below measure the PTX emulator on the host; they are \
             meaningless for GPU speed (this run checks shapes, dispatch and launches)"
        );
    }
    let tf_head = if emulated { "TFLOP/s(EMU)" } else { "TFLOP/s" };
    println!(
        "{:<18} {:>6} {:>6} {:>6} {:>5} {:>3} {:<34} {:>5} {:>12} {:>12}",
        "product", "M", "N", "K", "batch", "lay", "kernel", "count", "us/launch", tf_head
    );
    let (mut flops, mut us) = (0f64, 0f64);
    for p in &products {
        let row = measure(&dev, arch, p, iters, warmup)?;
        let g = &p.gemm;
        let tflops = g.flops() / (row.us * 1e-6) / 1e12;
        println!(
            "{:<18} {:>6} {:>6} {:>6} {:>5} {:>3} {:<34} {:>5} {:>12.3} {:>12.3e}",
            p.name,
            g.m,
            g.n,
            g.k,
            g.batch,
            g.layout.name(),
            row.kernel,
            p.count,
            row.us,
            tflops
        );
        flops += g.flops() * p.count as f64;
        us += row.us * p.count as f64;
    }
    let simt = products
        .iter()
        .filter(|p| {
            let g = &p.gemm;
            // Buffers are 256-byte aligned, so the operands' alignment is their strides'.
            matmul::select(arch, g.layout, g.m, g.n, g.k, g.alignment(0, 0)).kernel
                == KernelKind::Simt
        })
        .count();
    println!(
        "total: {:.3e} FLOP per step in {:.3} ms of matmul: {:.3e} TFLOP/s{} (FLOP-weighted); \
         {simt} of {} shapes on the SIMT fallback",
        flops,
        us * 1e-3,
        flops / (us * 1e-6) / 1e12,
        if emulated { " EMULATED" } else { "" },
        products.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_products_cover_every_linear_and_count_flops() {
        let (c, nh, hs, f, v, l, b, t) = (832, 13, 64, 2332, 32000, 9, 2, 16);
        let ps = step_products(c, nh, hs, f, v, l, b, t);
        // 6 linears x 3 products + 6 attention products.
        assert_eq!(ps.len(), 24);
        let n = b * t;
        // Linear FLOPs per step: 3 products x 2*N*C_in*C_out each, L times per layer.
        let per_layer = (c * 3 * c + c * c + 2 * c * f + f * c) as f64;
        let want = 3.0 * 2.0 * n as f64 * (per_layer * l as f64 + (c * v) as f64);
        let got: f64 = ps
            .iter()
            .filter(|p| !p.name.starts_with("attn "))
            .map(|p| p.gemm.flops() * p.count as f64)
            .sum();
        assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        assert!(ps
            .iter()
            .filter(|p| p.name.ends_with(" dW"))
            .all(|p| p.gemm.epilogue == Epilogue::Accumulate && p.gemm.out == OutType::F32));
    }
}
