//! Inputs shared by the mining tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};

/// Two views `[B, D]` (f64): random rows and noisy copies, from a seed.
pub fn views(seed: u64, b: usize, d: usize) -> (Tensor, Tensor) {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
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

/// A scalar tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// All elements of `t` as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
