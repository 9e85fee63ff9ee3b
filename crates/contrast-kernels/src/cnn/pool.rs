//! 2x2, stride-2 max pooling on channels-last tensors, forward and backward.
//!
//! `[B, H, W, C] -> [B, H/2, W/2, C]` (a trailing odd row or column is dropped, as in
//! PyTorch). The gradient goes to the first maximal element of each window, so ties
//! never duplicate it.

use crate::cnn::batch_norm::{self, BackwardCoefficients, BackwardSpec};
use crate::cnn::generic;
use crate::cpu::storage::{contiguous, with_pair};
use crate::cpu::wide::wide_kernel;
use crate::float::Float;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

fn dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[b, h, w, c] if h >= 2 && w >= 2 => Ok((b, h, w, c)),
        d => bail!("max_pool2: expected [B, H, W, C] with H, W >= 2, got {d:?}"),
    }
}

/// Offsets (within an image) of the four inputs of output `(oy, ox)`, channel 0.
#[inline]
fn window(oy: usize, ox: usize, w: usize, c: usize) -> [usize; 4] {
    let base = (2 * oy * w + 2 * ox) * c;
    [base, base + c, base + w * c, base + (w + 1) * c]
}

/// Plain max pooling: [`affine_forward`] with the identity affine map.
pub(crate) fn forward<T: Float>(x: &[T], dims: (usize, usize, usize, usize)) -> Vec<T> {
    let (ones, zeros) = (vec![T::ONE; dims.3], vec![T::ZERO; dims.3]);
    affine_forward(x, (&ones, &zeros), false, dims)
}

pub(crate) fn backward<T: Float>(
    x: &[T],
    dy: &[T],
    (b, h, w, c): (usize, usize, usize, usize),
) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut dx = vec![T::ZERO; b * h * w * c];
    dx.par_chunks_mut(h * w * c)
        .enumerate()
        .for_each(|(n, dxi)| {
            let xi = &x[n * h * w * c..(n + 1) * h * w * c];
            let di = &dy[n * oh * ow * c..(n + 1) * oh * ow * c];
            for (q, d) in di.chunks_exact(c).enumerate() {
                let (oy, ox) = (q / ow, q % ow);
                let (top, bottom) = window_rows(xi, oy, ox, w, c);
                let (r0, r1) = top.split_at(c);
                let (r2, r3) = bottom.split_at(c);
                let win = window(oy, ox, w, c);
                for j in 0..c {
                    let (_, hot) = pick([r0[j], r1[j], r2[j], r3[j]], T::ONE, T::ZERO, false);
                    let best = hot.iter().position(|&h| h).unwrap_or(0);
                    dxi[win[best] + j] += d[j];
                }
            }
        });
    dx
}

/// The normalised activation `relu?(v * a + b)` (the same arithmetic as BatchNorm's
/// forward pass).
#[inline]
fn activation<T: Float>(v: T, a: T, b: T, relu: bool) -> T {
    let y = v * a + b;
    if relu && y < T::ZERO { T::ZERO } else { y }
}

/// For one channel of a window (its four inputs, in the order of [`window`]): the
/// maximal activation and which input is the first to reach it (one-hot). Compares
/// and selects only, so that a loop over channels vectorises.
#[inline(always)]
fn pick<T: Float>(v: [T; 4], a: T, b: T, relu: bool) -> (T, [bool; 4]) {
    let y = v.map(|x| activation(x, a, b, relu));
    let w1 = y[1] > y[0];
    let m = if w1 { y[1] } else { y[0] };
    let w2 = y[2] > m;
    let m = if w2 { y[2] } else { m };
    let w3 = y[3] > m;
    let m = if w3 { y[3] } else { m };
    (m, [!(w1 || w2 || w3), w1 && !w2 && !w3, w2 && !w3, w3])
}

