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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ring {
    /// Fraction of the negatives in the outer ring, `(0, 1]`.
    pub outer: f64,
    /// Fraction of the outer ring dropped as too close, `[0, 1)`.
    pub inner: f64,
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

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        keep_ranks(batch, plan, |n| ring_band(n, self.outer, self.inner));
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn plan_queue_row(&self, row: &mut QueueRow<'_>) -> Result<()> {
        let mut kept = row.kept_sims();
        let band = ring_band(kept.len(), self.outer, self.inner);
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
