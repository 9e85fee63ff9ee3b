//! A fused convolution block: `conv -> BatchNorm -> [+ residual] -> [ReLU] ->
//! [2x2 max pool]`, as one candle custom op with its backward pass.
//!
//! candle's autograd accumulates the gradient of every intermediate tensor through a
//! zero-filled buffer and an addition. In a block of separate ops that means three
//! full-size intermediates (convolution output, normalised output, pooled output) each
//! cost a zero fill and an extra sweep in the backward pass. As one op the block keeps
//! its intermediates itself (for the backward pass) and exposes a single node to the
//! graph. With a residual input (a ResNet block's second convolution) the normalised
//! output is never a graph node either: the graph keeps only `relu(bn(conv(x)) + r)`,
//! one full-size tensor less per residual block. The saved convolution output is
//! released as soon as the backward pass has used it. The arithmetic is the kernels of
//! [`super::conv2d`], [`super::batch_norm()`], [`super::pool`] and [`super::residual`],
//! so results equal the unfused composition.

use crate::cnn::batch_norm::{self, BackwardSpec, BatchNormMode, BatchNormOutput, ChannelStats};
use crate::cnn::conv2d::{self, ConvGeometry};
use crate::cnn::{direct_conv, generic, pool, residual};
use crate::cpu::storage::{contiguous, with_triple};
use crate::float::Float;
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
    /// Keep no convolution output for the backward pass and recompute it there
    /// (activation checkpointing): one full-size tensor less per block until its
    /// backward pass, for one more forward convolution.
    pub recompute: bool,
}

/// How the backward pass gets the convolution output `[B, Ho, Wo, C]`.
enum Pre<T> {
    /// Kept from the forward pass.
    Kept(Vec<T>),
    /// Recomputed whole at the start of the backward pass ([`BlockSpec::recompute`]).
    Recomputed,
    /// Never stored: recomputed a few images at a time inside each fused pass (see
    /// [`Stream`]).
    Streamed,
}

/// Intermediates kept from the forward pass for the backward pass.
struct Saved<T> {
    geometry: ConvGeometry,
    pre: Pre<T>,
    stats: ChannelStats,
}

enum SavedAny {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

impl SavedAny {
    /// The state as an f32 or an f64 one, for the two arms of a dtype dispatch.
    fn split(self) -> (Option<Saved<f32>>, Option<Saved<f64>>) {
        match self {
            SavedAny::F32(s) => (Some(s), None),
            SavedAny::F64(s) => (None, Some(s)),
        }
    }
}

/// The saved state of the type the backward pass runs in (`dtype`), or an error when
/// the forward pass ran in the other one.
fn saved_as<T>(s: Option<Saved<T>>, dtype: &str) -> Result<Saved<T>> {
    s.ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "conv_block backward: dtype mismatch ({dtype} gradient, the forward pass ran in the other type)"
        ))
    })
}

/// Forward op `(x, params, residual) -> y`, with `params` the weights `[k*k*Cin, C]`
/// followed by the rows gamma and beta (`[k*k*Cin + 2, C]`) and `residual` either
/// `[B, Ho, Wo, C]` or a one-element placeholder when the block has none.
struct ConvBlockOp {
    spec: BlockSpec,
    mode: BatchNormMode,
    residual: bool,
    /// Whether the convolution output is streamed ([`Pre::Streamed`]).
    streamed: bool,
    saved: Arc<Mutex<Option<SavedAny>>>,
}

/// Whether a block streams its convolution output instead of storing it: a pooled
/// f32 block without residual whose input needs no gradient (the image batch) and
/// whose convolution the direct kernel takes ([`direct_conv::applies`]: a small patch
/// on an AVX2 CPU). Such a first layer writes its largest tensor (at 28x28 and 32
/// channels, 51 MB per 512 images) and reads it back three times for a convolution of
/// 9 multiply-adds per value; recomputing it in cache in each pass is cheaper than the
/// memory traffic. The results are the same bit for bit: the same convolution values,
/// and every sum taken in the same order as on the stored path.
fn streams(
    spec: &BlockSpec,
    g: &ConvGeometry,
    dtype: DType,
    residual: bool,
    input_grad: bool,
) -> bool {
    spec.pool && !residual && !input_grad && dtype == DType::F32 && direct_conv::applies(g)
}

