//! Gradients reduced in place on the device (`forward_backward_reduced` with a
//! `DeviceCollective`) against the host-staged hand-over: the same bits. The collective
//! here stands for a 2-rank average whose peer contributed zeros (each value halved), run
//! as an operation on the emulated comm stream like the host ring's. The planted
//! variants (the collective not waiting for the range's kernels; the optimizer not
//! waiting for the last collective) are kept as tests expecting a reported race or a
//! wrong result.

mod common;

use std::ops::Range;

use common::*;
use frugal_model::config::ParamLayout;
use frugal_model::device::{Attention, DeviceModel};
use frugal_runtime::buffer::DeviceBuffer;
use frugal_runtime::collective::{CollectiveCounts, DeviceCollective};
use frugal_runtime::device::Device;
use frugal_runtime::stream::{Event, StreamKind};
use frugal_runtime::RuntimeError;

#[derive(Clone, Copy, PartialEq)]
enum Plant {
    None,
    /// The collective does not wait for the event after the range's kernels.
    NoWaitForKernels,
    /// The event handed back is recorded before the collective: the optimizer does not
    /// wait for it.
    EarlyEvent,
}

struct Halve {
    plant: Plant,
    ranges: Vec<Range<usize>>,
}

impl DeviceCollective for Halve {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_mean_f32(
        &mut self,
        device: &Device,
        buf: &DeviceBuffer,
        byte: usize,
        elems: Range<usize>,
        after: &Event,
    ) -> Result<Event, RuntimeError> {
        if self.plant != Plant::NoWaitForKernels {
            device.wait(StreamKind::Comm, after)?;
        }
        let early = device.record(StreamKind::Comm, "before the collective")?;
        let label = format!("halve {}..{}", elems.start, elems.end);
        self.ranges.push(elems.clone());
        let op = |bytes: &mut [u8]| -> Result<(), String> {
            for c in bytes.chunks_exact_mut(4) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) / 2.0;
                c.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        };
        device.queue_in_place(
            StreamKind::Comm,
            buf,
            byte,
            elems.len() * 4,
            &label,
            Box::new(op),
        )?;
        let done = device.record(StreamKind::Comm, &label)?;
        Ok(if self.plant == Plant::EarlyEvent {
            early
        } else {
            done
        })
    }
    fn wait(&mut self, _device: &Device, event: &Event) -> Result<(), RuntimeError> {
        event.synchronize(std::time::Duration::from_secs(60))
    }
    fn take_counts(&mut self) -> CollectiveCounts {
        CollectiveCounts::default()
    }
}

struct Run {
    losses: Vec<u32>,
    norms: Vec<u64>,
    state: Vec<u32>,
}

fn model() -> (DeviceModel, usize) {
    let cfg = config(96, 128, 2, 2, 2, 344, 16);
    let p = ParamLayout::new(&cfg).total();
    let mut dm = device_model(&cfg, 1, 16, Attention::Flash);
    dm.set_state(&params_for(&cfg, 5), &zeros(p), &zeros(p), 0)
        .unwrap();
    (dm, p)
}

/// Two steps of two micro-batches; the gradients halved on the device (`device` with
/// `plant`) or on the host after the host-staged hand-over.
fn run(device: Option<Plant>) -> Result<Run, String> {
    let (mut dm, p) = model();
    let cfg = config(96, 128, 2, 2, 2, 344, 16);
    if let Some(plant) = device {
        dm.set_collective(Some(Box::new(Halve {
            plant,
            ranges: Vec::new(),
        })));
    }
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    let mut host = zeros(p);
    for step in 0..2u64 {
        dm.zero_grads().unwrap();
        let (i1, t1) = tokens(&cfg, 16, 10 + step, 1);
        let (i2, t2) = tokens(&cfg, 16, 20 + step, 0);
        losses.push(dm.forward_backward(&i1, &t1, 0.5, None).unwrap().to_bits());
        let loss = if device.is_some() {
            dm.forward_backward_reduced(&i2, &t2, 0.5)
                .map_err(|e| e.to_string())?
        } else {
            let mut handed = 0;
            let mut cb = |r: Range<usize>, _: &[f32]| handed += r.len();
            let loss = dm.forward_backward(&i2, &t2, 0.5, Some(&mut cb)).unwrap();
            assert_eq!(handed, p);
            dm.read_grads(&mut host).unwrap();
            for g in &mut host {
                *g /= 2.0;
            }
            dm.write_grads(&host).unwrap();
            loss
        };
        losses.push(loss.to_bits());
        // A small clip so that the norm reaches the weights.
        let norm = dm.optimizer_step(1e-3, 0.05).map_err(|e| e.to_string())?;
        norms.push(norm.to_bits());
    }
    let (master, m, v) = dm.state().map_err(|e| e.to_string())?;
    dm.device().synchronize().map_err(|e| e.to_string())?;
    let state = master
        .iter()
        .chain(&m)
        .chain(&v)
        .map(|x| x.to_bits())
        .collect();
    Ok(Run {
        losses,
        norms,
        state,
    })
}

#[test]
fn device_reduction_trains_the_bits_of_the_host_staged_path() {
    let host = run(None).unwrap();
    let device = run(Some(Plant::None)).unwrap();
    assert_eq!(host.losses, device.losses, "losses");
    assert_eq!(host.norms, device.norms, "gradient norms");
    assert!(host.state == device.state, "weights or moments differ");
}

#[test]
fn planted_collective_not_waiting_for_the_kernels_is_reported_as_a_race() {
    let e = run(Some(Plant::NoWaitForKernels)).err().expect("the race");
    assert!(e.contains("race") && e.contains("halve"), "{e}");
}

#[test]
fn planted_optimizer_not_waiting_for_the_last_collective_gives_another_result() {
    let host = run(None).unwrap();
    let planted = run(Some(Plant::EarlyEvent)).unwrap();
    assert_ne!(host.norms, planted.norms, "the norm of unreduced gradients");
    assert!(host.state != planted.state);
}

#[test]
fn a_device_reduction_needs_a_collective() {
    let (mut dm, _) = model();
    let cfg = config(96, 128, 2, 2, 2, 344, 16);
    let (i, t) = tokens(&cfg, 16, 1, 0);
    let e = dm.forward_backward_reduced(&i, &t, 1.0).unwrap_err();
    assert!(e.to_string().contains("set_collective"), "{e}");
}
