//! The generalised InfoNCE, in its plain candle form (the reference implementation).
//!
//! For anchor `i`, candidates `c` with scaled logits `l_ic = s_ic / t`, positive
//! targets `pi_i` (a distribution over candidates) and candidate weights `w_ic >= 0`:
//!
//! ```text
//! L_i = - sum_p pi_ip * [ l_ip - log D_i ],   D_i = sum_c w_ic * exp(l_ic)
//! ```
//!
//! One-hot targets and unit weights give InfoNCE; a zero weight removes a candidate
//! (the anchor itself, a false negative, a candidate outside a rank band); a
//! non-uniform target spreads the positive mass (SupCon, FNC attraction, soft targets);
//! a weight that depends on the logits tilts the negatives (HCL).
//!
//! With [`Debias`] (Chuang et al., 2020) the denominator splits into its positive part
//! `P_i` (candidates with `pi_ic > 0`) and negative part `G_i`, and the negative part is
//! corrected for the expected share of same-class samples, then clamped at its
//! theoretical minimum:
//!
//! ```text
//! D_i = P_i + max( (G_i - tau+ * N_i * mean_p exp(l_ip)) / (1 - tau+),  N_i * e^(-1/t) )
//! ```
//!
//! where `N_i` counts the negatives. Where the clamp is active its gradient is zero, as
//! in the official code.
//!
//! This path materialises the `[B, N]` logits and is meant for checking and for small
//! problems; the streaming kernels compute the same quantity tile by tile.

use crate::error::{Result, invalid};
use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

/// Weights at or below this are treated as removed candidates.
const MIN_WEIGHT: f64 = 1e-30;

/// The debiasing correction of the negative sum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Debias {
    /// Class prior `tau+` in `[0, 1)`: the expected fraction of negatives that share
    /// the anchor's class.
    pub tau_plus: f64,
    /// The temperature of the logits, which sets the clamp `e^(-1/t)`.
    pub temperature: f64,
}

fn check_same(arg: &'static str, t: &Tensor, logits: &Tensor) -> Result<()> {
    if t.dims() != logits.dims() {
        return Err(invalid(
            arg,
            format!(
                "shape {:?} differs from the logits' {:?}",
                t.dims(),
                logits.dims()
            ),
        ));
    }
    Ok(())
}

/// `logits` with removed candidates (zero weight) set to `-inf`, plus `log w` for the
/// kept ones; fails if an anchor keeps no candidate.
fn weighted_logits(logits: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let Some(w) = weights else {
        return Ok(logits.clone());
    };
    check_same("weights", w, logits)?;
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
    Ok(keep.where_cond(&(logits + log_w)?, &removed)?)
}

/// Row-wise `log(sum_c w_ic exp(l_ic))` of `logits` `[B, N]`, max-shifted.
///
/// `weights` `[B, N]` (optional, `>= 0`) may carry a gradient (HCL's importance
/// weights do). Zero weights are excluded exactly: they add nothing to the value and
/// nothing to any gradient. Every row must keep at least one candidate.
pub fn weighted_logsumexp(logits: &Tensor, weights: Option<&Tensor>) -> Result<Tensor> {
    let z = weighted_logits(logits, weights)?;
    let max = z.max_keepdim(D::Minus1)?.detach();
    let sum = z.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?;
    Ok((sum.log()? + max)?.squeeze(D::Minus1)?)
}

/// The debiased denominator's parts per anchor `[B]`, each scaled by `e^(-max)`: the
/// positive sum `P_i`, the corrected negative sum, and its floor `N_i e^(-1/t)`.
struct DebiasedTerms {
    max: Tensor,
    pos_sum: Tensor,
    corrected: Tensor,
    floor: Tensor,
}

