//! `top_k`: keep only each anchor's `k` most similar negatives.

use super::selection::{edge_below, keep_ranks};
use super::{Policy, QueueRow, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// Keep the `k` most similar negatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopK {
    pub k: usize,
}

impl Policy for TopK {
    fn name(&self) -> &'static str {
        "top_k"
    }

    fn stage(&self) -> Stage {
        Stage::Selection
    }

    fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(invalid("k", "top_k needs k >= 1"));
        }
        Ok(())
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        keep_ranks(batch, plan, |n| 0..self.k.min(n));
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn plan_queue_row(&self, row: &mut QueueRow<'_>) -> Result<()> {
        let mut kept = row.kept_sims();
        let lo = edge_below(&mut kept, self.k);
        row.narrow_window(lo, f32::INFINITY);
        Ok(())
    }
}
