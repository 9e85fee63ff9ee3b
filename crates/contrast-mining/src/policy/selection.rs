//! Stage 3 without labels: keep a subset of each anchor's negatives by rank or by
//! similarity band.

use crate::batch::MiningBatch;
use crate::plan::MiningPlan;

/// Kept negatives of anchor `i`, most similar first (ties towards the lower index).
pub(crate) fn ranked_negatives(batch: &MiningBatch, plan: &MiningPlan, i: usize) -> Vec<usize> {
    let row = batch.sim_row(i);
    let mut negs = plan.kept_negatives(i);
    negs.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    negs
}

/// Keeps, for every anchor, the slice of its ranked negatives that `band` returns
/// (as a range of ranks, given the number of negatives).
fn keep_ranks(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    band: impl Fn(usize) -> std::ops::Range<usize>,
) {
    for i in 0..plan.anchors {
        let negs = ranked_negatives(batch, plan, i);
        let keep = band(negs.len());
        let row = plan.row_mut(i);
        for (rank, c) in negs.into_iter().enumerate() {
            if !keep.contains(&rank) {
                row[c] = 0.0;
            }
        }
    }
}

/// Top-k: the `k` most similar negatives.
pub(crate) fn top_k(batch: &MiningBatch, plan: &mut MiningPlan, k: usize) {
    keep_ranks(batch, plan, |n| 0..k.min(n));
}

/// Ring: ranks `[floor(inner * o), o)` with `o = floor(outer * count)`.
pub(crate) fn ring(batch: &MiningBatch, plan: &mut MiningPlan, outer: f64, inner: f64) {
    keep_ranks(batch, plan, |n| {
        let outer_size = (outer * n as f64).floor() as usize;
        let inner_idx = (inner * outer_size as f64).floor() as usize;
        inner_idx.min(outer_size)..outer_size
    });
}

/// Mean similarity of anchor `i` to its positives.
pub(crate) fn mean_positive_sim(batch: &MiningBatch, plan: &MiningPlan, i: usize) -> f32 {
    let row = batch.sim_row(i);
    let p = &plan.positives[i];
    p.iter().map(|(c, _)| row[*c as usize]).sum::<f32>() / p.len().max(1) as f32
}

/// Semi-hard: negatives with `s_pos - margin < s < s_pos`; all stay when none is.
pub(crate) fn semi_hard(batch: &MiningBatch, plan: &mut MiningPlan, margin: f64) {
    for i in 0..plan.anchors {
        let pos = mean_positive_sim(batch, plan, i);
        let lo = pos - margin as f32;
        let row = batch.sim_row(i);
        let negs = plan.kept_negatives(i);
        let in_band = |c: usize| row[c] > lo && row[c] < pos;
        if negs.iter().any(|&c| in_band(c)) {
            for c in negs.into_iter().filter(|&c| !in_band(c)) {
                plan.row_mut(i)[c] = 0.0;
            }
        }
    }
}
