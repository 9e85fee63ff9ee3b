//! NT-Xent's own kernel: one set of rows `z` `[N, D]`, L2-normalised inside, is both
//! the anchors and the candidates, every row's positive is its partner row, and the
//! row itself is removed:
//!
//! ```text
//! L = mean_i [ lse_i - l_i,p(i) ],   lse_i = log sum_{j != i} exp(l_ij),   l = z z^T / t
//! ```
//!
//! With `p` an involution without fixed points (row `i`'s partner's partner is `i`),
//! the logits are symmetric and the whole gradient is one product:
//!
//! ```text
//! dL/dz = M z / (N t),   M_ij = P_ij + P_ji - 2 [j = p(i)],   P_ij = exp(l_ij - lse_i)
//! ```
//!
//! where `P_ji = exp(l_ij - lse_j)` comes from the same logit. The general streaming
//! kernel ([`super::info_nce`]) treats anchors and candidates as two inputs and pays
//! four products (logits and `P C` in its first sweep, logits again and `P^T A` in its
//! second); this one pays three: the forward pass walks candidate tiles with an online
//! log-sum-exp and keeps only `lse` (one product), and the backward pass recomputes
//! each tile's logits and accumulates `M z` tile by tile (two products). Memory is
//! `O(N D)` plus two `rows x TILE` tiles per thread.
//!
//! Keeping the `N x N` probabilities between the passes instead saves one product, but
//! measured slower at every batch from 256 to 2048 pairs (the passes over the kept
//! matrix cost more than the product they save; docs/performance.md), so the kernel
//! always streams.
//!
//! The normalisation (`F.normalize`'s, eps `1e-12`) and its Jacobian run inside the op,
//! which saves the half-dozen tensor ops and their backward that dominate small
//! batches. CPU f32 and f64. Other devices and dtypes normalise with tensor ops and
//! take [`super::streaming_info_nce`] with the same candidate rules.

use crate::cpu::gemm::{MatRef, matmul};
use crate::cpu::storage::contiguous;
use crate::float::Float;
use crate::similarity::info_nce::{Candidates, Positive, streaming_info_nce};
use crate::similarity::normalize::{NORM_EPS, l2_normalize};
use crate::similarity::rows;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Candidate columns per streamed tile.
const TILE: usize = 1024;
/// Anchor rows per streamed block lie in this range (`N / threads` within it).
const ROW_BLOCK: (usize, usize) = (16, 256);

/// What the forward pass leaves for the backward pass: every row's log-sum-exp, the
/// normalised rows and the divisors `max(|z_i|, eps)`.
struct Saved<T> {
    lse: Vec<f64>,
    unit: Vec<T>,
    den: Vec<f64>,
}

