//! NT-Xent, the SimCLR loss.

use crate::error::{Result, check_same_shape, check_temperature};
use crate::generalized::{generalized_info_nce, one_hot, weighted_logsumexp};
use crate::views::{logits, not_self, stack_normalized};
use candle_core::{DType, Tensor};
use contrast_kernels::paired_info_nce;
use serde::{Deserialize, Serialize};

/// Parameters of [`nt_xent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtXentConfig {
    /// Softmax temperature `t > 0` (SimCLR: 0.5 on CIFAR, 0.1 on ImageNet).
    pub temperature: f64,
}

impl Default for NtXentConfig {
    fn default() -> Self {
        Self { temperature: 0.5 }
    }
}

/// NT-Xent over two views `z1`, `z2` `[B, D]` (raw; normalised inside).
///
/// The `2B` views are the anchors and the candidates. Each anchor's positive is its
/// other view and its other `2B - 2` views are negatives; the anchor itself is removed
/// (weight 0). Reduction: mean over the `2B` anchors (symmetric), as lightly's
/// `NTXentLoss`. SimCLR's official code returns twice this value.
///
/// This runs [`contrast_kernels::paired_info_nce`] (on CPU f32/f64: candidate tiles
/// streamed with an online log-sum-exp, and the whole gradient as `M z` accumulated
/// tile by tile, three products in all; elsewhere the streaming InfoNCE) and never
/// forms the `2B x 2B` logits; [`nt_xent_reference`] is the dense composition it is
/// checked against.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, _) = check_same_shape("z1", z1, "z2", z2)?;
    check_temperature("temperature", temperature)?;
    let z = Tensor::cat(&[z1, z2], 0)?;
    let n = 2 * b;
    let partner: Vec<u32> = (0..n).map(|i| ((i + b) % n) as u32).collect();
    Ok(paired_info_nce(&z, &partner, temperature)?)
}

/// The probability NT-Xent's softmax at `temperature` gives each anchor's positive,
/// `p_i = exp(l_i+) / sum_{j != i} exp(l_ij)`, summed over the `2B` anchors of the
/// views `z1`, `z2` `[B, D]` (raw; normalised inside), and the anchor count: their
/// ratio is the mean share. A diagnostic, computed in f64 on the inputs as given
/// (detach them).
///
/// NT-Xent's pull on the positive is scaled by `1 - p_i`; DCL removes the positive
/// from the denominator and with it this factor, and HCL's reweighting moves it. A
/// mean share near 0 leaves DCL's gradient close to NT-Xent's.
pub fn nt_xent_positive_share(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<(f64, usize)> {
    let (l, targets, not_self) = crate::debiased::batch(
        &z1.to_dtype(DType::F64)?,
        &z2.to_dtype(DType::F64)?,
        temperature,
    )?;
    let positive = (&l * targets)?.sum(1)?;
    let log_denominator = weighted_logsumexp(&l, Some(&not_self))?;
    let share = (positive - log_denominator)?.exp()?.sum_all()?;
    Ok((share.to_scalar::<f64>()?, l.dim(0)?))
}

/// NT-Xent as a dense composition of candle ops (the reference; any device).
pub fn nt_xent_reference(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, _) = check_same_shape("z1", z1, "z2", z2)?;
    check_temperature("temperature", temperature)?;
    let z = stack_normalized(&[z1.clone(), z2.clone()])?;
    let n = 2 * b;
    let partner: Vec<usize> = (0..n).map(|i| (i + b) % n).collect();
    let targets = one_hot(&partner, n, z.dtype(), z.device())?;
    let weights = not_self(n, z.dtype(), z.device())?;
    Ok(generalized_info_nce(
        &logits(&z, &z, temperature)?,
        &targets,
        Some(&weights),
        None,
    )?
    .mean_all()?)
}
