//! A whole ResNet basic block as one candle custom op:
//! `relu(bn_b(conv_b(relu(bn_a(conv_a(x))))) + shortcut(x))`, with the shortcut either
//! `x` itself or `bn_s(conv_s(x))` (a 1x1 projection).
//!
//! Written as two [`super::conv_block()`] ops, the block's inner activation
//! `h = relu(bn_a(conv_a(x)))` (and the projected shortcut) are graph nodes: candle
//! keeps them until the whole backward pass is over, because the loss holds the
//! graph. As one op the graph keeps only the block's input and output; the backward
//! pass recomputes `h` from `x` (one forward convolution, or an elementwise pass when
//! the convolution outputs are kept). In a CIFAR ResNet-18 at 256 pairs that is
//! 134 MB per block of the first stage, held through the part of the backward pass
//! where the step's memory peaks. The arithmetic is the kernels of
//! [`super::conv2d`], [`super::batch_norm()`] and [`super::residual`], so results equal
//! the composition.

use crate::cnn::batch_norm::{self, BackwardSpec, BatchNormMode, ChannelStats};
use crate::cnn::conv2d::{self, ConvGeometry};
use crate::cnn::generic;
use crate::cnn::residual;
use crate::cpu::storage::{contiguous, with_pair, with_triple};
use crate::float::Float;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use std::sync::{Arc, Mutex};

/// One `conv -> BatchNorm` layer of a block: weights `[k*k*Cin, Cout]`, gamma and
/// beta `[Cout]`, and where its statistics come from.
#[derive(Debug, Clone)]
pub struct ConvBn<'a> {
    pub w: &'a Tensor,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub mode: BatchNormMode,
}

/// The block's output and the statistics each BatchNorm used (batch statistics in
/// training mode): `[first, second, shortcut]`, the last only with a projection.
#[derive(Debug, Clone)]
pub struct ResidualBlockOutput {
    pub y: Tensor,
    pub stats: Vec<ChannelStats>,
}

/// Geometry of the block's layers and where each one's rows sit in the packed
/// parameters `[rows, Cout]`.
#[derive(Debug, Clone, Copy)]
struct Layer {
    g: ConvGeometry,
    /// First row of the layer's weights; gamma and beta follow them.
    row: usize,
}

impl Layer {
    fn rows(&self) -> usize {
        self.g.patch() + 2
    }

    /// `(w, gamma, beta)` of this layer in the packed parameters.
    fn params<'p, T>(&self, p: &'p [T]) -> (&'p [T], &'p [T], &'p [T]) {
        let c = self.g.out_channels;
        let w = &p[self.row * c..(self.row + self.g.patch()) * c];
        let gamma = &p[(self.row + self.g.patch()) * c..(self.row + self.g.patch() + 1) * c];
        let beta = &p[(self.row + self.g.patch() + 1) * c..(self.row + self.rows()) * c];
        (w, gamma, beta)
    }
}

#[derive(Debug, Clone, Copy)]
struct Layers {
    first: Layer,
    second: Layer,
    shortcut: Option<Layer>,
}

impl Layers {
    fn new(x: &[usize], c: usize, stride: usize, cin: usize, shortcut: bool) -> Result<Self> {
        let first_g = ConvGeometry::from_shapes(x, &[9 * cin, c], 3, stride, 1)?;
        let mid = [first_g.batch, first_g.out_h(), first_g.out_w(), c];
        let second_g = ConvGeometry::from_shapes(&mid, &[9 * c, c], 3, 1, 1)?;
        let first = Layer { g: first_g, row: 0 };
        let second = Layer {
            g: second_g,
            row: first.rows(),
        };
        let shortcut = if shortcut {
            Some(Layer {
                g: ConvGeometry::from_shapes(x, &[cin, c], 1, stride, 0)?,
                row: second.row + second.rows(),
            })
        } else {
            None
        };
        Ok(Self {
            first,
            second,
            shortcut,
        })
    }

    fn rows(&self) -> usize {
        self.second.row + self.second.rows() + self.shortcut.map_or(0, |s| s.rows())
    }
}