/// The convolution of a streamed block, computed on demand into per-thread buffers.
struct Stream<'a, T> {
    x: &'a [T],
    w: &'a [T],
    g: ConvGeometry,
}

impl<T: Float> Stream<'_, T> {
    /// Hands the convolution output of images `first..first + n` to `f`.
    fn images<R>(&self, first: usize, n: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
        let g = ConvGeometry { batch: n, ..self.g };
        let x = &self.x[first * g.in_image()..(first + n) * g.in_image()];
        T::with_scratch(n * g.out_pixels() * g.out_channels, |y| {
            conv2d::forward_chunk(y, x, self.w, &g);
            f(y)
        })
    }

    /// Hands the output rows `rows` (pixels of the whole batch, `[rows, C]`) to
    /// `add`, one image's part at a time.
    fn rows(&self, rows: std::ops::Range<usize>, add: &mut dyn FnMut(&[T])) {
        let (per, c) = (self.g.out_pixels(), self.g.out_channels);
        if rows.is_empty() {
            return;
        }
        for n in rows.start / per..=(rows.end - 1) / per {
            let lo = rows.start.max(n * per) - n * per;
            let hi = rows.end.min((n + 1) * per) - n * per;
            self.images(n, 1, |y| add(&y[lo * c..hi * c]));
        }
    }
}

/// The values as f64 (BatchNorm's per-channel arithmetic and the parameter gradients
/// the op hands back are f64).
fn to_f64s<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|t| t.to_f64()).collect()
}

/// Weights `[k*k*Cin * C]` and gamma, beta `[C]` each from the packed parameters.
fn split_params<T>(params: &[T], c: usize) -> (&[T], &[T], &[T]) {
    let (w, gb) = params.split_at(params.len() - 2 * c);
    let (gamma, beta) = gb.split_at(c);
    (w, gamma, beta)
}

impl ConvBlockOp {
    fn run<T: Float>(&self, x: &[T], params: &[T], r: &[T], g: ConvGeometry) -> (Vec<T>, Saved<T>) {
        let c = g.out_channels;
        let (w, gamma, beta) = split_params(params, c);
        if self.streamed {
            return self.run_streamed(Stream { x, w, g }, gamma, beta);
        }
        let pre = conv2d::forward(x, w, &g);
        let stats = self.mode.stats_of(&pre, c);
        let out = if self.spec.pool {
            let (scale, shift) = self.scale_shift(gamma, beta, &stats);
            let dims = (g.batch, g.out_h(), g.out_w(), c);
            pool::affine_forward(&pre, (&scale, &shift), self.spec.relu, dims)
        } else {
            let relu_now = self.spec.relu && !self.residual;
            let mut act = batch_norm::forward(&pre, gamma, beta, &stats, self.spec.eps, relu_now);
            if self.residual && self.spec.relu {
                residual::add_relu_in_place(&mut act, r);
            } else if self.residual {
                act.iter_mut().zip(r).for_each(|(a, &b)| *a += b);
            }
            act
        };
        (
            out,
            Saved {
                geometry: g,
                pre: if self.spec.recompute {
                    Pre::Recomputed
                } else {
                    Pre::Kept(pre)
                },
                stats,
            },
        )
    }

    /// The per-channel `(scale, shift)` of the normalisation.
    fn scale_shift<T: Float>(
        &self,
        gamma: &[T],
        beta: &[T],
        stats: &ChannelStats,
    ) -> (Vec<T>, Vec<T>) {
        batch_norm::scale_shift::<T>(&to_f64s(gamma), &to_f64s(beta), stats, self.spec.eps)
    }

