//! `debias`: the debiased negative sum (Chuang et al., 2020) as a policy; the
//! correction is the generalised InfoNCE's [`contrast_losses::Debias`], applied when
//! the plan's loss is evaluated.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// Debiasing with class prior `tau_plus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debias {
    /// Expected fraction of negatives sharing the anchor's class, `[0, 1)`.
    pub tau_plus: f64,
}

impl Policy for Debias {
    fn name(&self) -> &'static str {
        "debias"
    }

    fn stage(&self) -> Stage {
        Stage::Weighting
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.tau_plus) {
            return Err(invalid(
                "tau_plus",
                format!("{} is outside [0, 1)", self.tau_plus),
            ));
        }
        Ok(())
    }

    fn plan(&mut self, _: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        plan.tau_plus = Some(self.tau_plus);
        Ok(())
    }
}
