//! The sharded step's side of [`DeviceModel`] (`--shard grad-op|full`): which
//! shard this rank holds, its bf16 weights read and written by range, the
//! forward and backward whose units' weights are completed by the ranks'
//! gathers ([`GatherUnit`], [`AwaitUnit`]), and the optimizer step whose norm
//! partials come from every rank. The unsharded step is in `mod.rs`.

use std::ops::Range;

use frugal_ptx::kernels::adamw;

use frugal_runtime::nvtx;

use super::{
    device_err, host_vec, kernel_err, sharding, AwaitUnit, DeviceModel, GatherUnit, OnReady,
    WeightHooks,
};
use crate::error::ModelError;

impl DeviceModel {
    /// The units a sharded step completes weights by ([`sharding::units`]: the
    /// embedding, each layer, the final norm with the LM head), in the forward's order:
    /// the ranges [`GatherUnit`] and [`AwaitUnit`] are called with.
    pub fn units(&self) -> Vec<Range<usize>> {
        sharding::units(&self.layout, self.cfg.n_layers)
    }

    /// This rank's flat range of the parameters: what its master weights, AdamW moments
    /// and decay mask hold and its optimizer updates (`0..P` when not sharded).
    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }

    /// Makes this model rank `rank`'s of a sharded job (the shard `frugal_comm::Shards`
    /// gives it, aligned to the norm kernel's chunk): call before [`DeviceModel::set_state`].
    /// Every rank's arena holds the largest shard, so all ranks plan the same arena.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for a rank outside the job; device errors.
    pub fn set_rank(&mut self, rank: usize) -> Result<(), ModelError> {
        let world = self.options.sharding.world;
        if rank >= world {
            return Err(ModelError::ShapeMismatch {
                what: "rank of the sharded job (must be below the world size)",
                expected: world - 1,
                found: rank,
            });
        }
        self.shard = self.options.sharding.range(self.layout.total(), rank);
        self.upload_tables()
    }

    /// `--shard full`: reads this rank's bf16 weights into the host copy the unit
    /// gathers take their part from (nothing otherwise).
    pub(super) fn refresh_own_bf16(&mut self) -> Result<(), ModelError> {
        if !self.options.sharding.shards_weights() || self.gathers_on_device() {
            return Ok(());
        }
        let mut own = std::mem::take(&mut self.own_bf16);
        own.clear();
        own.resize(self.shard.len(), half::bf16::ZERO);
        let read = self.read_weights(self.shard.clone(), &mut own);
        self.own_bf16 = own;
        read
    }

    /// Reads the bf16 weights of `range` (a sharded step's all-gather sends its shard's).
    /// Under `--shard full` the rank holds only its shard's: `range` must lie in it.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for a range outside the model (or, `--shard full`,
    /// outside the shard) or an `out` of another length; device errors.
    pub fn read_weights(
        &self,
        range: Range<usize>,
        out: &mut [half::bf16],
    ) -> Result<(), ModelError> {
        self.check_range(&range, out.len())?;
        self.read_at(
            self.ids.weights,
            self.weights_offset(range.start),
            out,
            "reading the bf16 weights",
        )
    }

    /// Writes the bf16 weights of `range` (a sharded step's all-gathered weights).
    ///
    /// # Errors
    /// As [`DeviceModel::read_weights`].
    pub fn write_weights(
        &mut self,
        range: Range<usize>,
        values: &[half::bf16],
    ) -> Result<(), ModelError> {
        self.check_range(&range, values.len())?;
        self.write_at(
            self.ids.weights,
            self.weights_offset(range.start),
            values,
            "writing the bf16 weights",
        )?;
        if self.options.sharding.shards_weights() && !range.is_empty() {
            let at = range.start - self.shard.start..range.end - self.shard.start;
            if let Some(own) = self.own_bf16.get_mut(at) {
                own.copy_from_slice(values);
            }
        }
        Ok(())
    }

    /// Byte offset of parameter `i` in the bf16 weights buffer (which holds only the
    /// shard under `--shard full`; `i` is then in it).
    pub(super) fn weights_offset(&self, i: usize) -> u64 {
        if self.options.sharding.shards_weights() {
            i.saturating_sub(self.shard.start) as u64 * 2
        } else {
            i as u64 * 2
        }
    }

    pub(super) fn check_range(&self, range: &Range<usize>, len: usize) -> Result<(), ModelError> {
        let p = self.layout.total();
        if self.options.sharding.shards_weights()
            && !range.is_empty()
            && (range.start < self.shard.start || range.end > self.shard.end)
        {
            return Err(ModelError::ShapeMismatch {
                what: "bf16 weight range end (--shard full: within this rank's shard)",
                expected: self.shard.end,
                found: range.end,
            });
        }
        if range.start > range.end || range.end > p {
            return Err(ModelError::ShapeMismatch {
                what: "weight range end (at most the parameter count)",
                expected: p,
                found: range.end,
            });
        }
        Self::check_len("weight values for the range", range.len(), len)
    }

    /// `--shard full`: gathers unit `range`'s whole bf16 weights into gather buffer `buf`
    /// through `gather` (this rank's part, its shard ∩ the unit, read from its bf16 shard
    /// and staged in `host` at its place; `gather` fills in the rest), then uploads them.
    pub(super) fn gather_unit<E: From<ModelError>>(
        &mut self,
        range: &Range<usize>,
        buf: usize,
        host: &mut Vec<half::bf16>,
        gather: Option<&mut GatherUnit<'_, E>>,
    ) -> Result<(), E> {
        let Some(gather) = gather else {
            return Err(ModelError::DeviceUnsupported {
                what: "--shard full: the step needs every rank's weights of each unit; call \
                       forward_backward_gathered / loss_gathered with the ranks' gather"
                    .into(),
            }
            .into());
        };
        host.clear();
        host.resize(range.len(), half::bf16::ZERO);
        let own = range.start.max(self.shard.start)..range.end.min(self.shard.end);
        if !own.is_empty() {
            let at = own.start - range.start..own.end - range.start;
            let mine = own.start - self.shard.start..own.end - self.shard.start;
            match self.own_bf16.get(mine) {
                Some(values) => host[at].copy_from_slice(values),
                None => self.read_weights(own.clone(), &mut host[at])?,
            }
        }
        gather(range.clone(), host)?;
        let off = self.offsets[buf] as usize;
        self.arena
            .buffer
            .write(off, host.as_slice())
            .map_err(device_err("uploading a gathered unit's weights"))?;
        Ok(())
    }

    /// `--shard grad-op`: makes unit `range`'s whole bf16 weights current through
    /// `awaits` (they are written when it hands them over). Without `awaits` the weights on
    /// the device are taken as current (a caller that wrote them whole itself).
    pub(super) fn await_unit<E: From<ModelError>>(
        &mut self,
        range: &Range<usize>,
        host: &mut Vec<half::bf16>,
        awaits: Option<&mut AwaitUnit<'_, E>>,
    ) -> Result<(), E> {
        let Some(awaits) = awaits else { return Ok(()) };
        if awaits(range.clone(), host)? {
            self.write_weights(range.clone(), host)?;
        }
        Ok(())
    }

    /// [`DeviceModel::forward_backward`] with `--shard full`'s weight gather: before each
    /// unit's first kernel of a pass (forward: embedding, layers 0.., final norm with the LM
    /// head; backward: layers L−2..0, the head and the last layer being still in their
    /// buffers), `gather` completes the unit's bf16 weights from the other ranks and they
    /// are uploaded into one of the two gather buffers. A micro-batch with no counted
    /// target still makes every gather (the other ranks' steps wait for this rank's part).
    /// `gather` may be `None` when the step does not shard the weights.
    ///
    /// # Errors
    /// As [`DeviceModel::forward_backward`], and whatever `gather` returns.
    pub fn forward_backward_gathered<E: From<ModelError>>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        on_ready: OnReady,
        gather: Option<&mut GatherUnit<'_, E>>,
    ) -> Result<f32, E> {
        let hooks = WeightHooks {
            gather,
            awaits: None,
        };
        self.forward_backward_with(inputs, targets, grad_scale, on_ready, hooks)
    }

    /// [`DeviceModel::forward_backward`] with `--shard grad-op`'s wait for the weights
    /// gathered after the last update: before each unit's first kernel of the forward
    /// (embedding, layers 0.., final norm with the LM head), `awaits` may hand over the
    /// unit's whole bf16 weights, which are written into the weights first. A micro-batch
    /// with no counted target still makes every wait. `awaits` may be `None` when the
    /// weights on the device are current.
    ///
    /// # Errors
    /// As [`DeviceModel::forward_backward`], [`ModelError::ShapeMismatch`] for handed-over
    /// weights of another length than the unit's, and whatever `awaits` returns.
    pub fn forward_backward_awaited<E: From<ModelError>>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        on_ready: OnReady,
        awaits: Option<&mut AwaitUnit<'_, E>>,
    ) -> Result<f32, E> {
        let hooks = WeightHooks {
            gather: None,
            awaits,
        };
        self.forward_backward_with(inputs, targets, grad_scale, on_ready, hooks)
    }

    /// [`DeviceModel::loss`] with `--shard full`'s weight gather (the forward's units, as
    /// [`DeviceModel::forward_backward_gathered`]).
    ///
    /// # Errors
    /// As [`DeviceModel::forward_backward_gathered`].
    pub fn loss_gathered<E: From<ModelError>>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        gather: Option<&mut GatherUnit<'_, E>>,
    ) -> Result<f32, E> {
        let hooks = WeightHooks {
            gather,
            awaits: None,
        };
        self.loss_with(inputs, targets, hooks)
    }

    /// [`DeviceModel::loss`] with `--shard grad-op`'s wait for gathered weights (the
    /// forward's units, as [`DeviceModel::forward_backward_awaited`]).
    ///
    /// # Errors
    /// As [`DeviceModel::forward_backward_awaited`].
    pub fn loss_awaited<E: From<ModelError>>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        awaits: Option<&mut AwaitUnit<'_, E>>,
    ) -> Result<f32, E> {
        let hooks = WeightHooks {
            gather: None,
            awaits,
        };
        self.loss_with(inputs, targets, hooks)
    }

    /// Replaces the f32 gradients of `range` (a sharded step's averaged shard, after
    /// the reduce-scatter: the norm partials and AdamW read only the shard's).
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for a range outside the model or `values` of
    /// another length; device errors.
    pub fn write_grads_at(
        &mut self,
        range: Range<usize>,
        values: &[f32],
    ) -> Result<(), ModelError> {
        self.check_range(&range, values.len())?;
        self.write_at(
            self.ids.grads,
            range.start as u64 * 4,
            values,
            "writing the gradients",
        )
    }

    /// The first pass of the gradient norm over this rank's shard: returns the norm
    /// chunks it covers (indices into the whole vector's [`adamw::norm_parts`]) and the
    /// whole partials vector with those entries filled (the rest 0). The shard starts on
    /// a chunk ([`adamw::NORM_CHUNK`]), so each entry is exactly the unsharded step's.
    ///
    /// # Errors
    /// Device errors.
    pub fn norm_partials(&mut self) -> Result<(Range<usize>, Vec<f64>), ModelError> {
        let p = self.layout.total();
        let shard = self.shard.clone();
        let mut parts = host_vec::<f64>(adamw::norm_parts(p), "the gradient norm partials")?;
        let first = shard.start / adamw::NORM_CHUNK;
        let chunks = first..first + adamw::norm_parts(shard.len());
        if shard.is_empty() {
            return Ok((first..first, parts));
        }
        let ids = self.ids;
        let launch = adamw::grad_norm_partial(
            self.addr(ids.grads) + shard.start as u64 * 4,
            shard.len(),
            self.addr(ids.norm_partials) + first as u64 * 8,
        )
        .map_err(kernel_err("gradient norm"))?;
        self.launch_all("gradient norm", &[launch])?;
        self.read_at(
            ids.norm_partials,
            first as u64 * 8,
            bytemuck::cast_slice_mut::<f64, u8>(&mut parts[chunks.clone()]),
            "reading the gradient norm partials",
        )?;
        Ok((chunks, parts))
    }

    /// The rest of a sharded optimizer step, given every rank's norm partials (gathered
    /// from [`DeviceModel::norm_partials`]): the norm and clip factor over all of them
    /// (the unsharded step's bits), then AdamW on this rank's shard, which writes the
    /// shard's bf16 weights; the other shards' arrive by [`DeviceModel::write_weights`].
    /// Returns the norm before clipping (a non-finite one changes nothing).
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] for a partials vector of the wrong length; device
    /// errors.
    pub fn optimizer_step_with_partials(
        &mut self,
        lr: f32,
        max_norm: f64,
        partials: &[f64],
    ) -> Result<f64, ModelError> {
        let _range = nvtx::range("optimizer");
        let p = self.layout.total();
        Self::check_len(
            "gradient norm partials",
            adamw::norm_parts(p),
            partials.len(),
        )?;
        self.write_at(
            self.ids.norm_partials,
            0,
            bytemuck::cast_slice::<f64, u8>(partials),
            "writing the gradient norm partials",
        )?;
        self.finish_and_update(lr, max_norm)
    }
}