    /// [`Self::run`] for a streamed block (pooled, no residual).
    fn run_streamed<T: Float>(
        &self,
        s: Stream<'_, T>,
        gamma: &[T],
        beta: &[T],
    ) -> (Vec<T>, Saved<T>) {
        let g = s.g;
        let c = g.out_channels;
        let stats = match &self.mode {
            BatchNormMode::Batch => {
                batch_norm::channel_stats_with(g.batch * g.out_pixels(), c, |rows, add| {
                    s.rows(rows, add)
                })
            }
            BatchNormMode::Fixed(stats) => stats.clone(),
            BatchNormMode::Synced(_) => unreachable!("synchronised statistics run in generic"),
        };
        let (scale, shift) = self.scale_shift(gamma, beta, &stats);
        let dims = (g.batch, g.out_h(), g.out_w(), c);
        let out = pool::affine_forward_with((&scale, &shift), self.spec.relu, dims, |n, f| {
            s.images(n, 1, |y| f(y))
        });
        let saved = Saved {
            geometry: g,
            pre: Pre::Streamed,
            stats,
        };
        (out, saved)
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
        let (rows, c) = l2.shape().dims2()?;
        let g = ConvGeometry::from_shapes(
            l1.dims(),
            &[rows - 2, c],
            self.spec.kernel,
            self.spec.stride,
            self.spec.padding,
        )?;
        let (out, saved) = with_triple(
            "conv_block",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            ["x", "params", "residual"],
            |x, p, r| {
                let (o, s) = self.run(x, p, r, g);
                (CpuStorage::F32(o), SavedAny::F32(s))
            },
            |x, p, r| {
                let (o, s) = self.run(x, p, r, g);
                (CpuStorage::F64(o), SavedAny::F64(s))
            },
        )?;
        *self.saved.lock().expect("saved lock") = Some(saved);
        Ok((out, self.out_shape(&g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        r: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, c) = params.dims2()?;
        let op = ConvBlockGradOp {
            input_grad: x.track_op(),
            spec: self.spec,
            batch_stats: matches!(self.mode, BatchNormMode::Batch),
            saved: self.saved.clone(),
            gamma: params
                .narrow(0, rows - 2, 1)?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1()?,
            beta: params
                .narrow(0, rows - 1, 1)?
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1()?,
            grads: Arc::new(Mutex::new(None)),
            output: (!self.spec.pool).then(|| y.clone()),
            residual_grad: self.residual && r.track_op(),
        };
        let w = params.narrow(0, 0, rows - 2)?;
        let dx = x.apply_op3_no_bwd(&w, &dy.contiguous()?, &op)?;
        let grads = op.grads.lock().expect("grad lock").take();
        let Some(ParamGrads { dw, dgb, dr }) = grads else {
            bail!("conv_block backward: the gradient op produced nothing");
        };
        let dev = params.device();
        let dparams = Tensor::from_vec(dw.into_iter().chain(dgb).collect(), (rows, c), dev)?
            .to_dtype(params.dtype())?;
        let dx = if op.input_grad { Some(dx) } else { None };
        Ok((dx, Some(dparams), dr))
    }
}

/// What the gradient op leaves beside its result: the packed parameters' gradient
/// (weights, then gamma and beta) and the residual's gradient when it tracks one.
struct ParamGrads {
    dw: Vec<f64>,
    dgb: Vec<f64>,
    dr: Option<Tensor>,
}

/// Backward op `(x, w, dy) -> dx`, leaving the other gradients in `grads`. Without
/// `input_grad` (the block's input is data, e.g. the image batch) the input gradient
/// is skipped and the op returns a single zero. It takes the forward pass's saved
/// intermediates, which are freed when it is done.
struct ConvBlockGradOp {
    input_grad: bool,
    spec: BlockSpec,
    batch_stats: bool,
    saved: Arc<Mutex<Option<SavedAny>>>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    grads: Arc<Mutex<Option<ParamGrads>>>,
    /// The block's output, which is the activation itself when there is no pooling
    /// (with pooling the activation is recomputed from the convolution output).
    output: Option<Tensor>,
    /// Whether to return the residual's gradient `dy * [y > 0]`.
    residual_grad: bool,
}

impl ConvBlockGradOp {
    fn run<T: Float + candle_core::WithDType>(
        &self,
        x: &[T],
        w: &[T],
        dy: &[T],
        s: Saved<T>,
    ) -> Result<Vec<T>> {
        let Saved {
            geometry,
            pre,
            stats,
        } = s;
        let g = &geometry;
        let c = g.out_channels;
        let spec = BackwardSpec {
            gamma: &self.gamma,
            stats: &stats,
            eps: self.spec.eps,
            relu: self.spec.relu,
            batch_stats: self.batch_stats,
        };
        let pre = match pre {
            Pre::Kept(pre) => pre,
            Pre::Recomputed => conv2d::forward(x, w, g),
            Pre::Streamed => return self.run_streamed(Stream { x, w, g: geometry }, dy, &spec),
        };
        let guard;
        let (d_pre, dgamma, dbeta, output) = match &self.output {
            None => {
                let (scale, shift) =
                    batch_norm::scale_shift::<T>(&self.gamma, &self.beta, &stats, self.spec.eps);
                let dims = (g.batch, g.out_h(), g.out_w(), c);
                let (d, dg, db) = pool::affine_backward(pre, dy, (&scale, &shift), &spec, dims);
                (d, dg, db, None)
            }
            Some(y) => {
                guard = y.storage_and_layout();
                let (candle_core::Storage::Cpu(storage), layout) = (&*guard.0, guard.1) else {
                    bail!("conv_block backward: the output is not on the CPU");
                };
                let all = T::slice_of(storage)
                    .ok_or_else(|| candle_core::Error::Msg("conv_block backward: dtype".into()))?;
                let act = contiguous(all, layout, "conv_block: output")?;
                let (d, dg, db) = batch_norm::backward(pre, act, dy, &spec);
                (d, dg, db, Some(act))
            }
        };
        let dw = conv2d::backward_weight(x, &d_pre, g);
        let dx = if self.input_grad {
            conv2d::backward_input_owned(d_pre, w, g)
        } else {
            vec![T::ZERO]
        };
        let dr = if self.residual_grad {
            let shape = (g.batch, g.out_h(), g.out_w(), c);
            let dr = match output {
                Some(act) if self.spec.relu => residual::backward(act, dy),
                _ => dy.to_vec(),
            };
            Some(Tensor::from_vec(dr, shape, &candle_core::Device::Cpu)?)
        } else {
            None
        };
        self.leave_grads(&dw, (&dgamma, &dbeta), dr);
        Ok(dx)
    }

    /// Leaves the parameter gradients (and the residual's) for [`ConvBlockOp::bwd`].
    fn leave_grads<T: Float>(&self, dw: &[T], (dgamma, dbeta): (&[T], &[T]), dr: Option<Tensor>) {
        *self.grads.lock().expect("grad lock") = Some(ParamGrads {
            dw: to_f64s(dw),
            dgb: to_f64s(dgamma).into_iter().chain(to_f64s(dbeta)).collect(),
            dr,
        });
    }

    /// [`Self::run`] for a streamed block: the pooled BatchNorm backward pass and the
    /// weight gradient, with the convolution output recomputed per image (per-channel
    /// sums) and per chunk (the gradient, multiplied into the weight gradient while
    /// it is in cache). The input needs no gradient, so the op returns a zero.
    fn run_streamed<T: Float + candle_core::WithDType>(
        &self,
        s: Stream<'_, T>,
        dy: &[T],
        spec: &BackwardSpec<'_>,
    ) -> Result<Vec<T>> {
        if self.input_grad || self.output.is_some() {
            bail!("conv_block backward: a streamed block has no input gradient and pools");
        }
        let g = s.g;
        let c = g.out_channels;
        let (scale, shift) =
            batch_norm::scale_shift::<T>(&self.gamma, &self.beta, spec.stats, self.spec.eps);
        let affine = (scale.as_slice(), shift.as_slice());
        let dims = (g.batch, g.out_h(), g.out_w(), c);
        let relu = self.spec.relu;
        let sums = pool::grad_sums_with(dy, affine, relu, dims, |n, f| s.images(n, 1, |y| f(y)));
        let co =
            batch_norm::coefficients::<T>(&sums[..c], &sums[c..], g.batch * g.out_pixels(), spec);
        let pooled = (g.out_h() / 2) * (g.out_w() / 2) * c;
        let dw = conv2d::backward_weight_with(s.x, &g, |first, n, f| {
            s.images(first, n, |y| {
                let dyc = &dy[first * pooled..(first + n) * pooled];
                pool::grads_in_place(y, dyc, affine, &co, relu, (g.out_h(), g.out_w(), c));
                f(y)
            })
        });
        self.leave_grads(&dw, (&co.dgamma, &co.dbeta), None);
        Ok(vec![T::ZERO])
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
        let saved = self.saved.lock().expect("saved lock").take();
        let Some(saved) = saved else {
            bail!(
                "conv_block: backward before forward, or a second backward pass over the same forward (the block keeps its intermediates for one)"
            )
        };
        let (s32, s64) = saved.split();
        let out = with_triple(
            "conv_block backward",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            ["x", "w", "dy"],
            |x, w, d| {
                let s = saved_as(s32, "f32")?;
                self.run(x, w, d, s).map(CpuStorage::F32)
            },
            |x, w, d| {
                let s = saved_as(s64, "f64")?;
                self.run(x, w, d, s).map(CpuStorage::F64)
            },
        )??;
        let shape = if self.input_grad {
            l1.shape().clone()
        } else {
            Shape::from(1)
        };
        Ok((out, shape))
    }
}

/// Checks the shapes of a [`conv_block`] call and returns its geometry: gamma and beta
/// of the output width, a residual of the convolution's output shape on a block that
/// does not pool, an output the pool fits, and enough values for batch statistics.
pub(crate) fn check_block(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    spec: &BlockSpec,
    mode: &BatchNormMode,
) -> Result<ConvGeometry> {
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
    if let Some(r) = residual {
        let want = [g.batch, g.out_h(), g.out_w(), c];
        if spec.pool || r.dims() != want {
            bail!(
                "conv_block: the residual must be {want:?} (the convolution's output) and the block must not pool, got {:?}",
                r.dims()
            );
        }
    }
    mode.check_channels(c, "conv_block")?;
    if matches!(mode, BatchNormMode::Batch) && g.batch * g.out_h() * g.out_w() < 2 {
        bail!("conv_block: batch statistics need at least 2 values per channel");
    }
    Ok(g)
}

/// `conv(x, w) -> BatchNorm(gamma, beta) -> [+ residual] -> [ReLU] -> [max pool 2x2]`
/// for `x` `[B, H, W, Cin]`, `w` `[k*k*Cin, Cout]`, `gamma`, `beta` `[Cout]` and an
/// optional `residual` of the convolution's output shape `[B, Ho, Wo, Cout]` (not
/// with pooling). Differentiable in every input; returns the output and the
/// normalisation statistics used (batch statistics in training mode). CPU f32/f64
/// tensors run the fused op, others [`generic::conv_block`].
pub fn conv_block(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    residual: Option<&Tensor>,
    spec: BlockSpec,
    mode: BatchNormMode,
) -> Result<BatchNormOutput> {
    let g = check_block(x, w, gamma, beta, residual, &spec, &mode)?;
    let c = g.out_channels;
    let same = [Some(w), Some(gamma), Some(beta), residual]
        .iter()
        .flatten()
        .all(|t| t.dtype() == x.dtype());
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && same
        && !matches!(mode, BatchNormMode::Synced(_));
    if !fused {
        return generic::conv_block(x, w, gamma, beta, residual, spec, mode);
    }
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBlockOp {
        spec,
        mode,
        residual: residual.is_some(),
        streamed: streams(&spec, &g, x.dtype(), residual.is_some(), x.track_op()),
        saved: saved.clone(),
    };
    let params = Tensor::cat(
        &[
            w.contiguous()?,
            gamma.reshape((1, c))?,
            beta.reshape((1, c))?,
        ],
        0,
    )?;
    let r = match residual {
        Some(r) => r.contiguous()?,
        None => Tensor::zeros(1, x.dtype(), x.device())?,
    };
    let y = x.contiguous()?.apply_op3(&params, &r, op)?;
    let stats = match saved.lock().expect("saved lock").as_ref() {
        Some(SavedAny::F32(s)) => s.stats.clone(),
        Some(SavedAny::F64(s)) => s.stats.clone(),
        None => bail!("conv_block: the forward pass saved nothing"),
    };
    Ok(BatchNormOutput { y, stats })
}
