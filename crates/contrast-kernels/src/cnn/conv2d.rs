//! 2-D convolution on channels-last tensors, forward and both backward passes, as
//! candle custom ops over im2col plus GEMM.
//!
//! Layouts: input `[B, H, W, Cin]`, weight `[k*k*Cin, Cout]` (row `(dy*k + dx)*Cin + ci`),
//! output `[B, Ho, Wo, Cout]`. The batch is cut into chunks of whole images; each
//! chunk's im2col buffer is built, multiplied and dropped inside one rayon task, so
//! memory stays at a few chunk buffers rather than an im2col of the whole batch.
//!
//! - forward: `Y_c = col(X_c) W` (for small patches on AVX2 CPUs the direct kernel
//!   of `direct_conv`, which computes the same values)
//! - input gradient: `dX_c = col^T(dY_c W^T)` (col2im scatter-add)
//! - weight gradient: `dW = sum_c col(X_c)^T dY_c`
//!
//! candle's own CPU convolution takes the input gradient through a naive
//! `conv_transpose2d`; these passes are all GEMMs. [`generic::conv2d`] is the
//! same convolution in plain candle ops: the reference in tests and the path on
//! other devices.

use crate::cnn::generic;
use crate::cpu::gemm::{Element, MatRef, matmul};
use crate::cpu::storage::with_pair;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Rows of im2col per chunk the kernels aim for (balances GEMM efficiency against
/// buffer size: 2048 rows of a 3x3x256 patch are 18 MB in f32).
const TARGET_ROWS: usize = 2048;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// Length of one im2col row, `k * k * Cin`.
    pub fn patch(&self) -> usize {
        self.kernel * self.kernel * self.in_channels
    }

    pub(crate) fn in_image(&self) -> usize {
        self.height * self.width * self.in_channels
    }

    pub(crate) fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Whether im2col is the identity (1x1, stride 1, no padding).
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Images per chunk: at most about `TARGET_ROWS` output pixels, with the number
    /// of chunks a multiple of the thread count and the chunks as even as possible, so
    /// that no thread is left with a short last chunk while another works alone (at
    /// batch 512 and 3x3 outputs, 227-image chunks made 227 + 227 + 58).
    pub(crate) fn images_per_chunk(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let by_rows = (TARGET_ROWS / self.out_pixels().max(1)).max(1);
        let chunks = self.batch.div_ceil(by_rows).div_ceil(threads) * threads;
        self.batch.div_ceil(chunks).max(1)
    }

    /// FLOPs of the forward pass (`2 * B * Ho * Wo * k*k*Cin * Cout`).
    pub fn forward_flops(&self) -> f64 {
        2.0 * (self.batch * self.out_pixels() * self.patch() * self.out_channels) as f64
    }

    /// Derives the geometry from an input `[B, H, W, Cin]` and a weight
    /// `[k*k*Cin, Cout]`, checking that they agree.
    pub fn from_shapes(
        x: &[usize],
        w: &[usize],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let &[batch, height, width, in_channels] = x else {
            bail!("conv2d: input must be [B, H, W, C], got {x:?}");
        };
        let &[patch, out_channels] = w else {
            bail!("conv2d: weight must be [k*k*Cin, Cout], got {w:?}");
        };
        if kernel == 0 || stride == 0 {
            bail!("conv2d: kernel ({kernel}) and stride ({stride}) must be >= 1");
        }
        if patch != kernel * kernel * in_channels {
            bail!(
                "conv2d: weight has {patch} rows, expected {kernel}x{kernel}x{in_channels} for input {x:?}"
            );
        }
        if height + 2 * padding < kernel || width + 2 * padding < kernel {
            bail!(
                "conv2d: kernel {kernel} exceeds the padded input {height}x{width} (padding {padding})"
            );
        }
        Ok(Self {
            batch,
            height,
            width,
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
        })
    }
}

