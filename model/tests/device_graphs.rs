//! The step's fixed launches captured into graphs and replayed (`--cuda-graphs on`)
//! against plain launches, on `emu` (whose graphs are the recorded launch lists, and
//! whose capture runs nothing, as CUDA's): the same losses, validation losses, handed-over
//! gradients and weights, bit for bit, over several steps (the first runs plainly, the
//! second captures, the rest replay).

mod common;

use std::ops::Range;

use common::*;
use frugal_model::config::ParamLayout;
use frugal_model::device::{Attention, GraphMode};

fn run(mode: GraphMode, attention: Attention) -> (Vec<u32>, Vec<u32>, usize) {
    let cfg = config(96, 128, 2, 2, 2, 344, 16);
    let p = ParamLayout::new(&cfg).total();
    let params = params_for(&cfg, 81);
    let mut dm = device_model(&cfg, 2, 16, attention);
    dm.set_graphs(mode);
    dm.set_state(&params, &zeros(p), &zeros(p), 0).unwrap();
    let mut bits = Vec::new();
    for step in 0..4u64 {
        dm.zero_grads().unwrap();
        let (inputs, targets) = tokens(&cfg, 32, 300 + step, (step % 2) as usize);
        let mut handed = Vec::new();
        let mut cb = |r: Range<usize>, g: &[f32]| {
            handed.extend(g.iter().map(|x| x.to_bits()));
            handed.push(r.start as u32);
        };
        let loss = dm
            .forward_backward(&inputs, &targets, 1.0, Some(&mut cb))
            .unwrap();
        bits.push(loss.to_bits());
        bits.extend(handed);
        dm.optimizer_step(1e-3, 1.0).unwrap();
        let (vi, vt) = tokens(&cfg, 32, 900 + step, 0);
        bits.push(dm.loss(&vi, &vt).unwrap().to_bits());
    }
    let (master, m, v) = dm.state().unwrap();
    let state = master
        .iter()
        .chain(&m)
        .chain(&v)
        .map(|x| x.to_bits())
        .collect();
    dm.device().synchronize().unwrap();
    (bits, state, dm.graphs_in_use().1)
}

#[test]
fn graph_replay_equals_plain_launches_bit_for_bit() {
    for attention in [Attention::Flash, Attention::Vanilla] {
        let (plain, plain_state, none) = run(GraphMode::Off, attention);
        assert_eq!(none, 0);
        let (replayed, replayed_state, captured) = run(GraphMode::On, attention);
        assert!(captured > 0, "{attention:?}: nothing was captured");
        assert!(
            plain == replayed,
            "{attention:?}: losses or gradients differ"
        );
        assert!(
            plain_state == replayed_state,
            "{attention:?}: weights differ"
        );
    }
}

#[test]
fn auto_leaves_the_emulator_on_plain_launches() {
    let cfg = config(96, 128, 1, 2, 2, 344, 16);
    let dm = device_model(&cfg, 1, 16, Attention::Flash);
    assert_eq!(dm.graphs_in_use(), (false, 0));
    assert_eq!("auto".parse::<GraphMode>().unwrap(), GraphMode::Auto);
    assert_eq!("on".parse::<GraphMode>().unwrap().as_str(), "on");
    let e = "yes".parse::<GraphMode>().unwrap_err();
    assert!(e.contains("off, on, auto"), "{e}");
}
