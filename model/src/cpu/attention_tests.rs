//! The fused attention against the materialised one it replaced, on random shapes (T
//! below, at and past the block sizes, grouped heads, head sizes off the vector width),
//! with every kernel this CPU runs, and its bits across thread counts.

use super::*;

/// Uniform values in [−2, 2) from a fixed seed (xorshift).
fn random(len: usize, seed: &mut u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// (B, T, NH, NKV, HS): T = 1, under, at and past the 64-row blocks (short last
/// blocks); grouped heads; head sizes under, off and at the vector widths and at the
/// fixed-size copies' 64 and 128.
const SHAPES: [(usize, usize, usize, usize, usize); 9] = [
    (1, 1, 1, 1, 8),
    (2, 37, 4, 2, 16),
    (1, 64, 2, 1, 64),
    (3, 65, 2, 2, 20),
    (1, 150, 4, 1, 32),
    (1, 150, 4, 2, 64),
    (2, 129, 2, 2, 4),
    (1, 200, 1, 1, 72),
    (1, 130, 2, 1, 128),
];

fn dims((b, t, nh, nkv, hs): (usize, usize, usize, usize, usize)) -> AttnDims {
    AttnDims { b, t, nh, nkv, hs }
}

/// Random q, k, v for `d`.
fn inputs(d: AttnDims, seed: &mut u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = d.b * d.t;
    (
        random(n * d.c(), seed),
        random(n * d.kv(), seed),
        random(n * d.kv(), seed),
    )
}

/// Everything one algorithm computes for one input.
struct Run {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn run(fused: bool, d: AttnDims, qkv: Qkv, dout: &[f32], threads: usize, kernel: Kernel) -> Run {
    let n = d.b * d.t;
    let mut out = vec![f32::NAN; n * d.c()];
    let mut lse = vec![f32::NAN; d.b * d.nh * d.t];
    // NaN-filled outputs: an element left unwritten shows.
    let (mut dq, mut dk, mut dv) = (
        vec![f32::NAN; n * d.c()],
        vec![f32::NAN; n * d.kv()],
        vec![f32::NAN; n * d.kv()],
    );
    let grads = AttentionGrads {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
    };
    if fused {
        flash::forward(&mut out, &mut lse, qkv, d, threads, kernel);
        flash::backward(grads, dout, qkv, &out, &lse, d, threads, kernel);
    } else {
        materialised::forward(&mut out, &mut lse, qkv, d, threads, kernel);
        materialised::backward(grads, dout, qkv, &lse, d, threads, kernel);
    }
    Run {
        out,
        lse,
        dq,
        dk,
        dv,
    }
}

/// |got − want| ≤ tol·max(1, max |want|) everywhere.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let big = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * big,
            "{what}[{i}]: fused {g}, materialised {w} (scale {big})"
        );
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_fused_attention_matches_the_materialised_one_and_its_bits_do_not_depend_on_threads() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for d in SHAPES.map(dims) {
        let n = d.b * d.t;
        let (q, k, v) = inputs(d, &mut seed);
        let dout = random(n * d.c(), &mut seed);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        // The AVX2 and AVX-512 tiles share one body with lanes over output columns: the
        // same bits (checked where the CPU has both; this one may not).
        let fma: Vec<Kernel> = Kernel::available()
            .into_iter()
            .filter(|k| *k != Kernel::Portable)
            .collect();
        if let [first, rest @ ..] = &fma[..] {
            let a = run(true, d, qkv, &dout, 2, *first);
            for k in rest {
                let b = run(true, d, qkv, &dout, 2, *k);
                for (x, y) in [
                    (&a.out, &b.out),
                    (&a.dq, &b.dq),
                    (&a.dk, &b.dk),
                    (&a.dv, &b.dv),
                ] {
                    assert_eq!(bits(x), bits(y), "{d:?} {first:?} against {k:?}");
                }
            }
        }
        for kernel in Kernel::available() {
            let want = run(false, d, qkv, &dout, 1, kernel);
            let got = run(true, d, qkv, &dout, 1, kernel);
            let tol = 2e-5;
            assert_close("out", &got.out, &want.out, tol);
            assert_close("lse", &got.lse, &want.lse, tol);
            assert_close("dq", &got.dq, &want.dq, tol);
            assert_close("dk", &got.dk, &want.dk, tol);
            assert_close("dv", &got.dv, &want.dv, tol);
            for threads in [2, 3] {
                let again = run(true, d, qkv, &dout, threads, kernel);
                for (x, y) in [
                    (&got.out, &again.out),
                    (&got.lse, &again.lse),
                    (&got.dq, &again.dq),
                    (&got.dk, &again.dk),
                    (&got.dv, &again.dv),
                ] {
                    assert_eq!(bits(x), bits(y), "{d:?} {kernel:?} {threads} threads");
                }
            }
        }
    }
}

