//! Which implementation of the CNN ops a model runs: the fused CPU kernels or the
//! device-generic candle compositions ([`super::generic`]).
//!
//! A model holds one [`OpSet`] and calls its convolutions, normalisations and blocks
//! through it (pooling and the residual join run inside the blocks), so the model
//! definition is written once. Both sets compute the same function with the same gradients (the
//! tests compare them in f64 to 1e-9); they differ in speed, memory and where they
//! run.

use crate::cnn::batch_norm::{self, BatchNormMode, BatchNormOutput};
use crate::cnn::conv_block::{self, BlockSpec};
use crate::cnn::residual_block::{self, ConvBn, ResidualBlockOutput};
use crate::cnn::{conv2d, generic};
use candle_core::{Device, Result, Tensor};

/// The implementation behind every CNN op of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OpSet {
    /// The fused CPU custom ops (f32/f64 CPU tensors; other devices and dtypes fall
    /// back to the generic bodies op by op).
    #[default]
    Fused,
    /// The candle tensor-op compositions of [`generic`]: any device, any float dtype.
    Candle,
}

impl OpSet {
    /// The fastest set for `device`: fused on the CPU, candle elsewhere.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            OpSet::Fused
        } else {
            OpSet::Candle
        }
    }

    /// The set's name as configured (`"fused"` or `"candle"`).
    pub fn name(self) -> &'static str {
        match self {
            OpSet::Fused => "fused",
            OpSet::Candle => "candle",
        }
    }

    /// Convolution `[B, H, W, Cin] x [k*k*Cin, Cout] -> [B, Ho, Wo, Cout]`
    /// ([`conv2d::conv2d_nhwc`]).
    pub fn conv2d(
        self,
        x: &Tensor,
        w: &Tensor,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        match self {
            OpSet::Fused => conv2d::conv2d_nhwc(x, w, kernel, stride, padding),
            OpSet::Candle => generic::conv2d(x, w, kernel, stride, padding),
        }
    }

    /// BatchNorm (+ ReLU) over the last dimension ([`batch_norm::batch_norm`]).
    pub fn batch_norm(
        self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        mode: BatchNormMode,
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormOutput> {
        match self {
            OpSet::Fused => batch_norm::batch_norm(x, gamma, beta, mode, eps, relu),
            OpSet::Candle => generic::batch_norm(x, gamma, beta, mode, eps, relu),
        }
    }

    /// `conv -> BatchNorm -> [+ residual] -> [ReLU] -> [pool]`
    /// ([`conv_block::conv_block`]).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_block(
        self,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        residual: Option<&Tensor>,
        spec: BlockSpec,
        mode: BatchNormMode,
    ) -> Result<BatchNormOutput> {
        match self {
            OpSet::Fused => conv_block::conv_block(x, w, gamma, beta, residual, spec, mode),
            OpSet::Candle => generic::conv_block(x, w, gamma, beta, residual, spec, mode),
        }
    }

    /// The ResNet basic block ([`residual_block::residual_block`]); `recompute` applies
    /// to the fused set only.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_block(
        self,
        x: &Tensor,
        first: &ConvBn<'_>,
        second: &ConvBn<'_>,
        shortcut: Option<&ConvBn<'_>>,
        stride: usize,
        eps: f64,
        recompute: bool,
    ) -> Result<ResidualBlockOutput> {
        match self {
            OpSet::Fused => {
                residual_block::residual_block(x, first, second, shortcut, stride, eps, recompute)
            }
            OpSet::Candle => generic::residual_block(x, first, second, shortcut, stride, eps),
        }
    }
}
