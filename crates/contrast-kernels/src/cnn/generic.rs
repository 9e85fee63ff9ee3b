//! The device-generic op set: every CNN op of [`super`] written in plain candle tensor
//! ops, so it runs on any candle device (CPU, CUDA, Metal) and in any float dtype, and
//! candle's autograd differentiates it.
//!
//! These bodies are what `model.ops = "candle"` trains with, what the GPU runs, and
//! the reference the fused CPU ops are tested against (values and every gradient, in
//! f64). Choices, each for gradients that work and for GEMM-shaped work on a GPU:
//!
//! - [`conv2d`] is im2col written as tensor ops: the `k*k` shifted windows of the
//!   padded input, concatenated on the channel axis, times the weight `[k*k*Cin,
//!   Cout]`. Both passes are one matrix product (cuBLAS on CUDA) plus copies. candle's
//!   own `conv2d` is NCHW (two transposes per layer here) and takes its input gradient
//!   through `conv_transpose2d`, a naive loop on the CPU (one 64->64 3x3 layer at
//!   32x32, batch 64: 596 ms forward and backward against PyTorch's 86 ms, measured
//!   while planning) and a naive kernel on CUDA; with the `cudnn` feature its forward
//!   pass would use cuDNN but the input gradient still would not.
//! - [`batch_norm`] computes the batch mean and biased variance with reductions, so
//!   the gradient flows through the statistics as in training-mode BatchNorm
//!   (candle-nn's fused normalisations drop gradients; this uses none of them). The
//!   reductions and the per-channel scale and shift run in f64 (f32 on Metal, which
//!   has no f64), as the fused kernel's do, whatever the activations' dtype. On 2,000
//!   Fashion-MNIST images with the default preset, f32 statistics put the loss 1.3e-3
//!   (relative) from the fused run's by the 5th step; in f64 the first step agrees to
//!   the last bit and the 7th is 1.7e-4 away.
//! - [`max_pool2`] lays each window's four values on a last axis and gathers the
//!   first maximum (`argmax` + `gather`, whose backward pass is a scatter-add): the
//!   gradient goes to one element per window, as in the fused kernel and PyTorch.
//!   A `max` reduction would send it to every tied element, and ties are common
//!   (a flat background gives equal activations).

use crate::cnn::batch_norm::{BatchNormMode, BatchNormOutput, ChannelStats, check_batch_norm};
use crate::cnn::conv_block::{BlockSpec, check_block};
use crate::cnn::conv2d::ConvGeometry;
use crate::cnn::residual_block::{ConvBn, ResidualBlockOutput, check_residual};
use candle_core::{DType, Result, Tensor, bail};

/// Convolution of `x` `[B, H, W, Cin]` with `w` `[k*k*Cin, Cout]` (row
/// `(dy*k + dx)*Cin + ci`), stride `stride`, zero padding `padding`: `[B, Ho, Wo, Cout]`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let g = ConvGeometry::from_shapes(x.dims(), w.dims(), kernel, stride, padding)?;
    let (oh, ow) = (g.out_h(), g.out_w());
    // Extra zeros at the far edge let every strided window be cut as `stride * out`.
    let extra = stride - 1;
    let xp = x
        .pad_with_zeros(1, padding, padding + extra)?
        .pad_with_zeros(2, padding, padding + extra)?;
    let mut windows = Vec::with_capacity(kernel * kernel);
    for dy in 0..kernel {
        for dx in 0..kernel {
            let win = xp.narrow(1, dy, oh * stride)?.narrow(2, dx, ow * stride)?;
            let win = if stride == 1 {
                win
            } else {
                win.reshape((g.batch, oh, stride, ow, stride, g.in_channels))?
                    .narrow(2, 0, 1)?
                    .narrow(4, 0, 1)?
            };
            windows.push(win.reshape((g.batch * oh * ow, g.in_channels))?);
        }
    }
    Tensor::cat(&windows, 1)?
        .matmul(w)?
        .reshape((g.batch, oh, ow, g.out_channels))
}

