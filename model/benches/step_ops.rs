//! Where one CPU training step's time goes: each op of `CpuModel`'s forward and
//! backward timed alone at a step's shapes (best of `FRUGAL_OPS_REPS`, default 3),
//! multiplied by its calls per step, as a table with each op's share of their sum; then
//! the whole step (forward + backward through `CpuModel`, and AdamW) for comparison.
//!
//! Shape: `FRUGAL_OPS_SHAPE` = "L,C,NH,F,V,T,B" (default the first shape,
//! 4,256,4,688,256,256,8); threads: `FRUGAL_OPS_THREADS` (default: the cores available).
//!
//! `FRUGAL_OPS_ONLY=WORD`: only the ops whose names contain WORD (for callgrind).
//!
//! Run: `FRUGAL_OPS_SHAPE=8,512,8,1376,256,512,4 cargo bench -p frugal-model --bench step_ops`

mod timing;

use std::hint::black_box;
use timing::{best_of, random};

use frugal_model::config::Config;
use frugal_model::cpu::attention::{
    attention_backward, attention_forward, AttentionGrads, AttnDims, Qkv,
};
use frugal_model::cpu::matmul::{
    linear_backward_input, linear_backward_weight, linear_backward_weights, linear_forward,
    Accumulate, LinearDims, WeightGrad,
};
use frugal_model::cpu::par::Pool;
use frugal_model::cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward, RmsNormGrads};
use frugal_model::cpu::rope::RopeTable;
use frugal_model::cpu::swiglu::{swiglu_backward, swiglu_forward, SwigluBackward};
use frugal_model::cpu::{cross_entropy, CpuModel};
use frugal_model::init::init_params;
use frugal_model::optim::AdamW;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn main() {
    let threads = env_usize("FRUGAL_OPS_THREADS")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The ops run on a pool of parked workers, as inside a model's step.
    Pool::new(threads).install(|| run(threads));
}

