//! `multi_similarity`: multi-similarity mining (Wang et al., 2019); needs labels.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// Keeps negatives with `s > min_pos - epsilon` and positives with
/// `s < max_neg + epsilon` (cosine similarities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiSimilarity {
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
}

fn default_epsilon() -> f64 {
    0.1
}

impl Policy for MultiSimilarity {
    fn name(&self) -> &'static str {
        "multi_similarity"
    }

    fn stage(&self) -> Stage {
        Stage::Selection
    }

    fn reads_labels(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<()> {
        if self.epsilon.is_nan() || self.epsilon < 0.0 {
            return Err(invalid("epsilon", format!("{} must be >= 0", self.epsilon)));
        }
        Ok(())
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        let (al, cl) = batch.labels(self.name())?;
        let eps = self.epsilon as f32;
        for (i, &a) in al.iter().enumerate() {
            let row = batch.sim_row(i);
            let same: Vec<usize> = (0..plan.candidates)
                .filter(|&c| !batch.is_self(i, c) && cl[c] == a)
                .collect();
            let diff: Vec<usize> = (0..plan.candidates)
                .filter(|&c| cl[c] != a && plan.row(i)[c] > 0.0)
                .collect();
            let min_pos = same.iter().map(|&c| row[c]).fold(f32::INFINITY, f32::min);
            let max_neg = diff
                .iter()
                .map(|&c| row[c])
                .fold(f32::NEG_INFINITY, f32::max);
            let positives: Vec<(u32, f32)> = same
                .iter()
                .filter(|&&c| row[c] < max_neg + eps)
                .map(|&c| (c as u32, 1.0))
                .collect();
            if !positives.is_empty() {
                plan.positives[i] = positives;
            }
            for c in diff {
                if row[c] <= min_pos - eps {
                    plan.row_mut(i)[c] = 0.0;
                }
            }
            // Same-label candidates that are not selected positives are not negatives.
            for c in same {
                if !plan.is_positive(i, c) {
                    plan.row_mut(i)[c] = 0.0;
                }
            }
        }
        Ok(())
    }
}
