//! The policies that apply to a memory queue, row by row over blocked similarities
//! (see [`crate::queue`]). Same stage order and meaning as in-batch; rank bands become
//! similarity windows whose edges sit halfway between the last kept and the first
//! dropped entry, so the kernel's own dot products select the same entries.

use super::PolicyConfig;
use super::mochi::mix_points;
use crate::error::{Result, invalid};
use crate::queue::{QueueBatch, QueuePlan};
use candle_core::{DType, Tensor};
use contrast_losses::{Aggregation, Cancellation};
use rand_chacha::ChaCha8Rng;

/// Whether `policy` has a queue form.
pub(crate) fn applies_to_queue(policy: &PolicyConfig) -> bool {
    matches!(
        policy,
        PolicyConfig::Fnc { .. }
            | PolicyConfig::LabelAware
            | PolicyConfig::TopK { .. }
            | PolicyConfig::Ring { .. }
            | PolicyConfig::SemiHard { .. }
            | PolicyConfig::Mochi { .. }
    )
}

/// Similarities of query `i`'s kept negatives (unordered).
fn kept_sims(plan: &QueuePlan, i: usize, sims: &[f32]) -> Vec<f32> {
    sims.iter()
        .enumerate()
        .filter(|&(j, &s)| plan.is_negative(i, j, s))
        .map(|(_, &s)| s)
        .collect()
}

