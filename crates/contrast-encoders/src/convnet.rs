//! A small VGG-style ConvNet, sized for 28x28 and 32x32 images on a CPU.

use crate::conv::{ConvBnAct, ConvSpec};
use crate::ops::global_avg_pool;
use crate::params::ParamBuilder;
use crate::{Encoder, InputShape};
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// How a [`ConvNet`] turns its last feature map into the representation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvPool {
    /// Global average pooling over the last stage: `[B, C]`, blind to where in the
    /// image a feature fired (the usual CNN representation).
    #[default]
    Avg,
    /// A 2x2 max pool after the last stage too, then the map flattened:
    /// `[B, H' * W' * C]` in `(y, x, c)` order. Keeps the layout of the garment or
    /// object, which a pooled vector discards; a convolutional projection head
    /// ([`crate::HeadConfig::conv`]) can continue from it.
    Flatten,
}

/// `conv3x3 -> BatchNorm -> ReLU` stages with a 2x2 max pool between them: the body
/// of [`ConvNet`] and of a convolutional projection head.
#[derive(Debug, Clone)]
pub(crate) struct ConvStages {
    stages: Vec<ConvBnAct>,
}

impl ConvStages {
    /// One stage per entry of `channels` (at least one) on `in_channels` inputs;
    /// `what` names the configuration in errors.
    pub(crate) fn new(
        in_channels: usize,
        channels: &[usize],
        what: &str,
        vb: ParamBuilder,
    ) -> Result<Self> {
        if channels.is_empty() || channels.contains(&0) {
            candle_core::bail!("{what}: `channels` needs at least one width, all >= 1");
        }
        let mut stages = Vec::with_capacity(channels.len());
        let mut prev = in_channels;
        for (i, &c) in channels.iter().enumerate() {
            let vb = vb.pp(format!("stage{i}"));
            stages.push(ConvBnAct::new(ConvSpec::same(prev, c, 3, 1), vb)?);
            prev = c;
        }
        Ok(Self { stages })
    }

    /// Channels of the last stage.
    pub(crate) fn out_channels(&self) -> usize {
        self.stages.last().map_or(0, |s| s.spec().out_channels)
    }

    /// Runs `[B, H, W, Cin]` through the stages, max-pooling after every stage but the
    /// last, and after the last as well when `pool_last`.
    pub(crate) fn forward(&self, x: &Tensor, train: bool, pool_last: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.stages.len() - 1;
        for (i, stage) in self.stages.iter().enumerate() {
            h = stage.forward(&h, None, train, true, i < last || pool_last)?;
        }
        Ok(h)
    }
}

/// Stages of `conv3x3 -> BatchNorm -> ReLU`, each listed width one stage. A 2x2 max
/// pool follows every stage but the last; then [`ConvPool`] makes the representation:
/// global average pooling (the last stage's width) or the max-pooled map flattened.
#[derive(Debug, Clone)]
pub struct ConvNet {
    body: ConvStages,
    pool: ConvPool,
    map: InputShape,
}

impl ConvNet {
    /// Builds one stage per entry of `channels` (at least one).
    pub fn new(
        input: InputShape,
        channels: &[usize],
        pool: ConvPool,
        vb: ParamBuilder,
    ) -> Result<Self> {
        let body = ConvStages::new(input.channels, channels, "convnet encoder", vb)?;
        let pools = channels.len() - 1 + usize::from(pool == ConvPool::Flatten);
        let (height, width) =
            (0..pools).fold((input.height, input.width), |(h, w), _| (h / 2, w / 2));
        if height == 0 || width == 0 {
            candle_core::bail!(
                "convnet encoder: {} stages pool {}x{} images down to nothing; use fewer `channels`",
                channels.len(),
                input.height,
                input.width
            );
        }
        let map = InputShape {
            height,
            width,
            channels: body.out_channels(),
        };
        Ok(Self { body, pool, map })
    }
}

impl Encoder for ConvNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.pool {
            ConvPool::Avg => global_avg_pool(&self.body.forward(x, train, false)?),
            ConvPool::Flatten => self.body.forward(x, train, true)?.flatten_from(1),
        }
    }

    fn feature_map(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.body.forward(x, false, false).map(Some)
    }

    fn out_dim(&self) -> usize {
        match self.pool {
            ConvPool::Avg => self.map.channels,
            ConvPool::Flatten => self.map.numel(),
        }
    }

    fn out_map(&self) -> Option<InputShape> {
        (self.pool == ConvPool::Flatten).then_some(self.map)
    }
}
