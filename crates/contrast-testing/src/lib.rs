//! Test helpers shared by the Contrast crates' tests (a dev-dependency of the
//! published crates, never published itself).
//!
//! The tests compare kernels with reference compositions and need inputs that are
//! the same on every run. These helpers were copied into each test file; here is one
//! implementation of each:
//!
//! - [`values`], [`scalar`]: a tensor's elements as f64, whatever its dtype.
//! - [`max_rel_err`], [`max_rel`], [`max_rel_with_floor`]: the largest elementwise
//!   difference relative to the reference's largest magnitude.
//! - [`sum_abs_diff`]: the sum of absolute differences, zero exactly when two tensors
//!   are equal element for element.
//! - [`XorShift`], [`uniform_tensor`]: a seeded generator of uniform and normal draws
//!   (candle's CPU `randn` cannot be seeded).
//! - [`device`]: a GPU against the CPU on the similarity hot path and the encoders'
//!   ops, shared by the GPU tests and `cargo xtask gpu-check` (which is why this crate
//!   is also a dependency of xtask).
//! - [`images`]: image folders of real PNG and JPEG files (mixed sizes and modes,
//!   a pattern per class, corrupt files beside them).
//!
//! The helpers only measure; each test asserts its own bound, so the tolerances stay
//! beside the comparisons they belong to. They panic on tensors they cannot read,
//! which fails the test that called them.

pub mod device;
pub mod images;

use candle_core::{DType, Device, Shape, Tensor};

/// All elements of `t`, converted to f64 and flattened in row-major order.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The value of a scalar (rank-0) tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The largest absolute difference between `got` and `want`, divided by the largest
/// magnitude in `want` or by `floor`, whichever is larger: a relative error (unitless)
/// that does not blow up when the reference is all zeros or tiny. `floor` is in the
/// reference's units; below it the measure becomes the absolute error / `floor`.
///
/// Returns `f64::INFINITY` when the lengths differ or a difference is NaN (a NaN on
/// either side), so that any bound the caller asserts fails.
pub fn max_rel_err(got: &[f64], want: &[f64], floor: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(floor, |m, x| m.max(x.abs()));
    let mut worst = 0f64;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        if d.is_nan() {
            return f64::INFINITY;
        }
        worst = worst.max(d);
    }
    worst / scale
}

/// [`max_rel_err`] of tensor `a` against the reference `b` (any float dtypes, same
/// element count), with the floor `1e-12`: relative to the reference's largest value
/// unless that is essentially zero.
pub fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_with_floor(a, b, 1e-12)
}

/// [`max_rel_err`] of tensor `a` against the reference `b` with an explicit `floor`
/// on the scale (for references whose largest value may be legitimately tiny).
pub fn max_rel_with_floor(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    max_rel_err(&values(a), &values(b), floor)
}

/// The sum over elements of `|a - b|`, computed in f64: zero exactly when the two
/// tensors hold the same values, for checks that two runs are bit for bit equal.
/// `a` and `b` must have the same shape. NaN when either holds a NaN.
pub fn sum_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "sum_abs_diff: shapes differ");
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .sum()
}

/// The xorshift64 generator (Marsaglia's shifts 13, 7, 17): fast, seedable, the same
/// draws on every platform. For test inputs only; not a statistical-quality source.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator for `seed`; every seed, 0 included, gives a valid (nonzero) state,
    /// and nearby seeds give unrelated sequences (the seed is spread by the golden
    /// ratio constant).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next draw, uniform over `[0, 1)` on a grid of `2^-53`.
    pub fn next_f64(&mut self) -> f64 {
        let s = &mut self.0;
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A draw uniform over `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// A normal draw with the given mean and standard deviation (Box-Muller, from
    /// two uniform draws; the first is moved into `(0, 1]` so its log is finite).
    pub fn normal(&mut self, mean: f64, std: f64) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// An f64 CPU tensor of `shape` whose elements, in row-major order, are the uniform
/// draws over `[lo, hi)` of `XorShift::new(seed)`.
pub fn uniform_tensor(seed: u64, shape: impl Into<Shape>, lo: f64, hi: f64) -> Tensor {
    let shape = shape.into();
    let mut rng = XorShift::new(seed);
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| rng.uniform(lo, hi))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator as the tests wrote it inline before this crate: the same draws.
    #[test]
    fn xorshift_matches_the_inline_generator() {
        for seed in [0u64, 1, 7, 12345, u64::MAX] {
            let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rng = XorShift::new(seed);
            for _ in 0..1000 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                let (a, b) = (
                    rng.clone().uniform(-0.5, 0.5),
                    rng.clone().uniform(-1.0, 1.0),
                );
                assert_eq!(a.to_bits(), (u - 0.5).to_bits());
                assert_eq!(b.to_bits(), (u * 2.0 - 1.0).to_bits());
                assert_eq!(rng.next_f64().to_bits(), u.to_bits());
            }
        }
    }

    #[test]
    fn normal_draws_are_finite_with_the_right_moments() {
        let mut rng = XorShift::new(3);
        let v: Vec<f64> = (0..20_000).map(|_| rng.normal(1.0, 2.0)).collect();
        assert!(v.iter().all(|x| x.is_finite()));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn relative_errors() {
        assert_eq!(max_rel_err(&[1.0, 2.0], &[1.0, 2.0], 1e-12), 0.0);
        assert_eq!(max_rel_err(&[1.0, 2.5], &[1.0, 2.0], 1e-12), 0.25);
        // The floor: a zero reference measures the absolute error / floor.
        assert_eq!(max_rel_err(&[1e-3], &[0.0], 1e-3), 1.0);
        assert_eq!(max_rel_err(&[1.0], &[1.0, 2.0], 1e-12), f64::INFINITY);
        assert_eq!(max_rel_err(&[f64::NAN], &[1.0], 1e-12), f64::INFINITY);
        assert_eq!(max_rel_err(&[1.0], &[f64::NAN], 1e-12), f64::INFINITY);
        let a = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.0f64, 4.0], &Device::Cpu).unwrap();
        assert_eq!(max_rel(&a, &b), 0.5);
        assert_eq!(max_rel_with_floor(&a, &b, 8.0), 0.25);
        assert_eq!(sum_abs_diff(&a, &a), 0.0);
        assert_eq!(sum_abs_diff(&b, &b.ones_like().unwrap()), 3.0);
        assert_eq!(scalar(&Tensor::new(2.5f32, &Device::Cpu).unwrap()), 2.5);
    }

    #[test]
    fn uniform_tensor_is_seeded() {
        let a = uniform_tensor(5, (3, 4), -1.0, 1.0);
        assert_eq!(a.dims(), &[3, 4]);
        assert_eq!(sum_abs_diff(&a, &uniform_tensor(5, (3, 4), -1.0, 1.0)), 0.0);
        assert!(sum_abs_diff(&a, &uniform_tensor(6, (3, 4), -1.0, 1.0)) > 0.0);
        assert!(values(&a).iter().all(|x| (-1.0..1.0).contains(x)));
    }
}
