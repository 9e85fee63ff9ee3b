//! 2x2, stride-2 max pooling on channels-last tensors, forward and backward.
//!
//! `[B, H, W, C] -> [B, H/2, W/2, C]` (a trailing odd row or column is dropped, as in
//! PyTorch). The gradient goes to the first maximal element of each window, so ties
//! never duplicate it.

use crate::batch_norm::{self, BackwardSpec, Float};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

fn dims(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[b, h, w, c] if h >= 2 && w >= 2 => Ok((b, h, w, c)),
        d => bail!("max_pool2: expected [B, H, W, C] with H, W >= 2, got {d:?}"),
    }
}

fn contiguous<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    l.contiguous_offsets()
        .map(|(a, b)| &data[a..b])
        .ok_or_else(|| candle_core::Error::Msg("max_pool2: input must be contiguous".into()))
}

/// Offsets (within an image) of the four inputs of output `(oy, ox)`, channel 0.
#[inline]
fn window(oy: usize, ox: usize, w: usize, c: usize) -> [usize; 4] {
    let base = (2 * oy * w + 2 * ox) * c;
    [base, base + c, base + w * c, base + (w + 1) * c]
}

pub(crate) fn forward<T: Float>(x: &[T], (b, h, w, c): (usize, usize, usize, usize)) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![T::ZERO; b * oh * ow * c];
    y.par_chunks_mut(oh * ow * c)
        .enumerate()
        .for_each(|(n, yi)| {
            let xi = &x[n * h * w * c..(n + 1) * h * w * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    let win = window(oy, ox, w, c);
                    let out = &mut yi[(oy * ow + ox) * c..][..c];
                    for (j, o) in out.iter_mut().enumerate() {
                        let mut m = xi[win[0] + j];
                        for &p in &win[1..] {
                            if xi[p + j] > m {
                                m = xi[p + j];
                            }
                        }
                        *o = m;
                    }
                }
            }
        });
    y
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
            for oy in 0..oh {
                for ox in 0..ow {
                    let win = window(oy, ox, w, c);
                    for j in 0..c {
                        let mut best = win[0];
                        for &p in &win[1..] {
                            if xi[p + j] > xi[best + j] {
                                best = p;
                            }
                        }
                        dxi[best + j] += di[(oy * ow + ox) * c + j];
                    }
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

/// The first maximal element of window `win` in channel `j` of the activations of
/// `x`, and its value.
#[inline]
fn window_max<T: Float>(x: &[T], win: &[usize; 4], j: usize, ab: (T, T), relu: bool) -> (usize, T) {
    let mut best = win[0];
    let mut m = activation(x[win[0] + j], ab.0, ab.1, relu);
    for &p in &win[1..] {
        let v = activation(x[p + j], ab.0, ab.1, relu);
        if v > m {
            m = v;
            best = p;
        }
    }
    (best, m)
}

/// `max_pool2(relu?(x * scale + shift))` per channel, straight from the BatchNorm
/// input `x` `[B, H, W, C]`: the full-size activation is never stored.
pub(crate) fn affine_forward<T: Float>(
    x: &[T],
    (scale, shift): (&[T], &[T]),
    relu: bool,
    (b, h, w, c): (usize, usize, usize, usize),
) -> Vec<T> {
    let (oh, ow) = (h / 2, w / 2);
    let mut y = vec![T::ZERO; b * oh * ow * c];
    y.par_chunks_mut(oh * ow * c)
        .enumerate()
        .for_each(|(n, yi)| {
            let xi = &x[n * h * w * c..(n + 1) * h * w * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    let win = window(oy, ox, w, c);
                    let out = &mut yi[(oy * ow + ox) * c..][..c];
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = window_max(xi, &win, j, (scale[j], shift[j]), relu).1;
                    }
                }
            }
        });
    y
}

