//! The generalised InfoNCE, in its plain candle form (the reference implementation).
//!
//! For anchor `i`, candidates `c` with scaled logits `l_ic = s_ic / t`, positive
//! targets `pi_i` (a distribution over candidates) and candidate weights `w_ic >= 0`:
//!
//! ```text
//! L_i = - sum_p pi_ip * [ l_ip - log( sum_c w_ic * exp(l_ic) ) ]
//! ```
//!
//! One-hot targets and unit weights give InfoNCE; a zero weight removes a candidate
//! (the anchor itself, a false negative, a candidate outside a rank band); a
//! non-uniform target spreads the positive mass (SupCon, FNC attraction, soft targets).
//! This path materialises the `[B, N]` logits and is meant for checking and for small
//! problems; the streaming kernels compute the same quantity tile by tile.

use crate::error::{Result, invalid};
use candle_core::{D, DType, Tensor};

/// Weights at or below this are treated as removed candidates.
const MIN_WEIGHT: f64 = 1e-30;

/// Row-wise `log(sum_c w_ic exp(l_ic))` of `logits` `[B, N]`, max-shifted.
///
/// `weights` `[B, N]` (optional, `>= 0`) may carry a gradient (HCL's importance
/// weights do). Zero weights are excluded exactly: they add nothing to the value and
/// nothing to any gradient. Every row must keep at least one candidate.
pub fn weighted_logsumexp(logits: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let z = match weights {
        None => logits.clone(),
        Some(w) => {
            if w.dims() != logits.dims() {
                return Err(invalid(
                    "weights",
                    format!(
                        "shape {:?} differs from the logits' {:?}",
                        w.dims(),
                        logits.dims()
                    ),
                ));
            }
            let keep = w.gt(MIN_WEIGHT)?;
            let kept_per_row = keep.to_dtype(DType::F32)?.sum(D::Minus1)?.min(0)?;
            if kept_per_row.to_scalar::<f32>()? < 1.0 {
                return Err(invalid(
                    "weights",
                    "an anchor has no candidate with a positive weight",
                ));
            }
            let log_w = w.clamp(MIN_WEIGHT, f64::INFINITY)?.log()?;
            let removed = (logits.zeros_like()? + f64::NEG_INFINITY)?;
            keep.where_cond(&(logits + log_w)?, &removed)?
        }
    };
    let max = z.max_keepdim(D::Minus1)?.detach();
    let sum = z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    Ok((sum.log()? + max)?.squeeze(D::Minus1)?)
}

/// Per-anchor generalised InfoNCE `[B]` from scaled `logits` `[B, N]`, positive
/// `targets` `[B, N]` (each row a distribution; constant) and optional candidate
/// `weights` `[B, N]`.
pub fn generalized_info_nce(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
) -> Result<Tensor> {
    if logits.rank() != 2 {
        return Err(invalid(
            "logits",
            format!("expected [B, N], got shape {:?}", logits.dims()),
        ));
    }
    if targets.dims() != logits.dims() {
        return Err(invalid(
            "targets",
            format!(
                "shape {:?} differs from the logits' {:?}",
                targets.dims(),
                logits.dims()
            ),
        ));
    }
    let lse = weighted_logsumexp(logits, weights)?;
    let mass = targets.sum(D::Minus1)?;
    let positive = (targets * logits)?.sum(D::Minus1)?;
    Ok(((lse * mass)? - positive)?)
}

/// One-hot targets `[B, N]` with a 1 at `(i, index[i])`.
pub fn one_hot(
    index: &[usize],
    n: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut data = vec![0f32; index.len() * n];
    for (i, &j) in index.iter().enumerate() {
        if j >= n {
            return Err(invalid(
                "targets",
                format!("positive index {j} for anchor {i} is not below {n}"),
            ));
        }
        data[i * n + j] = 1.0;
    }
    Ok(Tensor::from_vec(data, (index.len(), n), device)?.to_dtype(dtype)?)
}