/// `[first, second, shortcut]` statistics and, unless recomputed, the convolution
/// outputs, kept from the forward pass for the backward pass.
struct Saved<T> {
    stats: Vec<ChannelStats>,
    pre: Option<[Option<Vec<T>>; 3]>,
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

fn to64<T: Float>(v: &[T]) -> Vec<f64> {
    v.iter().map(|t| t.to_f64()).collect()
}

/// One layer's convolution of `input`.
fn conv<T: Float>(input: &[T], p: &[T], layer: &Layer) -> Vec<T> {
    conv2d::forward(input, layer.params(p).0, &layer.g)
}

/// One layer's BatchNorm (+ ReLU) of its convolution output `pre`.
fn normalize<T: Float>(
    pre: &[T],
    p: &[T],
    layer: &Layer,
    stats: &ChannelStats,
    eps: f64,
    relu: bool,
) -> Vec<T> {
    let (_, gamma, beta) = layer.params(p);
    batch_norm::forward(pre, gamma, beta, stats, eps, relu)
}

struct ResidualBlockOp {
    layers: Layers,
    /// The three BatchNorms' modes, in layer order.
    modes: Vec<BatchNormMode>,
    eps: f64,
    recompute: bool,
    saved: Arc<Mutex<Option<SavedAny>>>,
}

impl ResidualBlockOp {
    fn run<T: Float>(&self, x: &[T], p: &[T]) -> (Vec<T>, Saved<T>) {
        let l = &self.layers;
        let c = l.first.g.out_channels;
        let pre_a = conv(x, p, &l.first);
        let st_a = self.modes[0].stats_of(&pre_a, c);
        let h = normalize(&pre_a, p, &l.first, &st_a, self.eps, true);
        let pre_b = conv(&h, p, &l.second);
        drop(h);
        let st_b = self.modes[1].stats_of(&pre_b, c);
        let mut y = normalize(&pre_b, p, &l.second, &st_b, self.eps, false);
        let mut stats = vec![st_a, st_b];
        let pre_s = match &l.shortcut {
            Some(s) => {
                let pre_s = conv(x, p, s);
                let st_s = self.modes[2].stats_of(&pre_s, c);
                let short = normalize(&pre_s, p, s, &st_s, self.eps, false);
                residual::add_relu_in_place(&mut y, &short);
                stats.push(st_s);
                Some(pre_s)
            }
            None => {
                residual::add_relu_in_place(&mut y, x);
                None
            }
        };
        let pre = (!self.recompute).then_some([Some(pre_a), Some(pre_b), pre_s]);
        (y, Saved { stats, pre })
    }
}

impl CustomOp2 for ResidualBlockOp {
    fn name(&self) -> &'static str {
        "contrast-residual-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, saved) = with_pair(
            "residual_block",
            (s1, l1),
            (s2, l2),
            ["x", "params"],
            |x, p| {
                let (o, s) = self.run(x, p);
                (CpuStorage::F32(o), SavedAny::F32(s))
            },
            |x, p| {
                let (o, s) = self.run(x, p);
                (CpuStorage::F64(o), SavedAny::F64(s))
            },
        )?;
        *self.saved.lock().expect("saved lock") = Some(saved);
        let g = &self.layers.second.g;
        Ok((
            out,
            Shape::from((g.batch, g.out_h(), g.out_w(), g.out_channels)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = ResidualBlockGradOp {
            layers: self.layers,
            eps: self.eps,
            batch_stats: self
                .modes
                .iter()
                .map(|m| matches!(m, BatchNormMode::Batch))
                .collect(),
            saved: self.saved.clone(),
            output: y.clone(),
            dparams: Arc::new(Mutex::new(None)),
        };
        let dx = x.apply_op3_no_bwd(params, &dy.contiguous()?, &op)?;
        let Some(dp) = op.dparams.lock().expect("grad lock").take() else {
            bail!("residual_block backward: the gradient op produced nothing");
        };
        Ok((Some(dx), Some(dp)))
    }
}

/// Backward op `(x, params, dy) -> dx`, leaving the packed parameters' gradient in
/// `dparams`. It takes the forward pass's saved state, which is freed when done.
struct ResidualBlockGradOp {
    layers: Layers,
    eps: f64,
    batch_stats: Vec<bool>,
    saved: Arc<Mutex<Option<SavedAny>>>,
    /// The block's output, whose positive entries are where the gradient passes.
    output: Tensor,
    dparams: Arc<Mutex<Option<Tensor>>>,
}

impl ResidualBlockGradOp {
    /// Gradients of one layer from the gradient `d` reaching its normalised output
    /// (masked by `act > 0` when `relu`): `(d_input, [dw; dgamma; dbeta])`.
    #[allow(clippy::too_many_arguments)]
    fn layer<T: Float>(
        &self,
        input: &[T],
        p: &[T],
        layer: &Layer,
        i: usize,
        stats: &ChannelStats,
        pre: Vec<T>,
        act: &[T],
        d: &[T],
        relu: bool,
    ) -> (Vec<T>, Vec<T>) {
        let (w, gamma, _) = layer.params(p);
        let spec = BackwardSpec {
            gamma: &to64(gamma),
            stats,
            eps: self.eps,
            relu,
            batch_stats: self.batch_stats[i],
        };
        let (d_pre, dgamma, dbeta) = batch_norm::backward(pre, act, d, &spec);
        let mut dp = conv2d::backward_weight(input, &d_pre, &layer.g);
        dp.extend(dgamma);
        dp.extend(dbeta);
        (conv2d::backward_input_owned(d_pre, w, &layer.g), dp)
    }

    /// [`Self::run`] on the slices `x`, `params` and `dy` and the forward pass's
    /// `output` storage, with the state `s` the forward pass saved in this type (`None`
    /// when it ran in the other one); the parameters' gradient comes back as a tensor
    /// of the parameters' shape `p_shape`.
    fn run_on<T: Float + candle_core::WithDType>(
        &self,
        x: &[T],
        p: &[T],
        dy: &[T],
        (out, out_layout): (&CpuStorage, &Layout),
        s: Option<Saved<T>>,
        p_shape: &Shape,
    ) -> Result<(Vec<T>, Tensor)> {
        let mismatch = || {
            candle_core::Error::Msg(format!(
                "residual_block backward: dtype mismatch ({:?} gradient, the forward pass ran in the other type)",
                T::DTYPE
            ))
        };
        let s = s.ok_or_else(mismatch)?;
        let y = contiguous(
            T::slice_of(out).ok_or_else(mismatch)?,
            out_layout,
            "residual_block backward: output",
        )?;
        let (dx, dp) = self.run(x, p, dy, y, s);
        let dp = Tensor::from_vec(dp, p_shape, &candle_core::Device::Cpu)?;
        Ok((dx, dp))
    }

    fn run<T: Float>(&self, x: &[T], p: &[T], dy: &[T], y: &[T], s: Saved<T>) -> (Vec<T>, Vec<T>) {
        let l = &self.layers;
        let Saved { stats, pre } = s;
        let [pre_a, pre_b, pre_s] = pre.unwrap_or_default();
        // Recompute the inner activation (and whatever convolution output was not kept).
        let pre_a = pre_a.unwrap_or_else(|| conv(x, p, &l.first));
        let h = normalize(&pre_a, p, &l.first, &stats[0], self.eps, true);
        let pre_b = pre_b.unwrap_or_else(|| conv(&h, p, &l.second));
        // The sum's gradient `dy * [y > 0]` reaches the second layer and the shortcut.
        let (dh, dp_b) = self.layer(&h, p, &l.second, 1, &stats[1], pre_b, y, dy, true);
        let (mut dx, dp_a) = self.layer(x, p, &l.first, 0, &stats[0], pre_a, &h, &dh, true);
        drop((h, dh));
        let d_sum = residual::backward(y, dy);
        let mut dp = dp_a;
        dp.extend(dp_b);
        match &l.shortcut {
            Some(sc) => {
                let pre_s = pre_s.unwrap_or_else(|| conv(x, p, sc));
                let (dxs, dp_s) = self.layer(x, p, sc, 2, &stats[2], pre_s, &d_sum, &d_sum, false);
                dx.iter_mut().zip(dxs).for_each(|(a, b)| *a += b);
                dp.extend(dp_s);
            }
            None => dx.iter_mut().zip(d_sum).for_each(|(a, b)| *a += b),
        }
        (dx, dp)
    }
}

impl CustomOp3 for ResidualBlockGradOp {
    fn name(&self) -> &'static str {
        "contrast-residual-block-grad"
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
        let guard = self.output.storage_and_layout();
        let (candle_core::Storage::Cpu(out), out_layout) = (&*guard.0, guard.1) else {
            bail!("residual_block backward: the output is not on the CPU");
        };
        let Some(saved) = saved else {
            bail!(
                "residual_block: backward before forward, or a second backward pass over the same forward (the block keeps its state for one)"
            )
        };
        let (s32, s64) = saved.split();
        let output = (out, out_layout);
        let (dx, dp) = with_triple(
            "residual_block backward",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            ["x", "params", "dy"],
            |x, p, d| {
                let out = self.run_on(x, p, d, output, s32, l2.shape());
                out.map(|(dx, dp)| (CpuStorage::F32(dx), dp))
            },
            |x, p, d| {
                let out = self.run_on(x, p, d, output, s64, l2.shape());
                out.map(|(dx, dp)| (CpuStorage::F64(dx), dp))
            },
        )??;
        *self.dparams.lock().expect("grad lock") = Some(dp);
        Ok((dx, l1.shape().clone()))
    }
}

/// Checks the shapes of a [`residual_block`] call and returns `(Cin, C)`: weights
/// `[9*Cin, C]`, `[9*C, C]` and `[Cin, C]`, a projection unless the block keeps stride
/// and width, gamma and beta of width `C`, and fixed statistics that cover `C`.
pub(crate) fn check_residual(
    x: &Tensor,
    first: &ConvBn<'_>,
    second: &ConvBn<'_>,
    shortcut: Option<&ConvBn<'_>>,
    stride: usize,
) -> Result<(usize, usize)> {
    let (_, _, _, cin) = x.dims4()?;
    let c = first.w.dim(1)?;
    let shapes_ok = first.w.dims() == [9 * cin, c]
        && second.w.dims() == [9 * c, c]
        && shortcut.is_none_or(|s| s.w.dims() == [cin, c])
        && (shortcut.is_some() || (stride == 1 && cin == c));
    if !shapes_ok {
        bail!(
            "residual_block: weights must be [9*Cin, C], [9*C, C] and (shortcut) [Cin, C] for Cin = {cin}, C = {c}, with a shortcut projection unless stride is 1 and Cin = C; got {:?}, {:?}, {:?} at stride {stride}",
            first.w.dims(),
            second.w.dims(),
            shortcut.map(|s| s.w.dims().to_vec())
        );
    }
    for l in [Some(first), Some(second), shortcut].into_iter().flatten() {
        if l.gamma.elem_count() != c || l.beta.elem_count() != c {
            bail!("residual_block: gamma and beta must have {c} entries (the output channels)");
        }
        l.mode.check_channels(c, "residual_block")?;
    }
    Ok((cin, c))
}

/// The basic block `relu(bn_b(conv_b(relu(bn_a(conv_a(x))))) + shortcut(x))` for `x`
/// `[B, H, W, Cin]`: `first` a 3x3 convolution with stride `stride` to `Cout`,
/// `second` a 3x3 stride-1 convolution, `shortcut` a 1x1 projection with stride
/// `stride` (needed when the stride or width changes; otherwise the shortcut is `x`).
/// With `recompute` no convolution output is kept between the passes (activation
/// checkpointing: three more forward convolutions in the backward pass); without it
/// they are kept and only the elementwise `h` is recomputed. Differentiable in `x`
/// and every parameter. CPU f32/f64 tensors run the fused op; others
/// [`generic::residual_block`].
pub fn residual_block(
    x: &Tensor,
    first: &ConvBn<'_>,
    second: &ConvBn<'_>,
    shortcut: Option<&ConvBn<'_>>,
    stride: usize,
    eps: f64,
    recompute: bool,
) -> Result<ResidualBlockOutput> {
    let (cin, c) = check_residual(x, first, second, shortcut, stride)?;
    let layers: Vec<&ConvBn<'_>> = [Some(first), Some(second), shortcut]
        .into_iter()
        .flatten()
        .collect();
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && layers.iter().all(|l| {
            [l.w, l.gamma, l.beta]
                .iter()
                .all(|t| t.dtype() == x.dtype())
                && !matches!(l.mode, BatchNormMode::Synced(_))
        });
    if !fused {
        return generic::residual_block(x, first, second, shortcut, stride, eps);
    }
    let geometry = Layers::new(x.dims(), c, stride, cin, shortcut.is_some())?;
    let saved = Arc::new(Mutex::new(None));
    let op = ResidualBlockOp {
        layers: geometry,
        modes: layers.iter().map(|l| l.mode.clone()).collect(),
        eps,
        recompute,
        saved: saved.clone(),
    };
    let mut rows = Vec::with_capacity(9);
    for l in &layers {
        rows.extend([
            l.w.contiguous()?,
            l.gamma.reshape((1, c))?,
            l.beta.reshape((1, c))?,
        ]);
    }
    let params = Tensor::cat(&rows, 0)?;
    debug_assert_eq!(params.dim(0)?, geometry.rows());
    let y = x.contiguous()?.apply_op2(&params, op)?;
    let stats = match saved.lock().expect("saved lock").as_ref() {
        Some(SavedAny::F32(s)) => s.stats.clone(),
        Some(SavedAny::F64(s)) => s.stats.clone(),
        None => bail!("residual_block: the forward pass saved nothing"),
    };
    Ok(ResidualBlockOutput { y, stats })
}
