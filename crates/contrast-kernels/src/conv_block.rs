//! A fused convolution block: `conv -> BatchNorm -> [ReLU] -> [2x2 max pool]`, as one
//! candle custom op with its backward pass.
//!
//! candle's autograd accumulates the gradient of every intermediate tensor through a
//! zero-filled buffer and an addition. In a block of separate ops that means three
//! full-size intermediates (convolution output, normalised output, pooled output) each
//! cost a zero fill and an extra sweep in the backward pass. As one op the block keeps
//! its intermediates itself (for the backward pass) and exposes a single node to the
//! graph. The arithmetic is the kernels of [`crate::conv2d`], [`crate::batch_norm`]
//! and [`crate::pool`], so results equal the unfused composition.

use crate::batch_norm::{
    self, BackwardSpec, BatchNormMode, BatchNormOutput, ChannelStats, Float, SharedGrads,
    batch_norm,
};
use crate::conv2d::{self, ConvGeometry, conv2d_nhwc};
use crate::pool::{self, max_pool2};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use std::sync::{Arc, Mutex};

/// What the block computes after the convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// BatchNorm epsilon.
    pub eps: f64,
    pub relu: bool,
    /// 2x2, stride-2 max pooling at the end.
    pub pool: bool,
}

/// Intermediates kept from the forward pass for the backward pass.
struct Saved<T> {
    geometry: ConvGeometry,
    /// Convolution output `[B, Ho, Wo, C]`.
    pre: Vec<T>,
    /// Normalised (and activated) output before pooling; kept only when pooling,
    /// since otherwise it is the op's own result, which the backward pass receives.
    act: Option<Vec<T>>,
    stats: ChannelStats,
}

enum SavedAny {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

/// Forward op `(x, w, gamma_beta [2, C]) -> y`.
struct ConvBlockOp {
    spec: BlockSpec,
    mode: BatchNormMode,
    saved: Arc<Mutex<Option<SavedAny>>>,
}

fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    l.contiguous_offsets()
        .map(|(a, b)| &data[a..b])
        .ok_or_else(|| candle_core::Error::Msg(format!("conv_block: {what} must be contiguous")))
}

impl ConvBlockOp {
    fn run<T: Float>(&self, x: &[T], w: &[T], gb: &[T], g: ConvGeometry) -> (Vec<T>, Saved<T>) {
        let c = g.out_channels;
        let pre = conv2d::forward(x, w, &g);
        let stats = match &self.mode {
            BatchNormMode::Batch => batch_norm::channel_stats(&pre, c),
            BatchNormMode::Fixed(s) => s.clone(),
        };
        let act = batch_norm::forward(
            &pre,
            &gb[..c],
            &gb[c..],
            &stats,
            self.spec.eps,
            self.spec.relu,
        );
        let (out, act) = if self.spec.pool {
            (
                pool::forward(&act, (g.batch, g.out_h(), g.out_w(), c)),
                Some(act),
            )
        } else {
            (act, None)
        };
        (
            out,
            Saved {
                geometry: g,
                pre,
                act,
                stats,
            },
        )
    }

    fn out_shape(&self, g: &ConvGeometry) -> Shape {
        if self.spec.pool {
            Shape::from((g.batch, g.out_h() / 2, g.out_w() / 2, g.out_channels))
        } else {
            Shape::from((g.batch, g.out_h(), g.out_w(), g.out_channels))
        }
    }
}

