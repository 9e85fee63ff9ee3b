//! `ring`: conditional negative sampling (Wu et al., 2021) as a policy: only the
//! negatives in Ring's band of ranks count. The band is
//! [`contrast_losses::ring_band`], shared with the `ring` loss; a band that rounds to
//! nothing for an anchor's count keeps none of its negatives.

use super::selection::{edge_below, keep_ranks};
use super::{Policy, QueueRow, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::Result;
use crate::plan::MiningPlan;
use contrast_losses::ring_band;
use contrast_losses::sampling::check_ring;
use serde::{Deserialize, Serialize};

/// Keep negatives ranked in `[floor(inner * o), o)`, `o = floor(outer * count)`.
/// With `anneal_epochs`, the outer fraction starts at 1 (every negative) and falls
/// linearly to `outer` over that many epochs, as the reference's linear policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ring {
    /// Fraction of the negatives in the outer ring, `(0, 1]`.
    pub outer: f64,
    /// Fraction of the outer ring dropped as too close, `[0, 1)`.
    pub inner: f64,
    /// Epochs over which the outer fraction anneals from 1 to `outer` (0: none).
    #[serde(default)]
    pub anneal_epochs: usize,
    /// The training's current epoch (0-based), from [`Policy::set_progress`].
    #[serde(skip)]
    pub epoch: usize,
}

impl Ring {
    /// The band `[inner, outer)`, not annealed.
    pub fn new(outer: f64, inner: f64) -> Self {
        Self {
            outer,
            inner,
            anneal_epochs: 0,
            epoch: 0,
        }
    }

    /// The outer fraction at the current epoch.
    pub fn outer_now(&self) -> f64 {
        if self.anneal_epochs == 0 {
            return self.outer;
        }
        let t = (self.epoch as f64 / self.anneal_epochs as f64).min(1.0);
        1.0 + (self.outer - 1.0) * t
    }
}

impl Policy for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn stage(&self) -> Stage {
        Stage::Selection
    }

    fn validate(&self) -> Result<()> {
        Ok(check_ring(self.outer, self.inner)?)
    }

    fn set_progress(&mut self, epoch: usize, _epochs: usize) {
        self.epoch = epoch;
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        let outer = self.outer_now();
        keep_ranks(batch, plan, |n| ring_band(n, outer, self.inner));
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn plan_queue_row(&self, row: &mut QueueRow<'_>) -> Result<()> {
        let mut kept = row.kept_sims();
        let band = ring_band(kept.len(), self.outer_now(), self.inner);
        if band.is_empty() {
            row.narrow_window(f32::INFINITY, f32::NEG_INFINITY);
        } else {
            let lo = edge_below(&mut kept, band.end);
            let hi = edge_below(&mut kept, band.start);
            row.narrow_window(lo, hi);
        }
        Ok(())
    }
}
