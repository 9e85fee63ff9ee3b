//! Alignment and uniformity (Wang & Isola, 2020), as losses and as metrics.

use crate::error::{Result, check_matrix, check_same_shape, invalid};
use candle_core::{D, Tensor};
use contrast_kernels::l2_normalize;

/// `mean_i ||x_i - y_i||_2^alpha` over normalised positive pairs `[B, D]`.
pub fn alignment(x: &Tensor, y: &Tensor, alpha: f64) -> Result<Tensor> {
    check_same_shape("x", x, "y", y)?;
    if alpha.is_nan() || alpha <= 0.0 {
        return Err(invalid("alpha", format!("{alpha} must be > 0")));
    }
    let diff = (l2_normalize(x)? - l2_normalize(y)?)?;
    let sq = diff.sqr()?.sum(D::Minus1)?;
    // ||.||^alpha = (||.||^2)^(alpha/2); alpha = 2 avoids the square root.
    let powered = if alpha == 2.0 {
        sq
    } else {
        sq.powf(alpha / 2.0)?
    };
    Ok(powered.mean_all()?)
}

/// `log mean_{i<j} exp(-t ||x_i - x_j||^2)` over the `B(B-1)/2` pairs of normalised
/// rows of `x` `[B, D]`.
pub fn uniformity(x: &Tensor, t: f64) -> Result<Tensor> {
    let (b, _) = check_matrix("x", x)?;
    if b < 2 {
        return Err(invalid("x", "uniformity needs at least 2 rows"));
    }
    if t.is_nan() || t <= 0.0 {
        return Err(invalid("t", format!("{t} must be > 0")));
    }
    let z = l2_normalize(x)?;
    // ||a - b||^2 = 2 - 2 a.b for unit vectors.
    let sq = (2.0 - (z.matmul(&z.t()?)? * 2.0)?)?;
    let upper: Vec<f32> = (0..b * b)
        .map(|k| if k % b > k / b { 1.0 } else { 0.0 })
        .collect();
    let upper = Tensor::from_vec(upper, (b, b), x.device())?.to_dtype(x.dtype())?;
    let pairs = (b * (b - 1) / 2) as f64;
    let e = ((sq * -t)?.exp()? * upper)?.sum_all()?;
    Ok((e / pairs)?.log()?)
}