/// Source pixel of tap `d` for output coordinate `o`, or `None` inside the padding.
#[inline]
pub(crate) fn source(o: usize, d: usize, g: &ConvGeometry, limit: usize) -> Option<usize> {
    (o * g.stride + d)
        .checked_sub(g.padding)
        .filter(|&v| v < limit)
}

/// Fills `col` (`[n * Ho * Wo, k*k*Cin]`) from `n` images `x`.
fn im2col<T: Element>(x: &[T], g: &ConvGeometry, n: usize, col: &mut [T]) {
    let (oh, ow, c, k) = (g.out_h(), g.out_w(), g.in_channels, g.kernel);
    let patch = g.patch();
    for img in 0..n {
        let xi = &x[img * g.in_image()..(img + 1) * g.in_image()];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &mut col[((img * oh + oy) * ow + ox) * patch..][..patch];
                for dy in 0..k {
                    let sy = source(oy, dy, g, g.height);
                    for dx in 0..k {
                        let dst = &mut row[(dy * k + dx) * c..][..c];
                        match (sy, source(ox, dx, g, g.width)) {
                            (Some(sy), Some(sx)) => {
                                dst.copy_from_slice(&xi[(sy * g.width + sx) * c..][..c])
                            }
                            _ => dst.fill(T::ZERO),
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col` (`[n * Ho * Wo, k*k*Cin]`) back onto `n` images `dx`.
fn col2im_add<T: Element>(col: &[T], g: &ConvGeometry, n: usize, dx: &mut [T]) {
    let (oh, ow, c, k) = (g.out_h(), g.out_w(), g.in_channels, g.kernel);
    let patch = g.patch();
    for img in 0..n {
        let di = &mut dx[img * g.in_image()..(img + 1) * g.in_image()];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &col[((img * oh + oy) * ow + ox) * patch..][..patch];
                for dy in 0..k {
                    let Some(sy) = source(oy, dy, g, g.height) else {
                        continue;
                    };
                    for dxx in 0..k {
                        let Some(sx) = source(ox, dxx, g, g.width) else {
                            continue;
                        };
                        let src = &row[(dy * k + dxx) * c..][..c];
                        for (d, s) in di[(sy * g.width + sx) * c..][..c].iter_mut().zip(src) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}

/// The convolution of the `g.batch` images `x` into `y` `[B, Ho, Wo, Cout]` on the
/// calling thread: the direct kernel for small patches where it applies, else
/// [`gemm_chunk`] (both give the same values).
pub(crate) fn forward_chunk<T: Element>(y: &mut [T], x: &[T], w: &[T], g: &ConvGeometry) {
    if g.is_pointwise() || !T::direct_conv(y, x, w, g) {
        gemm_chunk(y, x, w, g);
    }
}

/// The convolution of the `g.batch` images `x` into `y` as one GEMM, over an im2col
/// buffer of this thread (none for a pointwise convolution).
pub(crate) fn gemm_chunk<T: Element>(y: &mut [T], x: &[T], w: &[T], g: &ConvGeometry) {
    let rows = g.batch * g.out_pixels();
    let wm = MatRef::row_major(w, g.patch(), g.out_channels);
    if g.is_pointwise() {
        matmul(y, MatRef::row_major(x, rows, g.patch()), wm, false, 1);
    } else {
        T::with_scratch(rows * g.patch(), |col| {
            im2col(x, g, g.batch, col);
            matmul(y, MatRef::row_major(col, rows, g.patch()), wm, false, 1);
        });
    }
}

/// Forward pass: `y` `[B, Ho, Wo, Cout]` from `x` and `w`.
pub(crate) fn forward<T: Element>(x: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let per = g.images_per_chunk();
    let rows_per_image = g.out_pixels();
    let mut y = vec![T::ZERO; g.batch * rows_per_image * g.out_channels];
    y.par_chunks_mut(per * rows_per_image * g.out_channels)
        .zip(x.par_chunks(per * g.in_image()))
        .for_each(|(yc, xc)| {
            let chunk = ConvGeometry {
                batch: xc.len() / g.in_image(),
                ..*g
            };
            forward_chunk(yc, xc, w, &chunk);
        });
    y
}

/// Input gradient `dx` `[B, H, W, Cin]` from the output gradient `dy` and `w`.
pub(crate) fn backward_input<T: Element>(dy: &[T], w: &[T], g: &ConvGeometry) -> Vec<T> {
    let per = g.images_per_chunk();
    let rows_per_image = g.out_pixels();
    let mut dx = vec![T::ZERO; g.batch * g.in_image()];
    let wt = MatRef::row_major(w, g.patch(), g.out_channels).t();
    dx.par_chunks_mut(per * g.in_image())
        .zip(dy.par_chunks(per * rows_per_image * g.out_channels))
        .for_each(|(dxc, dyc)| {
            let n = dxc.len() / g.in_image();
            let rows = n * rows_per_image;
            let dym = MatRef::row_major(dyc, rows, g.out_channels);
            if g.is_pointwise() {
                matmul(dxc, dym, wt, false, 1);
            } else {
                T::with_scratch(rows * g.patch(), |col| {
                    matmul(col, dym, wt, false, 1);
                    col2im_add(col, g, n, dxc);
                });
            }
        });
    dx
}

/// [`backward_input`] that consumes `dy` and, when an image's input and output hold
/// the same number of values (stride 1, `Cin == Cout`: most of a ResNet), turns its
/// buffer into `dx` image chunk by image chunk instead of allocating a second
/// full-size buffer. Each chunk's `dy` is multiplied out into a chunk-sized column
/// buffer before the chunk is overwritten.
pub(crate) fn backward_input_owned<T: Element>(
    mut dy: Vec<T>,
    w: &[T],
    g: &ConvGeometry,
) -> Vec<T> {
    if g.in_image() != g.out_pixels() * g.out_channels {
        return backward_input(&dy, w, g);
    }
    let per = g.images_per_chunk();
    let rows_per_image = g.out_pixels();
    let wt = MatRef::row_major(w, g.patch(), g.out_channels).t();
    dy.par_chunks_mut(per * g.in_image()).for_each(|chunk| {
        let n = chunk.len() / g.in_image();
        let rows = n * rows_per_image;
        T::with_scratch(rows * g.patch(), |col| {
            matmul(
                col,
                MatRef::row_major(chunk, rows, g.out_channels),
                wt,
                false,
                1,
            );
            if g.is_pointwise() {
                chunk.copy_from_slice(col);
            } else {
                chunk.fill(T::ZERO);
                col2im_add(col, g, n, chunk);
            }
        });
    });
    dy
}

/// Adds the weight gradient of one chunk of `n` images, `col(x)^T dy`, to `acc`
/// `[k*k*Cin, Cout]`.
fn add_weight_grad<T: Element>(acc: &mut [T], x: &[T], dy: &[T], g: &ConvGeometry, n: usize) {
    let rows = n * g.out_pixels();
    let dym = MatRef::row_major(dy, rows, g.out_channels);
    if g.is_pointwise() {
        matmul(acc, MatRef::row_major(x, rows, g.patch()).t(), dym, true, 1);
    } else {
        T::with_scratch(rows * g.patch(), |col| {
            im2col(x, g, n, col);
            matmul(
                acc,
                MatRef::row_major(col, rows, g.patch()).t(),
                dym,
                true,
                1,
            );
        });
    }
}

/// Weight gradient `dw` `[k*k*Cin, Cout]` from the input `x` and the output
/// gradient, which `dy_of(first, n, f)` hands to `f` for the `n` images from
/// `first` on (`[n, Ho, Wo, Cout]`): stored, or computed chunk by chunk by a fused
/// kernel. Chunks are summed in a fixed order ([`crate::cpu::parallel::ordered_sum`]).
pub(crate) fn backward_weight_with<T, F>(x: &[T], g: &ConvGeometry, dy_of: F) -> Vec<T>
where
    T: Element,
    F: Fn(usize, usize, &mut dyn FnMut(&[T])) + Sync,
{
    let per = g.images_per_chunk();
    let chunks = g.batch.div_ceil(per);
    crate::cpu::parallel::ordered_sum(g.patch() * g.out_channels, chunks, |range, acc| {
        for chunk in range {
            let first = chunk * per;
            let n = per.min(g.batch - first);
            let xc = &x[first * g.in_image()..(first + n) * g.in_image()];
            dy_of(first, n, &mut |dyc| add_weight_grad(acc, xc, dyc, g, n));
        }
    })
}

/// Weight gradient `dw` `[k*k*Cin, Cout]` from the input `x` and output gradient `dy`.
pub(crate) fn backward_weight<T: Element>(x: &[T], dy: &[T], g: &ConvGeometry) -> Vec<T> {
    let out_image = g.out_pixels() * g.out_channels;
    backward_weight_with(x, g, |first, n, f| {
        f(&dy[first * out_image..(first + n) * out_image])
    })
}

/// The convolution op: `(x, w) -> y`, differentiable in both arguments.
struct Conv2dOp {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "contrast-conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeometry::from_shapes(
            l1.dims(),
            l2.dims(),
            self.kernel,
            self.stride,
            self.padding,
        )?;
        let out = with_pair(
            "conv2d",
            (s1, l1),
            (s2, l2),
            ["x", "w"],
            |x, w| CpuStorage::F32(forward(x, w, &g)),
            |x, w| CpuStorage::F64(forward(x, w, &g)),
        )?;
        Ok((
            out,
            Shape::from((g.batch, g.out_h(), g.out_w(), g.out_channels)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g =
            ConvGeometry::from_shapes(x.dims(), w.dims(), self.kernel, self.stride, self.padding)?;
        let dy = dy.contiguous()?;
        // The input gradient is skipped when the input is data (no gradient wanted).
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(w, &InputGradOp(g))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&dy, &WeightGradOp(g))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `(dy, w) -> dx`.
struct InputGradOp(ConvGeometry);

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "contrast-conv2d-nhwc-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = with_pair(
            "conv2d",
            (s1, l1),
            (s2, l2),
            ["dy", "w"],
            |d, w| CpuStorage::F32(backward_input(d, w, &g)),
            |d, w| CpuStorage::F64(backward_input(d, w, &g)),
        )?;
        Ok((
            out,
            Shape::from((g.batch, g.height, g.width, g.in_channels)),
        ))
    }
}

/// `(x, dy) -> dw`.
struct WeightGradOp(ConvGeometry);

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "contrast-conv2d-nhwc-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = with_pair(
            "conv2d",
            (s1, l1),
            (s2, l2),
            ["x", "dy"],
            |x, d| CpuStorage::F32(backward_weight(x, d, &g)),
            |x, d| CpuStorage::F64(backward_weight(x, d, &g)),
        )?;
        Ok((out, Shape::from((g.patch(), g.out_channels))))
    }
}

/// Convolves `x` `[B, H, W, Cin]` with `w` `[k*k*Cin, Cout]` into `[B, Ho, Wo, Cout]`.
///
/// On the CPU (f32 or f64) this runs the GEMM kernels above; elsewhere it runs
/// [`generic::conv2d`]. Both are differentiable in `x` and `w`.
pub fn conv2d_nhwc(
    x: &Tensor,
    w: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    ConvGeometry::from_shapes(x.dims(), w.dims(), kernel, stride, padding)?;
    let cpu_float = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && x.dtype() == w.dtype();
    if cpu_float {
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            Conv2dOp {
                kernel,
                stride,
                padding,
            },
        )
    } else {
        generic::conv2d(x, w, kernel, stride, padding)
    }
}
