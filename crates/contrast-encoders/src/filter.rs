//! SimLAP's feature filter: a class pair -> a gate vector in `(0, 1)^d` that selects
//! the subspace in which the pair is contrasted.
//!
//! `e = (E[y1] + E[y2]) / 2` from a learned label embedding `E`, then
//! `ReLU -> BN -> Linear -> ReLU -> BN -> Linear -> sigmoid` (erow/FastSSL `Filter`).

use crate::batch_norm::BatchNorm;
use crate::linear::Linear;
use crate::params::{ParamBuilder, ParamInit};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Sizes of the feature filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFilterConfig {
    /// Width of the label embedding.
    #[serde(default = "default_embed")]
    pub embed_dim: usize,
    /// Hidden width of the MLP.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
}

fn default_embed() -> usize {
    128
}

fn default_hidden() -> usize {
    256
}

impl Default for FeatureFilterConfig {
    fn default() -> Self {
        Self {
            embed_dim: default_embed(),
            hidden: default_hidden(),
        }
    }
}

/// The gate network.
#[derive(Debug, Clone)]
pub struct FeatureFilter {
    embedding: Tensor,
    bn1: BatchNorm,
    fc1: Linear,
    bn2: BatchNorm,
    fc2: Linear,
}

impl FeatureFilter {
    /// A filter for `num_classes` classes producing gates of width `out`.
    pub fn new(
        num_classes: usize,
        out: usize,
        cfg: &FeatureFilterConfig,
        vb: ParamBuilder,
    ) -> Result<Self> {
        if num_classes == 0 || out == 0 || cfg.embed_dim == 0 || cfg.hidden == 0 {
            candle_core::bail!(
                "feature filter: num_classes, out, embed_dim and hidden must be >= 1"
            );
        }
        Ok(Self {
            embedding: vb.get(
                (num_classes, cfg.embed_dim),
                "embedding",
                ParamInit::Normal(1.0),
            )?,
            bn1: BatchNorm::new(cfg.embed_dim, vb.pp("bn1"))?,
            fc1: Linear::new(cfg.embed_dim, cfg.hidden, true, vb.pp("fc1"))?,
            bn2: BatchNorm::new(cfg.hidden, vb.pp("bn2"))?,
            fc2: Linear::new(cfg.hidden, out, true, vb.pp("fc2"))?,
        })
    }

    /// Gates `[B, out]` for the class pairs `(y1_i, y2_i)` (`u32` `[B]` each).
    pub fn forward_t(&self, y1: &Tensor, y2: &Tensor, train: bool) -> Result<Tensor> {
        let e =
            ((self.embedding.index_select(y1, 0)? + self.embedding.index_select(y2, 0)?)? * 0.5)?;
        let h = self.bn1.forward_t(&e.relu()?, train)?;
        let h = self.bn2.forward_t(&self.fc1.forward(&h)?.relu()?, train)?;
        let logits = self.fc2.forward(&h)?;
        // sigmoid as plain ops, so that autograd sees every step.
        (logits.neg()?.exp()? + 1.0)?.recip()
    }
}