#[test]
fn one_token_sequences_give_exactly_zero_query_and_key_gradients() {
    // Each row sees one key: P = 1 whatever the scores, so dq and dk are 0 in exact
    // arithmetic, and D is computed so that it cancels dP exactly (a device test
    // compares its gradients against these zeros).
    let mut seed = 5u64;
    let d = AttnDims {
        b: 3,
        t: 1,
        nh: 4,
        nkv: 2,
        hs: 24,
    };
    let (q, k, v, dout) = (
        random(3 * d.c(), &mut seed),
        random(3 * d.kv(), &mut seed),
        random(3 * d.kv(), &mut seed),
        random(3 * d.c(), &mut seed),
    );
    let qkv = Qkv {
        q: &q,
        k: &k,
        v: &v,
    };
    for kernel in Kernel::available() {
        let got = run(true, d, qkv, &dout, 2, kernel);
        assert!(
            got.dq.iter().chain(&got.dk).all(|&x| x == 0.0),
            "{kernel:?}"
        );
        assert!(got.dv.iter().any(|&x| x != 0.0));
    }
}

/// The forward's algorithm query by query in plain scalar code, key blocks of BK in
/// order with the online softmax's rescaling, sums in [`fastmath`]'s order, and the
/// kernel's arithmetic for the products (`fused`: one FMA per term, else a multiply
/// and an add; terms in order): what the fused forward must give bit for bit, whatever
/// layout it computes its blocks in.
fn forward_by_query(d: AttnDims, qkv: Qkv, fused: bool) -> (Vec<f32>, Vec<f32>) {
    use super::super::fastmath;
    let (c, kv, t, hs) = (d.c(), d.kv(), d.t, d.hs);
    let madd = |x: f32, y: f32, acc: f32| {
        if fused {
            x.mul_add(y, acc)
        } else {
            acc + x * y
        }
    };
    let mut out = vec![0.0f32; d.b * t * c];
    let mut lse = vec![0.0f32; d.b * d.nh * t];
    for b in 0..d.b {
        for h in 0..d.nh {
            let kvh = h / (d.nh / d.nkv);
            let row = |x: &[f32], i: usize, width: usize, head: usize| {
                x[(b * t + i) * width + head * hs..][..hs].to_vec()
            };
            for i in 0..t {
                let q = row(qkv.q, i, c, h);
                let (mut m, mut l, mut o) = (f32::NEG_INFINITY, 0.0f32, vec![0.0f32; hs]);
                for j0 in (0..=i / flash::BQ * flash::BQ).step_by(flash::BK) {
                    let keys = j0..(i + 1).min(j0 + flash::BK);
                    let mut s: Vec<f32> = keys
                        .clone()
                        .map(|j| {
                            let k = row(qkv.k, j, d.kv(), kvh);
                            q.iter().zip(&k).fold(0.0, |acc, (&x, &y)| madd(x, y, acc)) * d.scale()
                        })
                        .collect();
                    let m_new = m.max(fastmath::max(&s));
                    let sum = fastmath::exp_shifted_sum(&mut s, m_new);
                    if m == f32::NEG_INFINITY {
                        l = sum;
                    } else {
                        let alpha = fastmath::exp(m - m_new);
                        l = l * alpha + sum;
                        o.iter_mut().for_each(|x| *x *= alpha);
                    }
                    m = m_new;
                    for (j, &p) in keys.zip(&s) {
                        let v = row(qkv.v, j, kv, kvh);
                        o.iter_mut().zip(&v).for_each(|(x, &y)| *x = madd(p, y, *x));
                    }
                }
                let dst = &mut out[(b * t + i) * c + h * hs..][..hs];
                dst.iter_mut()
                    .zip(&o)
                    .for_each(|(y, &x)| *y = x * (1.0 / l));
                lse[(b * d.nh + h) * t + i] = m + l.ln();
            }
        }
    }
    (out, lse)
}

#[test]
fn the_fused_forward_gives_the_bits_of_the_softmax_taken_query_by_query() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for d in SHAPES.map(dims) {
        let (b, t, nh, n) = (d.b, d.t, d.nh, d.b * d.t);
        let (q, k, v) = inputs(d, &mut seed);
        let qkv = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        for kernel in Kernel::available() {
            let (want_out, want_lse) = forward_by_query(d, qkv, kernel != Kernel::Portable);
            let mut out = vec![f32::NAN; n * d.c()];
            let mut lse = vec![f32::NAN; b * nh * t];
            flash::forward(&mut out, &mut lse, qkv, d, 2, kernel);
            assert_eq!(bits(&out), bits(&want_out), "{d:?} {kernel:?} out");
            assert_eq!(bits(&lse), bits(&want_lse), "{d:?} {kernel:?} lse");
        }
    }
}