enum SavedAny {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

/// The rows of `z` `[N, D]` divided by `max(|z_i|, eps)`, and those divisors.
fn normalize_rows<T: Float>(z: &[T], d: usize) -> (Vec<T>, Vec<f64>) {
    let mut unit = z.to_vec();
    let den: Vec<f64> = unit
        .par_chunks_mut(d)
        .map(|row| {
            let mut sq = 0f64;
            rows::sum_squares(row, &mut sq);
            let den = sq.sqrt().max(NORM_EPS);
            rows::scale_max(row, T::from_f64(1.0 / den));
            den
        })
        .collect();
    (unit, den)
}

/// `dL/dz` from `dL/du` `g` (in place): `(g - u (u . g)) / den` for a row whose norm
/// exceeds eps (the projection off the row), `g / den` for a clamped one.
fn through_normalization<T: Float>(g: &mut [T], unit: &[T], den: &[f64], d: usize) {
    g.par_chunks_mut(d)
        .zip(unit.par_chunks(d))
        .zip(den.par_iter())
        .for_each(|((g, u), &den)| {
            let dot: f64 = if den > NORM_EPS {
                g.iter().zip(u).map(|(a, b)| a.to_f64() * b.to_f64()).sum()
            } else {
                0.0
            };
            let inv = 1.0 / den;
            for (gv, &uv) in g.iter_mut().zip(u) {
                *gv = T::from_f64((gv.to_f64() - uv.to_f64() * dot) * inv);
            }
        });
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Removes the anchor's own column (`-inf`) when `self_col` falls in the row, scales
/// the row of dot products by `inv_t` and returns its maximum.
fn scale_row<T: Float>(row: &mut [T], self_col: Option<usize>, inv_t: f64) -> f64 {
    if let Some(k) = self_col {
        row[k] = T::from_f64(f64::NEG_INFINITY);
    }
    rows::scale_max(row, T::from_f64(inv_t))
}

/// Rows per streamed block for `n` rows.
fn row_block(n: usize) -> usize {
    n.div_ceil(threads()).clamp(ROW_BLOCK.0, ROW_BLOCK.1)
}

/// Streamed forward: per row `(lse, positive logit)`, tile by tile with an online
/// log-sum-exp.
fn streamed_forward<T: Float>(
    z: &[T],
    n: usize,
    d: usize,
    partner: &[u32],
    t: f64,
) -> Vec<(f64, f64)> {
    let rb = row_block(n);
    let blocks: Vec<Vec<(f64, f64)>> = (0..n.div_ceil(rb))
        .into_par_iter()
        .map(|blk| {
            let r0 = blk * rb;
            let rows = rb.min(n - r0);
            let a = MatRef::row_major(&z[r0 * d..(r0 + rows) * d], rows, d);
            let mut m = vec![f64::NEG_INFINITY; rows];
            let mut sum = vec![0f64; rows];
            let mut pos = vec![0f64; rows];
            T::with_scratch(rows * TILE, |tile| {
                for j0 in (0..n).step_by(TILE) {
                    let cols = TILE.min(n - j0);
                    let c = MatRef::row_major(&z[j0 * d..(j0 + cols) * d], cols, d);
                    matmul(&mut tile[..rows * cols], a, c.t(), false, 1);
                    for r in 0..rows {
                        let i = r0 + r;
                        let row = &mut tile[r * cols..(r + 1) * cols];
                        let own = (j0..j0 + cols).contains(&i).then(|| i - j0);
                        let tile_max = scale_row(row, own, 1.0 / t);
                        let p = partner[i] as usize;
                        if (j0..j0 + cols).contains(&p) {
                            pos[r] = row[p - j0].to_f64();
                        }
                        let new_m = m[r].max(tile_max);
                        if new_m == f64::NEG_INFINITY {
                            continue;
                        }
                        sum[r] *= (m[r] - new_m).exp();
                        m[r] = new_m;
                        sum[r] += rows::shift_exp_sum(row, T::from_f64(new_m));
                    }
                }
            });
            (0..rows).map(|r| (m[r] + sum[r].ln(), pos[r])).collect()
        })
        .collect();
    blocks.into_iter().flatten().collect()
}

/// The largest spread `max(lse) - min(lse)` for which the backward pass takes `P_ji`
/// as `P_ij exp(lse_i - lse_j)` (one exponential per logit) instead of exponentiating
/// `l_ij - lse_j` as well. Within it the factor stays below `e^40` and a `P_ij` that
/// underflows f32 (`< e^-87`) can only hide a `P_ji < e^-47`.
const FACTOR_SPREAD: f64 = 40.0;

/// Streamed backward: for each block of rows, `M` tile by tile from recomputed
/// logits and the saved `lse`, accumulated into `M z`; times `scale`. With a spread
/// of log-sum-exps up to `max_spread`, `M_ij = P_ij (1 + a_i b_j)` with
/// `a_i = e^(lse_i - m)`, `b_j = e^(m - lse_j)` (one exponential per logit); beyond
/// it, `P_ij + P_ji` from two.
#[allow(clippy::too_many_arguments)]
fn streamed_backward<T: Float>(
    z: &[T],
    n: usize,
    d: usize,
    partner: &[u32],
    t: f64,
    lse: &[f64],
    scale: f64,
    max_spread: f64,
) -> Vec<T> {
    let rb = row_block(n);
    let inv_t = T::from_f64(1.0 / t);
    let two = T::from_f64(2.0);
    let (lo, hi) = lse
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let factored = hi - lo <= max_spread;
    let mid = 0.5 * (lo + hi);
    let lse_t: Vec<T> = lse.iter().map(|&v| T::from_f64(v)).collect();
    // b_j (factored) or lse_j as T (two exponentials), per column.
    let per_col: Vec<T> = if factored {
        lse.iter().map(|&v| T::from_f64((mid - v).exp())).collect()
    } else {
        lse_t.clone()
    };
    let neg_inf = T::from_f64(f64::NEG_INFINITY);
    let mut dz = vec![T::ZERO; n * d];
    dz.par_chunks_mut(rb * d)
        .enumerate()
        .for_each(|(blk, out)| {
            let r0 = blk * rb;
            let rows = out.len() / d;
            let a = MatRef::row_major(&z[r0 * d..(r0 + rows) * d], rows, d);
            let second = if factored { 0 } else { rows * TILE };
            T::with_scratch(rows * TILE + second, |buf| {
                let (by_row, by_col) = buf.split_at_mut(rows * TILE);
                for j0 in (0..n).step_by(TILE) {
                    let cols = TILE.min(n - j0);
                    let c = MatRef::row_major(&z[j0 * d..(j0 + cols) * d], cols, d);
                    let e1 = &mut by_row[..rows * cols];
                    matmul(e1, a, c.t(), false, 1);
                    let col_terms = &per_col[j0..j0 + cols];
                    if factored {
                        for r in 0..rows {
                            let i = r0 + r;
                            let row = &mut e1[r * cols..(r + 1) * cols];
                            rows::scale_sub(row, inv_t, lse_t[i]);
                            if (j0..j0 + cols).contains(&i) {
                                row[i - j0] = neg_inf;
                            }
                        }
                        T::exp_inplace(e1);
                        for r in 0..rows {
                            let a_i = T::from_f64((lse[r0 + r] - mid).exp());
                            rows::mul_one_plus(&mut e1[r * cols..(r + 1) * cols], col_terms, a_i);
                        }
                    } else {
                        let e2 = &mut by_col[..rows * cols];
                        for r in 0..rows {
                            let i = r0 + r;
                            let (row, col) = (
                                &mut e1[r * cols..(r + 1) * cols],
                                &mut e2[r * cols..(r + 1) * cols],
                            );
                            rows::shift_both(row, col, col_terms, inv_t, lse_t[i]);
                            if (j0..j0 + cols).contains(&i) {
                                row[i - j0] = neg_inf;
                                col[i - j0] = neg_inf;
                            }
                        }
                        T::exp_inplace(e1);
                        T::exp_inplace(e2);
                        for r in 0..rows {
                            rows::add(
                                &mut e1[r * cols..(r + 1) * cols],
                                &e2[r * cols..(r + 1) * cols],
                            );
                        }
                    }
                    for r in 0..rows {
                        let p = partner[r0 + r] as usize;
                        if (j0..j0 + cols).contains(&p) {
                            let v = &mut e1[r * cols + p - j0];
                            *v = *v - two;
                        }
                    }
                    matmul(out, MatRef::row_major(e1, rows, cols), c, true, 1);
                }
            });
            let s = T::from_f64(scale);
            out.iter_mut().for_each(|v| *v = *v * s);
        });
    dz
}

/// Forward on one dtype: the mean loss and what the backward pass needs.
fn forward<T: Float>(z: &[T], n: usize, d: usize, partner: &[u32], t: f64) -> (f64, Saved<T>) {
    let (unit, den) = normalize_rows(z, d);
    let rows = streamed_forward(&unit, n, d, partner, t);
    let loss = rows.iter().map(|(lse, pos)| lse - pos).sum::<f64>() / n as f64;
    let lse = rows.into_iter().map(|r| r.0).collect();
    (loss, Saved { lse, unit, den })
}

/// Backward on one dtype: `dL/dz` times `scale = g / (N t)`.
fn backward<T: Float>(
    s: &Saved<T>,
    n: usize,
    d: usize,
    partner: &[u32],
    t: f64,
    scale: f64,
) -> Vec<T> {
    let mut g = streamed_backward(&s.unit, n, d, partner, t, &s.lse, scale, FACTOR_SPREAD);
    through_normalization(&mut g, &s.unit, &s.den, d);
    g
}

struct PairedOp {
    partner: Arc<Vec<u32>>,
    temperature: f64,
    saved: Arc<Mutex<Option<SavedAny>>>,
}

impl CustomOp1 for PairedOp {
    fn name(&self) -> &'static str {
        "contrast-paired-info-nce"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, d) = (l.dims()[0], l.dims()[1]);
        let (p, t) = (&self.partner, self.temperature);
        let (loss, saved) = match s {
            CpuStorage::F32(v) => {
                let (loss, saved) = forward(contiguous(v, l, "paired_info_nce: z")?, n, d, p, t);
                (CpuStorage::F32(vec![loss as f32]), SavedAny::F32(saved))
            }
            CpuStorage::F64(v) => {
                let (loss, saved) = forward(contiguous(v, l, "paired_info_nce: z")?, n, d, p, t);
                (CpuStorage::F64(vec![loss]), SavedAny::F64(saved))
            }
            other => bail!(
                "paired_info_nce: expected f32 or f64, got {:?}",
                other.dtype()
            ),
        };
        *self.saved.lock().expect("saved lock") = Some(saved);
        Ok((loss, Shape::from(())))
    }

