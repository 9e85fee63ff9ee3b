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
        let (al, cl) = batch.labels(self.name())?;
        for (i, &a) in al.iter().enumerate() {
            for (c, &l) in cl.iter().enumerate() {
                if !batch.is_self(i, c) && l == a {
                    plan.add_positive(i, c, 1.0);
                }
            }
        }
        Ok(())
    }
}
