//! RMSNorm forward (plain or with the fused residual add), backward (both dx modes) and the
//! dg reduction (`rmsnorm.ptx`) against an f64 reference from the same bf16 inputs, outputs
//! and the workspace poisoned with NaN first.

use super::{bf, bf16_bits, download, run, upload, Gen, Runner, POISON_BF16, POISON_F32};
use crate::kernels::rmsnorm::{self, DxMode, RmsNormBwd, RmsNormFwd, RmsNormResidualFwd};

/// The epsilon the checks use.
pub const EPS: f32 = 1e-5;

/// Whether the forward fuses the residual add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fwd {
    /// y = norm(x).
    Plain,
    /// h = x + res (in place on res), y = norm(h).
    Residual,
}

/// One forward + backward + dg reduction over (rows, c).
pub fn case(r: &mut dyn Runner, rows: usize, c: usize, mode: DxMode, fwd: Fwd, seed: u64) {
    let n = rows * c;
    let mut gen = Gen(seed);
    let x_in = gen.bf16s(n, 1.5);
    let res = gen.bf16s(n, 1.5);
    let g = gen.bf16s(c, 1.5);
    let dy = gen.bf16s(n, 1.0);
    let dx0 = gen.bf16s(n, 1.0);
    let dg0: Vec<f32> = (0..c).map(|_| gen.unit()).collect();
    // The norm's input: x itself, or the residual sum h = bf16(x + res), one f32 add
    // (add.rn) rounded once: the kernel's operations, so h must match bit for bit.
    let x: Vec<u16> = match fwd {
        Fwd::Plain => x_in.clone(),
        Fwd::Residual => x_in
            .iter()
            .zip(&res)
            .map(|(&a, &b)| bf16_bits(bf(a) as f32 + bf(b) as f32))
            .collect(),
    };
    let (g_d, dy_d) = (upload(r, &g, "g"), upload(r, &dy, "dy"));
    let y_d = upload(r, &vec![POISON_BF16; n], "y");
    let rstd_d = upload(r, &vec![POISON_F32; rows], "rstd");
    let x_d = match fwd {
        Fwd::Plain => {
            let x_d = upload(r, &x, "x");
            let bufs = RmsNormFwd {
                x: x_d,
                g: g_d,
                y: y_d,
                rstd: rstd_d,
            };
            run(r, rmsnorm::forward(bufs, rows, c, EPS));
            x_d
        }
        Fwd::Residual => {
            // In place on the residual stream, as training uses it: h aliases res.
            let xi_d = upload(r, &x_in, "x");
            let h_d = upload(r, &res, "res/h");
            run(
                r,
                rmsnorm::forward_residual(
                    RmsNormResidualFwd {
                        x: xi_d,
                        res: h_d,
                        h: h_d,
                        g: g_d,
                        y: y_d,
                        rstd: rstd_d,
                    },
                    rows,
                    c,
                    EPS,
                ),
            );
            let h: Vec<u16> = download(r, h_d, n);
            assert!(h == x, "h = bf16(x + res) differs ({})", r.name());
            h_d
        }
    };
    let dx_init = match mode {
        DxMode::Overwrite => vec![POISON_BF16; n],
        DxMode::Accumulate => dx0.clone(),
    };
    let dx_d = upload(r, &dx_init, "dx");
    let ws = rmsnorm::workspace_elems(rows, c);
    let part_d = upload(r, &vec![POISON_F32; ws], "dg_part");
    let dg_d = upload(r, &dg0, "dg");
    run(
        r,
        rmsnorm::backward(
            RmsNormBwd {
                dy: dy_d,
                x: x_d,
                g: g_d,
                rstd: rstd_d,
                dx: dx_d,
                dg_part: part_d,
            },
            rows,
            c,
            mode,
        ),
    );
    run(r, rmsnorm::dg_reduce(part_d, dg_d, rows, c));

    let y: Vec<u16> = download(r, y_d, n);
    let rstd: Vec<f32> = download(r, rstd_d, rows);
    let dx: Vec<u16> = download(r, dx_d, n);
    let dg: Vec<f32> = download(r, dg_d, c);
    let cf = c as f64;
    let mut dg_want: Vec<f64> = dg0.iter().map(|&v| f64::from(v)).collect();
    let mut dg_mag: Vec<f64> = dg0.iter().map(|&v| f64::from(v).abs()).collect();
    for row in 0..rows {
        let at = |v: &[u16], k: usize| bf(v[row * c + k]);
        let ms: f64 = (0..c).map(|k| at(&x, k).powi(2)).sum::<f64>() / cf;
        let rs = 1.0 / (ms + f64::from(EPS)).sqrt();
        // rstd: an f32 sum of C positive terms is within C*2^-24 relative, the sqrt and
        // reciprocal add two roundings; the square root halves the sum's error.
        let tol = rs * (cf + 4.0) * 2f64.powi(-24);
        assert!(
            (f64::from(rstd[row]) - rs).abs() <= tol,
            "rstd[{row}]: {} vs {rs}",
            rstd[row]
        );
        let dot: f64 = (0..c).map(|k| bf(g[k]) * at(&dy, k) * at(&x, k)).sum();
        let dot_mag: f64 = (0..c)
            .map(|k| (bf(g[k]) * at(&dy, k) * at(&x, k)).abs())
            .sum();
        let coef = rs * rs * dot / cf;
        for k in 0..c {
            let (xv, gv, dyv) = (at(&x, k), bf(g[k]), at(&dy, k));
            // y: f32 products then one bf16 rounding (2^-9 relative; 2^-8 leaves room for an
            // f32 error that moves the value across a rounding boundary) and rstd's error.
            let want = xv * rs * gv;
            let got = bf(y[row * c + k]);
            let tol = want.abs() * (2f64.powi(-8) + tol / rs);
            assert!((got - want).abs() <= tol, "y[{row},{k}]: {got} vs {want}");
            // dx: bf16 rounding of the result, plus f32 errors of the two terms of the
            // difference (cancellation: relative to the terms, not the result) and of coef,
            // whose dot product of C terms is within C*2^-24 of the sum of magnitudes.
            let mut want = rs * (gv * dyv - xv * coef);
            let abs = rs * ((gv * dyv).abs() + (xv * coef).abs()) * 2f64.powi(-20)
                + rs.powi(3) * xv.abs() * dot_mag * (cf + 4.0) * 2f64.powi(-24) / cf;
            if mode == DxMode::Accumulate {
                want += bf(dx0[row * c + k]);
            }
            let got = bf(dx[row * c + k]);
            let tol = want.abs() * 2f64.powi(-8) + abs;
            assert!(
                (got - want).abs() <= tol,
                "dx[{row},{k}] {mode:?}: {got} vs {want} (tol {tol})"
            );
            dg_want[k] += dyv * xv * rs;
            dg_mag[k] += (dyv * xv * rs).abs();
        }
    }
    // dg: rows + 1 f32 additions in a fixed order, each rounding by at most 2^-24 of the
    // running sum (bounded by the sum of magnitudes), plus two roundings per term.
    for k in 0..c {
        let tol = dg_mag[k] * (rows as f64 + 4.0) * 2f64.powi(-24) * 2.0;
        let got = f64::from(dg[k]);
        assert!(
            (got - dg_want[k]).abs() <= tol,
            "dg[{k}]: {got} vs {} (tol {tol})",
            dg_want[k]
        );
    }
}