/// The input value of the window's first maximal input.
#[inline(always)]
fn picked<T: Float>(v: [T; 4], hot: [bool; 4]) -> T {
    let high = if hot[3] { v[3] } else { v[2] };
    let low = if hot[1] { v[1] } else { v[0] };
    if hot[2] || hot[3] { high } else { low }
}

/// The input rows of window `(oy, ox)` of image `xi`: the top pair and the bottom
/// pair of pixels, `2 * c` values each.
#[inline]
fn window_rows<T>(xi: &[T], oy: usize, ox: usize, w: usize, c: usize) -> (&[T], &[T]) {
    let top = (2 * oy * w + 2 * ox) * c;
    (&xi[top..top + 2 * c], &xi[top + w * c..top + w * c + 2 * c])
}

/// The four `c`-long input rows of a window from its top and bottom pixel pairs.
#[inline(always)]
fn four<'a, T>(top: &'a [T], bottom: &'a [T], c: usize) -> [&'a [T]; 4] {
    [&top[..c], &top[c..2 * c], &bottom[..c], &bottom[c..2 * c]]
}

/// Per-channel `(scale, shift)` of the affine map before the pool.
pub(crate) type Affine<'a, T> = (&'a [T], &'a [T]);

wide_kernel! {
/// Pools one image `xi` `[H, W, C]` into `yi` `[H/2, W/2, C]`.
fn pool_image<T: Float>(
    yi: &mut [T],
    xi: &[T],
    affine: Affine<'_, T>,
    relu: bool,
    wc: (usize, usize),
) {
    let ((scale, shift), (w, c)) = (affine, wc);
    let ow = w / 2;
    let (scale, shift) = (&scale[..c], &shift[..c]);
    for (q, out) in yi.chunks_exact_mut(c).enumerate() {
        let (top, bottom) = window_rows(xi, q / ow, q % ow, w, c);
        let [r0, r1, r2, r3] = four(top, bottom, c);
        let out = &mut out[..c];
        for j in 0..c {
            out[j] = pick([r0[j], r1[j], r2[j], r3[j]], scale[j], shift[j], relu).0;
        }
    }
}
}

/// `max_pool2(relu?(x * scale + shift))` per channel, straight from the BatchNorm
/// input `x` `[B, H, W, C]`: the full-size activation is never stored.
pub(crate) fn affine_forward<T: Float>(
    x: &[T],
    affine: Affine<'_, T>,
    relu: bool,
    dims: (usize, usize, usize, usize),
) -> Vec<T> {
    let image = dims.1 * dims.2 * dims.3;
    affine_forward_with(affine, relu, dims, |n, f| f(&x[n * image..(n + 1) * image]))
}

/// [`affine_forward`] over images that `image_of(n, f)` hands to `f` one at a time
/// (`[H, W, C]`): stored, or computed by a fused kernel as it goes.
pub(crate) fn affine_forward_with<T, F>(
    affine: Affine<'_, T>,
    relu: bool,
    (b, h, w, c): (usize, usize, usize, usize),
    image_of: F,
) -> Vec<T>
where
    T: Float,
    F: Fn(usize, &mut dyn FnMut(&[T])) + Sync,
{
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![T::ZERO; b * oh * ow * c];
    y.par_chunks_mut(oh * ow * c)
        .enumerate()
        .for_each(|(n, yi)| image_of(n, &mut |xi| pool_image(yi, xi, affine, relu, (w, c))));
    y
}

/// The pooled gradient `d` as it reaches the winning input (zero under a dead ReLU).
#[inline(always)]
fn gate<T: Float>(m: T, d: T, relu: bool) -> T {
    if relu && m <= T::ZERO { T::ZERO } else { d }
}

