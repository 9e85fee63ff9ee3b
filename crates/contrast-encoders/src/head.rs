//! Projection heads: the MLP between the representation and the loss.

use crate::batch_norm::BatchNorm;
use crate::linear::Linear;
use crate::params::ParamBuilder;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Projection head shape: `layers - 1` blocks of `Linear -> BatchNorm -> ReLU` of width
/// `hidden`, then a final `Linear` to `out` (SimCLR v1 uses 2 layers, v2 uses 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub hidden: usize,
    pub out: usize,
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// BatchNorm (without learnable scale) on the output, as SimCLR v2 and MoCo v3.
    #[serde(default)]
    pub out_bn: bool,
}

fn default_layers() -> usize {
    2
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            hidden: 512,
            out: 128,
            layers: 2,
            out_bn: false,
        }
    }
}

/// An MLP projection head with BatchNorm, `[B, in] -> [B, out]`.
#[derive(Debug, Clone)]
pub struct ProjectionHead {
    hidden: Vec<(Linear, BatchNorm)>,
    last: Linear,
    out_bn: Option<BatchNorm>,
}

impl ProjectionHead {
    /// Builds the head on `input`-dimensional representations.
    pub fn new(input: usize, cfg: &HeadConfig, vb: ParamBuilder) -> Result<Self> {
        if cfg.layers == 0 || cfg.out == 0 || (cfg.layers > 1 && cfg.hidden == 0) {
            candle_core::bail!(
                "projection head: layers ({}) and out ({}) must be >= 1, and hidden ({}) >= 1 when layers > 1",
                cfg.layers,
                cfg.out,
                cfg.hidden
            );
        }
        let mut hidden = Vec::new();
        let mut prev = input;
        for i in 0..cfg.layers - 1 {
            let vb = vb.pp(format!("layer{i}"));
            hidden.push((
                Linear::new(prev, cfg.hidden, false, vb.pp("fc"))?,
                BatchNorm::new(cfg.hidden, vb.pp("bn"))?,
            ));
            prev = cfg.hidden;
        }
        let last = Linear::new(prev, cfg.out, !cfg.out_bn, vb.pp("out"))?;
        let out_bn = if cfg.out_bn {
            Some(BatchNorm::new(cfg.out, vb.pp("out_bn"))?)
        } else {
            None
        };
        Ok(Self {
            hidden,
            last,
            out_bn,
        })
    }

    /// Projects `[B, in]` to `[B, out]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for (fc, bn) in &self.hidden {
            h = bn.forward_act(&fc.forward(&h)?, train, true)?;
        }
        let y = self.last.forward(&h)?;
        match &self.out_bn {
            Some(bn) => bn.forward_t(&y, train),
            None => Ok(y),
        }
    }
}
