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
///
/// Written to keep its float32 accuracy on a nearly collapsed batch, where the plain
/// form loses it twice: `||a - b||^2 = 2 - 2 a.b` cancels when `a.b` is near 1, and the
/// log of a mean near 1 keeps only the absolute precision of that mean. So the squared
/// distances come from the centred rows (`||a - b||` is unchanged by subtracting the
/// batch mean, and centred rows of a collapsed batch are small, so their Gram form does
/// not cancel), and a mean near 1 is taken as `log1p(mean(expm1(-t d)))`.
pub fn uniformity(x: &Tensor, t: f64) -> Result<Tensor> {
    let (b, _) = check_matrix("x", x)?;
    if b < 2 {
        return Err(invalid("x", "uniformity needs at least 2 rows"));
    }
    if t.is_nan() || t <= 0.0 {
        return Err(invalid("t", format!("{t} must be > 0")));
    }
    let z = l2_normalize(x)?;
    let c = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let norms = c.sqr()?.sum_keepdim(1)?;
    let sq = norms
        .broadcast_add(&norms.t()?)?
        .sub(&(c.matmul(&c.t()?)? * 2.0)?)?;
    let upper: Vec<f32> = (0..b * b)
        .map(|k| if k % b > k / b { 1.0 } else { 0.0 })
        .collect();
    let upper = Tensor::from_vec(upper, (b, b), x.device())?.to_dtype(x.dtype())?;
    let pairs = (b * (b - 1) / 2) as f64;
    let v = (sq * -t)?;
    // mean - 1, accurate when the mean is near 1; the mean itself otherwise.
    let below_one = ((expm1(&v)? * &upper)?.sum_all()? / pairs)?;
    let mean = ((v.exp()? * &upper)?.sum_all()? / pairs)?;
    let near_one = below_one.abs()?.lt(0.5)?;
    Ok(near_one.where_cond(&log1p_near_zero(&below_one)?, &mean.log()?)?)
}

/// `exp(v) - 1` to the relative precision of `tanh`: `2 tanh(v/2) / (1 - tanh(v/2))`,
/// differentiable with candle's ops (its derivative is `exp(v)`). For `v <= 0`, where
/// the denominator lies in `[1, 2]`.
fn expm1(v: &Tensor) -> Result<Tensor> {
    let h = (v * 0.5)?.tanh()?;
    Ok(((&h * 2.0)? / (1.0 - &h)?)?)
}

/// `log(1 + y)` for `|y| < 1/2` (larger values are clamped): `log(u) - ((u - 1) - y) / u`
/// with `u = 1 + y` rounded, which removes the rounding of `u` to first order.
fn log1p_near_zero(y: &Tensor) -> Result<Tensor> {
    let u = (y + 1.0)?.clamp(0.5, 1.5)?;
    let rounding = (((&u - 1.0)? - y)? / &u)?;
    Ok((u.log()? - rounding)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Rows `u + noise * n_i` (a nearly collapsed batch), deterministic.
    fn collapsed(b: usize, d: usize, noise: f64) -> Vec<f64> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let u: Vec<f64> = (0..d).map(|_| next()).collect();
        (0..b)
            .flat_map(|_| {
                u.clone()
                    .into_iter()
                    .map(|x| x + noise * next())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn value_and_grad(x: &[f64], b: usize, d: usize, dtype: DType) -> (f64, Vec<f64>) {
        let t = Tensor::from_vec(x.to_vec(), (b, d), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let v = candle_core::Var::from_tensor(&t).unwrap();
        let loss = uniformity(v.as_tensor(), 2.0).unwrap();
        let g = loss.backward().unwrap();
        let grad = g.get(v.as_tensor()).unwrap();
        let val = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let grad = grad
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (val, grad)
    }

    /// The float32 value and gradient on nearly collapsed batches stay within 1e-5 of
    /// float64 (with `2 - 2 a.b` and a plain log the value was off by 2e-4 at noise
    /// 1e-2, and by more below), and the far-from-collapsed branch agrees with the
    /// plain formula.
    #[test]
    fn float32_keeps_its_precision_on_a_collapsed_batch() {
        let (b, d) = (8, 16);
        for noise in [1e-1, 1e-2, 3e-3, 1e-3] {
            // Round the inputs to f32 first, so both runs see the same values.
            let x: Vec<f64> = collapsed(b, d, noise)
                .into_iter()
                .map(|v| v as f32 as f64)
                .collect();
            let (want, want_g) = value_and_grad(&x, b, d, DType::F64);
            let (got, got_g) = value_and_grad(&x, b, d, DType::F32);
            let rel = ((got - want) / want).abs();
            let scale = want_g.iter().fold(0f64, |m, g| m.max(g.abs()));
            let grad_rel = got_g
                .iter()
                .zip(&want_g)
                .fold(0f64, |m, (a, w)| m.max((a - w).abs()))
                / scale;
            eprintln!("noise {noise}: value {rel:.1e}, gradient {grad_rel:.1e}");
            assert!(rel < 1e-5, "noise {noise}: value rel err {rel:.2e}");
            // The gradient keeps the error the normalisation puts into the rows'
            // differences, about 6e-8 / noise relative, as in PyTorch.
            assert!(
                grad_rel < 1e-4,
                "noise {noise}: grad rel err {grad_rel:.2e}"
            );
        }
        // A spread batch takes the plain branch: log of the mean of exp(2 a.b - 2) * e^0.
        let x = collapsed(b, d, 10.0);
        let (got, _) = value_and_grad(&x, b, d, DType::F64);
        let rows: Vec<Vec<f64>> = x
            .chunks(d)
            .map(|r| {
                let n = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.iter().map(|v| v / n).collect()
            })
            .collect();
        let mut sum = 0.0;
        for i in 0..b {
            for j in i + 1..b {
                let sq: f64 = rows[i]
                    .iter()
                    .zip(&rows[j])
                    .map(|(p, q)| (p - q).powi(2))
                    .sum();
                sum += (-2.0 * sq).exp();
            }
        }
        let want = (sum / (b * (b - 1) / 2) as f64).ln();
        assert!(
            want < -0.7,
            "the spread batch must take the plain branch: {want}"
        );
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}