wide_kernel! {
/// Adds one image's `sum g` and `sum g * x` per channel to `sg` and `sgx` (`g` the
/// gradient reaching the BatchNorm output: nonzero at window maxima only).
fn image_sums<T: Float>(
    sg: &mut [f64],
    sgx: &mut [f64],
    xi: &[T],
    di: &[T],
    affine: Affine<'_, T>,
    relu: bool,
    wc: (usize, usize),
) {
    let ((scale, shift), (w, c)) = (affine, wc);
    let ow = w / 2;
    let (sg, sgx, scale, shift) = (&mut sg[..c], &mut sgx[..c], &scale[..c], &shift[..c]);
    for (q, d) in di.chunks_exact(c).enumerate() {
        let (top, bottom) = window_rows(xi, q / ow, q % ow, w, c);
        let [r0, r1, r2, r3] = four(top, bottom, c);
        let d = &d[..c];
        for j in 0..c {
            let v = [r0[j], r1[j], r2[j], r3[j]];
            let (m, hot) = pick(v, scale[j], shift[j], relu);
            let g = gate(m, d[j], relu).to_f64();
            sg[j] += g;
            sgx[j] += g * picked(v, hot).to_f64();
        }
    }
}
}

wide_kernel! {
/// Overwrites one image's BatchNorm input `xi` `[H, W, C]` with its gradient, from
/// the pooled gradient `di` `[H/2, W/2, C]`.
fn image_grad<T: Float>(
    xi: &mut [T],
    di: &[T],
    affine: Affine<'_, T>,
    co: &BackwardCoefficients<T>,
    relu: bool,
    hwc: (usize, usize, usize),
) {
    let ((scale, shift), (h, w, c)) = (affine, hwc);
    let (oh, ow) = (h / 2, w / 2);
    let (scale, shift) = (&scale[..c], &shift[..c]);
    let (k, c1, c0) = (&co.k[..c], &co.c1[..c], &co.c0[..c]);
    for (oy, drow) in di.chunks_exact(ow * c).enumerate() {
        let (upper, lower) = xi.split_at_mut((2 * oy + 1) * w * c);
        let top_row = &mut upper[2 * oy * w * c..];
        for (ox, d) in drow.chunks_exact(c).enumerate() {
            let (r0, r1) = top_row[2 * ox * c..(2 * ox + 2) * c].split_at_mut(c);
            let (r2, r3) = lower[2 * ox * c..(2 * ox + 2) * c].split_at_mut(c);
            let (r0, r1, r2, r3, d) = (&mut r0[..c], &mut r1[..c], &mut r2[..c], &mut r3[..c], &d[..c]);
            for j in 0..c {
                let v = [r0[j], r1[j], r2[j], r3[j]];
                let (m, hot) = pick(v, scale[j], shift[j], relu);
                let kg = k[j] * gate(m, d[j], relu);
                let out = |e: usize| {
                    let base = c1[j] * v[e] + c0[j];
                    if hot[e] { base + kg } else { base }
                };
                (r0[j], r1[j], r2[j], r3[j]) = (out(0), out(1), out(2), out(3));
            }
        }
    }
    // Inputs in no window (a trailing odd row or column) get no pooled gradient.
    for (y, row) in xi.chunks_exact_mut(w * c).enumerate() {
        let from = if y < 2 * oh { 2 * ow } else { 0 };
        for px in row[from * c..].chunks_exact_mut(c) {
            for (j, v) in px.iter_mut().enumerate() {
                *v = c1[j] * *v + c0[j];
            }
        }
    }
}
}

/// The first sweep of the pooled BatchNorm backward pass: per-channel `sum g` and
/// `sum g * x` (`[2C]`) over the images of the BatchNorm input that `image_of(n, f)`
/// hands to `f`, given the pooled gradient `dy` `[B, H/2, W/2, C]`. Images are summed
/// in a fixed order ([`crate::cpu::parallel::ordered_sum`]).
pub(crate) fn grad_sums_with<T, F>(
    dy: &[T],
    affine: Affine<'_, T>,
    relu: bool,
    (b, h, w, c): (usize, usize, usize, usize),
    image_of: F,
) -> Vec<f64>
where
    T: Float,
    F: Fn(usize, &mut dyn FnMut(&[T])) + Sync,
{
    let pooled = (h / 2) * (w / 2) * c;
    crate::cpu::parallel::ordered_sum(2 * c, b, |range, acc| {
        let (sg, sgx) = acc.split_at_mut(c);
        for n in range {
            let di = &dy[n * pooled..(n + 1) * pooled];
            image_of(n, &mut |xi| {
                image_sums(sg, sgx, xi, di, affine, relu, (w, c))
            });
        }
    })
}

