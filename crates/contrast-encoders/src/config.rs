//! Encoder configuration (serde) and construction.

use crate::convnet::{ConvNet, ConvPool};
use crate::mlp::Mlp;
use crate::params::ParamBuilder;
use crate::resnet::ResNet18;
use crate::{Encoder, Identity, InputShape};
use candle_core::Result;
use serde::{Deserialize, Serialize};

/// Which backbone to build, selected by `kind` in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EncoderConfig {
    /// Flattened pixels through `Linear -> BN -> ReLU` layers of these widths.
    Mlp { hidden: Vec<usize> },
    /// `conv3x3 -> BN -> ReLU` stages of these widths, max-pooled between stages;
    /// `pool` makes the representation (global average, or the flattened map).
    Convnet {
        channels: Vec<usize>,
        #[serde(default)]
        pool: ConvPool,
    },
    /// CIFAR-stem ResNet-18 with base width `width` (64 is standard). The stem and
    /// the first `recompute_stages` stages (0 to 4) recompute their convolutions in
    /// the backward pass instead of keeping them (activation checkpointing): the
    /// default 2 brings the step's peak memory at 256 pairs of 32x32 images below
    /// PyTorch's default-layout peak (level with its channels-last one) for roughly 5
    /// to 12% more step time; 0 is fastest, 4 leanest (docs/performance.md).
    Resnet18 {
        #[serde(default = "default_resnet_width")]
        width: usize,
        #[serde(default = "default_recompute_stages")]
        recompute_stages: usize,
    },
    /// No parameters: the flattened pixels themselves (a baseline).
    Identity,
}

fn default_resnet_width() -> usize {
    64
}

fn default_recompute_stages() -> usize {
    2
}

impl EncoderConfig {
    /// Builds the encoder with its variables under `vb`.
    pub fn build(&self, input: InputShape, vb: ParamBuilder) -> Result<Box<dyn Encoder>> {
        Ok(match self {
            EncoderConfig::Mlp { hidden } => Box::new(Mlp::new(input, hidden, vb)?),
            EncoderConfig::Convnet { channels, pool } => {
                Box::new(ConvNet::new(input, channels, *pool, vb)?)
            }
            EncoderConfig::Resnet18 {
                width,
                recompute_stages,
            } => Box::new(ResNet18::new(input, *width, *recompute_stages, vb)?),
            EncoderConfig::Identity => Box::new(Identity::new(input)),
        })
    }
}
