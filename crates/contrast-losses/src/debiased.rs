//! Debiased contrastive loss (Chuang et al., 2020) and hard-negative HCL (Robinson et
//! al., 2021), both on the two-view SimCLR batch.

use crate::error::{Result, check_same_shape, check_temperature, invalid};
use crate::generalized::{Debias, debias_floored, generalized_info_nce, one_hot};
use crate::moco::{check_queue, query_logits};
use crate::sampling::hardness_weights;
use crate::views::{logits, not_self, stack_normalized};
use candle_core::Tensor;
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};

/// Parameters of [`debiased`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebiasedConfig {
    pub temperature: f64,
    /// Class prior `tau+` in `[0, 1)`.
    pub tau_plus: f64,
}

impl Default for DebiasedConfig {
    fn default() -> Self {
        Self {
            temperature: 0.5,
            tau_plus: 0.1,
        }
    }
}

/// Parameters of [`hcl`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HclConfig {
    pub temperature: f64,
    pub tau_plus: f64,
    /// Concentration `beta >= 0` of the hardness weights `exp(beta * s / t)`.
    pub beta: f64,
}

impl Default for HclConfig {
    fn default() -> Self {
        Self {
            temperature: 0.5,
            tau_plus: 0.1,
            beta: 1.0,
        }
    }
}

pub(crate) fn check_tau_plus(tau_plus: f64) -> Result<()> {
    if !(0.0..1.0).contains(&tau_plus) {
        return Err(invalid("tau_plus", format!("{tau_plus} is outside [0, 1)")));
    }
    Ok(())
}

/// Logits, targets and not-self weights of the two-view batch.
pub(crate) fn batch(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, _) = check_same_shape("z1", z1, "z2", z2)?;
    check_temperature("temperature", temperature)?;
    let z = stack_normalized(&[z1.clone(), z2.clone()])?;
    let n = 2 * b;
    let partner: Vec<usize> = (0..n).map(|i| (i + b) % n).collect();
    Ok((
        logits(&z, &z, temperature)?,
        one_hot(&partner, n, z.dtype(), z.device())?,
        not_self(n, z.dtype(), z.device())?,
    ))
}

/// Debiased contrastive loss over two views `[B, D]` (raw), as chingyaoc/DCL:
/// `-log(pos / (pos + Ng))` with `Ng = max((sum neg - tau+ N pos) / (1 - tau+), N e^(-1/t))`
/// and `N = 2B - 2`. Reduction: mean over the `2B` anchors. `tau+ = 0` gives NT-Xent.
pub fn debiased(z1: &Tensor, z2: &Tensor, temperature: f64, tau_plus: f64) -> Result<Tensor> {
    check_tau_plus(tau_plus)?;
    let (l, targets, weights) = batch(z1, z2, temperature)?;
    let d = Debias {
        tau_plus,
        temperature,
    };
    Ok(generalized_info_nce(&l, &targets, Some(&weights), Some(d))?.mean_all()?)
}

/// HCL over two views `[B, D]` (raw), as joshr17/HCL (`estimator = "hard"`): the
/// negatives of the debiased loss reweighted by `imp / mean(imp)`, `imp = exp(beta l)`
/// over each anchor's negatives. `imp` is not detached (as in the code). `beta = 0`
/// gives [`debiased`].
pub fn hcl(z1: &Tensor, z2: &Tensor, temperature: f64, tau_plus: f64, beta: f64) -> Result<Tensor> {
    let (l, targets, weights, d) = hcl_terms(z1, z2, temperature, tau_plus, beta)?;
    Ok(generalized_info_nce(&l, &targets, Some(&weights), Some(d))?.mean_all()?)
}

/// Of the `2B` anchors of [`hcl`] (of [`debiased`] at `beta = 0`), how many have their
/// negative term at its floor ([`debias_floored`]), and how many anchors there are.
pub fn hcl_floored(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    tau_plus: f64,
    beta: f64,
) -> Result<(usize, usize)> {
    let (l, targets, weights, d) = hcl_terms(z1, z2, temperature, tau_plus, beta)?;
    Ok((debias_floored(&l, &targets, Some(&weights), d)?, l.dim(0)?))
}

/// The logits `[2B, 2B]`, one-hot targets, candidate weights and correction of [`hcl`]:
/// the weights are 0 on the anchor itself, 1 on its positive and, on the negatives,
/// the hardness weights at `beta` (exactly 1 at `beta = 0`, where they are
/// [`debiased`]'s).
fn hcl_terms(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    tau_plus: f64,
    beta: f64,
) -> Result<(Tensor, Tensor, Tensor, Debias)> {
    check_tau_plus(tau_plus)?;
    let (l, targets, not_self) = batch(z1, z2, temperature)?;
    // Negatives: not the anchor, not its positive.
    let neg = (&not_self - &targets)?;
    let weights = (hardness_weights(&l, Some(&neg), beta)? + &targets)?;
    let d = Debias {
        tau_plus,
        temperature,
    };
    Ok((l, targets, weights, d))
}

/// HCL with MoCo's candidates: query `q` and key `k` `[B, D]` (raw), negatives from
/// the `queue` `[K, D]` (normalised, constant). The queue entries are reweighted by
/// `imp / mean(imp)`, `imp = exp(beta q.n / t)`, and the negative sum is debiased with
/// `N = K`. `beta = 0` gives the debiased MoCo loss, and `tau+ = 0` as well gives
/// MoCo's InfoNCE. Reduction: mean over `B` (one-way).
pub fn hcl_queue(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    temperature: f64,
    tau_plus: f64,
    beta: f64,
) -> Result<Tensor> {
    let (l, targets, weights, d) = hcl_queue_terms(q, k, queue, temperature, tau_plus, beta)?;
    Ok(generalized_info_nce(&l, &targets, Some(&weights), Some(d))?.mean_all()?)
}

/// Of the `B` queries of [`hcl_queue`], how many have their negative term at its floor
/// ([`debias_floored`]), and how many queries there are.
pub fn hcl_queue_floored(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    temperature: f64,
    tau_plus: f64,
    beta: f64,
) -> Result<(usize, usize)> {
    let (l, targets, weights, d) = hcl_queue_terms(q, k, queue, temperature, tau_plus, beta)?;
    Ok((debias_floored(&l, &targets, Some(&weights), d)?, l.dim(0)?))
}

/// The logits `[B, 1 + K]` (positive first), targets, weights and correction of
/// [`hcl_queue`].
fn hcl_queue_terms(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    temperature: f64,
    tau_plus: f64,
    beta: f64,
) -> Result<(Tensor, Tensor, Tensor, Debias)> {
    let (b, d) = check_same_shape("q", q, "k", k)?;
    let kq = check_queue(queue, d)?;
    check_temperature("temperature", temperature)?;
    check_tau_plus(tau_plus)?;
    let l = query_logits(&l2_normalize(q)?, &l2_normalize(k)?, queue, temperature)?;
    let imp = hardness_weights(&l.narrow(1, 1, kq)?, None, beta)?;
    let weights = Tensor::cat(&[l.narrow(1, 0, 1)?.ones_like()?, imp], 1)?;
    let targets = one_hot(&vec![0; b], kq + 1, l.dtype(), l.device())?;
    let d = Debias {
        tau_plus,
        temperature,
    };
    Ok((l, targets, weights, d))
}
