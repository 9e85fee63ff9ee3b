//! `nearest_neighbour`: NNCLR (Dwibedi et al., 2021). Each anchor is replaced by its
//! nearest neighbour in a FIFO support of past anchors, so the positives come from
//! other images of (probably) the same class.

use super::{Policy, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use candle_core::{DType, Device, Tensor};
use contrast_memory::KeyQueue;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Anchors are replaced by their nearest neighbour in a support of `support_size` past
/// anchors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearestNeighbour {
    #[serde(default = "default_support_size")]
    pub support_size: usize,
}

fn default_support_size() -> usize {
    8192
}

/// The policy at run time: its parameters and its support queue, created on the first
/// step (when the embedding width is known) from the pipeline's seed.
#[derive(Debug)]
pub(crate) struct Neighbours {
    params: NearestNeighbour,
    support: Option<KeyQueue>,
    seed: u64,
}

impl Neighbours {
    pub(crate) fn new(params: NearestNeighbour) -> Self {
        Self {
            params,
            support: None,
            seed: 0,
        }
    }
}

impl Policy for Neighbours {
    fn name(&self) -> &'static str {
        "nearest_neighbour"
    }

    fn stage(&self) -> Stage {
        Stage::Anchors
    }

    fn validate(&self) -> Result<()> {
        if self.params.support_size == 0 {
            return Err(invalid(
                "support_size",
                "nearest_neighbour needs support_size >= 1",
            ));
        }
        Ok(())
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// Replaces every anchor by its nearest support entry (cosine, detached), then
    /// enqueues the batch's anchors. The first step, with an empty support, keeps the
    /// anchors. The support entry's label is compared with the anchor's for the
    /// nearest-neighbour precision diagnostic (labels are never used to choose).
    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        let (b, d) = batch.anchors.dims2()?;
        let queue = match &mut self.support {
            Some(q) => q,
            None => self.support.insert(KeyQueue::new(
                self.params.support_size,
                d,
                self.seed,
                batch.anchors.device(),
            )?),
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

    fn state(&self, _device: &Device) -> Result<HashMap<String, Tensor>> {
        match &self.support {
            Some(q) => Ok(q.state()?),
            None => Ok(HashMap::new()),
        }
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let keys = state
            .get("keys")
            .ok_or_else(|| invalid("state", "missing support `keys`"))?;
        let mut queue = KeyQueue::new(
            self.params.support_size,
            keys.dim(1)?,
            self.seed,
            keys.device(),
        )?;
        queue.load_state(state)?;
        self.support = Some(queue);
        Ok(())
    }
}