/// The backward pass of [`affine_forward`] with BatchNorm's: consumes the BatchNorm
/// input `x` and returns `(dx, dgamma, dbeta)`. Only each window's first maximal
/// element receives the pooled gradient (and only when its activation is positive,
/// under ReLU), so the per-channel sums and `dx` are two sweeps over `x` and `dy`
/// with the window maxima recomputed, instead of a full-size activation gradient.
pub(crate) fn affine_backward<T: Float>(
    mut x: Vec<T>,
    dy: &[T],
    (scale, shift): (&[T], &[T]),
    spec: &BackwardSpec<'_>,
    (b, h, w, c): (usize, usize, usize, usize),
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (oh, ow) = (h / 2, w / 2);
    let relu = spec.relu;
    // The pooled gradient reaching window (oy, ox), channel j, and where it lands.
    let routed = |xi: &[T], di: &[T], oy: usize, ox: usize, j: usize| -> (usize, T) {
        let win = window(oy, ox, w, c);
        let (p, m) = window_max(xi, &win, j, (scale[j], shift[j]), relu);
        let g = di[(oy * ow + ox) * c + j];
        (p, if relu && m <= T::ZERO { T::ZERO } else { g })
    };
    let sums = crate::parallel::ordered_sum(2 * c, b, |range, acc| {
        let (sg, sgx) = acc.split_at_mut(c);
        for n in range {
            let xi = &x[n * h * w * c..(n + 1) * h * w * c];
            let di = &dy[n * oh * ow * c..(n + 1) * oh * ow * c];
            for oy in 0..oh {
                for ox in 0..ow {
                    for j in 0..c {
                        let (p, g) = routed(xi, di, oy, ox, j);
                        let g = g.to_f64();
                        sg[j] += g;
                        sgx[j] += g * xi[p + j].to_f64();
                    }
                }
            }
        }
    });
    let co = batch_norm::coefficients::<T>(&sums[..c], &sums[c..], b * h * w, spec);
    x.par_chunks_mut(h * w * c).enumerate().for_each(|(n, xi)| {
        let di = &dy[n * oh * ow * c..(n + 1) * oh * ow * c];
        // The routed gradients first (they need the activations of x), then dx.
        let mut routes = Vec::with_capacity(oh * ow * c);
        for oy in 0..oh {
            for ox in 0..ow {
                for j in 0..c {
                    routes.push(routed(xi, di, oy, ox, j));
                }
            }
        }
        for row in xi.chunks_exact_mut(c) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = co.c1[j] * *v + co.c0[j];
            }
        }
        for (q, (p, g)) in routes.into_iter().enumerate() {
            let j = q % c;
            xi[p + j] += co.k[j] * g;
        }
    });
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
            CpuStorage::F32(x) => CpuStorage::F32(forward(contiguous(x, l)?, d)),
            CpuStorage::F64(x) => CpuStorage::F64(forward(contiguous(x, l)?, d)),
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
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                CpuStorage::F32(backward(contiguous(x, l1)?, contiguous(g, l2)?, d))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                CpuStorage::F64(backward(contiguous(x, l1)?, contiguous(g, l2)?, d))
            }
            _ => bail!("max_pool2 backward: unsupported dtype {:?}", s1.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// 2x2 max pooling with stride 2 of `x` `[B, H, W, C]`; differentiable. CPU f32/f64
/// tensors use the kernel above, others [`max_pool2_reference`].
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (_, h, w, _) = x.dims4()?;
    if h < 2 || w < 2 {
        bail!(
            "max_pool2: input {:?} is smaller than the 2x2 window",
            x.dims()
        );
    }
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let x = if h % 2 == 1 || w % 2 == 1 {
            x.narrow(1, 0, h / 2 * 2)?.narrow(2, 0, w / 2 * 2)?
        } else {
            x.clone()
        };
        x.contiguous()?.apply_op1(MaxPool2)
    } else {
        max_pool2_reference(x)
    }
}

/// The same pooling in plain candle ops.
pub fn max_pool2_reference(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    x.narrow(1, 0, oh * 2)?
        .narrow(2, 0, ow * 2)?
        .reshape((b, oh, 2, ow, 2, c))?
        .max(4)?
        .max(2)
}
