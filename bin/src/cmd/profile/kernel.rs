//! `frugal profile --kernel NAME --shape DIMS`: one kernel (or one op's launches) at a
//! shape, instead of a whole step. The buffers and launches are the benchmarks' own
//! (`bench matmul`'s dispatcher pick, `bench attention`'s flash launches, `bench
//! kernels`' cases), run once on the emulated GPU with counters on; the prediction is
//! the step profile's (`predict::rows`). Every time it prints is PREDICTED.

use std::time::Instant;

use frugal_model::config::Attention;
use frugal_ptx::emu::{Checks, MmaNumerics, Profiling};
use frugal_ptx::error::PtxError;
use frugal_ptx::flash::{wgmma_fwd, AttnShape, DqMode, FlashFwd};
use frugal_ptx::kernels::Launch;
use frugal_ptx::matmul::wgmma::{self, dispatch::select_tma};
use frugal_ptx::matmul::{Epilogue, Gemm, KernelKind, Layout, OutType, TileConfig};
use frugal_ptx::tensor_map::TensorMap;
use frugal_runtime::device::emu::{EmuDevice, LaunchRecord};
use frugal_runtime::device::Device;
use frugal_runtime::tensor_map::encode_tensor_map;

use frugal_runtime::facts::{DeviceFacts, Roofline};

use super::predict::{self, Calibration, DramEstimate, Row};
use crate::cmd::bench::attention::{self, Pass};
use crate::cmd::bench::case_words::VOCABULARY;
use crate::cmd::bench::kernels::{self, Case};
use crate::cmd::bench::matmul;
use crate::error::{CliError, Context};
use crate::train::options::MAX_DIM;

/// What `--kernel` names with `--shape`.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// The dispatcher's pick (split-K included) for the product.
    Matmul(Gemm),
    /// FlashAttention's forward (FA-2's, or from sm_90 the wgmma forward the step runs for
    /// head sizes 64 and 128), or FA-2's backward launches (the forward runs first,
    /// uncounted, to give them their inputs).
    Flash { shape: AttnShape, backward: bool },
    /// One `bench kernels` case.
    Case(Case),
}

/// The `--kernel` words with their `--shape`, for help and errors.
pub fn known() -> String {
    let mut words = vec![
        "matmul (M,N,K; --layout nt|nn|tn, --out-type bf16|f32, --accumulate)".to_string(),
        "flash-fwd (B,NH,T,HS[,NKV])".to_string(),
        "flash-bwd (B,NH,T,HS[,NKV]; --attention-dq)".to_string(),
    ];
    words.extend(VOCABULARY.iter().map(|(w, shape)| format!("{w} ({shape})")));
    words.join(", ")
}

fn usage(message: String) -> CliError {
    CliError::usage_with_help("profile", format!("profile: {message}"))
}

/// The largest one-number shape (a length or a parameter count: AdamW over a model's
/// parameters): 2^32 elements, whose buffers still have sizes a `usize` holds.
const MAX_LEN: usize = 1 << 32;

/// `--shape`'s numbers: a comma list of positive integers up to [`MAX_DIM`] each (up to
/// [`MAX_LEN`] for a one-number shape), so that no product of them overflows.
fn dims(shape: &str) -> Result<Vec<usize>, CliError> {
    let words: Vec<&str> = shape.split(',').collect();
    let max = if words.len() == 1 { MAX_LEN } else { MAX_DIM };
    words
        .iter()
        .map(|w| match w.trim().parse::<usize>() {
            Ok(n) if n > 0 && n <= max => Ok(n),
            _ => Err(usage(format!(
                "--shape '{shape}': '{w}' is not a number from 1 to {max}"
            ))),
        })
        .collect()
}

/// Matmul-only options of `--kernel matmul`.
#[derive(Clone, Debug, Default)]
pub struct MatmulWords {
    pub layout: Option<String>,
    pub out_type: Option<String>,
    pub accumulate: bool,
}

impl MatmulWords {
    fn given(&self) -> bool {
        self.layout.is_some() || self.out_type.is_some() || self.accumulate
    }
}

