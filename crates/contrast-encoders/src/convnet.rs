//! A small VGG-style ConvNet, sized for 28x28 and 32x32 images on a CPU.

use crate::conv::{ConvBnAct, ConvSpec};
use crate::ops::global_avg_pool;
use crate::params::ParamBuilder;
use crate::{Encoder, InputShape};
use candle_core::{Result, Tensor};

/// Stages of `conv3x3 -> BatchNorm -> ReLU`, each listed width one stage. A 2x2 max
/// pool follows every stage but the last; global average pooling ends the network,
/// so the representation has the last stage's width.
#[derive(Debug, Clone)]
pub struct ConvNet {
    stages: Vec<ConvBnAct>,
    out_dim: usize,
}

impl ConvNet {
    /// Builds one stage per entry of `channels` (at least one).
    pub fn new(input: InputShape, channels: &[usize], vb: ParamBuilder) -> Result<Self> {
        if channels.is_empty() {
            candle_core::bail!("convnet encoder: `channels` needs at least one width");
        }
        let mut stages = Vec::with_capacity(channels.len());
        let mut prev = input.channels;
        for (i, &c) in channels.iter().enumerate() {
            let vb = vb.pp(format!("stage{i}"));
            stages.push(ConvBnAct::new(ConvSpec::same(prev, c, 3, 1), vb)?);
            prev = c;
        }
        Ok(Self {
            stages,
            out_dim: prev,
        })
    }
}

impl Encoder for ConvNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.stages.len() - 1;
        for (i, stage) in self.stages.iter().enumerate() {
            h = stage.forward(&h, None, train, true, i < last)?;
        }
        global_avg_pool(&h)
    }

    fn out_dim(&self) -> usize {
        self.out_dim
    }
}
