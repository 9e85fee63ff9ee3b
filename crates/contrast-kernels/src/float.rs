//! The element types of the kernels: f32 and f64, with their conversions to the f64
//! accumulators. Both families use it: the CNN ops for their BatchNorm statistics and
//! gradients, the streaming InfoNCE kernel for its exponentials and dtype dispatch.

use crate::cpu::gemm::Element;
use candle_core::CpuStorage;

/// Float types of the kernels, with conversions to the f64 accumulators.
pub(crate) trait Float:
    Element
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
    /// Replaces every element by its exponential (vectorised for f32).
    fn exp_inplace(xs: &mut [Self]);
    /// The elements of a CPU storage of this type.
    fn slice_of(s: &CpuStorage) -> Option<&[Self]>;
}

impl Float for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn exp_inplace(xs: &mut [Self]) {
        crate::similarity::fast_exp::exp_inplace(xs)
    }
    fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn exp_inplace(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = x.exp());
    }
    fn slice_of(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
}