/// The target `--kernel name --shape shape` names.
///
/// # Errors
/// Usage errors: an unknown kernel (listing the known ones), a shape of the wrong
/// arity or with a zero, matmul options on another kernel.
pub fn parse(name: &str, shape: &str, mm: &MatmulWords) -> Result<Target, CliError> {
    let d = dims(shape)?;
    let arity = |want: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(usage(format!(
                "--kernel {name} takes --shape {want}, not '{shape}'"
            )))
        }
    };
    let name = name.trim().to_ascii_lowercase().replace('_', "-");
    if name != "matmul" && mm.given() {
        return Err(usage(format!(
            "--layout, --out-type and --accumulate are options of --kernel matmul, not {name}"
        )));
    }
    match name.as_str() {
        "matmul" => {
            arity("M,N,K", d.len() == 3)?;
            let layout = match mm.layout.as_deref().unwrap_or("nt") {
                "nt" => Layout::Nt,
                "nn" => Layout::Nn,
                "tn" => Layout::Tn,
                other => return Err(usage(format!("--layout '{other}': use nt, nn or tn"))),
            };
            let out = match mm.out_type.as_deref().unwrap_or("bf16") {
                "bf16" => OutType::Bf16,
                "f32" => OutType::F32,
                other => return Err(usage(format!("--out-type '{other}': use bf16 or f32"))),
            };
            let mut g = Gemm::dense(layout, out, d[0], d[1], d[2]);
            if mm.accumulate {
                g = g.with_epilogue(Epilogue::Accumulate, 1.0);
            }
            Ok(Target::Matmul(g))
        }
        "flash-fwd" | "flash-bwd" => {
            arity("B,NH,T,HS[,NKV]", d.len() == 4 || d.len() == 5)?;
            let (b, nh, t, hs) = (d[0], d[1], d[2], d[3]);
            let nkv = d.get(4).copied().unwrap_or(nh);
            if !nh.is_multiple_of(nkv) {
                return Err(usage(format!("--shape: NKV {nkv} must divide NH {nh}")));
            }
            if hs != 64 && hs != 128 {
                return Err(usage(format!(
                    "--shape: flash attention's HS is 64 or 128, not {hs}"
                )));
            }
            Ok(Target::Flash {
                shape: AttnShape { b, t, nh, nkv, hs },
                backward: name == "flash-bwd",
            })
        }
        other => match Case::from_words(other, &d) {
            Some(Ok(case)) => Ok(Target::Case(case)),
            Some(Err(why)) => Err(usage(why)),
            None => Err(usage(format!(
                "--kernel '{name}' is not a kernel profile knows; known: {}",
                known()
            ))),
        },
    }
}

impl Target {
    /// What the report says was profiled.
    pub fn describe(&self) -> String {
        match self {
            Target::Matmul(g) => format!(
                "matmul M={} N={} K={} layout {} out {} {}",
                g.m,
                g.n,
                g.k,
                g.layout.name(),
                g.out.suffix(),
                match g.epilogue {
                    Epilogue::Overwrite => "overwrite",
                    Epilogue::Accumulate => "accumulate",
                }
            ),
            Target::Flash { shape: s, backward } => format!(
                "flash attention {} B={} NH={} NKV={} T={} HS={} (causal)",
                if *backward { "backward" } else { "forward" },
                s.b,
                s.nh,
                s.nkv,
                s.t,
                s.hs
            ),
            Target::Case(c) => {
                let (w, shape) = c.profile_words();
                format!("{w} {shape}")
            }
        }
    }

    /// The FLOPs the op does by its own count (2·M·N·K for a matmul; FlashAttention's
    /// count for attention, as `bench attention`); `None` for the memory-bound kernels.
    pub fn flops(&self) -> Option<f64> {
        match self {
            Target::Matmul(g) => Some(g.flops()),
            Target::Flash { shape, backward } => {
                let fwd = attention::flops(*shape, Pass::Forward);
                Some(if *backward { 2.5 * fwd } else { fwd })
            }
            Target::Case(_) => None,
        }
    }
}

/// The counted launches of one target and how long emulating them took.
pub struct Profiled {
    pub records: Vec<LaunchRecord>,
    pub emulation_s: f64,
}

