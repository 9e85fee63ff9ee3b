//! `supervised`: same-label candidates become positives (SupCon's positives); needs
//! labels.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::Result;
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// Same-label candidates (other than the anchor itself) are positives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supervised {}

impl Policy for Supervised {
    fn name(&self) -> &'static str {
        "supervised"
    }

    fn stage(&self) -> Stage {
        Stage::Positives
    }

    fn reads_labels(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        for (i, c) in batch.same_label_pairs(self.name())? {
            if !batch.is_self(i, c) {
                plan.add_positive(i, c, 1.0);
            }
        }
        Ok(())
    }
}
