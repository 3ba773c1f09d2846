//! Where the CPU model reads its weights from, one FSDP unit at a time.
//!
//! The model asks a [`Weights`] provider for each [`Unit`] just before it uses it:
//! the forward asks for the embedding, layers 0..L−1 and the head in that order;
//! the backward asks for the head and layers L−1..0 (not the embedding: its
//! backward only scatters gradient rows, it reads no weight). Each unit is asked
//! for at most once per pass, and the model never holds two at once: the slice a
//! provider returns borrows the provider mutably, so the next request ends it.
//! A sharded run's provider gathers the unit from every rank there (and may
//! prefetch the next one); [`FlatWeights`] hands out ranges of one whole vector.

use std::ops::Range;

pub use crate::config::Pass;
use crate::config::{ParamLayout, Unit};
use crate::ModelError;

/// A source of the model's weights, by unit.
pub trait Weights {
    /// The values of `unit`'s flat range ([`ParamLayout::unit_range`]), in layout
    /// order: exactly that many. The slice is read until the next call.
    ///
    /// # Errors
    /// Whatever the provider cannot do (a peer that died during a gather, say); the
    /// model returns the error unchanged. [`ModelError::WeightsUnavailable`] is the
    /// variant for a provider with no more specific one.
    fn unit(&mut self, unit: Unit, pass: Pass) -> Result<&[f32], ModelError>;
}

/// The unit ranges of a layout, by arithmetic: the embedding, L layers of one
/// size, the head. Copy, so a provider can carry it without borrowing the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnitRanges {
    embedding: usize,
    layer: usize,
    n_layers: usize,
    total: usize,
}

impl UnitRanges {
    pub(crate) fn of(layout: &ParamLayout) -> UnitRanges {
        let n_layers = layout.units().len() - 2;
        UnitRanges {
            embedding: layout.unit_range(Unit::Embedding).len(),
            layer: if n_layers > 0 {
                layout.unit_range(Unit::Layer(0)).len()
            } else {
                0
            },
            n_layers,
            total: layout.total(),
        }
    }

    /// As [`ParamLayout::unit_range`]; `None` for a layer past the last.
    pub(crate) fn range(&self, unit: Unit) -> Option<Range<usize>> {
        match unit {
            Unit::Embedding => Some(0..self.embedding),
            Unit::Layer(l) if l < self.n_layers => {
                let start = self.embedding + l * self.layer;
                Some(start..start + self.layer)
            }
            Unit::Layer(_) => None,
            Unit::Head => Some(self.embedding + self.n_layers * self.layer..self.total),
        }
    }
}

/// The whole flat parameter vector as a provider: each unit is a subslice,
/// nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct FlatWeights<'a> {
    params: &'a [f32],
    units: UnitRanges,
}

impl<'a> FlatWeights<'a> {
    /// `params` laid out by `layout` (its length is checked per request: a short
    /// vector is an error naming the unit, not a panic).
    pub fn new(params: &'a [f32], layout: &ParamLayout) -> FlatWeights<'a> {
        FlatWeights {
            params,
            units: UnitRanges::of(layout),
        }
    }

    pub(crate) fn with_units(params: &'a [f32], units: UnitRanges) -> FlatWeights<'a> {
        FlatWeights { params, units }
    }
}

impl Weights for FlatWeights<'_> {
    fn unit(&mut self, unit: Unit, pass: Pass) -> Result<&[f32], ModelError> {
        let unavailable = |reason: String| ModelError::WeightsUnavailable { unit, pass, reason };
        let range = self
            .units
            .range(unit)
            .ok_or_else(|| unavailable("the model has no such layer".to_string()))?;
        let len = self.params.len();
        self.params.get(range.clone()).ok_or_else(|| {
            unavailable(format!(
                "the flat vector has {len} values, the unit is {}..{}",
                range.start, range.end
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Preset};

    #[test]
    fn unit_ranges_by_arithmetic_are_the_layouts() {
        let odd = Config {
            vocab_size: 300,
            dim: 64,
            n_layers: 3,
            n_heads: 2,
            n_kv_heads: 1,
            ffn_dim: 172,
            seq_len: 32,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
        };
        let none = Config {
            n_layers: 0,
            ..odd.clone()
        };
        for cfg in [Preset::by_name("tiny").unwrap().config(), odd, none] {
            let lay = ParamLayout::new(&cfg);
            let units = UnitRanges::of(&lay);
            for u in lay.units() {
                assert_eq!(units.range(u), Some(lay.unit_range(u)), "{u}");
            }
            assert_eq!(units.range(Unit::Layer(cfg.n_layers)), None);
        }
    }

    #[test]
    fn a_short_flat_vector_is_an_error_naming_the_unit() {
        let cfg = Preset::by_name("tiny").unwrap().config();
        let lay = ParamLayout::new(&cfg);
        let params = vec![0.0f32; lay.total() - 1];
        let mut w = FlatWeights::new(&params, &lay);
        assert_eq!(
            w.unit(Unit::Embedding, Pass::Forward)
                .map(<[f32]>::len)
                .ok(),
            Some(lay.unit_range(Unit::Embedding).len())
        );
        match w.unit(Unit::Head, Pass::Backward) {
            Err(ModelError::WeightsUnavailable { unit, pass, .. }) => {
                assert_eq!((unit, pass), (Unit::Head, Pass::Backward))
            }
            other => panic!(
                "expected WeightsUnavailable, got {:?}",
                other.map(<[f32]>::len)
            ),
        }
    }
}