impl CustomOp3 for ConvBlockOp {
    fn name(&self) -> &'static str {
        "contrast-conv-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeometry::from_shapes(
            l1.dims(),
            l2.dims(),
            self.spec.kernel,
            self.spec.stride,
            self.spec.padding,
        )?;
        let (out, saved) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(gb)) => {
                let (o, s) = self.run(
                    contiguous(x, l1, "x")?,
                    contiguous(w, l2, "w")?,
                    contiguous(gb, l3, "gamma/beta")?,
                    g,
                );
                (CpuStorage::F32(o), SavedAny::F32(s))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(gb)) => {
                let (o, s) = self.run(
                    contiguous(x, l1, "x")?,
                    contiguous(w, l2, "w")?,
                    contiguous(gb, l3, "gamma/beta")?,
                    g,
                );
                (CpuStorage::F64(o), SavedAny::F64(s))
            }
            _ => bail!(
                "conv_block: expected f32 or f64 tensors of one type, got {:?}",
                s1.dtype()
            ),
        };
        *self.saved.lock().expect("saved lock") = Some(saved);
        Ok((out, self.out_shape(&g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = ConvBlockGradOp {
            input_grad: x.track_op(),
            spec: self.spec,
            batch_stats: matches!(self.mode, BatchNormMode::Batch),
            saved: self.saved.clone(),
            gamma: gb
                .narrow(0, 0, 1)?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1()?,
            param_grads: Arc::new(Mutex::new(None)),
            output: (!self.spec.pool).then(|| y.clone()),
        };
        let dx = x.apply_op3_no_bwd(w, &dy.contiguous()?, &op)?;
        let (dw, dgb) = op
            .param_grads
            .lock()
            .expect("grad lock")
            .take()
            .expect("filled by the op");
        let to = |v: Vec<f64>, shape: &[usize]| {
            Tensor::from_vec(v, shape, w.device())?.to_dtype(w.dtype())
        };
        let dx = if op.input_grad { Some(dx) } else { None };
        Ok((dx, Some(to(dw, w.dims())?), Some(to(dgb, gb.dims())?)))
    }
}

/// Backward op `(x, w, dy) -> dx`, leaving `dw` and `d(gamma, beta)` in `param_grads`.
/// Without `input_grad` (the block's input is data, e.g. the image batch) the input
/// gradient is skipped and the op returns a single zero.
struct ConvBlockGradOp {
    input_grad: bool,
    spec: BlockSpec,
    batch_stats: bool,
    saved: Arc<Mutex<Option<SavedAny>>>,
    gamma: Vec<f64>,
    param_grads: SharedGrads,
    /// The block's output, which is the activation itself when there is no pooling.
    output: Option<Tensor>,
}

impl ConvBlockGradOp {
    fn run<T: Float>(&self, x: &[T], w: &[T], dy: &[T], s: &Saved<T>) -> Result<Vec<T>> {
        let g = &s.geometry;
        let guard;
        let act: &[T] = match (&s.act, &self.output) {
            (Some(a), _) => a,
            (None, Some(y)) => {
                guard = y.storage_and_layout();
                let (candle_core::Storage::Cpu(storage), layout) = (&*guard.0, guard.1) else {
                    bail!("conv_block backward: the output is not on the CPU");
                };
                let all = T::slice_of(storage)
                    .ok_or_else(|| candle_core::Error::Msg("conv_block backward: dtype".into()))?;
                contiguous(all, layout, "output")?
            }
            (None, None) => bail!("conv_block backward: the activation was not kept"),
        };
        let c = g.out_channels;
        let pooled;
        let d_act: &[T] = if self.spec.pool {
            pooled = pool::backward(act, dy, (g.batch, g.out_h(), g.out_w(), c));
            &pooled
        } else {
            dy
        };
        let spec = BackwardSpec {
            gamma: &self.gamma,
            stats: &s.stats,
            eps: self.spec.eps,
            relu: self.spec.relu,
            batch_stats: self.batch_stats,
        };
        let (d_pre, dgamma, dbeta) = batch_norm::backward(&s.pre, act, d_act, &spec);
        let dx = if self.input_grad {
            conv2d::backward_input(&d_pre, w, g)
        } else {
            vec![T::ZERO]
        };
        let dw = conv2d::backward_weight(x, &d_pre, g);
        let to64 = |v: &[T]| v.iter().map(|t| t.to_f64()).collect::<Vec<f64>>();
        let dgb: Vec<f64> = to64(&dgamma).into_iter().chain(to64(&dbeta)).collect();
        *self.param_grads.lock().expect("grad lock") = Some((to64(&dw), dgb));
        Ok(dx)
    }
}

impl CustomOp3 for ConvBlockGradOp {
    fn name(&self) -> &'static str {
        "contrast-conv-block-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let saved = self.saved.lock().expect("saved lock");
        let out = match (s1, s2, s3, saved.as_ref()) {
            (
                CpuStorage::F32(x),
                CpuStorage::F32(w),
                CpuStorage::F32(d),
                Some(SavedAny::F32(s)),
            ) => CpuStorage::F32(self.run(
                contiguous(x, l1, "x")?,
                contiguous(w, l2, "w")?,
                contiguous(d, l3, "dy")?,
                s,
            )?),
            (
                CpuStorage::F64(x),
                CpuStorage::F64(w),
                CpuStorage::F64(d),
                Some(SavedAny::F64(s)),
            ) => CpuStorage::F64(self.run(
                contiguous(x, l1, "x")?,
                contiguous(w, l2, "w")?,
                contiguous(d, l3, "dy")?,
                s,
            )?),
            (_, _, _, None) => bail!("conv_block: backward before forward"),
            _ => bail!("conv_block backward: dtype mismatch ({:?})", s1.dtype()),
        };
        let shape = if self.input_grad {
            l1.shape().clone()
        } else {
            Shape::from(1)
        };
        Ok((out, shape))
    }
}

