//! Supervised contrastive loss (Khosla et al., 2020).

use crate::error::{Result, check_temperature, invalid};
use crate::generalized::generalized_info_nce;
use crate::views::{check_views, dense, labels_vec, logits, not_self, stack_normalized};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Parameters of [`supcon`].
///
/// Scaling: the loss is multiplied by `temperature / base_temperature`, as in
/// HobbitLong/SupContrast. pytorch-metric-learning's `SupConLoss` has no base
/// temperature; set `base_temperature = temperature` to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupConConfig {
    pub temperature: f64,
    /// Defaults to `temperature` (no rescaling).
    #[serde(default)]
    pub base_temperature: Option<f64>,
}

impl Default for SupConConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            base_temperature: None,
        }
    }
}

/// SupCon (`L_out`, all views as anchors) over `views` (each `[B, D]`, raw) with
/// class `labels` `[B]`.
///
/// Every other view of the same class is a positive (uniform target), every view but
/// the anchor is a candidate. Reduction: mean over the `V * B` anchors, times
/// `t / base_t`. With all labels distinct and `base_t = t` it equals NT-Xent.
pub fn supcon(
    views: &[Tensor],
    labels: &Tensor,
    temperature: f64,
    base_temperature: f64,
) -> Result<Tensor> {
    let (v, b, _) = check_views(views)?;
    check_temperature("temperature", temperature)?;
    check_temperature("base_temperature", base_temperature)?;
    let labels = labels_vec(labels, b)?;
    let z = stack_normalized(views)?;
    let n = v * b;
    let label = |r: usize| labels[r % b];
    let positives: Vec<usize> = (0..n)
        .map(|i| (0..n).filter(|&j| j != i && label(j) == label(i)).count())
        .collect();
    if positives.contains(&0) {
        return Err(invalid("labels", "an anchor has no positive"));
    }
    let targets = dense(n, n, z.dtype(), z.device(), |i, j| {
        if i != j && label(i) == label(j) {
            1.0 / positives[i] as f32
        } else {
            0.0
        }
    })?;
    let weights = not_self(n, z.dtype(), z.device())?;
    let per_anchor = generalized_info_nce(
        &logits(&z, &z, temperature)?,
        &targets,
        Some(&weights),
        None,
    )?;
    Ok((per_anchor.mean_all()? * (temperature / base_temperature))?)
}