/// The second sweep: overwrites the BatchNorm input of `n` consecutive images
/// `x` `[n, H, W, C]` with its gradient, from their pooled gradient `dy`
/// `[n, H/2, W/2, C]`.
pub(crate) fn grads_in_place<T: Float>(
    x: &mut [T],
    dy: &[T],
    affine: Affine<'_, T>,
    co: &BackwardCoefficients<T>,
    relu: bool,
    (h, w, c): (usize, usize, usize),
) {
    let pooled = (h / 2) * (w / 2) * c;
    for (xi, di) in x.chunks_exact_mut(h * w * c).zip(dy.chunks_exact(pooled)) {
        image_grad(xi, di, affine, co, relu, (h, w, c));
    }
}

/// The backward pass of [`affine_forward`] with BatchNorm's: consumes the BatchNorm
/// input `x` and returns `(dx, dgamma, dbeta)`. Only each window's first maximal
/// element receives the pooled gradient (and only when its activation is positive,
/// under ReLU), so the per-channel sums and `dx` are two sweeps over `x` and `dy`
/// with the window maxima recomputed, instead of a full-size activation gradient.
pub(crate) fn affine_backward<T: Float>(
    mut x: Vec<T>,
    dy: &[T],
    affine: Affine<'_, T>,
    spec: &BackwardSpec<'_>,
    dims: (usize, usize, usize, usize),
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (b, h, w, c) = dims;
    let relu = spec.relu;
    let image = h * w * c;
    let sums = grad_sums_with(dy, affine, relu, dims, |n, f| {
        f(&x[n * image..(n + 1) * image])
    });
    let co = batch_norm::coefficients::<T>(&sums[..c], &sums[c..], b * h * w, spec);
    let pooled = (h / 2) * (w / 2) * c;
    x.par_chunks_mut(image)
        .zip(dy.par_chunks(pooled))
        .for_each(|(xi, di)| grads_in_place(xi, di, affine, &co, relu, (h, w, c)));
    (x, co.dgamma, co.dbeta)
}

struct MaxPool2;

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "contrast-max-pool2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = dims(l)?;
        let out = match s {
            CpuStorage::F32(x) => {
                CpuStorage::F32(forward(contiguous(x, l, "max_pool2: input")?, d))
            }
            CpuStorage::F64(x) => {
                CpuStorage::F64(forward(contiguous(x, l, "max_pool2: input")?, d))
            }
            _ => bail!("max_pool2: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, Shape::from((d.0, d.1 / 2, d.2 / 2, d.3))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &MaxPool2Grad)?))
    }
}

struct MaxPool2Grad;

impl CustomOp2 for MaxPool2Grad {
    fn name(&self) -> &'static str {
        "contrast-max-pool2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1)?;
        let out = with_pair(
            "max_pool2 backward",
            (s1, l1),
            (s2, l2),
            ["input", "dy"],
            |x, g| CpuStorage::F32(backward(x, g, d)),
            |x, g| CpuStorage::F64(backward(x, g, d)),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

/// 2x2 max pooling with stride 2 of `x` `[B, H, W, C]`; differentiable. CPU f32/f64
/// tensors use the kernel above, others [`generic::max_pool2`].
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    if !(x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)) || h < 2 || w < 2 {
        return generic::max_pool2(x);
    }
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(1, 0, h / 2 * 2)?.narrow(2, 0, w / 2 * 2)?
    } else {
        x.clone()
    };
    x.contiguous()?.apply_op1(MaxPool2)
}