    fn bwd(&self, z: &Tensor, _loss: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (n, d) = z.dims2()?;
        let (p, t) = (&self.partner, self.temperature);
        let scale = g / (n as f64 * t);
        let saved = self.saved.lock().expect("saved lock");
        let dz = match saved.as_ref() {
            Some(SavedAny::F32(sv)) => {
                Tensor::from_vec(backward(sv, n, d, p, t, scale), (n, d), z.device())?
            }
            Some(SavedAny::F64(sv)) => {
                Tensor::from_vec(backward(sv, n, d, p, t, scale), (n, d), z.device())?
            }
            None => bail!("paired_info_nce: backward before forward"),
        };
        Ok(Some(dz))
    }
}

/// NT-Xent-style InfoNCE over one set of rows (see the module documentation): `z`
/// `[N, D]` raw (normalised inside, as `F.normalize`), `partner[i]` the positive of row
/// `i` (an involution
/// without fixed points: `partner[partner[i]] == i != partner[i]`), every other row a
/// negative, the row itself removed. Mean over the `N` rows; the gradient reaches `z`.
pub fn paired_info_nce(z: &Tensor, partner: &[u32], temperature: f64) -> Result<Tensor> {
    let (n, _) = z.dims2()?;
    if partner.len() != n
        || partner
            .iter()
            .enumerate()
            .any(|(i, &j)| j as usize >= n || j as usize == i || partner[j as usize] as usize != i)
    {
        bail!(
            "paired_info_nce: partner must pair the {n} rows two by two (partner[partner[i]] == i != partner[i])"
        );
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("paired_info_nce: temperature {temperature} must be > 0");
    }
    if !z.device().is_cpu() || !matches!(z.dtype(), DType::F32 | DType::F64) {
        let spec = Candidates {
            positive: Positive::Column(partner.to_vec()),
            exclude_self: true,
            ..Default::default()
        };
        let unused = Tensor::zeros(n, z.dtype(), z.device())?;
        let z = l2_normalize(z)?;
        return streaming_info_nce(&z, &z, &unused, spec, temperature);
    }
    z.contiguous()?.apply_op1(PairedOp {
        partner: Arc::new(partner.to_vec()),
        temperature,
        saved: Arc::new(Mutex::new(None)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::l2_normalize;
    use candle_core::{Device, Var};

    fn rows(n: usize, d: usize, seed: u64) -> Tensor {
        let v: Vec<f64> = (0..n * d)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1009) as f64 / 504.5 - 1.0)
            .collect();
        Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
    }

    fn pairs(n: usize) -> Vec<u32> {
        (0..n).map(|i| ((i + n / 2) % n) as u32).collect()
    }

    /// Value and gradient against the general streaming kernel (itself checked
    /// against the dense candle composition), in f64 and f32.
    #[test]
    fn value_and_gradient_match_the_general_kernel() {
        // One tile and one row block, several row blocks, several tiles.
        for (n, d) in [(8, 5), (300, 9), (2500, 4)] {
            let p = pairs(n);
            for dtype in [DType::F64, DType::F32] {
                let raw = rows(n, d, n as u64).to_dtype(dtype).unwrap();
                let run = |paired: bool| {
                    let v = Var::from_tensor(&raw).unwrap();
                    let z = l2_normalize(v.as_tensor()).unwrap();
                    let loss = if paired {
                        paired_info_nce(v.as_tensor(), &p, 0.3).unwrap()
                    } else {
                        let spec = Candidates {
                            positive: Positive::Column(p.clone()),
                            exclude_self: true,
                            ..Default::default()
                        };
                        let e = Tensor::zeros(n, dtype, &Device::Cpu).unwrap();
                        streaming_info_nce(&z, &z, &e, spec, 0.3).unwrap()
                    };
                    let g = loss.backward().unwrap();
                    let grad: Vec<f64> = g
                        .get(v.as_tensor())
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    (
                        loss.to_dtype(DType::F64)
                            .unwrap()
                            .to_scalar::<f64>()
                            .unwrap(),
                        grad,
                    )
                };
                let (lp, gp) = run(true);
                let (lg, gg) = run(false);
                let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
                assert!(
                    (lp - lg).abs() <= tol * lg.abs(),
                    "{n} {dtype:?}: {lp} vs {lg}"
                );
                let gmax = gg.iter().fold(0f64, |m, v| m.max(v.abs()));
                let err = gp
                    .iter()
                    .zip(&gg)
                    .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= tol * gmax,
                    "{n} {dtype:?}: gradient error {err} of {gmax}"
                );
            }
        }
    }

    #[test]
    fn bad_partners_are_refused() {
        let z = l2_normalize(&rows(4, 3, 1)).unwrap();
        for p in [
            vec![1, 0, 3],
            vec![0, 1, 2, 3],
            vec![1, 2, 3, 0],
            vec![1, 0, 3, 9],
        ] {
            let e = paired_info_nce(&z, &p, 0.5).unwrap_err().to_string();
            assert!(e.contains("partner"), "{e}");
        }
    }

    /// The one-exponential backward equals the two-exponential one.
    #[test]
    fn factored_backward_equals_two_exponentials() {
        let (n, d) = (1100, 6);
        let z: Vec<f64> = rows(n, d, 5).flatten_all().unwrap().to_vec1().unwrap();
        let (unit, _) = normalize_rows(&z, d);
        let p = pairs(n);
        let fwd = streamed_forward(&unit, n, d, &p, 0.1);
        let lse: Vec<f64> = fwd.iter().map(|r| r.0).collect();
        let one = streamed_backward(&unit, n, d, &p, 0.1, &lse, 1.0, f64::INFINITY);
        let two = streamed_backward(&unit, n, d, &p, 0.1, &lse, 1.0, -1.0);
        let gmax = two.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = one
            .iter()
            .zip(&two)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-12 * gmax, "{err} of {gmax}");
    }

    /// A second backward pass on the same graph gives the same gradient.
    #[test]
    fn backward_twice_is_the_same() {
        let v = Var::from_tensor(&rows(10, 4, 3)).unwrap();
        let loss = paired_info_nce(v.as_tensor(), &pairs(10), 0.5).unwrap();
        let grad = || {
            loss.backward()
                .unwrap()
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let (g1, g2) = (grad(), grad());
        assert_eq!(g1, g2);
    }
}