/// `conv(x, w) -> BatchNorm(gamma, beta) -> [ReLU] -> [max pool 2x2]` for `x`
/// `[B, H, W, Cin]`, `w` `[k*k*Cin, Cout]`, `gamma`, `beta` `[Cout]`. Differentiable in
/// `x`, `w`, `gamma` and `beta`; returns the output and the normalisation statistics
/// used (batch statistics in training mode). CPU f32/f64 tensors run the fused op,
/// others the unfused composition.
pub fn conv_block(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    spec: BlockSpec,
    mode: BatchNormMode,
) -> Result<BatchNormOutput> {
    let g = ConvGeometry::from_shapes(x.dims(), w.dims(), spec.kernel, spec.stride, spec.padding)?;
    let c = g.out_channels;
    if gamma.elem_count() != c || beta.elem_count() != c {
        bail!("conv_block: gamma and beta must have {c} entries (the output channels)");
    }
    if spec.pool && (g.out_h() < 2 || g.out_w() < 2) {
        bail!(
            "conv_block: a {}x{} output is smaller than the 2x2 pool",
            g.out_h(),
            g.out_w()
        );
    }
    if let BatchNormMode::Fixed(s) = &mode
        && (s.mean.len() != c || s.var.len() != c)
    {
        bail!("conv_block: fixed statistics must have {c} entries");
    }
    if matches!(mode, BatchNormMode::Batch) && g.batch * g.out_h() * g.out_w() < 2 {
        bail!("conv_block: batch statistics need at least 2 values per channel");
    }
    let same = [w.dtype(), gamma.dtype(), beta.dtype()]
        .iter()
        .all(|d| *d == x.dtype());
    let fused = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && same;
    if !fused {
        let pre = conv2d_nhwc(x, w, spec.kernel, spec.stride, spec.padding)?;
        let out = batch_norm(&pre, gamma, beta, mode, spec.eps, spec.relu)?;
        let y = if spec.pool { max_pool2(&out.y)? } else { out.y };
        return Ok(BatchNormOutput {
            y,
            stats: out.stats,
        });
    }
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBlockOp {
        spec,
        mode,
        saved: saved.clone(),
    };
    let gb = Tensor::stack(&[gamma.flatten_all()?, beta.flatten_all()?], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
    let stats = match saved.lock().expect("saved lock").as_ref() {
        Some(SavedAny::F32(s)) => s.stats.clone(),
        Some(SavedAny::F64(s)) => s.stats.clone(),
        None => bail!("conv_block: the forward pass saved nothing"),
    };
    Ok(BatchNormOutput { y, stats })
}