fn debiased_terms(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
    d: Debias,
) -> Result<DebiasedTerms> {
    if !(0.0..1.0).contains(&d.tau_plus) {
        return Err(invalid(
            "tau_plus",
            format!("{} is outside [0, 1)", d.tau_plus),
        ));
    }
    crate::error::check_temperature("temperature", d.temperature)?;
    let z = weighted_logits(logits, weights)?;
    // Shift by the largest kept logit so that nothing overflows; exp(-inf) = 0 drops
    // removed candidates.
    let max = z.max_keepdim(D::Minus1)?.detach();
    let e = z.broadcast_sub(&max)?.exp()?;
    let is_pos = targets.gt(0.0)?.to_dtype(e.dtype())?;
    let is_neg = ((1.0 - &is_pos)? * z.ne(f64::NEG_INFINITY)?.to_dtype(e.dtype())?)?;
    let pos_sum = (&e * &is_pos)?.sum(D::Minus1)?;
    let n_pos = is_pos.sum(D::Minus1)?;
    if n_pos.min(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()? < 1.0 {
        return Err(invalid(
            "targets",
            "debiasing needs at least one positive per anchor",
        ));
    }
    // The positive term of the correction uses the mean of exp(l_ip) over positives
    // (one positive in the two-view case).
    let pos_mean = (&pos_sum / &n_pos)?;
    let neg_sum = (&e * &is_neg)?.sum(D::Minus1)?;
    let n_neg = is_neg.sum(D::Minus1)?;
    let corrected = ((neg_sum - ((pos_mean * &n_neg)? * d.tau_plus)?)? / (1.0 - d.tau_plus))?;
    let max = max.squeeze(D::Minus1)?;
    let floor = ((max.neg()? - 1.0 / d.temperature)?.exp()? * n_neg)?.detach();
    Ok(DebiasedTerms {
        max,
        pos_sum,
        corrected,
        floor,
    })
}

/// `log D_i` with the debiasing correction.
fn debiased_log_denominator(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
    d: Debias,
) -> Result<Tensor> {
    let t = debiased_terms(logits, targets, weights, d)?;
    let clamped = t
        .corrected
        .gt(&t.floor)?
        .where_cond(&t.corrected, &t.floor)?;
    Ok(((t.pos_sum + clamped)?.log()? + t.max)?)
}

/// How many anchors of `logits` `[B, N]` have their debiased negative term at its
/// floor `N_i e^(-1/t)`: the corrected sum `(G_i - tau+ N_i mean_p exp(l_ip)) / (1 -
/// tau+)` is at or below it. Such an anchor's loss has no gradient towards its
/// negatives (the floor is a constant), so it only pulls its positives: a share near
/// 1 means the correction has switched the repulsion off. Arguments as
/// [`generalized_info_nce`]; with `tau+ = 0` the count is 0 unless every negative
/// sits at cosine -1.
pub fn debias_floored(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
    d: Debias,
) -> Result<usize> {
    check_same("targets", targets, logits)?;
    let t = debiased_terms(logits, targets, weights, d)?;
    let at_floor = t.corrected.le(&t.floor)?.to_dtype(DType::F32)?;
    Ok(at_floor.sum_all()?.to_scalar::<f32>()? as usize)
}

/// Per-anchor generalised InfoNCE `[B]` from scaled `logits` `[B, N]`, positive
/// `targets` `[B, N]` (each row a distribution, or any non-negative mass; constant),
/// optional candidate `weights` `[B, N]` and an optional [`Debias`] correction.
pub fn generalized_info_nce(
    logits: &Tensor,
    targets: &Tensor,
    weights: Option<&Tensor>,
    debias: Option<Debias>,
) -> Result<Tensor> {
    if logits.rank() != 2 {
        return Err(invalid(
            "logits",
            format!("expected [B, N], got shape {:?}", logits.dims()),
        ));
    }
    check_same("targets", targets, logits)?;
    let log_d = match debias {
        None => weighted_logsumexp(logits, weights)?,
        Some(d) => debiased_log_denominator(logits, targets, weights, d)?,
    };
    let mass = targets.sum(D::Minus1)?;
    let positive = (targets * logits)?.sum(D::Minus1)?;
    Ok(((log_d * mass)? - positive)?)
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
