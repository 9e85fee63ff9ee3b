//! Direct convolution for small patches (`k*k*Cin` of a few taps: a first layer on
//! 1- or 3-channel images), where the GEMM's inner dimension is too short for it to
//! run well (a 3x3 convolution of a 1-channel image multiplies by 9 rows).
//!
//! Each output is the fused multiply-adds of its taps in im2col's order
//! (`(dy * k + dx) * Cin + ci`), starting from zero; a tap in the padding adds
//! `0 * w` as the zero-filled im2col row does. That is the order in which the GEMM
//! path accumulates them (gemm's microkernels are FMA loops over the inner
//! dimension), so both paths give the same values bit for bit (tested below against
//! im2col plus GEMM), and [`super::conv2d`] takes this one wherever it applies.
//!
//! The kernel is written with AVX2 + FMA intrinsics (f32 only), chosen at run time;
//! without them, and for f64, convolutions take the GEMM path.

use crate::cnn::conv2d::ConvGeometry;

/// Largest patch `k*k*Cin` the direct kernel takes (a 3x3 kernel on RGB).
const MAX_PATCH: usize = 27;

/// Whether the direct kernel takes this convolution: an x86-64 CPU with AVX2 + FMA,
/// a patch of 3 to [`MAX_PATCH`] taps and at least two output channels. (For a 1- or
/// 2-tap patch or a single output channel gemm switches to kernels that sum in
/// another order, so the two paths would not agree bit for bit there.)
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (3..=MAX_PATCH).contains(&g.patch()) && g.out_channels > 1 && crate::cpu::wide::has_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = g;
        false
    }
}

