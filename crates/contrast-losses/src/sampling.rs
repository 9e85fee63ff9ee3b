//! Sampling primitives, each written once and called by the losses and by the mining
//! policies (in-batch and on a queue), so that a method means the same thing wherever
//! it runs:
//!
//! - [`hardest_first`]: the one ranking of candidates (most similar first, ties
//!   towards the lower index) behind every top-k, rank band and hardest-negative
//!   choice;
//! - [`FalseNegativeRule`]: FNC's identification (top-k and/or threshold over
//!   aggregated support similarities) and its cancellation mode;
//! - [`ring_band`]: Ring's band of ranks `[floor(inner * o), o)`, `o = floor(outer * n)`;
//! - [`hardness_weights`]: HCL's importance weights `imp / mean(imp)`,
//!   `imp = exp(beta l)`, over each anchor's negatives.
//!
//! The log-sum-exp they feed is [`crate::weighted_logsumexp`], and the loss they
//! shape is [`crate::generalized_info_nce`].

use crate::error::{Result, invalid};
use candle_core::{D, Tensor};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::ops::Range;

/// Orders `(index, similarity)` pairs most similar first, ties towards the lower
/// index: a total order, so a top-k or a rank band selects the same set however the
/// candidates arrive.
pub fn hardest_first<I: Ord + Copy>(a: &(I, f32), b: &(I, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// How a candidate's similarities to the views of an anchor's image combine into its
/// false-negative score.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The largest similarity to any view (google-research/fnc's default).
    #[default]
    Max,
    /// The mean similarity over the views.
    Mean,
}

impl Aggregation {
    /// Combines one candidate's similarities to the anchor image's views (in view
    /// order; at least one).
    pub fn combine(self, per_view: impl Iterator<Item = f32>) -> f32 {
        match self {
            Aggregation::Max => per_view.fold(f32::NEG_INFINITY, f32::max),
            Aggregation::Mean => {
                let (sum, n) = per_view.fold((0f32, 0usize), |(s, n), v| (s + v, n + 1));
                sum / n as f32
            }
        }
    }
}

/// What happens to identified false negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cancellation {
    /// Added to the positives; they stay in the denominator (the loss that
    /// google-research/fnc released, and so the default everywhere).
    #[default]
    Attraction,
    /// Removed from the denominator (the paper's other strategy).
    Elimination,
}

/// FNC's identification rule: among an anchor's eligible candidates, scored by
/// [`Aggregation`], the `topk` highest and/or those scoring above `threshold` (with
/// both, a candidate must pass both, as the official code).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FalseNegativeRule {
    topk: Option<usize>,
    threshold: Option<f64>,
}

impl FalseNegativeRule {
    /// A rule; at least one of `topk` (>= 1) and `threshold` (finite; above 1 it
    /// passes nothing, which the official code uses to rank by `topk` alone) must be
    /// set.
    pub fn new(topk: Option<usize>, threshold: Option<f64>) -> Result<Self> {
        if topk.is_none() && threshold.is_none() {
            return Err(invalid(
                "topk",
                "set topk, threshold or both to identify false negatives",
            ));
        }
        if topk == Some(0) {
            return Err(invalid(
                "topk",
                "0 identifies no false negative: set topk >= 1, or leave it out and use threshold",
            ));
        }
        if let Some(t) = threshold
            && !t.is_finite()
        {
            return Err(invalid("threshold", format!("{t} must be a finite cosine")));
        }
        Ok(Self { topk, threshold })
    }

    /// The identified candidates of one anchor, in ascending index order, from its
    /// eligible candidates `scored` as `(index, score)` (the caller leaves out the
    /// anchor's own image and its positives). Linear time: the top-k is a selection,
    /// not a sort.
    pub fn identify(&self, mut scored: Vec<(u32, f32)>) -> Vec<u32> {
        if let Some(k) = self.topk
            && k < scored.len()
        {
            // `new` guarantees k >= 1.
            scored.select_nth_unstable_by(k - 1, hardest_first);
            scored.truncate(k);
        }
        if let Some(t) = self.threshold {
            scored.retain(|(_, s)| *s as f64 > t);
        }
        let mut found: Vec<u32> = scored.into_iter().map(|(c, _)| c).collect();
        found.sort_unstable();
        found
    }
}

/// Checks Ring's fractions: `outer` in `(0, 1]`, `inner` in `[0, 1)`.
pub fn check_ring(outer: f64, inner: f64) -> Result<()> {
    if !(outer > 0.0 && outer <= 1.0) {
        return Err(invalid("outer", format!("{outer} is outside (0, 1]")));
    }
    if !(0.0..1.0).contains(&inner) {
        return Err(invalid("inner", format!("{inner} is outside [0, 1)")));
    }
    Ok(())
}

