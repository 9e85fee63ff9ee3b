//! Inputs shared by the mining tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use contrast_testing::XorShift;

/// Two views `[B, D]` (f64): random rows and noisy copies, from a seed.
pub fn views(seed: u64, b: usize, d: usize) -> (Tensor, Tensor) {
    let mut rng = XorShift::new(seed);
    let mut next = || rng.uniform(-0.5, 0.5);
    let a: Vec<f64> = (0..b * d).map(|_| next()).collect();
    let c: Vec<f64> = a.iter().map(|x| x + 0.3 * next()).collect();
    (
        Tensor::from_vec(a, (b, d), &Device::Cpu).unwrap(),
        Tensor::from_vec(c, (b, d), &Device::Cpu).unwrap(),
    )
}

/// One id per image.
pub fn ids(b: usize) -> Vec<i64> {
    (0..b as i64).collect()
}

/// Deterministic labels in `0..classes`.
pub fn labels(b: usize, classes: i64) -> Vec<i64> {
    (0..b as i64).map(|i| (i * 7 + 3) % classes).collect()
}
