//! ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max pool.
//!
//! candle-transformers' ResNet keeps BatchNorm in eval mode and cannot be pre-trained;
//! this one trains its BatchNorm statistics.

use crate::batch_norm::BatchNorm;
use crate::conv::{Conv2d, ConvSpec};
use crate::ops::global_avg_pool;
use crate::params::ParamBuilder;
use crate::{Encoder, InputShape};
use candle_core::{Result, Tensor};

/// The basic residual block: two 3x3 convolutions, with a 1x1 projection shortcut
/// when the stride or width changes.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: ParamBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            let spec = ConvSpec {
                in_channels: cin,
                out_channels: cout,
                kernel: 1,
                stride,
                padding: 0,
            };
            Some((
                Conv2d::new(spec, false, vb.pp("shortcut.conv"))?,
                BatchNorm::new(cout, vb.pp("shortcut.bn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv2d::new(ConvSpec::same(cin, cout, 3, stride), false, vb.pp("conv1"))?,
            bn1: BatchNorm::new(cout, vb.pp("bn1"))?,
            conv2: Conv2d::new(ConvSpec::same(cout, cout, 3, 1), false, vb.pp("conv2"))?,
            bn2: BatchNorm::new(cout, vb.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn1.forward_act(&self.conv1.forward(x)?, train, true)?;
        let h = self.bn2.forward_t(&self.conv2.forward(&h)?, train)?;
        let identity = match &self.shortcut {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        (h + identity)?.relu()
    }
}

/// CIFAR ResNet-18: stem, four stages of two blocks (widths `w, 2w, 4w, 8w`, strides
/// 1, 2, 2, 2), global average pooling. `w = 64` is the standard network (512-d).
#[derive(Debug, Clone)]
pub struct ResNet18 {
    stem: (Conv2d, BatchNorm),
    blocks: Vec<BasicBlock>,
    out_dim: usize,
}

impl ResNet18 {
    /// Builds the network with base width `width`.
    pub fn new(input: InputShape, width: usize, vb: ParamBuilder) -> Result<Self> {
        if width == 0 {
            candle_core::bail!("resnet18 encoder: `width` must be at least 1");
        }
        let stem = (
            Conv2d::new(
                ConvSpec::same(input.channels, width, 3, 1),
                false,
                vb.pp("stem.conv"),
            )?,
            BatchNorm::new(width, vb.pp("stem.bn"))?,
        );
        let mut blocks = Vec::with_capacity(8);
        let mut cin = width;
        for (stage, mult) in [1usize, 2, 4, 8].into_iter().enumerate() {
            let cout = width * mult;
            for b in 0..2 {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("layer{}.{b}", stage + 1)),
                )?);
                cin = cout;
            }
        }
        Ok(Self {
            stem,
            blocks,
            out_dim: cin,
        })
    }
}

impl Encoder for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self
            .stem
            .1
            .forward_act(&self.stem.0.forward(x)?, train, true)?;
        for block in &self.blocks {
            h = block.forward_t(&h, train)?;
        }
        global_avg_pool(&h)
    }

    fn out_dim(&self) -> usize {
        self.out_dim
    }
}
