//! Row normalisation shared by losses, memory and evaluation.

use candle_core::{D, Result, Tensor};

/// Smallest norm divided by, as PyTorch's `F.normalize` (`eps = 1e-12`).
pub const NORM_EPS: f64 = 1e-12;

/// Divides each row of `x` `[N, D]` by `max(||x_i||_2, 1e-12)`. Differentiable; the
/// gradient includes the Jacobian of the normalisation.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(NORM_EPS, f64::INFINITY)?;
    x.broadcast_div(&norm)
}
