//! A checked wrapper over the `gemm` crate (the same GEMM candle uses on the CPU).
//!
//! `gemm` selects its SIMD kernels (AVX2, AVX-512, NEON) at run time, so binaries
//! built without `target-cpu=native` still use the best the machine has.

use crate::cnn::conv2d::ConvGeometry;
use gemm::Parallelism;

/// Element types the CPU kernels support.
pub(crate) trait Element:
    Copy + Default + Send + Sync + std::ops::AddAssign + 'static
{
    const ZERO: Self;
    const ONE: Self;

    /// Runs `f` on a buffer of `len` elements that the calling thread keeps and reuses
    /// across calls, so a kernel's per-chunk work buffers (im2col columns, GEMM
    /// outputs) are neither allocated nor zero-filled again and stay warm in cache.
    /// The contents are unspecified: `f` must write every element it reads. Nested
    /// calls on one thread get distinct buffers (each thread keeps a small stack).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;

    /// Writes the convolution of `g.batch` images into `y` with the direct kernel
    /// for small patches and returns `true`, or returns `false` when that kernel does
    /// not apply to this type, CPU or geometry (see `direct_conv`).
    fn direct_conv(y: &mut [Self], x: &[Self], w: &[Self], g: &ConvGeometry) -> bool;
}

macro_rules! element {
    ($t:ty, $scratch:ident, $direct:expr) => {
        thread_local! {
            static $scratch: std::cell::RefCell<Vec<Vec<$t>>> = const { std::cell::RefCell::new(Vec::new()) };
        }

        impl Element for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;

            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                let mut buf = $scratch.with(|stack| stack.borrow_mut().pop()).unwrap_or_default();
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
                let out = f(&mut buf[..len]);
                $scratch.with(|stack| stack.borrow_mut().push(buf));
                out
            }

            fn direct_conv(y: &mut [Self], x: &[Self], w: &[Self], g: &ConvGeometry) -> bool {
                $direct(y, x, w, g)
            }
        }
    };
}

element!(f32, SCRATCH_F32, crate::cnn::direct_conv::forward_f32);
element!(
    f64,
    SCRATCH_F64,
    |_: &mut [f64], _: &[f64], _: &[f64], _: &ConvGeometry| false
);

/// A matrix view: element `(i, j)` is at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
        }
    }
}

/// `dst = a * b` (or `dst += a * b` with `accumulate`), `dst` row-major
/// `[a.rows, b.cols]`, computed on `threads` threads (1 = the calling thread).
///
/// Panics if the shapes disagree or a view reaches past its slice: these are
/// programming errors inside the kernels, never user input.
pub(crate) fn matmul<T: Element>(
    dst: &mut [T],
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "matmul: inner dimensions {k} and {}", b.rows);
    assert!(
        dst.len() >= m * n,
        "matmul: destination holds {} < {m}x{n}",
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    assert!(
        a.max_index() < a.data.len() && b.max_index() < b.data.len(),
        "matmul: view out of bounds"
    );
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every index the kernel touches inside the slices,
    // and `dst` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Vec<f64> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    out[i * b.cols + j] += a.data[i * a.row_stride + p * a.col_stride]
                        * b.data[p * b.row_stride + j * b.col_stride];
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_transposes_and_accumulation() {
        let a: Vec<f64> = (0..35).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..35).map(|i| (i as f64 * 0.11).cos()).collect();
        let a_ = MatRef::row_major(&a, 5, 7);
        let b_ = MatRef::row_major(&b, 7, 5);
        for (x, y) in [(a_, b_), (b_.t(), a_.t())] {
            let want = naive(x, y);
            let mut got = vec![0.0; want.len()];
            matmul(&mut got, x, y, false, 2);
            matmul(&mut got, x, y, true, 1);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - 2.0 * w).abs() < 1e-12);
            }
        }
    }
}
