//! Label-free diagnostics of an embedding `[N, D]`: how uniformly it spreads over
//! the sphere and how many dimensions it uses. They need no classes, so they
//! describe unlabeled data too, and a collapsed encoder shows in both.

use crate::error::{Result, invalid};
use candle_core::{D, DType, Tensor};

/// Rows read by [`uniformity`] (the first ones): the pairwise sum is `O(N^2)`.
pub const UNIFORMITY_ROWS: usize = 4096;
/// Rows read by [`effective_rank`] when `D` exceeds it (the Gram matrix's side).
pub const RANK_ROWS: usize = 512;

fn check(features: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = features.dims2().map_err(|_| {
        invalid(
            "features",
            format!("expected [N, D], got {:?}", features.dims()),
        )
    })?;
    if n < 2 || d == 0 {
        return Err(invalid(
            "features",
            format!("need at least 2 rows and 1 column, got [{n}, {d}]"),
        ));
    }
    Ok((n, d))
}

/// Wang & Isola's uniformity, `log mean_{i<j} exp(-2 |z_i - z_j|^2)` over the
/// L2-normalised rows (the first [`UNIFORMITY_ROWS`]): `-4` when the points are
/// spread evenly on a high-dimensional sphere, `0` when they have collapsed to one.
pub fn uniformity(features: &Tensor) -> Result<f64> {
    let (n, _) = check(features)?;
    let m = n.min(UNIFORMITY_ROWS);
    let z = features.narrow(0, 0, m)?.to_dtype(DType::F32)?;
    let z = z.broadcast_div(
        &z.sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?,
    )?;
    let gram: Vec<Vec<f32>> = z.matmul(&z.t()?)?.to_vec2()?;
    // |z_i - z_j|^2 = 2 - 2 cos; the pairs' mean of exp(-2 * that), in f64.
    let (mut sum, mut count) = (0f64, 0f64);
    for (i, row) in gram.iter().enumerate() {
        for &c in &row[i + 1..] {
            sum += (-2.0 * (2.0 - 2.0 * c as f64).max(0.0)).exp();
            count += 1.0;
        }
    }
    Ok((sum / count).ln())
}

/// The effective rank of the embedding matrix (Roy & Vetterli; RankMe, Garrido et
/// al. 2023): `exp(-sum p_k log p_k)` with `p_k = s_k / sum s` over its singular
/// values `s`. It lies in `[1, min(N, D)]`: 1 for a collapse onto a line, `D` for
/// an isotropic embedding. The singular values come from the eigenvalues of `X^T X`
/// (`[D, D]`, all rows) when `D <= 512`, else of the Gram matrix of the first
/// [`RANK_ROWS`] rows.
pub fn effective_rank(features: &Tensor) -> Result<f64> {
    let (n, d) = check(features)?;
    let x = features.to_dtype(DType::F32)?;
    let x = if d <= RANK_ROWS {
        x
    } else {
        x.narrow(0, 0, n.min(RANK_ROWS))?
    };
    let gram = if d <= RANK_ROWS {
        x.t()?.matmul(&x)?
    } else {
        x.matmul(&x.t()?)?
    };
    let a: Vec<Vec<f64>> = gram.to_dtype(DType::F64)?.to_vec2()?;
    let eig = symmetric_eigenvalues(a);
    // Eigenvalues within the f32 Gram matrix's rounding of zero are zero.
    let floor = eig.iter().fold(0f64, |m, l| m.max(*l)) * eig.len() as f64 * f32::EPSILON as f64;
    let s: Vec<f64> = eig
        .into_iter()
        .map(|l| if l > floor { l.sqrt() } else { 0.0 })
        .collect();
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return Ok(1.0);
    }
    let entropy: f64 = s
        .iter()
        .map(|v| v / total)
        .filter(|p| *p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    Ok(entropy.exp())
}

/// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (to a relative
/// off-diagonal norm of 1e-12, at most 50 sweeps).
fn symmetric_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    let norm: f64 = a.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    for _ in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * norm.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p][q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                let (rp, rq) = (a[p].clone(), a[q].clone());
                for k in 0..n {
                    a[p][k] = c * rp[k] - s * rq[k];
                    a[q][k] = s * rp[k] + c * rq[k];
                }
            }
        }
    }
    (0..n).map(|i| a[i][i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn jacobi_finds_known_eigenvalues() {
        // diag(1, 2, 3) rotated: eigenvalues are invariant.
        let a = vec![
            vec![2.0, 1.0, 0.0],
            vec![1.0, 2.0, 0.0],
            vec![0.0, 0.0, 5.0],
        ];
        let mut l = symmetric_eigenvalues(a);
        l.sort_by(f64::total_cmp);
        for (got, want) in l.iter().zip([1.0, 3.0, 5.0]) {
            assert!((got - want).abs() < 1e-10, "{l:?}");
        }
    }

    #[test]
    fn rank_and_uniformity_separate_collapse_from_spread() -> Result<()> {
        let dev = Device::Cpu;
        // Spread: the 8 signed unit vectors of R^4, repeated.
        let mut spread = Vec::new();
        for k in 0..64 {
            let mut v = [0f32; 4];
            v[k % 4] = if (k / 4) % 2 == 0 { 1.0 } else { -1.0 };
            spread.extend(v);
        }
        let spread = Tensor::from_vec(spread, (64, 4), &dev)?;
        // Collapsed: every row the same direction, different lengths.
        let collapsed: Vec<f32> = (0..64)
            .flat_map(|k| [1.0 + k as f32, 2.0 + 2.0 * k as f32, 0.0, 0.0])
            .collect();
        let collapsed = Tensor::from_vec(collapsed, (64, 4), &dev)?;
        assert!((effective_rank(&spread)? - 4.0).abs() < 1e-6);
        assert!((effective_rank(&collapsed)? - 1.0).abs() < 1e-3);
        assert!(uniformity(&collapsed)? > -0.05);
        // Signed axes: pairs at squared distance 0, 2 or 4, most of them apart.
        assert!(uniformity(&spread)? < -1.0);
        // The wide path (D > RANK_ROWS) agrees with the covariance path.
        let wide = Tensor::cat(
            &[&spread, &Tensor::zeros((64, RANK_ROWS), DType::F32, &dev)?],
            1,
        )?;
        let r = effective_rank(&wide)?;
        assert!((r - 4.0).abs() < 1e-6, "{r}");
        Ok(())
    }
}
