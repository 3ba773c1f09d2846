//! The weights providers of the sharded CPU step: where the model gets each
//! unit's weights under `--shard grad-op` and `--shard full`.
//!
//! - [`GatheredWeights`] (grad-op): every weight is held whole, but after an
//!   optimizer step only this rank's shard is current; the others' updated
//!   values are on their way (gathers started right after the update, one per
//!   unit in forward order). The first forward after the update waits for each
//!   unit just before it uses it, so the gathers of the later units overlap the
//!   compute of the earlier ones.
//! - [`ShardedWeights`] (full): only the shard is held. Each unit is gathered
//!   just before its use into a reused buffer, and the next unit of the pass
//!   is prefetched while this one computes (forward: embedding, layers 0..,
//!   head; backward: head, layers ..0). The head is used last by the forward
//!   and first by the backward, so it is kept between them rather than
//!   gathered twice.
//!
//! Both share the [`GradSync`] with backward's hand-over of finished gradient
//! ranges, hence the `RefCell`: each call borrows it only for the moment of a
//! collective. A failed gather is kept (with the peer it names) and returned
//! by [`failure`] in place of the model's error, which can only carry text.

use std::cell::RefCell;
use std::ops::Range;

use frugal_comm::Ticket;
use frugal_model::config::Unit;
use frugal_model::cpu::{Pass, Weights};
use frugal_model::ModelError;

use crate::error::CliError;
use crate::train::sync::GradSync;

/// Every unit and its flat range, in forward order.
pub type UnitRanges = [(Unit, Range<usize>)];

fn range_of(units: &UnitRanges, unit: Unit) -> Option<Range<usize>> {
    units
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, r)| r.clone())
}

/// The part of `range` inside `shard`, relative to the shard's start.
pub fn owned_part(range: &Range<usize>, shard: &Range<usize>) -> Range<usize> {
    let lo = range.start.max(shard.start);
    let hi = range.end.min(shard.end);
    if lo >= hi {
        return 0..0;
    }
    lo - shard.start..hi - shard.start
}

/// The error the step returns when the model failed: the provider's own
/// (a gather's, naming the peer) when there is one.
pub fn failure(kept: Option<CliError>, model: ModelError) -> CliError {
    kept.unwrap_or_else(|| model.into())
}

fn unavailable(unit: Unit, pass: Pass, e: &CliError) -> ModelError {
    ModelError::WeightsUnavailable {
        unit,
        pass,
        reason: e.to_string(),
    }
}

/// Gathers of a grad-op rank's updated shard that are started ahead of the
/// unit the forward uses: beyond this many, the next starts only when one is
/// redeemed. Each gather in flight holds a buffer of its unit's size, so
/// starting every unit's at once would cost a whole model's worth of memory;
/// the communication thread runs them one after the other anyway.
pub const GATHERS_AHEAD: usize = 2;

/// grad-op's outgoing weights: after an update, each unit's values are
/// gathered from every rank (in forward order, a few ahead of their use) and
/// copied into the whole vector.
#[derive(Default)]
pub struct Outgoing {
    /// Gathers started and not yet redeemed, in forward order.
    pending: Vec<(Unit, Ticket)>,
    /// Index (in forward order) of the next unit to start a gather for;
    /// `None` when the weights are current (no update since the last settle).
    next: Option<usize>,
    /// Where a gathered unit lands before it is copied into the vector.
    landing: Vec<f32>,
}

impl Outgoing {
    /// After an update of `shard`: the first units' gathers start now, the
    /// rest as the forward redeems them.
    ///
    /// # Errors
    /// A failed communicator.
    pub fn restart(
        &mut self,
        sync: &mut GradSync,
        params: &[f32],
        shard: &Range<usize>,
        units: &UnitRanges,
    ) -> Result<(), CliError> {
        self.next = Some(0);
        self.start_upto(sync, params, shard, units, GATHERS_AHEAD - 1)
    }

