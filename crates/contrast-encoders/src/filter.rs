//! SimLAP's feature filter: a class pair -> a gate vector in `(0, 1)^d` that selects
//! the subspace in which the pair is contrasted.
//!
//! `e = (E[y1] + E[y2]) / 2` from a learned label embedding `E`, then
//! `ReLU -> BN -> Linear -> ReLU -> BN -> Linear -> sigmoid` (erow/FastSSL `Filter`).
//!
//! The filter also holds SimLAP's other parameter, the learnable logit scale: the
//! reference multiplies the logits by `exp(s)` with `s` learned from `log(1 / T)`.

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

/// What SimLAP adds to a model: a gate network over `classes` classes and, when
/// `log_scale` is set, a learnable log logit scale starting there (`ln(1 / T)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimLapParams {
    pub classes: usize,
    pub log_scale: Option<f64>,
}

/// The gate network, and SimLAP's learnable logit scale.
#[derive(Debug, Clone)]
pub struct FeatureFilter {
    /// The log of the logit scale, `[1]`, when learnable.
    log_scale: Option<Tensor>,
    embedding: Tensor,
    bn1: BatchNorm,
    fc1: Linear,
    bn2: BatchNorm,
    fc2: Linear,
}

impl FeatureFilter {
    /// A filter for `params.classes` classes producing gates of width `out`, with the
    /// learnable log scale `params.log_scale` asks for.
    pub fn new(
        params: SimLapParams,
        out: usize,
        cfg: &FeatureFilterConfig,
        vb: ParamBuilder,
    ) -> Result<Self> {
        let num_classes = params.classes;
        if num_classes == 0 || out == 0 || cfg.embed_dim == 0 || cfg.hidden == 0 {
            candle_core::bail!(
                "feature filter: num_classes, out, embed_dim and hidden must be >= 1"
            );
        }
        Ok(Self {
            log_scale: params
                .log_scale
                .map(|s| vb.get(1, "log_scale", ParamInit::Const(s)))
                .transpose()?,
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

    /// The learnable log logit scale `[1]`, when the model has one.
    pub fn log_scale(&self) -> Option<&Tensor> {
        self.log_scale.as_ref()
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