/// Writes the convolution of the `g.batch` images `x` into `y` `[B, Ho, Wo, Cout]`
/// and returns `true`, or returns `false` without writing when the kernel does not
/// apply ([`applies`]).
pub(crate) fn forward_f32(y: &mut [f32], x: &[f32], w: &[f32], g: &ConvGeometry) -> bool {
    if !applies(g) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::gemm::Element;
        let padded = (g.height + 2 * g.padding) * (g.width + 2 * g.padding) * g.in_channels;
        // SAFETY: `applies` checked that the CPU has AVX2 and FMA.
        f32::with_scratch(padded, |buf| unsafe { avx2::forward(y, x, w, g, buf) });
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::cnn::conv2d::ConvGeometry;
    use std::arch::x86_64::*;

    /// f32 values per register.
    const LANES: usize = 8;
    /// Output channels per register block (two registers).
    const GROUP: usize = 2 * LANES;
    /// Output pixels per register block: 6 x 2 accumulators stay in registers (7
    /// spill).
    const PIXELS: usize = 6;

    /// One image zero-padded on every side, `[H + 2p, W + 2p, Cin]`: every tap of
    /// every output reads inside it, and a padding tap reads the zero that im2col
    /// would have written.
    struct Padded<'a> {
        data: &'a [f32],
        /// Padded width.
        width: usize,
    }

    /// Copies image `xi` into the zero-padded buffer `buf` (`[H + 2p, W + 2p, Cin]`).
    fn pad<'a>(buf: &'a mut [f32], xi: &[f32], g: &ConvGeometry) -> Padded<'a> {
        let (p, cin) = (g.padding, g.in_channels);
        let pw = g.width + 2 * p;
        buf.fill(0.0);
        for (y, src) in xi.chunks_exact(g.width * cin).enumerate() {
            buf[((y + p) * pw + p) * cin..][..g.width * cin].copy_from_slice(src);
        }
        Padded {
            data: buf,
            width: pw,
        }
    }

    /// The convolution of every image, each zero-padded into `buf` first.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn forward(y: &mut [f32], x: &[f32], w: &[f32], g: &ConvGeometry, buf: &mut [f32]) {
        let (oh, ow, cout) = (g.out_h(), g.out_w(), g.out_channels);
        let full = cout / GROUP * GROUP;
        let in_image = g.height * g.width * g.in_channels;
        for (xi, yi) in x
            .chunks_exact(in_image)
            .zip(y.chunks_exact_mut(oh * ow * cout))
        {
            let padded = pad(buf, xi, g);
            for oy in 0..oh {
                let row = &mut yi[oy * ow * cout..(oy + 1) * ow * cout];
                match (g.kernel, g.in_channels) {
                    (3, 1) => blocks::<3, 1>(row, &padded, w, g, (oy, full)),
                    (3, 3) => blocks::<3, 3>(row, &padded, w, g, (oy, full)),
                    _ => blocks::<0, 0>(row, &padded, w, g, (oy, full)),
                }
                if full < cout {
                    for ox in 0..ow {
                        tail(row, &padded, w, g, (oy, ox, full));
                    }
                }
            }
        }
    }

    /// Every full channel group of output row `oy` (channels `0..full`), in blocks of
    /// [`PIXELS`] pixels and single pixels at the end. `K` and `C` are the kernel size
    /// and input channels when known at compile time (loops fully unrolled), or 0 to
    /// read them from `g`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn blocks<const K: usize, const C: usize>(
        row: &mut [f32],
        x: &Padded<'_>,
        w: &[f32],
        g: &ConvGeometry,
        (oy, full): (usize, usize),
    ) {
        let ow = g.out_w();
        let mut ox = 0;
        while ox + PIXELS <= ow {
            for j0 in (0..full).step_by(GROUP) {
                block::<PIXELS, K, C>(row, x, w, g, (oy, ox, j0));
            }
            ox += PIXELS;
        }
        for ox in ox..ow {
            for j0 in (0..full).step_by(GROUP) {
                block::<1, K, C>(row, x, w, g, (oy, ox, j0));
            }
        }
    }

    /// Offset in the padded image of tap `(dy, dx)`, channel 0, for output `(oy, ox)`.
    #[inline(always)]
    fn offset(
        x: &Padded<'_>,
        g: &ConvGeometry,
        (oy, ox): (usize, usize),
        (dy, dx): (usize, usize),
    ) -> usize {
        ((oy * g.stride + dy) * x.width + ox * g.stride + dx) * g.in_channels
    }

    /// Pixels `ox0..ox0 + P` of output row `oy`, channels `j0..j0 + GROUP`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn block<const P: usize, const K: usize, const C: usize>(
        row: &mut [f32],
        x: &Padded<'_>,
        w: &[f32],
        g: &ConvGeometry,
        (oy, ox0, j0): (usize, usize, usize),
    ) {
        let cout = g.out_channels;
        let k = if K == 0 { g.kernel } else { K };
        let cin = if C == 0 { g.in_channels } else { C };
        let step = g.stride * cin;
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for dy in 0..k {
            for dx in 0..k {
                let first = offset(x, g, (oy, ox0), (dy, dx));
                let taps = &x.data[first..first + (P - 1) * step + cin];
                for ci in 0..cin {
                    let wr = &w[((dy * k + dx) * cin + ci) * cout + j0..][..GROUP];
                    // SAFETY: `wr` holds GROUP = 2 * LANES values.
                    let (w0, w1) = unsafe {
                        (
                            _mm256_loadu_ps(wr.as_ptr()),
                            _mm256_loadu_ps(wr.as_ptr().add(LANES)),
                        )
                    };
                    for (p, a) in acc.iter_mut().enumerate() {
                        let v = _mm256_set1_ps(taps[p * step + ci]);
                        a[0] = _mm256_fmadd_ps(v, w0, a[0]);
                        a[1] = _mm256_fmadd_ps(v, w1, a[1]);
                    }
                }
            }
        }
        for (p, a) in acc.iter().enumerate() {
            let out = &mut row[(ox0 + p) * cout + j0..][..GROUP];
            // SAFETY: `out` holds GROUP = 2 * LANES values.
            unsafe {
                _mm256_storeu_ps(out.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(out.as_mut_ptr().add(LANES), a[1]);
            }
        }
    }

    /// Channels `j0..` (fewer than a group) of pixel `ox`, one at a time.
    #[target_feature(enable = "avx2,fma")]
    fn tail(
        row: &mut [f32],
        x: &Padded<'_>,
        w: &[f32],
        g: &ConvGeometry,
        (oy, ox, j0): (usize, usize, usize),
    ) {
        let (cin, cout, k) = (g.in_channels, g.out_channels, g.kernel);
        for j in j0..cout {
            let mut a = 0.0f32;
            for dy in 0..k {
                for dx in 0..k {
                    let first = offset(x, g, (oy, ox), (dy, dx));
                    for ci in 0..cin {
                        a = x.data[first + ci].mul_add(w[((dy * k + dx) * cin + ci) * cout + j], a);
                    }
                }
            }
            row[ox * cout + j] = a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cnn::conv2d;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The direct kernel and the GEMM path agree bit for bit: full and partial pixel
    /// and channel blocks, strides 1 and 2, with and without padding, 1 to 3 input
    /// channels, 1x1 and 3x3 kernels. It declines a single output channel and 1- or
    /// 2-tap patches.
    #[test]
    fn equals_the_gemm_path_bit_for_bit() {
        if !crate::cpu::wide::has_avx2() {
            eprintln!("no AVX2 + FMA on this CPU: the direct kernel is not used");
            return;
        }
        let shapes = [
            (28, 28, 1, 32, 3, 1, 1, 3),
            (32, 32, 3, 64, 3, 1, 1, 2),
            (9, 7, 2, 21, 3, 2, 1, 3),
            (8, 5, 3, 5, 1, 1, 0, 2),
            (9, 9, 3, 17, 1, 2, 0, 2),
            (6, 6, 1, 16, 3, 1, 0, 1),
            (5, 11, 3, 40, 3, 2, 0, 2),
            (7, 7, 1, 1, 3, 1, 1, 2),
            (7, 7, 2, 8, 1, 1, 0, 2),
        ];
        for (i, &(h, w, cin, cout, k, stride, padding, b)) in shapes.iter().enumerate() {
            let g = ConvGeometry {
                batch: b,
                height: h,
                width: w,
                in_channels: cin,
                out_channels: cout,
                kernel: k,
                stride,
                padding,
            };
            let x = lcg(i as u64, b * h * w * cin);
            let wt = lcg(100 + i as u64, g.patch() * cout);
            let mut want = vec![0.0; b * g.out_h() * g.out_w() * cout];
            conv2d::gemm_chunk(&mut want, &x, &wt, &g);
            let mut got = vec![f32::NAN; want.len()];
            let ran = forward_f32(&mut got, &x, &wt, &g);
            if cout == 1 || g.patch() < 3 {
                assert!(!ran, "{g:?}: the direct kernel must decline");
                continue;
            }
            assert!(ran, "{g:?}: the direct kernel declined");
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ,
                0,
                "{g:?}: {differ} of {} outputs differ",
                want.len()
            );
        }
    }
}
