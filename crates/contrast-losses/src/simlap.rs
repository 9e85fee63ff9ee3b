//! SimLAP ("Rethinking Positive Pairs in Contrastive Learning", Wu et al.): contrast
//! pairs of *arbitrary* classes inside a class-pair-specific subspace chosen by a
//! learned gate.
//!
//! Each anchor `i` (class `y1_i`) is paired with a partner class `y2_i`. A feature
//! filter (in `contrast-encoders`) turns the class pair into a gate `g_i in (0,1)^d`.
//! Logits are `l_ij = <z1_i * g_i * g_i, z2_j> / t`; every second-view sample of the
//! partner class is a positive, every sample outside `{y1_i, y2_i}` a negative, and
//! each positive is scored against the negatives only (erow/FastSSL `SimLAP`,
//! `multipos_ce_loss`).
//!
//! Not through [`crate::generalized_info_nce`]: that form gives each anchor one
//! denominator shared by all its positives, while SimLAP gives every positive pair
//! `(i, j)` its own, `exp(l_ij) + sum_neg exp(l_in)`, leaving the anchor's other
//! positives out. Expressing it in the shared form would need one row per positive pair
//! (`O(B^2)` rows of `B` candidates), so the loss computes its per-pair log-sum-exp
//! directly, max-shifted per row.

use crate::error::{Result, check_same_shape, check_temperature, invalid};
use crate::views::labels_vec;
use candle_core::{D, DType, Tensor};
use contrast_kernels::l2_normalize;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// How partner classes are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairMode {
    /// The anchor's own class (SupCon-like).
    Identical,
    /// A different class, uniformly.
    Distinct,
    /// The class of the sample at the anchor's place in a random permutation of
    /// the batch (the reference's `y1[randperm(B)]`: drawn without replacement, so
    /// the batch's class counts are kept).
    Arbitrary,
}

/// The gate penalty: this project's guess. The paper names a gate penalty but its
/// form is not recoverable from its public sources (no released code version contains
/// it), so it is off by default (`penalty_weight = 0`); both options push gates
/// towards 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatePenalty {
    /// Mean Bernoulli entropy `-g ln g - (1 - g) ln(1 - g)`.
    Entropy,
    /// Mean `g (1 - g)`.
    Variance,
}

/// Parameters of [`simlap`] and the pair sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimLapConfig {
    /// The temperature; with `learnable_scale` the starting point of the learned
    /// scale `exp(s)`, `s = ln(1 / temperature)`.
    pub temperature: f64,
    /// Learn the logit scale, as the reference does (default); `false` keeps
    /// `1 / temperature` fixed.
    #[serde(default = "default_true")]
    pub learnable_scale: bool,
    pub pairs: PairMode,
    /// Weight of the gate penalty (0 disables it).
    #[serde(default)]
    pub penalty_weight: f64,
    #[serde(default = "default_penalty")]
    pub penalty: GatePenalty,
}

fn default_true() -> bool {
    true
}

fn default_penalty() -> GatePenalty {
    GatePenalty::Entropy
}

impl Default for SimLapConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            learnable_scale: true,
            pairs: PairMode::Distinct,
            penalty_weight: 0.0,
            penalty: GatePenalty::Entropy,
        }
    }
}

/// Draws a partner class per anchor.
pub fn partner_classes<R: Rng>(
    labels: &[u32],
    num_classes: usize,
    mode: PairMode,
    rng: &mut R,
) -> Result<Vec<u32>> {
    if num_classes < 2 && mode == PairMode::Distinct {
        return Err(invalid(
            "num_classes",
            "distinct pairs need at least 2 classes",
        ));
    }
    Ok(match mode {
        PairMode::Identical => labels.to_vec(),
        PairMode::Distinct => labels
            .iter()
            .map(|&y| ((y as usize + rng.random_range(1..num_classes)) % num_classes) as u32)
            .collect(),
        PairMode::Arbitrary => {
            let mut permuted = labels.to_vec();
            permuted.shuffle(rng);
            permuted
        }
    })
}

/// The gate penalty of gates `g` `[B, d]` in `(0, 1)`.
pub fn gate_penalty(g: &Tensor, kind: GatePenalty) -> Result<Tensor> {
    Ok(match kind {
        GatePenalty::Entropy => {
            let g = g.clamp(1e-6, 1.0 - 1e-6)?;
            let h = ((&g * g.log()?)? + ((1.0 - &g)? * (1.0 - &g)?.log()?)?)?.neg()?;
            h.mean_all()?
        }
        GatePenalty::Variance => (g * (1.0 - g)?)?.mean_all()?,
    })
}

