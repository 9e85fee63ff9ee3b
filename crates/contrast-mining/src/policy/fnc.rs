//! False negative cancellation: identification over a support set, then attraction
//! or elimination.

use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use contrast_losses::{Aggregation, Cancellation};

/// Identifies, per anchor, the candidates most similar to the anchor's image (its
/// support set: every anchor row with its instance id, aggregated by max or mean),
/// keeping the `topk` highest and/or those above `threshold`, then cancels them.
pub(crate) fn fnc(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    topk: Option<usize>,
    threshold: Option<f64>,
    aggregation: Aggregation,
    cancellation: Cancellation,
) -> Result<()> {
    if topk.is_none() && threshold.is_none() {
        return Err(invalid("topk", "fnc needs topk, threshold or both"));
    }
    let mut identified = vec![Vec::new(); plan.anchors];
    for (i, found) in identified.iter_mut().enumerate() {
        let views: Vec<usize> = (0..plan.anchors)
            .filter(|&r| batch.anchor_ids[r] == batch.anchor_ids[i])
            .collect();
        let score = |c: usize| -> f32 {
            let per_view = views.iter().map(|&r| batch.sim_row(r)[c]);
            match aggregation {
                Aggregation::Max => per_view.fold(f32::NEG_INFINITY, f32::max),
                Aggregation::Mean => per_view.sum::<f32>() / views.len() as f32,
            }
        };
        let mut others: Vec<(usize, f32)> = (0..plan.candidates)
            .filter(|&c| batch.candidate_ids[c] != batch.anchor_ids[i] && !plan.is_positive(i, c))
            .map(|c| (c, score(c)))
            .collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = topk {
            others.truncate(k);
        }
        if let Some(t) = threshold {
            others.retain(|(_, s)| *s as f64 > t);
        }
        found.extend(others.iter().map(|(c, _)| *c as u32));
    }
    for (i, found) in identified.iter().enumerate() {
        for &c in found {
            match cancellation {
                Cancellation::Attraction => plan.add_positive(i, c as usize, 1.0),
                Cancellation::Elimination => plan.row_mut(i)[c as usize] = 0.0,
            }
        }
    }
    plan.add_identified(identified);
    Ok(())
}
