//! `hcl`: hard negative weighting (Robinson et al., 2021) as a policy; the weights are
//! [`contrast_losses::hardness_weights`], shared with the `hcl` loss, applied when the
//! plan's loss is evaluated.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// HCL importance weights `exp(beta l) / mean(exp(beta l))` over each anchor's kept
/// negatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hcl {
    /// Concentration `beta >= 0`.
    pub beta: f64,
}

impl Policy for Hcl {
    fn name(&self) -> &'static str {
        "hcl"
    }

    fn stage(&self) -> Stage {
        Stage::Weighting
    }

    fn validate(&self) -> Result<()> {
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(invalid(
                "beta",
                format!("{} must be a finite number >= 0", self.beta),
            ));
        }
        Ok(())
    }

    fn plan(&mut self, _: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        plan.hardness_beta = Some(self.beta);
        Ok(())
    }
}
