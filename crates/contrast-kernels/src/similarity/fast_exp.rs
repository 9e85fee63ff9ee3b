//! A vectorisable `exp` for f32 slices, dispatched at run time to AVX-512 or AVX2 + FMA
//! when the CPU has them (binaries are built for baseline x86-64, so the wide path is chosen
//! here, not by the compiler flags).
//!
//! `exp(x) = 2^n * p(r)` with `n = round(x log2 e)`, `r = x - n ln 2` (ln 2 split in a
//! high and a low part) and `p` a degree-6 polynomial on `[-ln2/2, ln2/2]`. Relative
//! error below 2e-7 for finite inputs; inputs below -87.3 (and `-inf`) give 0, inputs
//! above 88.3 saturate at `exp(88.3)` (finite).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
const MIN_X: f32 = -87.33;
const MAX_X: f32 = 88.3;

#[inline(always)]
fn exp1(x: f32) -> f32 {
    let underflow = x < MIN_X;
    let x = x.clamp(MIN_X, MAX_X);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients to degree 6: error < 1.5e-7 on |r| <= ln2/2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if underflow { 0.0 } else { p * scale }
}

#[inline(always)]
fn exp_all(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = exp1(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_all(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    exp_all(xs)
}

/// Replaces every element by its exponential: 16 lanes with AVX-512, 8 with AVX2, the
/// same operations in each (no FMA contraction), so the same results.
pub(crate) fn exp_inplace(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { exp_avx512(xs) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { exp_avx2(xs) };
            return;
        }
    }
    exp_all(xs)
}

#[cfg(test)]
mod tests {
    use super::exp_inplace;

    #[test]
    fn matches_std_exp() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.044).collect();
        let want: Vec<f64> = xs.iter().map(|&x| (x as f64).exp()).collect();
        exp_inplace(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            if *w < 1e-37 {
                assert!(*g < 1e-36);
            } else {
                assert!(((*g as f64) - w).abs() / w < 3e-7, "{g} vs {w}");
            }
        }
        let mut edge = [f32::NEG_INFINITY, -100.0, 0.0, 1000.0];
        exp_inplace(&mut edge);
        assert_eq!(&edge[..3], &[0.0, 0.0, 1.0]);
        assert!(edge[3].is_finite() && edge[3] > 1e38);
    }
}
