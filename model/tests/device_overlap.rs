//! The overlapped gradient hand-over (finished ranges copied on the copy stream while
//! backward goes on) against the synchronous one: the same ranges with the same bits,
//! the same losses and the same weights after optimizer steps. On `emu` the stream
//! scheduler runs each copy as early as its event wait allows and reports a copy that
//! read bytes a pending kernel changed, so an ordering bug fails here.

mod common;

use std::ops::Range;

use common::*;
use frugal_model::config::ParamLayout;
use frugal_model::device::Attention;

type Handed = Vec<(Range<usize>, Vec<u32>)>;

/// Three steps of two micro-batches each (the hand-over on the second), with overlap
/// on or off: per step the loss bits and the ranges handed over, then the final state.
fn run(overlap: bool) -> (Vec<u32>, Vec<Handed>, Vec<u32>) {
    let cfg = config(96, 128, 2, 2, 2, 344, 16);
    let p = ParamLayout::new(&cfg).total();
    let params = params_for(&cfg, 71);
    let mut dm = device_model(&cfg, 1, 16, Attention::Flash);
    dm.set_overlap(overlap);
    dm.set_state(&params, &zeros(p), &zeros(p), 0).unwrap();
    let (mut losses, mut handed) = (Vec::new(), Vec::new());
    for step in 0..3u64 {
        dm.zero_grads().unwrap();
        let (i1, t1) = tokens(&cfg, 16, 100 + step, 1);
        let (i2, t2) = tokens(&cfg, 16, 200 + step, 0);
        losses.push(dm.forward_backward(&i1, &t1, 0.5, None).unwrap().to_bits());
        let mut seen: Handed = Vec::new();
        let mut cb = |r: Range<usize>, g: &[f32]| {
            seen.push((r, g.iter().map(|x| x.to_bits()).collect()));
        };
        losses.push(
            dm.forward_backward(&i2, &t2, 0.5, Some(&mut cb))
                .unwrap()
                .to_bits(),
        );
        // What was handed over is what the device holds: nothing changed it after.
        let mut all = zeros(p);
        dm.read_grads(&mut all).unwrap();
        for (r, g) in &seen {
            let now: Vec<u32> = all[r.clone()].iter().map(|x| x.to_bits()).collect();
            assert_eq!(&now, g, "range {r:?} changed after it was handed over");
        }
        assert_eq!(
            seen.iter().map(|(r, _)| r.len()).sum::<usize>(),
            p,
            "every parameter is handed over once"
        );
        handed.push(seen);
        dm.optimizer_step(1e-3, 1.0).unwrap();
    }
    let (master, m, v) = dm.state().unwrap();
    let bits = master
        .iter()
        .chain(&m)
        .chain(&v)
        .map(|x| x.to_bits())
        .collect();
    dm.device().synchronize().unwrap();
    (losses, handed, bits)
}

#[test]
fn overlapped_hand_over_equals_the_synchronous_one_bit_for_bit() {
    let (loss_sync, handed_sync, state_sync) = run(false);
    let (loss_async, handed_async, state_async) = run(true);
    assert_eq!(loss_sync, loss_async, "losses");
    assert_eq!(handed_sync.len(), handed_async.len());
    for (step, (a, b)) in handed_sync.iter().zip(&handed_async).enumerate() {
        let ra: Vec<_> = a.iter().map(|(r, _)| r.clone()).collect();
        let rb: Vec<_> = b.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ra, rb, "step {step}: range order");
        assert!(a == b, "step {step}: handed-over values differ");
    }
    assert!(state_sync == state_async, "weights or moments differ");
}
