//! The generalised InfoNCE of a [`MiningPlan`] (dense over in-batch candidates).

use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use candle_core::{D, Tensor};
use contrast_kernels::l2_normalize;
use contrast_losses::sampling::hardness_weights;
use contrast_losses::{Debias, debias_floored, generalized_info_nce};

/// The loss of `plan` for raw `anchors` `[B, D]` and `candidates` `[N, D]` (the same
/// tensor in-batch; both normalised here), at `temperature`. Positives share each
/// anchor's target in proportion to their mass; weights remove or tilt candidates;
/// HCL weights (not detached, as the official code) multiply the negatives'; synthetic
/// negatives join the candidates with weight 1; an anchor override (NNCLR) stands in
/// for the anchors. Reduction: mean over anchors.
pub fn mined_info_nce(
    anchors: &Tensor,
    candidates: &Tensor,
    plan: &MiningPlan,
    temperature: f64,
) -> Result<Tensor> {
    let (logits, targets, weights) = plan_terms(anchors, candidates, plan, temperature)?;
    let debias = debias(plan, temperature);
    Ok(generalized_info_nce(&logits, &targets, Some(&weights), debias)?.mean_all()?)
}

/// For a plan that debiases (the `debias` policy), how many of its anchors have their
/// corrected negative term at its floor ([`contrast_losses::debias_floored`]), and
/// out of how many anchors; `None` for a plan that does not. Arguments as
/// [`mined_info_nce`].
pub fn mined_debias_floored(
    anchors: &Tensor,
    candidates: &Tensor,
    plan: &MiningPlan,
    temperature: f64,
) -> Result<Option<(usize, usize)>> {
    let Some(d) = debias(plan, temperature) else {
        return Ok(None);
    };
    let (logits, targets, weights) = plan_terms(anchors, candidates, plan, temperature)?;
    Ok(Some((
        debias_floored(&logits, &targets, Some(&weights), d)?,
        plan.anchors,
    )))
}

fn debias(plan: &MiningPlan, temperature: f64) -> Option<Debias> {
    plan.tau_plus.map(|tau_plus| Debias {
        tau_plus,
        temperature,
    })
}

/// The scaled logits, targets and weights `[B, N + S]` of `plan` (`S` synthetic
/// negatives), as [`mined_info_nce`] evaluates them.
fn plan_terms(
    anchors: &Tensor,
    candidates: &Tensor,
    plan: &MiningPlan,
    temperature: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n) = (plan.anchors, plan.candidates);
    if anchors.dim(0)? != b || candidates.dim(0)? != n {
        return Err(invalid(
            "plan",
            format!(
                "plan is {b} x {n}, tensors have {} and {} rows",
                anchors.dim(0)?,
                candidates.dim(0)?
            ),
        ));
    }
    let a = match &plan.anchor_override {
        Some(o) => o.to_dtype(anchors.dtype())?,
        None => l2_normalize(anchors)?,
    };
    let c = l2_normalize(candidates)?;
    let mut logits = (a.matmul(&c.t()?)? / temperature)?;
    let mut targets = vec![0f32; b * n];
    for (i, pos) in plan.positives.iter().enumerate() {
        let mass: f32 = pos.iter().map(|(_, m)| m).sum();
        for &(c, m) in pos {
            targets[i * n + c as usize] = m / mass.max(f32::MIN_POSITIVE);
        }
    }
    let mut weights = plan.weights.clone();
    let mut width = n;
    if let Some(syn) = &plan.synthetic {
        let s = syn.dim(1)?;
        let extra = (a
            .unsqueeze(1)?
            .broadcast_mul(&syn.to_dtype(a.dtype())?)?
            .sum(D::Minus1)?
            / temperature)?;
        logits = Tensor::cat(&[logits, extra], 1)?;
        targets = (0..b)
            .flat_map(|i| {
                targets[i * n..(i + 1) * n]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0.0, s))
            })
            .collect();
        weights = (0..b)
            .flat_map(|i| {
                weights[i * n..(i + 1) * n]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(1.0, s))
            })
            .collect();
        width += s;
    }
    let dev = a.device();
    let targets = Tensor::from_vec(targets, (b, width), dev)?.to_dtype(a.dtype())?;
    let mut weights = Tensor::from_vec(weights, (b, width), dev)?.to_dtype(a.dtype())?;
    if let Some(beta) = plan.hardness_beta {
        // Negatives: kept, not positive.
        let neg =
            (weights.gt(0.0)?.to_dtype(a.dtype())? * targets.le(0.0)?.to_dtype(a.dtype())?)?;
        let tilt = ((hardness_weights(&logits, Some(&neg), beta)? - &neg)? + 1.0)?;
        weights = (weights * tilt)?;
    }
    Ok((logits, targets, weights))
}
