//! `label_aware`: same-label candidates leave the negatives (CrossBatchMemory-style
//! false-negative removal with known labels); needs labels. On a queue the kernel
//! compares label keys per entry, so no `[B, K]` mask is formed.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use crate::queue::{QueueBatch, QueuePlan};
use serde::{Deserialize, Serialize};

/// Same-label candidates are not negatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelAware {}

impl Policy for LabelAware {
    fn name(&self) -> &'static str {
        "label_aware"
    }

    fn stage(&self) -> Stage {
        Stage::Removal
    }

    fn reads_labels(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        for (i, c) in batch.same_label_pairs(self.name())? {
            if !plan.is_positive(i, c) {
                plan.row_mut(i)[c] = 0.0;
            }
        }
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn prepare_queue(&self, batch: &QueueBatch, plan: &mut QueuePlan) -> Result<()> {
        let labels = batch
            .query_labels
            .clone()
            .ok_or_else(|| invalid("labels", "policy `label_aware` needs class labels"))?;
        plan.keys = Some((labels, batch.queue_labels.clone()));
        Ok(())
    }

    fn plan_queue_row(&self, _row: &mut super::QueueRow<'_>) -> Result<()> {
        // Decided for the whole step by the label keys in `prepare_queue`.
        Ok(())
    }
}
