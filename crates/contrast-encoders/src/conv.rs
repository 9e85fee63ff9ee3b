//! 2-D convolution on channels-last tensors, as im2col plus one matrix product.
//!
//! The `k x k` shifted windows of the zero-padded input are concatenated along the
//! channel axis (`[B, Ho, Wo, k*k*Cin]`) and multiplied by the weight
//! `[k*k*Cin, Cout]`. Every step is a plain candle op, so autograd differentiates it
//! and both backward passes are matrix products too. candle 0.11's own CPU
//! convolution routes the input gradient through a naive `conv_transpose2d`; this
//! formulation avoids it.

use crate::params::{ParamBuilder, ParamInit};
use candle_core::{Result, Tensor};

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
        let (b, h, w, c) = x.dims4()?;
        let s = self.spec;
        if c != s.in_channels {
            candle_core::bail!(
                "Conv2d expects {} input channels (last dimension), got input of shape {:?}",
                s.in_channels,
                x.dims()
            );
        }
        if h + 2 * s.padding < s.kernel || w + 2 * s.padding < s.kernel {
            candle_core::bail!(
                "Conv2d kernel {} is larger than the padded input {h}x{w}",
                s.kernel
            );
        }
        let (ho, wo) = (s.out_size(h), s.out_size(w));
        let cols = im2col(x, s, ho, wo)?;
        let out = cols
            .reshape((b * ho * wo, s.kernel * s.kernel * c))?
            .matmul(&self.weight)?;
        let out = match &self.bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        out.reshape((b, ho, wo, s.out_channels))
    }
}

/// Gathers the `k*k` shifted windows of `x` into `[B, Ho, Wo, k*k*C]`.
fn im2col(x: &Tensor, s: ConvSpec, ho: usize, wo: usize) -> Result<Tensor> {
    if s.kernel == 1 && s.padding == 0 {
        return subsample(x, s.stride, ho, wo);
    }
    // Extra zeros at the far edge let every strided window be cut as `stride * out`.
    let extra = s.stride - 1;
    let xp = x
        .pad_with_zeros(1, s.padding, s.padding + extra)?
        .pad_with_zeros(2, s.padding, s.padding + extra)?;
    let mut windows = Vec::with_capacity(s.kernel * s.kernel);
    for dy in 0..s.kernel {
        for dx in 0..s.kernel {
            let win = xp
                .narrow(1, dy, ho * s.stride)?
                .narrow(2, dx, wo * s.stride)?;
            windows.push(subsample(&win, s.stride, ho, wo)?);
        }
    }
    Tensor::cat(&windows, 3)
}

/// Keeps every `stride`-th row and column of `x` (`[B, >= stride*ho, >= stride*wo, C]`).
fn subsample(x: &Tensor, stride: usize, ho: usize, wo: usize) -> Result<Tensor> {
    if stride == 1 {
        return x.narrow(1, 0, ho)?.narrow(2, 0, wo);
    }
    let (b, _, _, c) = x.dims4()?;
    x.narrow(1, 0, ho * stride)?
        .narrow(2, 0, wo * stride)?
        .reshape((b, ho, stride, wo, stride, c))?
        .narrow(2, 0, 1)?
        .narrow(4, 0, 1)?
        .reshape((b, ho, wo, c))
}
