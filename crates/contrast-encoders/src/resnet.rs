//! ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max pool.
//!
//! candle-transformers' ResNet keeps BatchNorm in eval mode and cannot be pre-trained;
//! this one trains its BatchNorm statistics.

use crate::conv::{ConvBnAct, ConvSpec};
use crate::ops::global_avg_pool;
use crate::params::ParamBuilder;
use crate::{Encoder, InputShape};
use candle_core::{Result, Tensor};

/// The basic residual block: two 3x3 convolutions, with a 1x1 projection shortcut
/// when the stride or width changes.
#[derive(Debug, Clone)]
struct BasicBlock {
    first: ConvBnAct,
    second: ConvBnAct,
    shortcut: Option<ConvBnAct>,
}

impl BasicBlock {
    fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        recompute: bool,
        vb: ParamBuilder,
    ) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            let spec = ConvSpec {
                in_channels: cin,
                out_channels: cout,
                kernel: 1,
                stride,
                padding: 0,
            };
            Some(ConvBnAct::new(spec, vb.pp("shortcut"))?.recomputing(recompute))
        } else {
            None
        };
        Ok(Self {
            first: ConvBnAct::new(ConvSpec::same(cin, cout, 3, stride), vb.pp("block1"))?
                .recomputing(recompute),
            second: ConvBnAct::new(ConvSpec::same(cout, cout, 3, 1), vb.pp("block2"))?
                .recomputing(recompute),
            shortcut,
        })
    }

    /// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`; in the fused op set one
    /// op ([`contrast_kernels::residual_block()`]) whose graph keeps the block's input
    /// and output only, the inner activation recomputed in the backward pass.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dtype = x.dtype();
        let (first, second) = (self.first.params(dtype)?, self.second.params(dtype)?);
        let short = self
            .shortcut
            .as_ref()
            .map(|s| s.params(dtype))
            .transpose()?;
        let shortcut = match (&self.shortcut, &short) {
            (Some(layer), Some(p)) => Some(layer.layer(p, train)?),
            _ => None,
        };
        let out = self.first.ops().residual_block(
            x,
            &self.first.layer(&first, train)?,
            &self.second.layer(&second, train)?,
            shortcut.as_ref(),
            self.first.spec().stride,
            self.first.eps(),
            self.first.recomputes(),
        )?;
        if train {
            let layers = [
                Some(&self.first),
                Some(&self.second),
                self.shortcut.as_ref(),
            ];
            let mid = [x.dim(0)?, out.y.dim(1)?, out.y.dim(2)?];
            for (i, (layer, stats)) in layers.into_iter().flatten().zip(&out.stats).enumerate() {
                // The second layer's input is the block's inner activation.
                let dims = if i == 1 { &mid[..] } else { x.dims() };
                layer.record(stats, dims)?;
            }
        }
        Ok(out.y)
    }
}

/// CIFAR ResNet-18: stem, four stages of two blocks (widths `w, 2w, 4w, 8w`, strides
/// 1, 2, 2, 2), global average pooling. `w = 64` is the standard network (512-d).
///
/// The stem and the first `recompute_stages` stages (the largest activations)
/// recompute their convolutions in the backward pass instead of keeping them, which
/// trades one forward convolution per layer for memory (activation checkpointing).
#[derive(Debug, Clone)]
pub struct ResNet18 {
    stem: ConvBnAct,
    blocks: Vec<BasicBlock>,
    out_dim: usize,
}

impl ResNet18 {
    /// Builds the network with base width `width`, recomputing the convolutions of
    /// the stem and the first `recompute_stages` stages (0 to 4) in the backward pass.
    pub fn new(
        input: InputShape,
        width: usize,
        recompute_stages: usize,
        vb: ParamBuilder,
    ) -> Result<Self> {
        if width == 0 {
            candle_core::bail!("resnet18 encoder: `width` must be at least 1");
        }
        if recompute_stages > 4 {
            candle_core::bail!(
                "resnet18 encoder: `recompute_stages` must be 0 to 4 (the stages), got {recompute_stages}"
            );
        }
        let stem = ConvBnAct::new(ConvSpec::same(input.channels, width, 3, 1), vb.pp("stem"))?
            .recomputing(recompute_stages > 0);
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
                    stage < recompute_stages,
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

impl ResNet18 {
    /// The last stage's output `[B, H/8, W/8, C]`, before pooling.
    fn body(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.stem.forward(x, None, train, true, false)?;
        for block in &self.blocks {
            h = block.forward_t(&h, train)?;
        }
        Ok(h)
    }
}

impl Encoder for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        global_avg_pool(&self.body(x, train)?)
    }

    fn feature_map(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.body(x, false).map(Some)
    }

    fn out_dim(&self) -> usize {
        self.out_dim
    }
}
