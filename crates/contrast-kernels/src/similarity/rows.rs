//! Row passes over logit tiles, vectorised: scale and find the maximum, shift and sum
//! the exponentials, and the paired kernel's two shifts. Each runs on AVX2 when the
//! CPU has it (`wide_kernel!`) and keeps its results independent of that choice:
//! maxima are exact, and sums run in eight f64 lanes in a fixed order.

use crate::cpu::wide::wide_kernel;
use crate::float::Float;

/// Lanes of the vectorised loops.
const LANES: usize = 8;

wide_kernel! {
    /// `row *= inv`, and `max` gets the largest scaled element (`-inf` for none).
    fn scale_max_into<T: Float>(row: &mut [T], inv: T, max: &mut f64) {
        let mut m = [T::from_f64(f64::NEG_INFINITY); LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for l in 0..LANES {
                let v = chunk[l] * inv;
                chunk[l] = v;
                m[l] = if v > m[l] { v } else { m[l] };
            }
        }
        let mut best = f64::NEG_INFINITY;
        for v in chunks.into_remainder() {
            *v = *v * inv;
            best = best.max(v.to_f64());
        }
        for v in m {
            best = best.max(v.to_f64());
        }
        *max = best;
    }
}

wide_kernel! {
    /// `sum` gets the sum of `row` in f64, over eight lanes.
    fn sum_into<T: Float>(row: &[T], sum: &mut f64) {
        let mut s = [0f64; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for l in 0..LANES {
                s[l] += chunk[l].to_f64();
            }
        }
        let mut total = chunks.remainder().iter().map(|v| v.to_f64()).sum::<f64>();
        for v in s {
            total += v;
        }
        *sum = total;
    }
}

wide_kernel! {
    /// `sum` gets the sum of squares of `row` in f64, over eight lanes.
    fn sum_squares_into<T: Float>(row: &[T], sum: &mut f64) {
        let mut s = [0f64; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for l in 0..LANES {
                let v = chunk[l].to_f64();
                s[l] += v * v;
            }
        }
        let mut total = chunks.remainder().iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>();
        for v in s {
            total += v;
        }
        *sum = total;
    }
}

wide_kernel! {
    /// `row -= shift`.
    fn sub_into<T: Float>(row: &mut [T], shift: T) {
        row.iter_mut().for_each(|v| *v = *v - shift);
    }
}

wide_kernel! {
    /// For dot products `row` of one anchor with candidates `j0..`: `by_row` becomes
    /// `row * inv_t - lse_i` and `by_col` becomes `row * inv_t - lse_cols[k]`.
    fn shift_both_into<T: Float>(by_row: &mut [T], by_col: &mut [T], lse_cols: &[T], inv_t: T, lse_i: T) {
        for ((x, y), &lj) in by_row.iter_mut().zip(by_col.iter_mut()).zip(lse_cols) {
            let l = *x * inv_t;
            *x = l - lse_i;
            *y = l - lj;
        }
    }
}

wide_kernel! {
    /// `row = row * inv - shift`.
    fn scale_sub_into<T: Float>(row: &mut [T], inv: T, shift: T) {
        row.iter_mut().for_each(|v| *v = *v * inv - shift);
    }
}

wide_kernel! {
    /// `row[k] = row[k] + row[k] * (a * b[k])`.
    fn mul_one_plus_into<T: Float>(row: &mut [T], b: &[T], a: T) {
        row.iter_mut().zip(b).for_each(|(x, &bk)| *x = *x + *x * (a * bk));
    }
}

wide_kernel! {
    /// `a += b`.
    fn add_into<T: Float>(a: &mut [T], b: &[T]) {
        a.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
    }
}

/// Scales `row` by `inv` and returns its largest element (`-inf` when every element
/// is `-inf`).
pub(crate) fn scale_max<T: Float>(row: &mut [T], inv: T) -> f64 {
    let mut m = f64::NEG_INFINITY;
    scale_max_into(row, inv, &mut m);
    m
}

/// Replaces `row` by `exp(row - shift)` and returns the sum of the exponentials (f64).
pub(crate) fn shift_exp_sum<T: Float>(row: &mut [T], shift: T) -> f64 {
    sub_into(row, shift);
    T::exp_inplace(row);
    let mut s = 0f64;
    sum_into(row, &mut s);
    s
}

/// The sum of squares of `row`, in f64.
pub(crate) fn sum_squares<T: Float>(row: &[T], sum: &mut f64) {
    sum_squares_into(row, sum);
}

/// See `shift_both_into`.
pub(crate) fn shift_both<T: Float>(
    by_row: &mut [T],
    by_col: &mut [T],
    lse_cols: &[T],
    inv_t: T,
    lse_i: T,
) {
    shift_both_into(by_row, by_col, lse_cols, inv_t, lse_i);
}

/// `row = row * inv - shift`, elementwise.
pub(crate) fn scale_sub<T: Float>(row: &mut [T], inv: T, shift: T) {
    scale_sub_into(row, inv, shift);
}

/// `row[k] *= 1 + a b[k]`, as `row[k] + row[k] (a b[k])`.
pub(crate) fn mul_one_plus<T: Float>(row: &mut [T], b: &[T], a: T) {
    mul_one_plus_into(row, b, a);
}

/// `a += b`, elementwise.
pub(crate) fn add<T: Float>(a: &mut [T], b: &[T]) {
    add_into(a, b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_match_their_scalar_definitions() {
        for n in [0usize, 1, 7, 8, 9, 31, 1000] {
            let base: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let mut row = base.clone();
            let m = scale_max(&mut row, 3.0);
            let want: Vec<f32> = base.iter().map(|v| v * 3.0).collect();
            assert_eq!(row, want);
            let wm = want.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
            assert_eq!(m, wm);
            let s = shift_exp_sum(&mut row, 0.5);
            let ws: f64 = want.iter().map(|&v| ((v - 0.5) as f64).exp()).sum();
            assert!((s - ws).abs() <= 1e-6 * ws.max(1.0), "{s} vs {ws}");
        }
        let mut neg = vec![f64::NEG_INFINITY; 11];
        assert_eq!(scale_max(&mut neg, 2.0), f64::NEG_INFINITY);
    }
}
