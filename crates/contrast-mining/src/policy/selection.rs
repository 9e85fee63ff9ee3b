//! Rank-based selection shared by the in-batch policies that keep a subset of each
//! anchor's negatives (`top_k`, `ring`, `mochi`), and by the queue pass's
//! rank-to-window conversion.

use crate::batch::MiningBatch;
use crate::plan::MiningPlan;
use contrast_losses::hardest_first;
use std::ops::Range;

/// Kept negatives of anchor `i`, most similar first (ties towards the lower index).
pub(crate) fn ranked_negatives(batch: &MiningBatch, plan: &MiningPlan, i: usize) -> Vec<usize> {
    let row = batch.sim_row(i);
    let mut negs: Vec<(usize, f32)> = plan
        .kept_negatives(i)
        .into_iter()
        .map(|c| (c, row[c]))
        .collect();
    negs.sort_by(hardest_first);
    negs.into_iter().map(|(c, _)| c).collect()
}

/// Keeps, for every anchor, the ranks of its ranked negatives that `band` returns
/// (given the number of negatives); the others leave the row.
pub(crate) fn keep_ranks(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    band: impl Fn(usize) -> Range<usize>,
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

/// The similarity halfway between ranks `r - 1` and `r` (most similar first) of
/// `values`, so that a window starting there keeps ranks `< r`: how a rank band becomes
/// a similarity window the streaming kernel applies to its own dot products. Linear
/// time: one selection, which reorders `values`.
pub(crate) fn edge_below(values: &mut [f32], r: usize) -> f32 {
    match r {
        0 => f32::INFINITY,
        r if r >= values.len() => f32::NEG_INFINITY,
        r => {
            let (above, at, _) = values.select_nth_unstable_by(r, |a, b| b.total_cmp(a));
            let last_kept = above.iter().copied().fold(f32::INFINITY, f32::min);
            0.5 * (last_kept + *at)
        }
    }
}