/// Ring's band over `count` negatives ranked most similar first: ranks
/// `[floor(inner * o), o)` with `o = floor(outer * count)` (mhw32/contrastive-ring-public,
/// `dynamic_inner`). The band is empty when `o` rounds down to the inner edge (a small
/// `count`); the caller then keeps no negative, or refuses if it can know in advance.
pub fn ring_band(count: usize, outer: f64, inner: f64) -> Range<usize> {
    let outer_size = (outer * count as f64).floor() as usize;
    let inner_idx = ((inner * outer_size as f64).floor() as usize).min(outer_size);
    inner_idx..outer_size
}

/// HCL's importance weights `imp / mean(imp)`, `imp = exp(beta l)`, for `logits`
/// `[B, N]` (already divided by the temperature), the mean taken over each anchor's
/// negatives. `negatives` `[B, N]` is 1 on an anchor's negatives and 0 elsewhere (the
/// result is 0 there); `None` makes every candidate a negative (a MoCo queue).
///
/// The exponent is shifted by each row's detached maximum, which leaves the ratio
/// unchanged and keeps it finite for any `beta`. `imp` is not detached, as in the
/// official code (joshr17/HCL). `beta = 0` gives weight 1 on every negative.
pub fn hardness_weights(logits: &Tensor, negatives: Option<&Tensor>, beta: f64) -> Result<Tensor> {
    if !(beta >= 0.0 && beta.is_finite()) {
        return Err(invalid(
            "beta",
            format!("{beta} must be a finite number >= 0"),
        ));
    }
    let scaled = (logits * beta)?;
    Ok(match negatives {
        Some(neg) => {
            let shift = (&scaled * neg)?.max_keepdim(D::Minus1)?.detach();
            let imp = (scaled.broadcast_sub(&shift)?.exp()? * neg)?;
            let count = neg.sum_keepdim(D::Minus1)?.clamp(1.0, f64::INFINITY)?;
            let mean = (imp.sum_keepdim(D::Minus1)? / count)?;
            imp.broadcast_div(&mean)?
        }
        None => {
            let shift = scaled.max_keepdim(D::Minus1)?.detach();
            let imp = scaled.broadcast_sub(&shift)?.exp()?;
            imp.broadcast_div(&imp.mean_keepdim(D::Minus1)?)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identification_takes_the_top_k_then_the_threshold_in_index_order() {
        let scored = vec![(7, 0.5), (2, 0.9), (4, 0.9), (9, 0.95), (1, 0.1)];
        let rule = FalseNegativeRule::new(Some(3), None).unwrap();
        // 0.95, then the tie at 0.9 in index order.
        assert_eq!(rule.identify(scored.clone()), vec![2, 4, 9]);
        let rule = FalseNegativeRule::new(Some(3), Some(0.92)).unwrap();
        assert_eq!(rule.identify(scored.clone()), vec![9]);
        let rule = FalseNegativeRule::new(None, Some(0.4)).unwrap();
        assert_eq!(rule.identify(scored.clone()), vec![2, 4, 7, 9]);
        let rule = FalseNegativeRule::new(Some(1), Some(1.0)).unwrap();
        assert!(rule.identify(scored).is_empty());
        assert!(FalseNegativeRule::new(Some(0), None).is_err());
        assert!(FalseNegativeRule::new(None, None).is_err());
        assert!(FalseNegativeRule::new(None, Some(f64::NAN)).is_err());
    }

    #[test]
    fn ring_band_follows_the_reference_rounding_and_may_be_empty() {
        assert_eq!(ring_band(100, 0.1, 0.1), 1..10);
        assert_eq!(ring_band(100, 1.0, 0.0), 0..100);
        assert_eq!(ring_band(9, 0.1, 0.1), 0..0);
        assert_eq!(ring_band(25, 0.5, 0.5), 6..12);
        assert!(check_ring(0.0, 0.1).is_err());
        assert!(check_ring(0.5, 1.0).is_err());
    }

    #[test]
    fn hardness_weights_average_one_over_the_negatives() {
        let dev = candle_core::Device::Cpu;
        let l = Tensor::new(&[[1.0f64, 2.0, 3.0, -1.0], [0.5, 0.0, -0.5, 4.0]], &dev).unwrap();
        let neg = Tensor::new(&[[1.0f64, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]], &dev).unwrap();
        let w: Vec<Vec<f64>> = hardness_weights(&l, Some(&neg), 2.0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, mask) in w.iter().zip([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]]) {
            let mean: f64 = row.iter().sum::<f64>() / 3.0;
            assert!((mean - 1.0).abs() < 1e-12, "{row:?}");
            for (x, m) in row.iter().zip(mask) {
                assert!(m == 1.0 || *x == 0.0);
            }
        }
        // exp(2 * 2) / exp(2 * 1): the harder negative weighs e^2 more.
        assert!((w[0][1] / w[0][0] - 2f64.exp()).abs() < 1e-9);
        let all: Vec<Vec<f64>> = hardness_weights(&l, None, 0.0).unwrap().to_vec2().unwrap();
        assert!(all.iter().flatten().all(|x| (x - 1.0).abs() < 1e-15));
        assert!(hardness_weights(&l, None, -1.0).is_err());
    }
}