    /// Starts the gathers of units `next..=last` (forward order).
    fn start_upto(
        &mut self,
        sync: &mut GradSync,
        params: &[f32],
        shard: &Range<usize>,
        units: &UnitRanges,
        last: usize,
    ) -> Result<(), CliError> {
        let Some(next) = self.next.as_mut() else {
            return Ok(());
        };
        while *next <= last && *next < units.len() {
            let (unit, range) = &units[*next];
            let own = owned_part(range, shard);
            let mine = &params[shard.start + own.start..shard.start + own.end];
            self.pending
                .push((*unit, sync.start_gather(range.clone(), mine)?));
            *next += 1;
        }
        Ok(())
    }

    /// Makes `unit`'s weights in `params` current: starts the gathers up to
    /// [`GATHERS_AHEAD`] past it, then waits for its own, if it has one.
    ///
    /// # Errors
    /// A failed gather (naming the peer) or a timeout.
    pub fn settle(
        &mut self,
        sync: &mut GradSync,
        params: &mut [f32],
        shard: &Range<usize>,
        units: &UnitRanges,
        unit: Unit,
    ) -> Result<(), CliError> {
        if self.next.is_none() {
            return Ok(());
        }
        let at = units.iter().position(|(u, _)| *u == unit).unwrap_or(0);
        self.start_upto(sync, params, shard, units, at + GATHERS_AHEAD)?;
        if let Some(pos) = self.pending.iter().position(|(u, _)| *u == unit) {
            let (_, ticket) = self.pending.remove(pos);
            let range = ticket.range();
            sync.wait_gather(ticket, &mut self.landing)?;
            // The owner's part comes back with its own bits: copying it is a no-op.
            params[range].copy_from_slice(&self.landing);
        }
        if self.pending.is_empty() && self.next.is_some_and(|n| n >= units.len()) {
            self.next = None;
        }
        Ok(())
    }

    /// Makes every weight current (validation, before reading them all): the
    /// remaining gathers, in order, so every rank redeems the same tickets.
    ///
    /// # Errors
    /// A failed gather (naming the peer) or a timeout.
    pub fn settle_all(
        &mut self,
        sync: &mut GradSync,
        params: &mut [f32],
        shard: &Range<usize>,
        units: &UnitRanges,
    ) -> Result<(), CliError> {
        for (unit, _) in units {
            self.settle(sync, params, shard, units, *unit)?;
        }
        Ok(())
    }
}

/// grad-op: the whole vector, each unit made current just before its use.
pub struct GatheredWeights<'a, 's> {
    pub sync: &'a RefCell<&'s mut GradSync>,
    pub params: &'a mut [f32],
    pub shard: &'a Range<usize>,
    pub units: &'a UnitRanges,
    pub outgoing: &'a mut Outgoing,
    pub failed: &'a mut Option<CliError>,
}

impl Weights for GatheredWeights<'_, '_> {
    fn unit(&mut self, unit: Unit, pass: Pass) -> Result<&[f32], ModelError> {
        let Some(range) = range_of(self.units, unit) else {
            return Err(ModelError::WeightsUnavailable {
                unit,
                pass,
                reason: "the model has no such unit".into(),
            });
        };
        let settled = self.outgoing.settle(
            &mut self.sync.borrow_mut(),
            self.params,
            self.shard,
            self.units,
            unit,
        );
        if let Err(e) = settled {
            let err = unavailable(unit, pass, &e);
            self.failed.get_or_insert(e);
            return Err(err);
        }
        Ok(&self.params[range])
    }
}

/// full: the shard only; each unit gathered just before use, the next prefetched.
pub struct ShardedWeights<'a, 's> {
    pub sync: &'a RefCell<&'s mut GradSync>,
    /// This rank's weights: `shard` of the flat vector.
    pub master: &'a [f32],
    pub shard: Range<usize>,
    pub units: &'a UnitRanges,
    /// The gathers of this call in the order the model asks for the units
    /// (a unit asked for twice in a row is served from `current`).
    pub order: Vec<Unit>,
    /// The next entry of `order` to start a gather for.
    pub next: usize,
    /// The unit in `current`, and its weights (the buffer is reused).
    pub current_unit: Option<Unit>,
    pub current: &'a mut Vec<f32>,
    /// The prefetched gather, if one is in flight.
    pub ahead: Option<(Unit, Ticket)>,
    pub failed: &'a mut Option<CliError>,
}

