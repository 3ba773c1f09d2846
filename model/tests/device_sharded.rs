//! The device training step sharded over ranks (`--shard grad-op`, `--shard full`),
//! the ranks simulated in turn in one process on the PTX emulator (or a GPU with
//! `FRUGAL_TEST_DEVICE=cuda`): every rank's shard, bf16 weights, norms and losses are
//! the unsharded step's, bit for bit.

mod common;

use common::*;
use frugal_model::config::ParamLayout;
use frugal_model::device::{DeviceModel, ShardState, Sharding, StepOptions};
use frugal_model::{ModelError, IGNORE_INDEX};

/// `--shard grad-op` on the device step, ranks simulated in turn: each rank's model holds
/// the master weights and moments of its shard only; the gradients every rank holds are
/// the DDP all-reduce's (a reduce-scatter gives the shard's same bits: both reduce each
/// element on its owner), the norm partials are exchanged as the host all-gather does,
/// and the other ranks' updated bf16 shards come in through the await callback, unit by
/// unit, just before each unit's forward (as the trainer's gathers started after the
/// optimizer do). The callback is asked for exactly the forward's units, in order, once
/// per forward (not in the backward); handed-over weights land at their place (the next
/// step and validation see them), and when nothing is pending the device's weights are
/// used. After a few clipped steps every rank's shard, its bf16 weights, the norms and
/// the validation loss are the unsharded step's, bit for bit, at 2 and 3 ranks, with
/// shard boundaries (multiples of 65536) inside tensors.
#[test]
fn grad_op_shards_train_the_same_bits_as_one_replica() {
    use std::ops::Range;
    // 393,856 parameters: 7 norm chunks; the boundaries (262144 at 2 ranks; 196608 and
    // 327680 at 3) fall inside layer 1's and layer 0's matrices.
    let cfg = config(256, 128, 2, 2, 2, 256, 16);
    let layout = ParamLayout::new(&cfg);
    let p = layout.total();
    let (b, t) = (2, 16);
    let params = params_for(&cfg, 11);
    let steps = 2;
    let (lr, clip) = (1e-3f32, 0.5f64);
    let batches: Vec<_> = (0..steps)
        .map(|s| tokens(&cfg, b * t, 100 + s as u64, 3))
        .collect();

    // The unsharded replica.
    let mut one = device_model(&cfg, b, t, StepOptions::default());
    one.set_state(&params, &zeros(p), &zeros(p), 0).unwrap();
    let mut norms = Vec::new();
    for (inputs, targets) in &batches {
        one.zero_grads().unwrap();
        one.forward_backward(inputs, targets, 1.0, None).unwrap();
        norms.push(one.optimizer_step(lr, clip).unwrap());
    }
    let (want_master, want_m, want_v) = one.state().unwrap();
    let mut want_weights = vec![half::bf16::ZERO; p];
    one.read_weights(0..p, &mut want_weights).unwrap();
    assert!(
        norms.iter().all(|&n| n > clip),
        "clipping is exercised: {norms:?}"
    );
    let (val_in, val_tgt) = tokens(&cfg, b * t, 7, 0);
    let want_val = one.loss(&val_in, &val_tgt).unwrap();
    let forward_order = one.units();
    assert_eq!(forward_order.len(), cfg.n_layers + 2);

    for world in [2, 3] {
        let opts = StepOptions {
            sharding: Sharding::new(ShardState::GradOp, world),
            ..Default::default()
        };
        let mut ranks: Vec<DeviceModel> = (0..world)
            .map(|r| {
                let mut m = device_model(&cfg, b, t, opts);
                m.set_rank(r).unwrap();
                m.set_state(&params, &zeros(p), &zeros(p), 0).unwrap();
                m
            })
            .collect();
        let shards: Vec<_> = ranks.iter().map(|m| m.shard()).collect();
        assert!(shards.iter().all(|s| s.len() < p && s.start % 65536 == 0));
        assert!(
            shards[1..].iter().all(|s| layout
                .tensors
                .iter()
                .any(|ts| ts.offset < s.start && s.start < ts.offset + ts.len())),
            "boundaries inside tensors: {shards:?}"
        );
        // Per rank, the units whose gathered weights are waiting to be taken.
        let mut pending: Vec<Vec<Range<usize>>> = vec![Vec::new(); world];
        let mut gathered = vec![half::bf16::ZERO; p];
        for (step, (inputs, targets)) in batches.iter().enumerate() {
            // Every rank's forward and backward with its gathered weights: the same
            // gradients on every rank (one micro-batch each, as after the all-reduce).
            let mut grads = Vec::new();
            for (m, left) in ranks.iter_mut().zip(pending.iter_mut()) {
                m.zero_grads().unwrap();
                let mut seen: Vec<Range<usize>> = Vec::new();
                let mut awaits =
                    |r: Range<usize>, w: &mut Vec<half::bf16>| -> Result<bool, ModelError> {
                        seen.push(r.clone());
                        let Some(at) = left.iter().position(|x| *x == r) else {
                            return Ok(false);
                        };
                        left.remove(at);
                        w.clear();
                        w.extend_from_slice(&gathered[r]);
                        Ok(true)
                    };
                m.forward_backward_awaited(inputs, targets, 1.0, None, Some(&mut awaits))
                    .unwrap();
                assert_eq!(seen, forward_order, "world {world} step {step}");
                assert!(left.is_empty(), "every pending unit is taken");
                let mut g = zeros(p);
                m.read_grads(&mut g).unwrap();
                grads.push(g);
            }
            assert!(grads.iter().all(|g| g == &grads[0]), "step {step}");
            // The norm partials of each shard, gathered.
            let mut partials = vec![0.0f64; frugal_ptx::kernels::adamw::norm_parts(p)];
            for m in ranks.iter_mut() {
                let (chunks, parts) = m.norm_partials().unwrap();
                partials[chunks.clone()].copy_from_slice(&parts[chunks]);
            }
            // The shard optimizers, then every unit's gather pending on every rank.
            for (m, s) in ranks.iter_mut().zip(&shards) {
                let norm = m.optimizer_step_with_partials(lr, clip, &partials).unwrap();
                assert_eq!(
                    norm.to_bits(),
                    norms[step].to_bits(),
                    "world {world} step {step}"
                );
                m.read_weights(s.clone(), &mut gathered[s.clone()]).unwrap();
            }
            for left in pending.iter_mut() {
                *left = forward_order.clone();
            }
        }
        // Validation takes the last update's gathers; a second batch finds none.
        for (m, left) in ranks.iter_mut().zip(pending.iter_mut()) {
            for pass in 0..2 {
                let mut taken = 0;
                let mut awaits =
                    |r: Range<usize>, w: &mut Vec<half::bf16>| -> Result<bool, ModelError> {
                        let Some(at) = left.iter().position(|x| *x == r) else {
                            return Ok(false);
                        };
                        left.remove(at);
                        taken += 1;
                        w.clear();
                        w.extend_from_slice(&gathered[r]);
                        Ok(true)
                    };
                let v = m
                    .loss_awaited(&val_in, &val_tgt, Some(&mut awaits))
                    .unwrap();
                assert_eq!(v.to_bits(), want_val.to_bits(), "world {world} pass {pass}");
                let want_taken = if pass == 0 { forward_order.len() } else { 0 };
                assert_eq!(taken, want_taken, "world {world} pass {pass}");
            }
        }
        for (m, s) in ranks.iter().zip(&shards) {
            let (master, mm, vv) = m.state().unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&master),
                bits(&want_master[s.clone()]),
                "world {world} {s:?}"
            );
            assert_eq!(bits(&mm), bits(&want_m[s.clone()]), "world {world} {s:?}");
            assert_eq!(bits(&vv), bits(&want_v[s.clone()]), "world {world} {s:?}");
            let mut w = vec![half::bf16::ZERO; p];
            m.read_weights(0..p, &mut w).unwrap();
            assert!(w == want_weights, "world {world}: bf16 weights differ");
        }
        // The whole-vector optimizer refuses a sharded step instead of updating garbage.
        assert!(ranks[0].optimizer_step(lr, clip).is_err());
        // Weights of another length than the unit's are refused, not written.
        let mut short = |_: Range<usize>, w: &mut Vec<half::bf16>| -> Result<bool, ModelError> {
            w.clear();
            Ok(true)
        };
        assert!(matches!(
            ranks[0].loss_awaited(&val_in, &val_tgt, Some(&mut short)),
            Err(ModelError::ShapeMismatch { .. })
        ));
    }
}

