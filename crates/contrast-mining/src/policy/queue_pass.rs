//! The queue pass: every policy's queue form, row by row over blocked similarities
//! (see [`crate::queue`]). Same stage order and meaning as in-batch; rank bands become
//! similarity windows whose edges sit halfway between the last kept and the first
//! dropped entry (`selection::edge_below`), so the kernel's own dot products select the
//! same entries.

use super::{Policy, QueueNeeds, QueueRow};
use crate::error::Result;
use crate::queue::{QueueBatch, QueuePlan};
use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;

impl QueueRow<'_> {
    /// Similarities of this query's kept negatives (unordered).
    pub(crate) fn kept_sims(&self) -> Vec<f32> {
        let i = self.query;
        self.sims
            .iter()
            .enumerate()
            .filter(|&(j, &s)| self.plan.is_negative(i, j, s))
            .map(|(_, &s)| s)
            .collect()
    }

    /// Narrows this query's similarity window to `[lo, hi]`.
    pub(crate) fn narrow_window(&mut self, lo: f32, hi: f32) {
        self.plan.narrow_window(self.query, self.queries, lo, hi);
    }
}

/// The plan for a queue step: `policies` (all with a queue form) in stage order.
pub(crate) fn plan_queue(
    policies: &[Box<dyn Policy>],
    batch: &QueueBatch,
    rng: &mut ChaCha8Rng,
) -> Result<QueuePlan> {
    let b = batch.len();
    let mut plan = QueuePlan::new(b);
    let needs = policies
        .iter()
        .map(|p| p.queue_needs())
        .fold(QueueNeeds::default(), |a, n| QueueNeeds {
            support_sims: a.support_sims || n.support_sims,
            synthetic: a.synthetic + n.synthetic,
        });
    for p in policies {
        p.prepare_queue(batch, &mut plan)?;
    }
    let mut identified = vec![Vec::new(); b];
    let positive_sims = batch.positive_sims()?;
    let d = batch.queue.dim(1)?;
    let s = needs.synthetic;
    let (queue, queries): (Vec<f32>, Vec<f32>) = if s > 0 {
        (
            batch.queue.flatten_all()?.to_vec1()?,
            batch.queries.flatten_all()?.to_vec1()?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let mut synthetic = vec![0f32; b * s * d];
    batch.for_each_row(needs.support_sims, |i, sims, support_sims| {
        let mut row = QueueRow {
            query: i,
            queries: b,
            sims,
            support_sims,
            positive_sim: positive_sims[i],
            batch,
            plan: &mut plan,
            identified: &mut identified[i],
            vectors: (s > 0).then(|| (queue.as_slice(), &queries[i * d..(i + 1) * d])),
            synthetic: &mut synthetic[i * s * d..(i + 1) * s * d],
            rng: &mut *rng,
        };
        for p in policies {
            p.plan_queue_row(&mut row)?;
        }
        Ok(())
    })?;
    if s > 0 {
        plan.synthetic = Some(
            Tensor::from_vec(synthetic, (b, s, d), batch.queue.device())?
                .to_dtype(DType::F32)?
                .detach(),
        );
    }
    if needs.support_sims {
        plan.identified = Some(identified);
    }
    Ok(plan)
}