impl ShardedWeights<'_, '_> {
    /// Starts the gather of `order[next]`, if there is one.
    fn start_next(&mut self) -> Result<Option<(Unit, Ticket)>, CliError> {
        let Some(&unit) = self.order.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let Some(range) = range_of(self.units, unit) else {
            return Err(CliError::Model(ModelError::WeightsUnavailable {
                unit,
                pass: Pass::Forward,
                reason: "the model has no such unit".into(),
            }));
        };
        let mine = &self.master[owned_part(&range, &self.shard)];
        let ticket = self.sync.borrow_mut().start_gather(range, mine)?;
        Ok(Some((unit, ticket)))
    }

    fn fetch(&mut self, unit: Unit) -> Result<(), CliError> {
        if self.current_unit == Some(unit) {
            return Ok(());
        }
        let ticket = match self.ahead.take() {
            Some((u, t)) if u == unit => t,
            Some((u, _)) => {
                return Err(CliError::Model(ModelError::WeightsUnavailable {
                    unit,
                    pass: Pass::Forward,
                    reason: format!("the model asked for it while {u} was expected next"),
                }))
            }
            None => match self.start_next()? {
                Some((u, t)) if u == unit => t,
                _ => {
                    return Err(CliError::Model(ModelError::WeightsUnavailable {
                        unit,
                        pass: Pass::Forward,
                        reason: "the model asked for it out of the gathers' order".into(),
                    }))
                }
            },
        };
        // Prefetch before waiting: the gathers run in order on the
        // communication thread, so the next one starts as soon as this
        // one is done, while the model computes with this unit.
        self.ahead = self.start_next()?;
        self.current_unit = None;
        self.sync.borrow_mut().wait_gather(ticket, self.current)?;
        self.current_unit = Some(unit);
        Ok(())
    }
}

impl Weights for ShardedWeights<'_, '_> {
    fn unit(&mut self, unit: Unit, pass: Pass) -> Result<&[f32], ModelError> {
        if let Err(e) = self.fetch(unit) {
            let err = unavailable(unit, pass, &e);
            self.failed.get_or_insert(e);
            return Err(err);
        }
        Ok(self.current)
    }
}

/// The order a forward and backward of the CPU model asks for units in, as
/// gathers: the embedding, layers 0..L−1, the head (kept for the backward),
/// layers L−1..0.
pub fn forward_backward_order(units: &UnitRanges) -> Vec<Unit> {
    let mut order: Vec<Unit> = units.iter().map(|(u, _)| *u).collect();
    order.extend(
        units
            .iter()
            .rev()
            .filter(|(u, _)| matches!(u, Unit::Layer(_)))
            .map(|(u, _)| *u),
    );
    order
}

/// The order a forward alone asks for units in.
pub fn forward_order(units: &UnitRanges) -> Vec<Unit> {
    units.iter().map(|(u, _)| *u).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_part_is_the_intersection_relative_to_the_shard() {
        assert_eq!(owned_part(&(10..20), &(15..30)), 0..5);
        assert_eq!(owned_part(&(10..20), &(0..12)), 10..12);
        assert_eq!(owned_part(&(10..20), &(12..18)), 0..6);
        assert_eq!(owned_part(&(10..20), &(20..30)), 0..0);
        assert_eq!(owned_part(&(10..20), &(0..5)), 0..0);
    }

    #[test]
    fn the_backward_order_follows_the_head_with_the_layers_top_down() {
        let units = vec![
            (Unit::Embedding, 0..4),
            (Unit::Layer(0), 4..8),
            (Unit::Layer(1), 8..12),
            (Unit::Head, 12..16),
        ];
        assert_eq!(
            forward_backward_order(&units),
            vec![
                Unit::Embedding,
                Unit::Layer(0),
                Unit::Layer(1),
                Unit::Head,
                Unit::Layer(1),
                Unit::Layer(0)
            ]
        );
        assert_eq!(forward_order(&units).len(), 4);
    }
}
