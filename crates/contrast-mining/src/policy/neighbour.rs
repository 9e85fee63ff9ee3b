//! NNCLR: each anchor is replaced by its nearest neighbour in a support queue of past
//! embeddings, so the positives come from other images of (probably) the same class.

use crate::batch::MiningBatch;
use crate::error::Result;
use crate::plan::MiningPlan;
use candle_core::{DType, Tensor};
use contrast_memory::KeyQueue;

/// Replaces every anchor by its nearest support entry (cosine, detached), then
/// enqueues the batch's anchors. The first step, with an empty support, keeps the
/// anchors. The support entry's label is compared with the anchor's for the
/// nearest-neighbour precision diagnostic (labels are never used to choose).
pub(crate) fn nearest_neighbour(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    support: &mut Option<KeyQueue>,
    size: usize,
    seed: u64,
) -> Result<()> {
    let (b, d) = batch.anchors.dims2()?;
    let queue = match support {
        Some(q) => q,
        None => support.insert(KeyQueue::new(size, d, seed, batch.anchors.device())?),
    };
    if queue.filled() > 0 {
        let nn = queue.nearest(&batch.anchors, 1)?;
        let index = Tensor::from_vec(nn.indices.clone(), b, batch.anchors.device())?;
        let replaced = queue
            .keys()
            .index_select(&index, 0)?
            .to_dtype(batch.anchors.dtype())?;
        if let Some(labels) = &batch.anchor_labels {
            let agree = nn
                .indices
                .iter()
                .zip(labels)
                .filter(|(j, l)| queue.labels()[**j as usize] == **l)
                .count();
            plan.neighbour_agreement = Some((agree, b));
        }
        plan.anchor_override = Some(replaced.detach());
    }
    let labels = batch.anchor_labels.clone().unwrap_or_else(|| vec![-1; b]);
    queue.enqueue(
        &batch.anchors.to_dtype(DType::F32)?,
        &batch.anchor_ids,
        &labels,
        None,
    )?;
    Ok(())
}
