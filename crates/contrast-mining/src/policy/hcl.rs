//! `hcl`: hard negative weighting (Robinson et al., 2021) as a policy; the weights are
//! [`contrast_losses::hardness_weights`], shared with the `hcl` loss, applied when the
//! plan's loss is evaluated.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// HCL importance weights `exp(beta l) / mean(exp(beta l))` over each anchor's kept
/// negatives. With `anneal_down`, beta falls linearly to 0 in 9 steps over training,
/// as the reference's `--anneal down` (our reading: step `k = floor(9 e / (E - 1))` at
/// epoch `e` of `E` uses `beta (1 - k / 9)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hcl {
    /// Concentration `beta >= 0`.
    pub beta: f64,
    #[serde(default)]
    pub anneal_down: bool,
    /// The training's (epoch, epochs), from [`Policy::set_progress`].
    #[serde(skip)]
    pub progress: (usize, usize),
}

impl Hcl {
    /// Constant concentration `beta`.
    pub fn new(beta: f64) -> Self {
        Self {
            beta,
            anneal_down: false,
            progress: (0, 0),
        }
    }

    /// The concentration at the current epoch.
    pub fn beta_now(&self) -> f64 {
        let (epoch, epochs) = self.progress;
        if !self.anneal_down || epochs < 2 {
            return self.beta;
        }
        let step = (9 * epoch.min(epochs - 1) / (epochs - 1)) as f64;
        self.beta * (1.0 - step / 9.0)
    }
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

    fn set_progress(&mut self, epoch: usize, epochs: usize) {
        self.progress = (epoch, epochs);
    }

    fn plan(&mut self, _: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        plan.hardness_beta = Some(self.beta_now());
        Ok(())
    }
}