fn launch_failed(what: String, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CliError {
    CliError::Bench {
        bench: "profile",
        what: Some(what),
        source: e.into(),
    }
}

/// Runs `target` once on a fresh emulated GPU with counting on, `sample` CTAs per launch,
/// with the kernels a GPU of compute capability `arch` runs (from sm_90 a matmul's pick is
/// the TMA dispatch's, `select_tma`: the wgmma kernel where it applies).
pub fn profile(
    target: &Target,
    sample: Option<u32>,
    dq: DqMode,
    arch: u32,
) -> Result<Profiled, CliError> {
    // As the step profile: sanitizer off, the tensor cores' numerics as FRUGAL_EMU_MMA says.
    let checks = Checks {
        mma: MmaNumerics::from_env().map_err(|e| usage(e.to_string()))?,
        ..Checks::none()
    };
    let emu = EmuDevice::with_checks(checks).context("opening the emulated device")?;
    let dev = Device::Emu(emu);
    let Device::Emu(emu) = &dev else {
        return Err(usage("the profile is not on the emulated device".into()));
    };
    let what = target.describe();
    let run = |list: &[Launch]| -> Result<Vec<LaunchRecord>, CliError> {
        emu.set_profiling(Profiling {
            count: true,
            sample_ctas: sample,
        });
        for l in list {
            dev.run(l).map_err(|e| launch_failed(what.clone(), e))?;
        }
        Ok(emu.take_launch_records())
    };
    let started = Instant::now();
    let records = match target {
        Target::Matmul(g) if wgmma_pick(arch, g).is_some() => {
            emu.set_profiling(Profiling {
                count: true,
                sample_ctas: sample,
            });
            run_wgmma(&dev, arch, g, &what)?;
            emu.take_launch_records()
        }
        Target::Matmul(g) => {
            let ops = matmul::operands(&dev, g, matmul::pick_workspace(arch, g))?;
            let (_, list) = matmul::plan(arch, g, &ops, None, &what)?;
            run(&list)?
        }
        Target::Flash {
            shape,
            backward: false,
        } if wgmma_fwd_applies(arch, *shape) => {
            emu.set_profiling(Profiling {
                count: true,
                sample_ctas: sample,
            });
            run_wgmma_fwd(&dev, *shape, &what)?;
            emu.take_launch_records()
        }
        Target::Flash { shape, backward } => {
            let ops = attention::operands(&dev, *shape, &[Attention::Flash], dq)?;
            let fwd = attention::launches(arch, *shape, &ops, Attention::Flash, Pass::Forward, dq)?;
            let counted = run(&fwd)?;
            if *backward {
                let both = attention::launches(
                    arch,
                    *shape,
                    &ops,
                    Attention::Flash,
                    Pass::ForwardBackward,
                    dq,
                )?;
                run(both.get(fwd.len()..).unwrap_or_default())?
            } else {
                counted
            }
        }
        Target::Case(case) => {
            let built = kernels::build(case, &dev)?;
            run(std::slice::from_ref(&built.launch))?
        }
    };
    emu.set_profiling(Profiling::default());
    Ok(Profiled {
        records,
        emulation_s: started.elapsed().as_secs_f64(),
    })
}

/// The wgmma tile the TMA dispatch picks for `g` on `arch`, if it picks one (operands
/// placed by the allocator, whose addresses are 256-byte aligned).
fn wgmma_pick(arch: u32, g: &Gemm) -> Option<TileConfig> {
    match select_tma(arch, g.layout, g.m, g.n, g.k, g.alignment(0, 0)).kernel {
        KernelKind::Wgmma(cfg) => Some(cfg),
        _ => None,
    }
}

/// Runs the wgmma matmul on `g` once, as a GPU runs it: zeroed operands (the counters do
/// not depend on the values), tensor maps encoded for the device, arguments packed against
/// the kernel's declaration, a persistent grid over an H100 SXM's SMs.
fn run_wgmma(dev: &Device, arch: u32, g: &Gemm, what: &str) -> Result<(), CliError> {
    let cfg = wgmma_pick(arch, g).ok_or_else(|| usage(format!("{what}: no wgmma pick")))?;
    let bytes = |elems: usize, out: OutType| elems * if out == OutType::F32 { 4 } else { 2 };
    let a_len = (g.batch - 1) * g.batch_stride_a + g.a_elements();
    let b_len = (g.batch - 1) * g.batch_stride_b + g.b_elements();
    let alloc = |n: usize, name: &str| {
        dev.alloc(n.max(4), name)
            .map_err(|e| launch_failed(format!("{what}: allocating {name}"), e))
    };
    let a = alloc(bytes(a_len, OutType::Bf16), "a")?;
    let b = alloc(bytes(b_len, OutType::Bf16), "b")?;
    let c = alloc(bytes(g.c_elements(), g.out), "c")?;
    let mut encode = |map: &TensorMap| {
        encode_tensor_map(dev, map).map_err(|e| PtxError::BadLaunch {
            kernel: "matmul_wgmma".into(),
            reason: e.to_string(),
        })
    };
    let l = wgmma::launch_args(&cfg, g, a.ptr(), b.ptr(), c.ptr(), WGMMA_SMS, &mut encode)
        .map_err(|e| launch_failed(what.to_string(), e))?;
    dev.launch(l.kernel, &l.dims, &l.args)
        .map_err(|e| launch_failed(what.to_string(), e))?;
    Ok(())
}

/// Whether the step on `arch` runs the wgmma FlashAttention forward for `shape` (sm_90
/// only: sm_90a code does not run on later GPUs; a head size it ships), as the device
/// step's layer program decides.
fn wgmma_fwd_applies(arch: u32, shape: AttnShape) -> bool {
    frugal_ptx::catalogue::Target::Sm90a.runs_on(arch) && wgmma_fwd::static_name(shape.hs).is_some()
}

/// Runs the wgmma FlashAttention forward on `shape` once, as the sm_90 step does: zeroed
/// Q, K, V (the counters do not depend on the values), tensor maps encoded for the device,
/// arguments packed against the kernel's declaration.
fn run_wgmma_fwd(dev: &Device, shape: AttnShape, what: &str) -> Result<(), CliError> {
    let nq = shape.b * shape.t * shape.nh * shape.hs;
    let nk = shape.b * shape.t * shape.nkv * shape.hs;
    let rows = shape.b * shape.nh * shape.t;
    let alloc = |n: usize, name: &str| {
        dev.alloc(n.max(16), name)
            .map_err(|e| launch_failed(format!("{what}: allocating {name}"), e))
    };
    let (q, k, v) = (
        alloc(2 * nq, "q")?,
        alloc(2 * nk, "k")?,
        alloc(2 * nk, "v")?,
    );
    let (o, lse) = (alloc(2 * nq, "o")?, alloc(4 * rows, "lse")?);
    let bufs = FlashFwd {
        q: q.ptr(),
        k: k.ptr(),
        v: v.ptr(),
        o: o.ptr(),
        lse: lse.ptr(),
    };
    let mut encode = |map: &TensorMap| {
        encode_tensor_map(dev, map).map_err(|e| PtxError::BadLaunch {
            kernel: "flash_attn_fwd_wgmma".into(),
            reason: e.to_string(),
        })
    };
    let l = wgmma_fwd::launch_args(shape, &bufs, &mut encode)
        .map_err(|e| launch_failed(what.to_string(), e))?;
    dev.launch(l.kernel, &l.dims, &l.args)
        .map_err(|e| launch_failed(what.to_string(), e))?;
    Ok(())
}

/// SMs the persistent wgmma grid is sized for: an H100 SXM's.
const WGMMA_SMS: u32 = 132;

/// Prints the prediction of `p` on each GPU: the per-kernel table (or `--json`), its
/// total and, where the op counts its FLOPs, the predicted TFLOP/s.
///
/// `profiled` holds one run per architecture among the GPUs (`(sm, run)`); each GPU is
/// predicted from its own architecture's run.
pub fn report(
    target: &Target,
    sample: Option<u32>,
    profiled: &[(u32, Profiled)],
    gpus: &[(&'static DeviceFacts, &'static Roofline)],
    calibration: &Calibration,
    json: bool,
) -> Result<(), CliError> {
    let all: Vec<&LaunchRecord> = profiled.iter().flat_map(|(_, p)| &p.records).collect();
    let sampling = super::sampled(sample, all.iter().copied());
    let p = Profiled {
        records: all.into_iter().cloned().collect(),
        emulation_s: profiled.iter().map(|(_, p)| p.emulation_s).sum(),
    };
    let none = Vec::new();
    let per_gpu: Vec<(&DeviceFacts, &Roofline, Vec<Row>, f64, f64)> = gpus
        .iter()
        .map(|(gpu, line)| {
            let records = profiled
                .iter()
                .find(|(sm, _)| *sm == gpu.sm)
                .map_or(&none, |(_, p)| &p.records);
            let rows = predict::rows(records, gpu, line, calibration, DramEstimate::Estimated);
            let total = predict::total(&rows);
            let upper = predict::total(&predict::rows(
                records,
                gpu,
                line,
                calibration,
                DramEstimate::AllPrivate,
            ));
            (*gpu, *line, rows, total, upper)
        })
        .collect();
    let tflops = |t: f64| target.flops().filter(|_| t > 0.0).map(|f| f / t / 1e12);
    if json {
        let gpus: Vec<serde_json::Value> = per_gpu
            .iter()
            .map(|(gpu, _, rows, total, upper)| {
                serde_json::json!({
                    "gpu": gpu.label,
                    "name": gpu.name,
                    "kernels": rows.iter().map(|r| super::row_json(r, *total)).collect::<Vec<_>>(),
                    "total": {
                        "predicted_s": total,
                        "tflops": tflops(*total),
                        "predicted_s_dram_upper": upper,
                    },
                })
            })
            .collect();
        let v = serde_json::json!({
            "predicted": true,
            "note": "times and TFLOP/s are predicted from emulated counters and a roofline, not measured",
            "kernel": target.describe(),
            "flops": target.flops(),
            "launches": p.records.len(),
            "sample_ctas": sample,
            "sampling": sampling,
            "emulation_s": p.emulation_s,
            "gpus": gpus,
        });
        println!("{v}");
        return Ok(());
    }
    let mut s = format!(
        "profile: {}; {} launch(es) emulated in {:.1} s ({sampling})\n",
        target.describe(),
        p.records.len(),
        p.emulation_s
    );
    for (gpu, line, rows, total, upper) in &per_gpu {
        s += &format!(
            "\nPREDICTED for {} ({}; {} SMs at {:.2} GHz; roofline, not a measurement):\n",
            gpu.label, gpu.name, line.sms, line.boost_clock_ghz
        );
        s += &super::table_head();
        for r in rows {
            s += &super::table_row(r, *total);
        }
        s += &format!("  total: predicted {:.1} us", total * 1e6);
        if let Some(tf) = tflops(*total) {
            s += &format!(", {tf:.1} TFLOP/s (predicted)");
        }
        s += "\n";
        if *upper > total * 1.001 {
            s += &format!(
                "  total if no data were shared between CTAs beyond what the sampled CTAs showed \
                 (DRAM traffic at its upper estimate): {:.1} us",
                upper * 1e6
            );
            if let Some(tf) = tflops(*upper) {
                s += &format!(", {tf:.1} TFLOP/s");
            }
            s += " (predicted)\n";
        }
        if rows.iter().any(|r| r.factor.is_some()) {
            s += "  (* calibrated by --calibration's factor for the kernel's family)\n";
        }
    }
    print!("{s}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str, shape: &str, mm: &MatmulWords) -> String {
        match parse(name, shape, mm) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("{name} {shape} parsed: {t:?}"),
        }
    }

    #[test]
    fn kernels_and_shapes_parse_and_bad_ones_say_why() {
        let none = MatmulWords::default();
        let Target::Matmul(g) = parse("matmul", "64,128,32", &none).unwrap() else {
            panic!("not a matmul")
        };
        assert_eq!(
            (g.m, g.n, g.k, g.layout, g.out),
            (64, 128, 32, Layout::Nt, OutType::Bf16)
        );
        let tn = MatmulWords {
            layout: Some("tn".into()),
            out_type: Some("f32".into()),
            accumulate: true,
        };
        let Target::Matmul(g) = parse("matmul", "64,128,32", &tn).unwrap() else {
            panic!("not a matmul")
        };
        assert_eq!(
            (g.layout, g.out, g.epilogue),
            (Layout::Tn, OutType::F32, Epilogue::Accumulate)
        );
        assert_eq!(
            parse("flash_bwd", "2,4,128,64,2", &none).unwrap(),
            Target::Flash {
                shape: AttnShape {
                    b: 2,
                    t: 128,
                    nh: 4,
                    nkv: 2,
                    hs: 64
                },
                backward: true
            }
        );
        assert!(matches!(
            parse("rmsnorm-fwd", "8,256", &none),
            Ok(Target::Case(_))
        ));
        let unknown = err("conv2d", "1,2", &none);
        assert!(
            unknown.contains("known") && unknown.contains("flash-fwd") && unknown.contains("adamw"),
            "{unknown}"
        );
        assert!(err("matmul", "64,128", &none).contains("M,N,K"));
        assert!(err("matmul", "64,0,32", &none).contains("not a number"));
        assert!(err("flash-fwd", "1,2,64,96", &none).contains("HS"));
        assert!(err("rmsnorm-fwd", "8,256", &tn).contains("options of --kernel matmul"));
    }
}
