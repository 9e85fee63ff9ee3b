//! Projection heads: the layers between the representation and the loss.

use crate::InputShape;
use crate::batch_norm::BatchNorm;
use crate::convnet::ConvStages;
use crate::linear::Linear;
use crate::ops::global_avg_pool;
use crate::params::ParamBuilder;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// Projection head shape: optional `conv3x3 -> BatchNorm -> ReLU` stages and global
/// average pooling, then `layers - 1` blocks of `Linear -> BatchNorm -> ReLU` of width
/// `hidden` and a final `Linear` to `out` (SimCLR v1 uses 2 layers, v2 uses 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Widths of convolution stages run on the representation's feature map (2x2 max
    /// pool between them), before the MLP. They need an encoder whose representation
    /// is a flattened map (`convnet` with `pool = "flatten"`). Moving the last stages
    /// of a backbone into the head keeps the representation further from the
    /// augmentation-invariant loss, which the kNN and linear evaluations reward
    /// (docs/history.md, re-checked on validation in docs/results.md). Empty: an MLP
    /// head.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conv: Vec<usize>,
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
            conv: Vec::new(),
            hidden: 512,
            out: 128,
            layers: 2,
            out_bn: false,
        }
    }
}

/// A projection head with BatchNorm, `[B, in] -> [B, out]`: optional convolution
/// stages on the input seen as a feature map, then an MLP.
#[derive(Debug, Clone)]
pub struct ProjectionHead {
    /// Convolution stages and the `[H, W, C]` map the input is reshaped to.
    conv: Option<(ConvStages, InputShape)>,
    hidden: Vec<(Linear, BatchNorm)>,
    last: Linear,
    out_bn: Option<BatchNorm>,
    /// Width of the projection.
    out: usize,
}

impl ProjectionHead {
    /// Builds the head on `input`-dimensional representations; `map` is their
    /// `[H, W, C]` layout when they are flattened feature maps (needed by `cfg.conv`).
    pub fn new(
        input: usize,
        map: Option<InputShape>,
        cfg: &HeadConfig,
        vb: ParamBuilder,
    ) -> Result<Self> {
        if cfg.layers == 0 || cfg.out == 0 || (cfg.layers > 1 && cfg.hidden == 0) {
            candle_core::bail!(
                "projection head: layers ({}) and out ({}) must be >= 1, and hidden ({}) >= 1 when layers > 1",
                cfg.layers,
                cfg.out,
                cfg.hidden
            );
        }
        let conv = match (cfg.conv.is_empty(), map) {
            (true, _) => None,
            (false, Some(map)) if map.numel() == input => Some((
                ConvStages::new(
                    map.channels,
                    &cfg.conv,
                    "projection head conv",
                    vb.pp("conv"),
                )?,
                map,
            )),
            (false, _) => candle_core::bail!(
                "projection head: `conv` stages need an encoder whose representation is a flattened feature map (convnet with pool = \"flatten\"); this one gives {input}-d vectors"
            ),
        };
        let mut hidden = Vec::new();
        let mut prev = conv
            .as_ref()
            .map_or(input, |(stages, _)| stages.out_channels());
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
            conv,
            hidden,
            last,
            out_bn,
            out: cfg.out,
        })
    }

    /// Width of the projection, `out`.
    pub fn out_dim(&self) -> usize {
        self.out
    }

    /// Projects `[B, in]` to `[B, out]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = match &self.conv {
            Some((stages, map)) => {
                let fmap = x.reshape((x.dim(0)?, map.height, map.width, map.channels))?;
                global_avg_pool(&stages.forward(&fmap, train, false)?)?
            }
            None => x.clone(),
        };
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
