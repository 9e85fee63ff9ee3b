//! The residual join `relu(a + b)` as one op: the graph keeps only its output (the
//! sum is never materialised), and the backward pass routes `dy * [y > 0]` to both
//! inputs.

use crate::cnn::generic;
use crate::cpu::storage::with_pair;
use crate::float::Float;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// `y = relu(y + b)` in place.
pub(crate) fn add_relu_in_place<T: Float>(y: &mut [T], b: &[T]) {
    y.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(y, b)| {
            for (y, &b) in y.iter_mut().zip(b) {
                let s = *y + b;
                *y = if s > T::ZERO { s } else { T::ZERO };
            }
        });
}

fn forward<T: Float>(a: &[T], b: &[T]) -> Vec<T> {
    let mut y = a.to_vec();
    add_relu_in_place(&mut y, b);
    y
}

/// The gradient of both inputs of `y = relu(a + b)`: `dy * [y > 0]`.
pub(crate) fn backward<T: Float>(y: &[T], dy: &[T]) -> Vec<T> {
    let mut g = vec![T::ZERO; y.len()];
    g.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(g, (y, d))| {
            for ((g, &y), &d) in g.iter_mut().zip(y).zip(d) {
                *g = if y > T::ZERO { d } else { T::ZERO };
            }
        });
    g
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "contrast-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = with_pair(
            "add_relu",
            (s1, l1),
            (s2, l2),
            ["a", "b"],
            |a, b| CpuStorage::F32(forward(a, b)),
            |a, b| CpuStorage::F64(forward(a, b)),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = y.apply_op2_no_bwd(&dy.contiguous()?, &AddReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

struct AddReluGrad;

impl CustomOp2 for AddReluGrad {
    fn name(&self) -> &'static str {
        "contrast-add-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = with_pair(
            "add_relu backward",
            (s1, l1),
            (s2, l2),
            ["y", "dy"],
            |y, d| CpuStorage::F32(backward(y, d)),
            |y, d| CpuStorage::F64(backward(y, d)),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

/// `relu(a + b)` for tensors of one shape; differentiable in both. CPU f32/f64 run the
/// fused op, other devices the two candle ops.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu()
        && matches!(a.dtype(), DType::F32 | DType::F64)
        && a.dtype() == b.dtype()
        && a.dims() == b.dims()
    {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        generic::add_relu(a, b)
    }
}
