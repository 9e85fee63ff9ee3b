//! 2-D convolution layer on channels-last tensors.
//!
//! The arithmetic is the layer's [`OpSet`]: on the CPU [`contrast_kernels::conv2d_nhwc`]
//! (im2col plus GEMM for the forward pass and both backward passes, in chunks of
//! images so that no im2col buffer of the whole batch exists), elsewhere
//! [`contrast_kernels::cnn::generic::conv2d`]. candle 0.11's own convolution routes
//! the input gradient through a naive `conv_transpose2d`; both sets avoid it.

use crate::batch_norm::BatchNorm;
use crate::params::{ParamBuilder, ParamInit};
use candle_core::{DType, Result, Tensor};
use contrast_kernels::{BlockSpec, ChannelStats, ConvBn, OpSet};
/// Geometry of a square convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Kernel side (odd or even).
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvSpec {
    /// A `k x k` convolution, stride `stride`, "same" padding `k / 2`.
    pub fn same(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding: kernel / 2,
        }
    }

    /// Output side for an input side `n`.
    pub fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// A convolution with weight `[k*k*Cin, Cout]` (row index `(dy*k + dx)*Cin + ci`) and
/// an optional bias `[Cout]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    spec: ConvSpec,
    weight: Tensor,
    bias: Option<Tensor>,
    ops: OpSet,
}

impl Conv2d {
    /// Creates the weight with Kaiming-normal initialisation (fan-in, ReLU gain), and a
    /// zero bias when `bias` is set. Convolutions followed by BatchNorm need no bias.
    pub fn new(spec: ConvSpec, bias: bool, vb: ParamBuilder) -> Result<Self> {
        let fan_in = spec.kernel * spec.kernel * spec.in_channels;
        let std = (2.0 / fan_in as f64).sqrt();
        let weight = vb.get(
            (fan_in, spec.out_channels),
            "weight",
            ParamInit::Normal(std),
        )?;
        let bias = if bias {
            Some(vb.get(spec.out_channels, "bias", ParamInit::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            spec,
            weight,
            bias,
            ops: vb.ops(),
        })
    }

    /// The layer's geometry.
    pub fn spec(&self) -> ConvSpec {
        self.spec
    }

    /// The weight `[k*k*Cin, Cout]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Convolves `x` `[B, H, W, Cin]` into `[B, Ho, Wo, Cout]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.spec;
        let w = self.weight.to_dtype(x.dtype())?;
        let out = self.ops.conv2d(x, &w, s.kernel, s.stride, s.padding)?;
        match &self.bias {
            Some(bias) => out.broadcast_add(&bias.to_dtype(x.dtype())?),
            None => Ok(out),
        }
    }
}

/// `conv -> BatchNorm -> [+ residual] -> [ReLU] -> [2x2 max pool]`, one fused
/// operation in the fused op set ([`contrast_kernels::conv_block()`]). The convolution has no bias: BatchNorm's shift
/// replaces it.
#[derive(Debug, Clone)]
pub struct ConvBnAct {
    conv: Conv2d,
    bn: BatchNorm,
    /// Recompute the convolution in the backward pass instead of keeping its output
    /// (see [`BlockSpec::recompute`]).
    recompute: bool,
}

impl ConvBnAct {
    /// Creates `conv.weight` and `bn.{weight,bias,running_mean,running_var}` under `vb`.
    pub fn new(spec: ConvSpec, vb: ParamBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(spec, false, vb.pp("conv"))?,
            bn: BatchNorm::new(spec.out_channels, vb.pp("bn"))?,
            recompute: false,
        })
    }

    /// The block's convolution geometry.
    pub fn spec(&self) -> ConvSpec {
        self.conv.spec
    }

    /// The weight, BatchNorm scale and shift in `dtype` (the activations' type, so
    /// that a bf16 forward pass multiplies in bf16; the stored parameters stay f32).
    pub fn params(&self, dtype: DType) -> Result<[Tensor; 3]> {
        Ok([
            self.conv.weight.to_dtype(dtype)?,
            self.bn.weight().to_dtype(dtype)?,
            self.bn.bias().to_dtype(dtype)?,
        ])
    }

    /// The layer with `params` (from [`ConvBnAct::params`]) and its normalisation
    /// mode, for an op that runs whole blocks
    /// ([`contrast_kernels::residual_block()`]).
    pub fn layer<'a>(&self, params: &'a [Tensor; 3], train: bool) -> Result<ConvBn<'a>> {
        Ok(ConvBn {
            w: &params[0],
            gamma: &params[1],
            beta: &params[2],
            mode: self.bn.mode(train)?,
        })
    }

    /// BatchNorm epsilon.
    pub fn eps(&self) -> f64 {
        self.bn.eps()
    }

    /// The op set the block runs.
    pub fn ops(&self) -> OpSet {
        self.conv.ops
    }

    /// Whether the block recomputes its convolution in the backward pass.
    pub fn recomputes(&self) -> bool {
        self.recompute
    }

    /// Updates the running statistics from batch statistics of an input of
    /// `input_dims` `[B, H, W, Cin]` (training mode only).
    pub fn record(&self, stats: &ChannelStats, input_dims: &[usize]) -> Result<()> {
        let s = self.conv.spec;
        let (b, h, w) = (input_dims[0], input_dims[1], input_dims[2]);
        self.bn
            .update_running(stats, b * s.out_size(h) * s.out_size(w))
    }

    /// The same block, recomputing its convolution in the backward pass when `on`:
    /// less memory held between the passes, one more forward convolution.
    pub fn recomputing(mut self, on: bool) -> Self {
        self.recompute = on;
        self
    }

    /// Runs the block on `x` `[B, H, W, Cin]`, adding `residual` (the output's shape)
    /// after BatchNorm when given; in training mode the BatchNorm running statistics
    /// are updated.
    pub fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
        relu: bool,
        pool: bool,
    ) -> Result<Tensor> {
        let s = self.conv.spec;
        let spec = BlockSpec {
            kernel: s.kernel,
            stride: s.stride,
            padding: s.padding,
            eps: self.bn.eps(),
            relu,
            pool,
            recompute: self.recompute,
        };
        let [w, gamma, beta] = self.params(x.dtype())?;
        let out =
            self.conv
                .ops
                .conv_block(x, &w, &gamma, &beta, residual, spec, self.bn.mode(train)?)?;
        if train {
            self.record(&out.stats, x.dims())?;
        }
        Ok(out.y)
    }
}