/// `--shard full` on the device step, ranks simulated in turn: each rank holds only its
/// shard of the bf16 weights (beside grad-op's shard of master weights and moments) and
/// gets each unit's whole weights through the gather callback just before the unit runs,
/// here completed from a host copy of every rank's shard (as the all-gather would). Losses,
/// gradients, norms, the shards' state and bf16 weights are the unsharded step's, bit for
/// bit, at 2 and 3 ranks with shard boundaries inside tensors; the units come in the
/// forward's order and then the backward's (the head and the last layer not again), a
/// micro-batch with no counted target still gathers, and validation gathers the forward's.
#[test]
fn full_shards_gather_each_unit_and_train_the_same_bits_as_one_replica() {
    use frugal_model::device::sharding::units;
    use std::ops::Range;
    let cfg = config(256, 128, 2, 2, 2, 256, 16);
    let layout = ParamLayout::new(&cfg);
    let p = layout.total();
    let (b, t) = (2, 16);
    let params = params_for(&cfg, 11);
    let steps = 2;
    let (lr, clip) = (1e-3f32, 0.5f64);
    let batches: Vec<_> = (0..steps)
        .map(|s| tokens(&cfg, b * t, 100 + s as u64, 3))
        .collect();
    let (val_in, val_tgt) = tokens(&cfg, b * t, 7, 0);
    let none_counted = (val_in.clone(), vec![IGNORE_INDEX; b * t]);

    let mut one = device_model(&cfg, b, t, StepOptions::default());
    one.set_state(&params, &zeros(p), &zeros(p), 0).unwrap();
    let (mut losses, mut grads, mut norms, mut val) = (vec![], vec![], vec![], vec![]);
    for (inputs, targets) in &batches {
        one.zero_grads().unwrap();
        losses.push(one.forward_backward(inputs, targets, 1.0, None).unwrap());
        let mut g = zeros(p);
        one.read_grads(&mut g).unwrap();
        grads.push(g);
        norms.push(one.optimizer_step(lr, clip).unwrap());
        val.push(one.loss(&val_in, &val_tgt).unwrap());
    }
    let (want_master, want_m, want_v) = one.state().unwrap();
    let mut want_weights = vec![half::bf16::ZERO; p];
    one.read_weights(0..p, &mut want_weights).unwrap();

    let u = units(&layout, cfg.n_layers);
    let forward_order: Vec<Range<usize>> = u.clone();
    // Backward: layers L-2..0 (the head and layer L-1 are still in their buffers).
    let backward_order: Vec<Range<usize>> = u[1..cfg.n_layers].iter().rev().cloned().collect();

    for world in [2, 3] {
        let opts = StepOptions {
            sharding: Sharding::new(ShardState::Full, world),
            ..Default::default()
        };
        let mut ranks: Vec<DeviceModel> = (0..world)
            .map(|r| {
                let mut m = device_model(&cfg, b, t, opts);
                m.set_rank(r).unwrap();
                m.set_state(&params, &zeros(p), &zeros(p), 0).unwrap();
                m
            })
            .collect();
        let shards: Vec<_> = ranks.iter().map(|m| m.shard()).collect();
        // The host copy of every rank's bf16 shard: what the all-gather delivers.
        let mut mirror = vec![half::bf16::ZERO; p];
        for (m, s) in ranks.iter().zip(&shards) {
            m.read_weights(s.clone(), &mut mirror[s.clone()]).unwrap();
        }
        let mut whole = vec![half::bf16::ZERO; p];
        for (x, v) in whole.iter_mut().zip(&params) {
            *x = half::bf16::from_f32(*v);
        }
        assert!(
            mirror == whole,
            "set_state casts each shard as the whole copy"
        );
        // The whole copy is not on a full rank: reading outside its shard is refused.
        assert!(ranks[0].read_weights(0..p, &mut whole).is_err());
        // Without the gather the step cannot run.
        assert!(ranks[0]
            .forward_backward(&batches[0].0, &batches[0].1, 1.0, None)
            .is_err());

        for (step, (inputs, targets)) in batches.iter().enumerate() {
            let mut partials = vec![0.0f64; frugal_ptx::kernels::adamw::norm_parts(p)];
            for (m, s) in ranks.iter_mut().zip(&shards) {
                let mut seen: Vec<Range<usize>> = Vec::new();
                let mut gather =
                    |r: Range<usize>, w: &mut [half::bf16]| -> Result<(), ModelError> {
                        for (i, x) in r.clone().zip(w.iter_mut()) {
                            if s.contains(&i) {
                                assert_eq!(*x, mirror[i], "this rank's part comes from its shard");
                            } else {
                                *x = mirror[i];
                            }
                        }
                        seen.push(r);
                        Ok(())
                    };
                m.zero_grads().unwrap();
                // A micro-batch with nothing counted first: loss 0, no gradient, but the
                // same gathers as the others.
                let zero = m
                    .forward_backward_gathered(
                        &none_counted.0,
                        &none_counted.1,
                        1.0,
                        None,
                        Some(&mut gather),
                    )
                    .unwrap();
                assert_eq!(zero, 0.0);
                let loss = m
                    .forward_backward_gathered(inputs, targets, 1.0, None, Some(&mut gather))
                    .unwrap();
                assert_eq!(
                    loss.to_bits(),
                    losses[step].to_bits(),
                    "world {world} step {step}"
                );
                let pass: Vec<_> = forward_order
                    .iter()
                    .chain(&backward_order)
                    .cloned()
                    .collect();
                assert_eq!(seen[..pass.len()], pass[..], "world {world}");
                assert_eq!(seen[pass.len()..], pass[..], "world {world}");
                let mut g = zeros(p);
                m.read_grads(&mut g).unwrap();
                assert!(
                    g == grads[step],
                    "world {world} step {step}: gradients differ"
                );
                let (chunks, parts) = m.norm_partials().unwrap();
                partials[chunks.clone()].copy_from_slice(&parts[chunks]);
            }
            for (m, s) in ranks.iter_mut().zip(&shards) {
                let norm = m.optimizer_step_with_partials(lr, clip, &partials).unwrap();
                assert_eq!(
                    norm.to_bits(),
                    norms[step].to_bits(),
                    "world {world} step {step}"
                );
                m.read_weights(s.clone(), &mut mirror[s.clone()]).unwrap();
            }
            for (m, s) in ranks.iter_mut().zip(&shards) {
                let mut seen = 0;
                let mut gather =
                    |r: Range<usize>, w: &mut [half::bf16]| -> Result<(), ModelError> {
                        for (i, x) in r.clone().zip(w.iter_mut()) {
                            if !s.contains(&i) {
                                *x = mirror[i];
                            }
                        }
                        assert_eq!(r, forward_order[seen]);
                        seen += 1;
                        Ok(())
                    };
                let v = m
                    .loss_gathered(&val_in, &val_tgt, Some(&mut gather))
                    .unwrap();
                assert_eq!(seen, forward_order.len());
                assert_eq!(
                    v.to_bits(),
                    val[step].to_bits(),
                    "world {world} step {step}"
                );
            }
        }
        assert!(mirror == want_weights, "world {world}: bf16 weights differ");
        for (m, s) in ranks.iter().zip(&shards) {
            let (master, mm, vv) = m.state().unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&master),
                bits(&want_master[s.clone()]),
                "world {world} {s:?}"
            );
            assert_eq!(bits(&mm), bits(&want_m[s.clone()]), "world {world} {s:?}");
            assert_eq!(bits(&vv), bits(&want_v[s.clone()]), "world {world} {s:?}");
        }
        // The gather's own error comes back as the step's.
        #[derive(Debug)]
        enum Failed {
            Model(ModelError),
            Peer(&'static str),
        }
        impl From<ModelError> for Failed {
            fn from(e: ModelError) -> Failed {
                Failed::Model(e)
            }
        }
        let mut failing = |_: Range<usize>, _: &mut [half::bf16]| -> Result<(), Failed> {
            Err(Failed::Peer("gone"))
        };
        match ranks[1].loss_gathered(&val_in, &val_tgt, Some(&mut failing)) {
            Err(Failed::Peer("gone")) => {}
            Err(Failed::Model(e)) => panic!("expected the gather's error, got {e}"),
            other => panic!("expected the gather's error, got {other:?}"),
        }
    }
}