/// The similarity halfway between ranks `r - 1` and `r` (most similar first) of
/// `values`, so that a window starting there keeps ranks `< r`. Linear time: one
/// selection, which reorders `values`.
fn edge_below(values: &mut [f32], r: usize) -> f32 {
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

/// The plan for a queue step: `policies` in stage order.
pub(crate) fn plan_queue(
    policies: &[PolicyConfig],
    batch: &QueueBatch,
    rng: &mut ChaCha8Rng,
) -> Result<QueuePlan> {
    let b = batch.len();
    let mut plan = QueuePlan::new(b);
    for p in policies.iter() {
        if !applies_to_queue(p) {
            return Err(invalid(
                "mining",
                format!(
                    "`{}` works on in-batch candidates, not on a queue",
                    p.name()
                ),
            ));
        }
    }
    if policies
        .iter()
        .any(|p| matches!(p, PolicyConfig::LabelAware))
    {
        let labels = batch
            .query_labels
            .clone()
            .ok_or_else(|| invalid("labels", "policy `label_aware` needs class labels"))?;
        plan.keys = Some((labels, batch.queue_labels.clone()));
    }
    let with_keys = policies
        .iter()
        .any(|p| matches!(p, PolicyConfig::Fnc { .. }));
    let identifies = with_keys;
    let mut identified = vec![Vec::new(); b];
    let positive_sims = batch.positive_sims()?;
    let mochi_size = policies.iter().find_map(|p| match p {
        PolicyConfig::Mochi {
            mixes, query_mixes, ..
        } => Some(mixes + query_mixes),
        _ => None,
    });
    let d = batch.queue.dim(1)?;
    let (queue, queries): (Vec<f32>, Vec<f32>) = if mochi_size.is_some() {
        (
            batch.queue.flatten_all()?.to_vec1()?,
            batch.queries.flatten_all()?.to_vec1()?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut synthetic = vec![0f32; b * mochi_size.unwrap_or(0) * d];
    batch.for_each_row(with_keys, |i, sq, sk| {
        for p in policies.iter() {
            match p {
                PolicyConfig::Fnc {
                    topk,
                    threshold,
                    aggregation,
                    cancellation,
                } => {
                    let sk = sk.expect("key similarities are computed when fnc is configured");
                    let score = |j: usize| match aggregation {
                        Aggregation::Max => sq[j].max(sk[j]),
                        Aggregation::Mean => 0.5 * (sq[j] + sk[j]),
                    };
                    // Written entries of other images.
                    let mut cands: Vec<(u32, f32)> = (0..batch.entries())
                        .filter(|&j| {
                            batch.queue_ids[j] >= 0 && batch.queue_ids[j] != batch.query_ids[i]
                        })
                        .map(|j| (j as u32, score(j)))
                        .collect();
                    let order =
                        |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                    if let Some(k) = *topk
                        && k < cands.len()
                    {
                        cands.select_nth_unstable_by(k, order);
                        cands.truncate(k);
                    }
                    if let Some(t) = *threshold {
                        cands.retain(|(_, s)| *s as f64 > t);
                    }
                    let mut found: Vec<u32> = cands.into_iter().map(|(j, _)| j).collect();
                    found.sort_unstable();
                    let list = match cancellation {
                        Cancellation::Attraction => &mut plan.attracted[i],
                        Cancellation::Elimination => &mut plan.excluded[i],
                    };
                    list.extend(&found);
                    list.sort_unstable();
                    list.dedup();
                    identified[i].extend(found);
                }
                PolicyConfig::TopK { k } => {
                    let mut kept = kept_sims(&plan, i, sq);
                    plan.narrow_window(i, b, edge_below(&mut kept, *k), f32::INFINITY);
                }
                PolicyConfig::Ring { outer, inner } => {
                    let mut kept = kept_sims(&plan, i, sq);
                    let outer_size = (outer * kept.len() as f64).floor() as usize;
                    let inner_idx = ((inner * outer_size as f64).floor() as usize).min(outer_size);
                    if outer_size == inner_idx {
                        plan.narrow_window(i, b, f32::INFINITY, f32::NEG_INFINITY);
                    } else {
                        // Keep ranks [inner_idx, outer_size).
                        plan.narrow_window(
                            i,
                            b,
                            edge_below(&mut kept, outer_size),
                            edge_below(&mut kept, inner_idx),
                        );
                    }
                }
                PolicyConfig::SemiHard { margin } => {
                    let (hi, lo) = (positive_sims[i], positive_sims[i] - *margin as f32);
                    if sq
                        .iter()
                        .enumerate()
                        .any(|(j, &s)| s > lo && s < hi && plan.is_negative(i, j, s))
                    {
                        plan.narrow_window(i, b, lo, hi);
                    }
                }
                PolicyConfig::Mochi {
                    n_hardest,
                    mixes,
                    query_mixes,
                } => {
                    let mut kept: Vec<(usize, f32)> = sq
                        .iter()
                        .copied()
                        .enumerate()
                        .filter(|&(j, s)| plan.is_negative(i, j, s))
                        .collect();
                    let order = |a: &(usize, f32), b: &(usize, f32)| {
                        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
                    };
                    if *n_hardest < kept.len() {
                        kept.select_nth_unstable_by(*n_hardest, order);
                        kept.truncate(*n_hardest);
                    }
                    kept.sort_by(order);
                    let hard: Vec<&[f32]> = kept
                        .iter()
                        .take(*n_hardest)
                        .map(|&(j, _)| &queue[j * d..(j + 1) * d])
                        .collect();
                    if hard.len() < 2 {
                        return Err(invalid(
                            "n_hardest",
                            format!("query {i} has {} kept negatives; mochi needs 2", hard.len()),
                        ));
                    }
                    let s = mixes + query_mixes;
                    mix_points(
                        &hard,
                        &queries[i * d..(i + 1) * d],
                        *mixes,
                        *query_mixes,
                        rng,
                        &mut synthetic[i * s * d..(i + 1) * s * d],
                    );
                }
                PolicyConfig::LabelAware => {}
                other => {
                    return Err(invalid(
                        "mining",
                        format!(
                            "`{}` works on in-batch candidates, not on a queue",
                            other.name()
                        ),
                    ));
                }
            }
        }
        Ok(())
    })?;
    if let Some(s) = mochi_size {
        plan.synthetic = Some(
            Tensor::from_vec(synthetic, (b, s, d), batch.queue.device())?
                .to_dtype(DType::F32)?
                .detach(),
        );
    }
    if identifies {
        plan.identified = Some(identified);
    }
    Ok(plan)
}
