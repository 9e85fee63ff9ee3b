//! Loss selection by name, as used in TOML configs (`[loss] name = "nt_xent"`).

use crate::error::{Result, invalid};
use crate::nt_xent::{NtXentConfig, nt_xent};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What a loss may read: the projections of each view and optional side information.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// Projections per view, each `[B, D]`, rows aligned across views.
    pub views: &'a [Tensor],
    /// Class labels `[B]` (`u32`), where the method uses them.
    pub labels: Option<&'a Tensor>,
}

/// A loss and its parameters, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum LossConfig {
    /// SimCLR's NT-Xent ([`nt_xent`]).
    NtXent(NtXentConfig),
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig::NtXent(NtXentConfig::default())
    }
}

impl LossConfig {
    /// The loss's name as written in configs.
    pub fn name(&self) -> &'static str {
        match self {
            LossConfig::NtXent(_) => "nt_xent",
        }
    }

    /// Validates the parameters without computing anything.
    pub fn validate(&self) -> Result<()> {
        match self {
            LossConfig::NtXent(c) => {
                crate::error::check_temperature("loss.temperature", c.temperature)
            }
        }
    }

    /// Computes the scalar loss.
    pub fn compute(&self, inputs: LossInputs<'_>) -> Result<Tensor> {
        match self {
            LossConfig::NtXent(c) => {
                let [z1, z2] = inputs.views else {
                    return Err(invalid(
                        "views",
                        format!("nt_xent needs exactly 2 views, got {}", inputs.views.len()),
                    ));
                };
                nt_xent(z1, z2, c.temperature)
            }
        }
    }
}
