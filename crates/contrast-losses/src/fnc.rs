//! False negative cancellation, FNC (Huynh et al., 2022), in-batch.
//!
//! Identification: each image has `V` views; a candidate's score for anchor image `i`
//! aggregates its similarity to `i`'s views (max or mean); a candidate is a false
//! negative when it is among the `topk` highest scores and/or above `threshold`.
//! Cancellation: *attraction* adds the false negatives to the positives (they stay in
//! the denominator), *elimination* removes them from the denominator.

use crate::error::{Result, check_temperature};
use crate::generalized::generalized_info_nce;
use crate::sampling::{Aggregation, Cancellation, FalseNegativeRule};
use crate::views::{check_views, dense, logits, stack_normalized};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Parameters of [`fnc`]. At least one of `topk` and `threshold` must be set; with
/// both, a candidate must pass both (as the official code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FncConfig {
    pub temperature: f64,
    #[serde(default)]
    pub topk: Option<usize>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub aggregation: Aggregation,
    #[serde(default)]
    pub cancellation: Cancellation,
}

impl FncConfig {
    /// The identification rule (checks that `topk`, `threshold` or both are set).
    pub fn rule(&self) -> Result<FalseNegativeRule> {
        FalseNegativeRule::new(self.topk, self.threshold)
    }
}

impl Default for FncConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            topk: Some(10),
            threshold: Some(0.7),
            aggregation: Aggregation::Max,
            cancellation: Cancellation::Attraction,
        }
    }
}

/// The identified false negatives: `[B, V * B]` booleans, columns view-major.
#[derive(Debug, Clone, PartialEq)]
pub struct FalseNegatives {
    pub mask: Vec<bool>,
    pub images: usize,
    pub columns: usize,
}

impl FalseNegatives {
    /// Whether column `c` is a false negative of image `i`.
    pub fn get(&self, i: usize, c: usize) -> bool {
        self.mask[i * self.columns + c]
    }

    /// Number of identified pairs.
    pub fn count(&self) -> usize {
        self.mask.iter().filter(|m| **m).count()
    }
}

/// Scores candidates `[V * B]` for each image from the cosine similarities `sims`
/// `[V * B, V * B]` (row-major) and applies top-k and threshold. Columns of the
/// image itself are never flagged.
pub fn identify(sims: &[f32], v: usize, b: usize, cfg: &FncConfig) -> Result<FalseNegatives> {
    let rule = cfg.rule()?;
    let n = v * b;
    let mut mask = vec![false; b * n];
    for i in 0..b {
        let scored: Vec<(u32, f32)> = (0..n)
            .filter(|c| c % b != i)
            .map(|c| {
                let per_view = (0..v).map(|a| sims[(a * b + i) * n + c]);
                (c as u32, cfg.aggregation.combine(per_view))
            })
            .collect();
        for c in rule.identify(scored) {
            mask[i * n + c as usize] = true;
        }
    }
    Ok(FalseNegatives {
        mask,
        images: b,
        columns: n,
    })
}

/// FNC over `V >= 2` views (each `[B, D]`, raw), returning the loss and the
/// identified false negatives.
///
/// Every view is an anchor against all `V * B` views (itself removed); its positives
/// are the other views of its image, plus the false negatives under attraction.
/// Reduction: `(2 / V) * sum over views of the mean over images`, so that two views
/// without false negatives give twice NT-Xent (the official code's scale).
pub fn fnc(views: &[Tensor], cfg: &FncConfig) -> Result<(Tensor, FalseNegatives)> {
    let (v, b, _) = check_views(views)?;
    check_temperature("temperature", cfg.temperature)?;
    let z = stack_normalized(views)?;
    let n = v * b;
    let cos = z.matmul(&z.t()?)?;
    let sims: Vec<f32> = cos
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let fns = identify(&sims, v, b, cfg)?;
    let attract = cfg.cancellation == Cancellation::Attraction;
    let is_positive = |r: usize, c: usize| {
        let same = c != r && c % b == r % b;
        same || (attract && fns.get(r % b, c))
    };
    let counts: Vec<usize> = (0..n)
        .map(|r| (0..n).filter(|&c| is_positive(r, c)).count())
        .collect();
    let targets = dense(n, n, z.dtype(), z.device(), |r, c| {
        if is_positive(r, c) {
            1.0 / counts[r] as f32
        } else {
            0.0
        }
    })?;
    let weights = dense(n, n, z.dtype(), z.device(), |r, c| {
        let removed = c == r || (!attract && fns.get(r % b, c));
        if removed { 0.0 } else { 1.0 }
    })?;
    let l = logits(&z, &z, cfg.temperature)?;
    let per_anchor = generalized_info_nce(&l, &targets, Some(&weights), None)?;
    Ok(((per_anchor.mean_all()? * 2.0)?, fns))
}
