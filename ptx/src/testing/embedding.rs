//! Embedding lookup and gradient (`embedding.ptx`): the lookup is a copy, so bit-exact; the
//! gradient must equal, bit for bit, the f32 sum in the documented order (add.rn only, so
//! every device computes the same bits) and lie within an f32 accumulation bound of the f64
//! sum. Tokens come from a small vocabulary so most repeat; outputs poisoned.

use super::{bf, download, run, upload, Gen, Runner, POISON_BF16};
use crate::kernels::embedding::{self, GradIndex};

/// Lookup of `n` tokens from a (v, c) table, then the gradient into a random dtable.
pub fn case(r: &mut dyn Runner, n: usize, c: usize, v: usize, seed: u64) {
    let mut gen = Gen(seed);
    let tokens: Vec<u32> = (0..n).map(|_| (gen.next_u64() % v as u64) as u32).collect();
    let table = gen.bf16s(v * c, 1.0);
    let dout = gen.bf16s(n * c, 1.0);
    let dtable0: Vec<f32> = (0..v * c).map(|_| gen.unit()).collect();
    let tok_d = upload(r, &tokens, "tokens");
    let table_d = upload(r, &table, "table");
    let out_d = upload(r, &vec![POISON_BF16; n * c], "out");
    run(r, embedding::forward(tok_d, table_d, out_d, n, c, v));
    let out: Vec<u16> = download(r, out_d, n * c);
    for i in 0..n {
        let t = tokens[i] as usize;
        assert_eq!(
            &out[i * c..(i + 1) * c],
            &table[t * c..(t + 1) * c],
            "row {i}"
        );
    }

    let index = GradIndex::build(&tokens, v).unwrap_or_else(|e| panic!("{e}"));
    let rows_d = upload(r, &index.rows, "rows");
    let off_d = upload(r, &index.offsets, "offsets");
    let pos_d = upload(r, &index.positions, "positions");
    let dout_d = upload(r, &dout, "dout");
    let dtable_d = upload(r, &dtable0, "dtable");
    run(
        r,
        embedding::backward(rows_d, off_d, pos_d, dout_d, dtable_d, index.rows.len(), c),
    );
    let got: Vec<f32> = download(r, dtable_d, v * c);
    let mut want: Vec<f64> = dtable0.iter().map(|&x| f64::from(x)).collect();
    let mut mag: Vec<f64> = want.iter().map(|x| x.abs()).collect();
    let mut count = vec![0usize; v];
    for i in 0..n {
        let t = tokens[i] as usize;
        count[t] += 1;
        for k in 0..c {
            want[t * c + k] += bf(dout[i * c + k]);
            mag[t * c + k] += bf(dout[i * c + k]).abs();
        }
    }
    // The documented order, in f32: each table row starts from its value and adds the rows
    // of dout at its positions in increasing order (the CPU backend's order).
    let mut exact = dtable0.clone();
    for i in 0..n {
        let t = tokens[i] as usize;
        for k in 0..c {
            exact[t * c + k] += bf(dout[i * c + k]) as f32;
        }
    }
    for (i, (&g, &e)) in got.iter().zip(&exact).enumerate() {
        assert_eq!(g.to_bits(), e.to_bits(), "dtable[{i}] order: {g} vs {e}");
    }
    for (row, &cnt) in count.iter().enumerate() {
        for k in 0..c {
            let i = row * c + k;
            // bf16 values are exact in f32; each of the count additions rounds by at most
            // 2^-24 of the running sum, bounded by the sum of magnitudes. Rows without
            // tokens must be untouched (exactly the initial value).
            let tol = mag[i] * cnt as f64 * 2f64.powi(-24);
            let g = f64::from(got[i]);
            assert!(
                (g - want[i]).abs() <= tol,
                "dtable[{row},{k}]: {g} vs {} (tol {tol})",
                want[i]
            );
        }
    }
}