/// Batch normalisation of `x` `[..., C]` over every dimension but the last, with scale
/// `gamma` and shift `beta` `[C]`, then a ReLU when `relu`; returns the statistics
/// used. In [`BatchNormMode::Batch`] the gradient flows through the batch statistics.
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mode: BatchNormMode,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    check_batch_norm(x, gamma, beta, &mode)?;
    let dims = x.dims().to_vec();
    let c = gamma.elem_count();
    let flat = x.reshape(((), c))?;
    // The statistics are sums over `B*H*W` values per channel (400k in a ConvNet's
    // first layer); in f32 their rounding alone moves a training run measurably, so
    // they and the per-channel scale and shift are computed in f64 wherever the device
    // has it, and in f32 on Metal (and for half-precision inputs there).
    let wide = if x.device().is_metal() {
        DType::F32
    } else {
        DType::F64
    };
    let (mean, var, stats) = match mode {
        BatchNormMode::Batch => {
            let f = flat.to_dtype(wide)?;
            let mean = f.mean(0)?;
            let var = f.broadcast_sub(&mean)?.sqr()?.mean(0)?;
            let stats = ChannelStats {
                mean: mean.to_dtype(DType::F64)?.to_vec1()?,
                var: var.to_dtype(DType::F64)?.to_vec1()?,
            };
            (mean, var, stats)
        }
        BatchNormMode::Synced(sum) => {
            // Two passes over the global batch, as in one process: the mean, then
            // the mean squared deviation from it.
            let f = flat.to_dtype(wide)?;
            let n = (f.dim(0)? * sum.processes()) as f64;
            let mean = (sum.sum(&f.sum(0)?)? / n)?;
            let var = (sum.sum(&f.broadcast_sub(&mean)?.sqr()?.sum(0)?)? / n)?;
            let stats = ChannelStats {
                mean: mean.to_dtype(DType::F64)?.to_vec1()?,
                var: var.to_dtype(DType::F64)?.to_vec1()?,
            };
            (mean, var, stats)
        }
        BatchNormMode::Fixed(s) => {
            let t = |v: &[f64]| Tensor::from_slice(v, c, x.device())?.to_dtype(wide);
            (t(&s.mean)?, t(&s.var)?, s)
        }
    };
    let scale = ((var + eps)?.sqrt()?.recip()? * gamma.to_dtype(wide)?)?;
    let shift = (beta.to_dtype(wide)? - (mean * &scale)?)?;
    let (scale, shift) = (scale.to_dtype(x.dtype())?, shift.to_dtype(x.dtype())?);
    let y = flat.broadcast_mul(&scale)?.broadcast_add(&shift)?;
    let y = if relu { y.relu()? } else { y };
    Ok(BatchNormOutput {
        y: y.reshape(dims)?,
        stats,
    })
}

/// 2x2, stride-2 max pooling of `x` `[B, H, W, C]` (a trailing odd row or column is
/// dropped): `[B, H/2, W/2, C]`.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if h < 2 || w < 2 {
        bail!(
            "max_pool2: input {:?} is smaller than the 2x2 window",
            x.dims()
        );
    }
    let (oh, ow) = (h / 2, w / 2);
    // Each window's four values on a last axis of 4, in the order (0,0), (0,1),
    // (1,0), (1,1).
    let windows = x
        .narrow(1, 0, oh * 2)?
        .narrow(2, 0, ow * 2)?
        .reshape((b, oh, 2, ow, 2, c))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, oh, ow, c, 4))?;
    // Gathering at the first maximum sends each window's gradient to that one
    // element, as the fused kernel and PyTorch do; a `max` reduction would send it to
    // every tied element, which flat image backgrounds make common.
    let first_max = windows.argmax_keepdim(4)?;
    windows.gather(&first_max, 4)?.squeeze(4)
}

/// The residual join `relu(a + b)`.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    (a + b)?.relu()
}

/// `conv -> BatchNorm -> [+ residual] -> [ReLU] -> [2x2 max pool]`, the composition of
/// this module's ops (shapes and arguments as [`super::conv_block()`]; `recompute` has
/// no meaning here: autograd keeps what it keeps).
pub fn conv_block(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    spec: BlockSpec,
    mode: BatchNormMode,
) -> Result<BatchNormOutput> {
    check_block(x, w, gamma, beta, residual, &spec, &mode)?;
    let pre = conv2d(x, w, spec.kernel, spec.stride, spec.padding)?;
    let out = batch_norm(
        &pre,
        gamma,
        beta,
        mode,
        spec.eps,
        spec.relu && residual.is_none(),
    )?;
    let y = match residual {
        Some(r) if spec.relu => add_relu(&out.y, r)?,
        Some(r) => (out.y + r)?,
        None => out.y,
    };
    let y = if spec.pool { max_pool2(&y)? } else { y };
    Ok(BatchNormOutput {
        y,
        stats: out.stats,
    })
}

/// The ResNet basic block (arguments as [`super::residual_block()`]) as two (or three)
/// of this module's [`conv_block`]s.
pub fn residual_block(
    x: &Tensor,
    first: &ConvBn<'_>,
    second: &ConvBn<'_>,
    shortcut: Option<&ConvBn<'_>>,
    stride: usize,
    eps: f64,
) -> Result<ResidualBlockOutput> {
    check_residual(x, first, second, shortcut, stride)?;
    let spec = |kernel: usize, stride: usize, relu: bool| BlockSpec {
        kernel,
        stride,
        padding: kernel / 2,
        eps,
        relu,
        pool: false,
        recompute: false,
    };
    let run = |input: &Tensor, l: &ConvBn<'_>, s: BlockSpec, r: Option<&Tensor>| {
        conv_block(input, l.w, l.gamma, l.beta, r, s, l.mode.clone())
    };
    let h = run(x, first, spec(3, stride, true), None)?;
    let mut stats = vec![h.stats];
    let short = shortcut
        .map(|l| run(x, l, spec(1, stride, false), None))
        .transpose()?;
    let identity = short.as_ref().map_or(x, |s| &s.y);
    let out = run(&h.y, second, spec(3, 1, true), Some(identity))?;
    stats.push(out.stats);
    stats.extend(short.map(|s| s.stats));
    Ok(ResidualBlockOutput { y: out.y, stats })
}
