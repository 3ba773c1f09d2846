//! Embedding lookup and gradient (`embedding.ptx`) under the emulator. The lookup is a copy,
//! so it must be bit-exact (vector path for C % 8 == 0, scalar otherwise); the gradient is
//! checked against an f64 sum with a bound on f32 accumulation, tokens drawn from a small
//! vocabulary so most tokens repeat, outputs poisoned beforehand.

use frugal_ptx::emu::{Checks, DeviceMemory};
use frugal_ptx::error::PtxError;
use frugal_ptx::kernels::embedding::{self, GradIndex};
use proptest::prelude::*;

mod kernel_harness;
use kernel_harness::*;

fn case(n: usize, c: usize, v: usize, seed: u64) {
    let mut gen = Gen(seed);
    let tokens: Vec<u32> = (0..n).map(|_| (gen.next() % v as u64) as u32).collect();
    let table = gen.bf16s(v * c, 1.0);
    let dout = gen.bf16s(n * c, 1.0);
    let dtable0: Vec<f32> = (0..v * c).map(|_| gen.unit()).collect();
    let m = module("embedding");
    let mut mem = DeviceMemory::new();
    let tok_d = upload(&mut mem, &tokens, "tokens");
    let table_d = upload(&mut mem, &table, "table");
    let out_d = upload(&mut mem, &vec![POISON_BF16; n * c], "out");
    run(
        &embedding::forward(tok_d, table_d, out_d, n, c, v).unwrap(),
        &m,
        &mut mem,
    );
    let out: Vec<u16> = download(&mem, out_d, n * c);
    for i in 0..n {
        let t = tokens[i] as usize;
        assert_eq!(
            &out[i * c..(i + 1) * c],
            &table[t * c..(t + 1) * c],
            "row {i}"
        );
    }

    let index = GradIndex::build(&tokens, v).unwrap();
    let rows_d = upload(&mut mem, &index.rows, "rows");
    let off_d = upload(&mut mem, &index.offsets, "offsets");
    let pos_d = upload(&mut mem, &index.positions, "positions");
    let dout_d = upload(&mut mem, &dout, "dout");
    let dtable_d = upload(&mut mem, &dtable0, "dtable");
    run(
        &embedding::backward(rows_d, off_d, pos_d, dout_d, dtable_d, index.rows.len(), c).unwrap(),
        &m,
        &mut mem,
    );
    let got: Vec<f32> = download(&mem, dtable_d, v * c);
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
    // of dout at its positions in increasing order (the CPU backend's order), so the bits
    // must match exactly, whatever the grouping.
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
    for (r, &cnt) in count.iter().enumerate() {
        for k in 0..c {
            let i = r * c + k;
            // bf16 values are exact in f32; each of the count additions rounds by at most
            // 2^-24 of the running sum, bounded by the sum of magnitudes. Rows without
            // tokens must be untouched (exactly the initial value).
            let tol = mag[i] * cnt as f64 * 2f64.powi(-24);
            let g = f64::from(got[i]);
            assert!(
                (g - want[i]).abs() <= tol,
                "dtable[{r},{k}]: {g} vs {} (tol {tol})",
                want[i]
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]
    /// C: paper hidden sizes over 8 (104, 192, 240, 312), odd widths (13, 259) for the
    /// scalar path; V from 1 (every token equal) to 50.
    #[test]
    fn embedding_matches_reference(
        n in 1usize..40,
        c in prop::sample::select(vec![104usize, 192, 240, 312, 13, 259]),
        v in 1usize..50,
        seed in any::<u64>(),
    ) {
        case(n, c, v, seed);
    }
}

#[test]
fn embedding_index_groups_positions_in_order() {
    let index = GradIndex::build(&[3, 1, 3, 0, 1, 3], 4).unwrap();
    assert_eq!(index.rows, vec![0, 1, 3]);
    assert_eq!(index.offsets, vec![0, 1, 3, 6]);
    assert_eq!(index.positions, vec![3, 1, 4, 0, 2, 5]);
    assert!(GradIndex::build(&[0, 4], 4).is_err());
}

#[test]
fn embedding_out_of_range_token_traps() {
    let m = module("embedding");
    let mut mem = DeviceMemory::new();
    let tok_d = upload(&mut mem, &[0u32, 9], "tokens");
    let table_d = upload(&mut mem, &[0u16; 4 * 8], "table");
    let out_d = upload(&mut mem, &[0u16; 2 * 8], "out");
    let launch = embedding::forward(tok_d, table_d, out_d, 2, 8, 4).unwrap();
    let err = launch.run_emu(&m, &mut mem, &Checks::default());
    assert!(matches!(err, Err(PtxError::Trap { .. })), "{err:?}");
}