/// SimLAP's gated multi-positive loss for views `z1`, `z2` `[B, d]` (raw), class
/// `labels` `[B]`, partner classes `partners` `[B]` and gates `[B, d]`.
///
/// `L = sum_{ij: y_j = y2_i} [ log(e^{l_ij} + sum_{k: y_k not in {y1_i, y2_i}} e^{l_ik}) - l_ij ] / #positives`,
/// with `l` shifted by its detached row mean for stability (as the code). Anchors
/// without a positive in the batch contribute nothing; a batch with none is an error.
pub fn simlap(
    z1: &Tensor,
    z2: &Tensor,
    labels: &Tensor,
    partners: &Tensor,
    gates: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    check_temperature("temperature", temperature)?;
    let raw = gated_similarities(z1, z2, gates)?;
    multi_positive(&(raw / temperature)?, labels, partners)
}

/// [`simlap`] with the reference's learnable scale: the logits are the gated
/// similarities times `exp(log_scale)` (`log_scale` `[1]` or a scalar, a parameter
/// started at `ln(1 / T)`), so its gradient reaches the scale.
pub fn simlap_learnable(
    z1: &Tensor,
    z2: &Tensor,
    labels: &Tensor,
    partners: &Tensor,
    gates: &Tensor,
    log_scale: &Tensor,
) -> Result<Tensor> {
    if log_scale.elem_count() != 1 {
        return Err(invalid(
            "log_scale",
            format!("expected one value, got {:?}", log_scale.dims()),
        ));
    }
    let raw = gated_similarities(z1, z2, gates)?;
    let scale = log_scale.flatten_all()?.exp()?.to_dtype(raw.dtype())?;
    multi_positive(&raw.broadcast_mul(&scale)?, labels, partners)
}

/// `<normalize(z1)_i * g_i * g_i, normalize(z2)_j>`, `[B, B]`.
fn gated_similarities(z1: &Tensor, z2: &Tensor, gates: &Tensor) -> Result<Tensor> {
    check_same_shape("z1", z1, "z2", z2)?;
    check_same_shape("z1", z1, "gates", gates)?;
    let (a, c) = (l2_normalize(z1)?, l2_normalize(z2)?);
    let gated = ((&a * gates)? * gates)?;
    Ok(gated.matmul(&c.t()?)?)
}

/// The multi-positive loss on scaled logits `l` `[B, B]`.
fn multi_positive(l: &Tensor, labels: &Tensor, partners: &Tensor) -> Result<Tensor> {
    let b = l.dim(0)?;
    let y = labels_vec(labels, b)?;
    let y2 = labels_vec(partners, b)
        .map_err(|_| invalid("partners", format!("expected [{b}] partner classes")))?;
    let l = l.broadcast_sub(&l.mean_keepdim(D::Minus1)?.detach())?;
    let mut pos = vec![0f32; b * b];
    let mut neg = vec![0f32; b * b];
    for i in 0..b {
        for j in 0..b {
            pos[i * b + j] = (y[j] == y2[i]) as u8 as f32;
            neg[i * b + j] = (y[j] != y[i] && y[j] != y2[i]) as u8 as f32;
        }
    }
    let count: f32 = pos.iter().sum();
    if count == 0.0 {
        return Err(invalid(
            "labels",
            "no anchor has a positive of its partner class in the batch",
        ));
    }
    let to = |v: Vec<f32>| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, (b, b), l.device())?.to_dtype(l.dtype())?)
    };
    let (pos, neg) = (to(pos)?, to(neg)?);
    // Shift each row by its max for the exponentials.
    let m = l.max_keepdim(D::Minus1)?.detach();
    let e = l.broadcast_sub(&m)?.exp()?;
    let neg_sum = (&e * &neg)?.sum_keepdim(D::Minus1)?;
    let per_pair = (e.broadcast_add(&neg_sum)?.log()?.broadcast_add(&m)? - &l)?;
    Ok(((per_pair * pos)?.sum_all()? / count as f64)?)
}

/// Checks gates lie in `[0, 1]` (used by tests and callers that build gates).
pub fn check_gates(g: &Tensor) -> Result<()> {
    let v: Vec<f32> = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if v.iter().any(|x| !(0.0..=1.0).contains(x)) {
        return Err(invalid("gates", "values must lie in [0, 1]"));
    }
    Ok(())
}