fn run(threads: usize) {
    let reps = env_usize("FRUGAL_OPS_REPS").unwrap_or(3);
    let shape: Vec<usize> = std::env::var("FRUGAL_OPS_SHAPE")
        .unwrap_or_else(|_| "4,256,4,688,256,256,8".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let [l, c, nh, f, v, t, b] = shape[..] else {
        eprintln!("FRUGAL_OPS_SHAPE must be L,C,NH,F,V,T,B");
        std::process::exit(2);
    };
    let n = b * t;
    let hs = c / nh;
    let mut seed = 7u64;
    let mut r = |len: usize| random(len, &mut seed);
    let (x, w_cc, w_cf, w_fc) = (r(n * c), r(c * c), r(f * c), r(c * f));
    let (g, xf, dyf) = (r(c), r(n * f), r(n * f));
    let (mut y_c, mut y_f, mut dw) = (vec![0.0; n * c], vec![0.0; n * f], vec![0.0; f * c]);
    let mut rows: Vec<(String, usize, f64)> = Vec::new();
    // FRUGAL_OPS_ONLY=word times only the ops whose names contain it (and not the whole
    // step): one op alone under `valgrind --tool=callgrind`, for instruction counts.
    let only = std::env::var("FRUGAL_OPS_ONLY").ok();
    let mut add = |name: &str, calls: usize, time: &mut dyn FnMut() -> f64| {
        if only.as_deref().is_none_or(|o| name.contains(o)) {
            rows.push((name.to_string(), calls, time()))
        }
    };
    let lin = |inp, out| LinearDims { rows: n, inp, out };
    let ov = Accumulate::Overwrite;

    // Matmuls, per layer: forward q,k,v,o (C×C) and gate, up (C→F), down (F→C); the
    // backward the same products' input and weight gradients. The head: C→V.
    add("matmul fwd CxC", 4 * l, &mut || {
        best_of(reps, || {
            linear_forward(&mut y_c, &x, &w_cc, lin(c, c), ov, threads)
        })
    });
    add("matmul fwd C->F", 2 * l, &mut || {
        best_of(reps, || {
            linear_forward(&mut y_f, &x, &w_cf, lin(c, f), ov, threads)
        })
    });
    add("matmul fwd F->C", l, &mut || {
        best_of(reps, || {
            linear_forward(&mut y_c, &xf, &w_fc, lin(f, c), ov, threads)
        })
    });
    add("matmul bwd-in CxC", 4 * l, &mut || {
        best_of(reps, || {
            linear_backward_input(&mut y_c, &x, &w_cc, lin(c, c), ov, threads)
        })
    });
    add("matmul bwd-in C->F", 2 * l, &mut || {
        best_of(reps, || {
            linear_backward_input(&mut y_c, &dyf, &w_cf, lin(c, f), ov, threads)
        })
    });
    add("matmul bwd-in F->C", l, &mut || {
        best_of(reps, || {
            linear_backward_input(&mut y_f, &x, &w_fc, lin(f, c), ov, threads)
        })
    });
    // The model's weight gradients: q, k and v in one call (they share x), o alone;
    // gate and up in one call. FRUGAL_OPS_SEPARATE=1 times each gradient alone instead.
    let separate = std::env::var_os("FRUGAL_OPS_SEPARATE").is_some();
    let (mut dw3, mut dw2) = (vec![0.0; 3 * c * c], vec![0.0; 2 * f * c]);
    let dy2 = random(n * f, &mut 15);
    add("matmul bwd-w q,k,v", l, &mut || {
        best_of(reps, || {
            let (dq, rest) = dw3.split_at_mut(c * c);
            let (dk, dv) = rest.split_at_mut(c * c);
            if separate {
                for dw in [dq, dk, dv] {
                    linear_backward_weight(dw, &x, &x, lin(c, c), threads);
                }
                return;
            }
            let grads = [dq, dk, dv].map(|dw| WeightGrad { dw, dy: &x, out: c });
            linear_backward_weights(&mut { grads }, &x, n, c, threads)
        })
    });
    add("matmul bwd-w o", l, &mut || {
        best_of(reps, || {
            linear_backward_weight(&mut dw[..c * c], &x, &x, lin(c, c), threads)
        })
    });
    add("matmul bwd-w gate,up", l, &mut || {
        best_of(reps, || {
            let (dg, du) = dw2.split_at_mut(f * c);
            if separate {
                linear_backward_weight(dg, &dyf, &x, lin(c, f), threads);
                linear_backward_weight(du, &dy2, &x, lin(c, f), threads);
                return;
            }
            let grads = [(dg, &dyf), (du, &dy2)].map(|(dw, dy)| WeightGrad { dw, dy, out: f });
            linear_backward_weights(&mut { grads }, &x, n, c, threads)
        })
    });
    add("matmul bwd-w F->C", l, &mut || {
        best_of(reps, || {
            linear_backward_weight(&mut dw, &x, &xf, lin(f, c), threads)
        })
    });
    let w_cv = random(v * c, &mut 9);
    let mut logits = vec![0.0; n * v];
    let dlog = random(n * v, &mut 10);
    let mut dwv = vec![0.0; v * c];
    add("matmul head fwd+bwd", 1, &mut || {
        best_of(reps, || {
            linear_forward(&mut logits, &x, &w_cv, lin(c, v), ov, threads);
            linear_backward_input(&mut y_c, &dlog, &w_cv, lin(c, v), ov, threads);
            linear_backward_weight(&mut dwv, &dlog, &x, lin(c, v), threads);
        })
    });

    // Attention (NKV = NH), with q, k, v of N(0, 1/4)-ish values.
    let d = AttnDims {
        b,
        t,
        nh,
        nkv: nh,
        hs,
    };
    let (q, k, vv, dout) = (
        random(n * c, &mut 11),
        random(n * c, &mut 12),
        random(n * c, &mut 13),
        random(n * c, &mut 14),
    );
    let mut o = vec![0.0; n * c];
    let mut lse = vec![0.0; b * nh * t];
    let qkv = Qkv {
        q: &q,
        k: &k,
        v: &vv,
    };
    add("attention fwd", l, &mut || {
        best_of(reps, || {
            attention_forward(&mut o, &mut lse, qkv, d, threads)
        })
    });
    let (mut dq, mut dk, mut dv) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
    add("attention bwd", l, &mut || {
        best_of(reps, || {
            let grads = AttentionGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
            };
            attention_backward(grads, &dout, qkv, &o, &lse, d, threads)
        })
    });
    // FRUGAL_OPS_BITS=1: a hash of the attention's outputs' bits, to show that a change
    // of kernel or blocking keeps them (run with FRUGAL_OPS_ONLY=attention).
    if std::env::var_os("FRUGAL_OPS_BITS").is_some() {
        let hash = |xs: &[f32]| {
            xs.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
                (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
            })
        };
        println!(
            "attention bits: out {:016x} lse {:016x} dq {:016x} dk {:016x} dv {:016x}",
            hash(&o),
            hash(&lse),
            hash(&dq),
            hash(&dk),
            hash(&dv)
        );
    }

    // Element-wise and row ops.
    let mut rstd = vec![0.0; n];
    add("rmsnorm fwd", 2 * l + 1, &mut || {
        best_of(reps, || {
            rmsnorm_forward(&mut y_c, &mut rstd, &x, &g, c, 1e-5, threads)
        })
    });
    let (mut dx, mut dg, residual) = (vec![0.0; n * c], vec![0.0; c], x.clone());
    // A layer's two read the residual stream's gradient in place; the final norm adds.
    add("rmsnorm bwd", 2 * l + 1, &mut || {
        best_of(reps, || {
            let grads = RmsNormGrads {
                dx: &mut dx,
                dg: &mut dg,
                residual: Some(&residual),
            };
            rmsnorm_backward(grads, &x, &x, &rstd, &g, c, threads)
        })
    });
    let rope = RopeTable::new(t, hs, 10000.0);
    add("rope fwd (q, k)", 2 * l, &mut || {
        best_of(reps, || rope.forward(&mut y_c, c, threads))
    });
    add("rope bwd (q, k)", 2 * l, &mut || {
        best_of(reps, || rope.backward(&mut y_c, c, threads))
    });
    let mut act = vec![0.0; n * f];
    add("swiglu fwd", l, &mut || {
        best_of(reps, || swiglu_forward(&mut act, &xf, &dyf, f, threads))
    });
    // The backward writes act again (the model does not keep it).
    let (mut dgate, mut dup, mut act_again) =
        (vec![0.0; n * f], vec![0.0; n * f], vec![0.0; n * f]);
    add("swiglu bwd", l, &mut || {
        best_of(reps, || {
            let out = SwigluBackward {
                dgate: &mut dgate,
                dup: &mut dup,
                act: &mut act_again,
            };
            swiglu_backward(out, &act, &xf, &dyf, f, threads)
        })
    });
    let targets: Vec<u32> = (0..n).map(|i| (i * 7 % v) as u32).collect();
    let (mut row_loss, mut dlogits) = (vec![0.0; n], vec![0.0; n * v]);
    add("cross-entropy fwd+bwd", 1, &mut || {
        best_of(reps, || {
            cross_entropy::cross_entropy(
                &mut row_loss,
                Some((&mut dlogits, 1.0)),
                &logits,
                &targets,
                v,
                threads,
            )
        })
    });

    let cfg = Config {
        vocab_size: v,
        dim: c,
        n_layers: l,
        n_heads: nh,
        n_kv_heads: nh,
        ffn_dim: f,
        seq_len: t,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
    };
    let mut params = init_params(&cfg, 1);
    let mut grads = vec![0.0f32; params.len()];
    let mask = vec![true; params.len()];
    let mut opt = AdamW::new(params.len(), 0.9, 0.95, 1e-8, 0.1);
    // As the trainer's step: the clip factor folded in, on the model's threads.
    add("AdamW", 1, &mut || {
        best_of(reps, || {
            opt.update_with(&mut params, &grads, 0.5, 1e-4, &mask, threads)
        })
    });

    let total: f64 = rows.iter().map(|(_, calls, s)| *calls as f64 * s).sum();
    println!(
        "shape L={l} C={c} NH={nh} F={f} V={v} T={t} B={b}, {threads} threads; best of {reps}"
    );
    println!(
        "{:<24} {:>6} {:>12} {:>12} {:>7}",
        "op", "calls", "ms per call", "ms per step", "share"
    );
    for (name, calls, s) in &rows {
        let step = *calls as f64 * s;
        println!(
            "{name:<24} {calls:>6} {:>12.3} {:>12.2} {:>6.1}%",
            s * 1e3,
            step * 1e3,
            100.0 * step / total
        );
    }
    println!(
        "{:<24} {:>6} {:>12} {:>12.2}",
        "sum of ops",
        "",
        "",
        total * 1e3
    );
    if std::env::var_os("FRUGAL_OPS_ONLY").is_some() {
        return;
    }
    let Ok(mut model) = CpuModel::new(&cfg, b, t, threads) else {
        return;
    };
    let inputs: Vec<u32> = (0..n).map(|i| (i * 13 % v) as u32).collect();
    let fb = best_of(reps, || {
        grads.iter_mut().for_each(|g| *g = 0.0);
        let loss = model.forward_backward(&params, &inputs, &targets, &mut grads, 1.0, &mut |_| {});
        black_box(loss.ok());
    });
    println!(
        "{:<24} {:>6} {:>12} {:>12.2}",
        "CpuModel fwd+bwd",
        "",
        "",
        fb * 1e3
    );
    black_box((
        &o, &dq, &dk, &dv, &dx, &dg, &dgate, &dup, &row_loss, &dw, &dwv,
    ));
}
