//! `semi_hard`: FaceNet's semi-hard band, relative to the anchor's positives.

use super::{Policy, QueueRow, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// Keep negatives with `s_pos - margin < s < s_pos`, `s_pos` the anchor's mean positive
/// similarity; all stay when none lies in the band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemiHard {
    pub margin: f64,
}

impl Policy for SemiHard {
    fn name(&self) -> &'static str {
        "semi_hard"
    }

    fn stage(&self) -> Stage {
        Stage::Selection
    }

    fn validate(&self) -> Result<()> {
        if self.margin.is_nan() || self.margin <= 0.0 {
            return Err(invalid("margin", format!("{} must be > 0", self.margin)));
        }
        Ok(())
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        for i in 0..plan.anchors {
            let row = batch.sim_row(i);
            let positives = &plan.positives[i];
            let pos = positives.iter().map(|(c, _)| row[*c as usize]).sum::<f32>()
                / positives.len().max(1) as f32;
            let lo = pos - self.margin as f32;
            let negs = plan.kept_negatives(i);
            let in_band = |c: usize| row[c] > lo && row[c] < pos;
            if negs.iter().any(|&c| in_band(c)) {
                for c in negs.into_iter().filter(|&c| !in_band(c)) {
                    plan.row_mut(i)[c] = 0.0;
                }
            }
        }
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn plan_queue_row(&self, row: &mut QueueRow<'_>) -> Result<()> {
        let (hi, lo) = (row.positive_sim, row.positive_sim - self.margin as f32);
        let i = row.query;
        let any = row
            .sims
            .iter()
            .enumerate()
            .any(|(j, &s)| s > lo && s < hi && row.plan.is_negative(i, j, s));
        if any {
            row.narrow_window(lo, hi);
        }
        Ok(())
    }
}
