//! Decoupled contrastive learning, DCL and DCLW (Yeh et al., 2022).

use crate::error::{Result, check_same_shape, check_temperature};
use crate::generalized::weighted_logsumexp;
use crate::views::{logits, not_self};
use candle_core::{D, Tensor};
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};

/// Parameters of [`decoupled`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoupledConfig {
    pub temperature: f64,
}

impl Default for DecoupledConfig {
    fn default() -> Self {
        Self { temperature: 0.1 }
    }
}

/// Parameters of [`decoupled_weighted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoupledWeightedConfig {
    pub temperature: f64,
    /// Width of the von Mises-Fisher weighting (0.5 in the paper).
    pub sigma: f64,
}

impl Default for DecoupledWeightedConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            sigma: 0.5,
        }
    }
}

/// One direction: `mean_i [ -w_i a_i.b_i / t + log sum_{k != i} (e^{a_i.a_k/t} + e^{a_i.b_k/t}) ]`.
/// The positive pair is removed from the denominator (decoupling).
fn one_way(a: &Tensor, b: &Tensor, t: f64, weight: Option<&Tensor>) -> Result<Tensor> {
    let n = a.dim(0)?;
    let l = Tensor::cat(&[logits(a, a, t)?, logits(a, b, t)?], 1)?;
    let mask = not_self(n, a.dtype(), a.device())?;
    let w = Tensor::cat(&[&mask, &mask], 1)?;
    let negative = weighted_logsumexp(&l, Some(&w))?;
    let positive = ((a * b)?.sum(D::Minus1)? / t)?;
    let positive = match weight {
        Some(w) => (positive * w)?,
        None => positive,
    };
    Ok((negative - positive)?.mean_all()?)
}

fn symmetric(z1: &Tensor, z2: &Tensor, t: f64, weight: Option<&Tensor>) -> Result<Tensor> {
    let (a, b) = (l2_normalize(z1)?, l2_normalize(z2)?);
    Ok(((one_way(&a, &b, t, weight)? + one_way(&b, &a, t, weight)?)? * 0.5)?)
}

/// DCL over two views `[B, D]` (raw): the NT-Xent denominator without the positive.
/// Reduction: `0.5 * (l(z1, z2) + l(z2, z1))`, each a mean over `B` (lightly's
/// `DCLLoss`; the reference repository returns the sum of both directions).
pub fn decoupled(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    check_same_shape("z1", z1, "z2", z2)?;
    check_temperature("temperature", temperature)?;
    symmetric(z1, z2, temperature, None)
}

/// DCLW: DCL with the positive term weighted by
/// `w_i = 2 - B * softmax_i(z1_i . z2_i / sigma)` (detached), as lightly's `DCLWLoss`.
pub fn decoupled_weighted(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    sigma: f64,
) -> Result<Tensor> {
    let (b, _) = check_same_shape("z1", z1, "z2", z2)?;
    check_temperature("temperature", temperature)?;
    check_temperature("sigma", sigma)?;
    let (a, c) = (l2_normalize(z1)?, l2_normalize(z2)?);
    let s = ((&a * &c)?.sum(D::Minus1)? / sigma)?.detach();
    let e = (s.broadcast_sub(&s.max_keepdim(0)?)?).exp()?;
    let softmax = e.broadcast_div(&e.sum_keepdim(0)?)?;
    let w = (2.0 - (softmax * b as f64)?)?;
    symmetric(z1, z2, temperature, Some(&w))
}
