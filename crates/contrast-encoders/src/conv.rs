//! 2-D convolution layer on channels-last tensors.
//!
//! The arithmetic is [`contrast_kernels::conv2d_nhwc`]: im2col plus GEMM for the
//! forward pass and both backward passes, in chunks of images so that no im2col
//! buffer of the whole batch exists. candle 0.11's own CPU convolution routes the
//! input gradient through a naive `conv_transpose2d`; this layer avoids it.

use crate::params::{ParamBuilder, ParamInit};
use candle_core::{Result, Tensor};
use contrast_kernels::conv2d_nhwc;
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
        Ok(Self { spec, weight, bias })
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
        let out = conv2d_nhwc(x, &self.weight, s.kernel, s.stride, s.padding)?;
        match &self.bias {
            Some(bias) => out.broadcast_add(bias),
            None => Ok(out),
        }
    }
}
