//! One rank's memory, from the same step program and arena planner `train --dry-run` and
//! `frugal arena --model` use: the peak of the plan at a batch, and the largest batch whose
//! plan fits a GPU. The plan is of the step that GPU runs ([`target`]: from sm_90 the wgmma
//! kernels, which allocate differently), as `DeviceModel::new_for` plans it there. Plans are
//! cached per architecture.

use std::collections::HashMap;

use frugal_comm::ShardMode;
use frugal_model::config::{Attention, Config};
use frugal_model::device::program::Program;
use frugal_model::device::{StepOptions, StepTarget};
use frugal_runtime::arena;
use frugal_runtime::facts::DeviceFacts;
use frugal_runtime::RuntimeError;

use crate::error::CliError;

/// The largest batch the search tries: as `train --mem-target` bounds it.
pub const MAX_SEARCHED_BATCH: usize = 1024;

/// Bytes the CUDA context, the driver and the kernel modules take before the arena: an
/// estimate (a CUDA 12 context on an A100 or H100 takes 0.4-0.6 GiB, and the driver
/// reports ~0.8 GiB less than the marketed capacity: an "80GB" H100 shows 79.2 GiB).
pub const RESERVED_BYTES: u64 = 3 << 29; // 1.5 GiB

/// What one rank's arena may use on a GPU of `nominal` bytes.
pub fn usable_bytes(nominal: u64) -> u64 {
    nominal.saturating_sub(RESERVED_BYTES)
}

/// Key of a cached plan: model name, batch, attention and shard names, world, architecture.
type Key = (&'static str, usize, &'static str, &'static str, usize, u32);

/// The step a GPU of `facts` runs: its compute capability (the device step's own choice on
/// that GPU) and SMs (the persistent wgmma grids', which change no buffer).
pub fn target(facts: &DeviceFacts) -> StepTarget {
    StepTarget {
        arch: facts.sm,
        sms: facts
            .roofline
            .as_ref()
            .map_or(StepTarget::DEFAULT_SMS, |r| r.sms),
    }
}

/// Built step programs' peaks and the batch searches, by configuration.
#[derive(Default)]
pub struct Planner {
    peaks: HashMap<Key, u64>,
    largest: HashMap<(Key, u64), Option<usize>>,
}

/// The step options of one rank of a `world`-rank job sharded `shard`.
pub fn options(attention: Attention, shard: ShardMode, world: usize) -> StepOptions {
    StepOptions {
        sharding: crate::train::target::sharding(shard, world),
        ..StepOptions::deterministic(attention)
    }
}

/// The step program of one rank (a model error is a failure naming the configuration).
pub fn program(
    name: &str,
    cfg: &Config,
    batch: usize,
    attention: Attention,
    shard: ShardMode,
    world: usize,
) -> Result<Program, CliError> {
    Program::plan_only(cfg, batch, cfg.seq_len, options(attention, shard, world)).map_err(|e| {
        CliError::usage(format!(
            "plan: {name} at batch {batch}, attention {attention}, shard {shard}, {world} device(s): {e}"
        ))
    })
}

impl Planner {
    /// The planned peak bytes of one rank at `batch` on a GPU of `target`.
    #[allow(clippy::too_many_arguments)]
    pub fn peak(
        &mut self,
        name: &'static str,
        cfg: &Config,
        batch: usize,
        attention: Attention,
        shard: ShardMode,
        world: usize,
        target: StepTarget,
    ) -> Result<u64, CliError> {
        let key = (
            name,
            batch,
            attention.name(),
            shard.name(),
            world,
            target.arch,
        );
        if let Some(&p) = self.peaks.get(&key) {
            return Ok(p);
        }
        let prog = Program::plan_only_for(
            cfg,
            batch,
            cfg.seq_len,
            options(attention, shard, world),
            target,
        )
        .map_err(|e| {
            CliError::usage(format!(
                "plan: {name} at batch {batch}, attention {attention}, shard {shard}, {world} \
                 device(s), sm_{}: {e}",
                target.arch
            ))
        })?;
        let peak = arena::plan(&prog.requests())?.peak_bytes;
        self.peaks.insert(key, peak);
        Ok(peak)
    }

    /// The largest batch (up to [`MAX_SEARCHED_BATCH`]) whose plan on a GPU of `target`
    /// fits in `available` bytes, `None` when not even batch 1 fits.
    #[allow(clippy::too_many_arguments)]
    pub fn largest_batch(
        &mut self,
        name: &'static str,
        cfg: &Config,
        attention: Attention,
        shard: ShardMode,
        world: usize,
        target: StepTarget,
        available: u64,
    ) -> Result<Option<usize>, CliError> {
        let key = (
            (name, 0, attention.name(), shard.name(), world, target.arch),
            available,
        );
        if let Some(&b) = self.largest.get(&key) {
            return Ok(b);
        }
        let opts = options(attention, shard, world);
        let found = arena::largest_batch_that_fits(MAX_SEARCHED_BATCH, available, |b| {
            Program::plan_only_for(cfg, b, cfg.seq_len, opts, target)
                .map(|p| p.requests())
                .map_err(|e| RuntimeError::BadRequest {
                    name: "device step".into(),
                    reason: e.to_string(),
                })
        });
        let largest = match found {
            Ok((b, _)) => Some(b),
            Err(RuntimeError::OutOfMemory { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        self.largest.insert(key, largest);
        Ok(largest)
    }
}
