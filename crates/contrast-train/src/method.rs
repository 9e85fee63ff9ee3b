//! Training methods: how a batch becomes loss inputs, and what state a method keeps
//! between steps.
//!
//! - In-batch (SimCLR and every loss over the batch's own views): all views go
//!   through the online network in one pass.
//! - MoCo: the first view through the online network (queries), the second through a
//!   momentum copy (keys, no gradient), negatives from a FIFO queue that the keys join
//!   after the step.
//!
//! MoCo's Shuffle-BN remedies a BatchNorm leak: with the query and its positive key
//! normalised over the same batch, the network can match them through the batch
//! statistics instead of the content. Across GPUs MoCo shuffles the keys so that each
//! key is normalised with a different group than its query. On one device the same
//! effect comes from shuffling the keys and running the key encoder on `splits`
//! separate groups (each with its own BatchNorm statistics), then restoring the order.

use crate::config::{Config, MethodConfig};
use crate::model::ContrastiveModel;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use contrast_data::Batch;
use contrast_data::loader::derive_seed;
use contrast_encoders::{InputShape, copy_vars, ema_update};
use contrast_losses::{
    LossConfig, LossInputs, invariance_propagation, partner_classes, ramp, refreshed_neighbours,
};
use contrast_memory::{KeyQueue, MemoryBank};
use contrast_mining::{
    Diagnostics, DiagnosticsSummary, MiningBatch, Pipeline, QueueBatch, QueuePlan, mined_info_nce,
    mined_moco_info_nce,
};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Named groups of tensors a method adds to checkpoints.
pub type MethodState = Vec<(String, HashMap<String, Tensor>)>;

/// Tensor groups read back from a checkpoint, by name.
pub type TensorGroups = HashMap<String, HashMap<String, Tensor>>;

/// In-batch state: the mining pipeline and the epoch's diagnostics.
pub struct InBatch {
    pub pipeline: Pipeline,
    pub diagnostics: Diagnostics,
}

/// The memory bank's state: one vector per training image and its stored neighbours.
pub struct Bank {
    pub bank: MemoryBank,
    pub neighbours: Vec<Vec<u32>>,
}

/// MoCo's extra state.
pub struct Moco {
    /// Mining policies on the queue, and the epoch's diagnostics.
    pub pipeline: Pipeline,
    pub diagnostics: Diagnostics,
    pub key: ContrastiveModel,
    pub queue: KeyQueue,
}

/// The runtime state of the configured method.
pub enum Method {
    /// In-batch candidates, with mining policies and their diagnostics.
    InBatch(Box<InBatch>),
    Moco(Box<Moco>),
    Bank(Box<Bank>),
}

/// What a step produced besides the loss, for the update afterwards: keys to enqueue
/// (MoCo), or features and nearest entries for the bank (InvP).
pub struct StepExtras {
    keys: Option<Tensor>,
    bank: Option<(Tensor, Vec<Vec<u32>>)>,
}

fn varmap_tensors(vm: &candle_nn::VarMap) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

fn load_varmap(vm: &candle_nn::VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let data = vm.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .with_context(|| format!("key encoder variable `{name}` missing"))?;
        var.set(t)
            .with_context(|| format!("key encoder variable `{name}`"))?;
    }
    Ok(())
}

impl Method {
    /// Builds the method's state for the online `model` over `dataset_size` images.
    pub fn new(
        cfg: &Config,
        model: &ContrastiveModel,
        input: InputShape,
        dataset_size: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(match &cfg.method {
            MethodConfig::Simclr => Method::InBatch(Box::new(InBatch {
                pipeline: Pipeline::new(cfg.mining.clone())?
                    .with_seed(derive_seed(cfg.seed, &[0x313])),
                diagnostics: Diagnostics::default(),
            })),
            MethodConfig::Moco { queue_size, .. } => {
                let key = ContrastiveModel::new(&cfg.model, input, None, device, cfg.seed)?;
                copy_vars(&key.varmap, &model.varmap)?;
                let queue = KeyQueue::new(
                    *queue_size,
                    cfg.model.head.out,
                    derive_seed(cfg.seed, &[0x9e]),
                    device,
                )?;
                Method::Moco(Box::new(Moco {
                    key,
                    queue,
                    pipeline: Pipeline::new(cfg.mining.clone())?,
                    diagnostics: Diagnostics::default(),
                }))
            }
            MethodConfig::Bank {
                momentum,
                neighbours,
                ..
            } => {
                let bank = MemoryBank::new(
                    dataset_size,
                    cfg.model.head.out,
                    *momentum,
                    derive_seed(cfg.seed, &[0xba]),
                    device,
                )?;
                // Until refreshed, an entry's neighbours are itself (the invariance
                // term is off during the warm-up).
                let neighbours = (0..dataset_size as u32)
                    .map(|i| vec![i; *neighbours])
                    .collect();
                Method::Bank(Box::new(Bank { bank, neighbours }))
            }
        })
    }

    /// The loss of `batch` (to be differentiated) and what the update needs afterwards.
    pub fn loss(
        &mut self,
        cfg: &Config,
        model: &ContrastiveModel,
        batch: &Batch,
        num_classes: usize,
        device: &Device,
    ) -> Result<(Tensor, StepExtras)> {
        let s = batch.shape;
        let b = batch.len();
        let view = |v: usize| {
            Tensor::from_slice(&batch.views[v], (b, s.height, s.width, s.channels), device)
        };
        let labels = Tensor::from_slice(&batch.labels, b, device)?;
        let rng = |salt: u64| {
            ChaCha8Rng::seed_from_u64(derive_seed(
                cfg.seed,
                &[batch.epoch as u64, batch.step as u64, salt],
            ))
        };
        match self {
            Method::InBatch(state) => {
                let x = Tensor::cat(
                    &(0..batch.views.len())
                        .map(view)
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    0,
                )?;
                let (_, z) = model.forward_t(&x, true)?;
                let views = (0..batch.views.len())
                    .map(|v| z.narrow(0, v * b, b))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let (partners, gates) = match (&cfg.loss, &model.filter) {
                    (LossConfig::Simlap(c), Some(filter)) => {
                        let p =
                            partner_classes(&batch.labels, num_classes, c.pairs, &mut rng(0x51a9))?;
                        let p = Tensor::from_vec(p, b, device)?;
                        let g = filter.forward_t(&labels, &p, true)?;
                        (Some(p), Some(g))
                    }
                    _ => (None, None),
                };
                let loss = match &cfg.loss {
                    // Instance discrimination: plan with the policies (none: SimCLR), and
                    // judge the plan's negatives against the labels.
                    LossConfig::NtXent(c) => {
                        let ids: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
                        let classes: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
                        let mining = MiningBatch::in_batch(&views, &ids, Some(&classes))?;
                        let plan = state.pipeline.plan(&mining, &mut rng(0x313))?;
                        state.diagnostics.add(&mining, &plan, &mut rng(0xd1a9));
                        if state.pipeline.is_empty() {
                            cfg.loss.compute(LossInputs::views(&views))?
                        } else {
                            mined_info_nce(&z, &z, &plan, c.temperature)?
                        }
                    }
                    _ => cfg.loss.compute(LossInputs {
                        views: &views,
                        labels: Some(&labels),
                        queue: None,
                        partners: partners.as_ref(),
                        gates: gates.as_ref(),
                    })?,
                };
                Ok((
                    loss,
                    StepExtras {
                        keys: None,
                        bank: None,
                    },
                ))
            }
            Method::Moco(m) => {
                let MethodConfig::Moco { shuffle_splits, .. } = cfg.method else {
                    bail!("method state and configuration disagree");
                };
                let (_, q) = model.forward_t(&view(0)?, true)?;
                let k = shuffled_keys(&m.key, &view(1)?, shuffle_splits, &mut rng(0x5bf1))?;
                let queue = m.queue.keys();
                let mining = QueueBatch::new(
                    &q,
                    &k,
                    queue,
                    batch.indices.iter().map(|&i| i as i64).collect(),
                    Some(batch.labels.iter().map(|&l| l as i64).collect()),
                    m.queue.ids().to_vec(),
                    m.queue.labels().to_vec(),
                )?;
                let plan = if m.pipeline.is_empty() {
                    QueuePlan::new(b)
                } else {
                    m.pipeline.plan_queue(&mining, &mut rng(0x313))?
                };
                m.diagnostics.add_queue(&mining, &plan, &mut rng(0xd1a9))?;
                let loss = match &cfg.loss {
                    LossConfig::MocoInfoNce(c) if !m.pipeline.is_empty() => {
                        mined_moco_info_nce(&q, &k, queue, &plan, c.temperature)?
                    }
                    _ => cfg.loss.compute(LossInputs {
                        views: &[q, k.clone()],
                        labels: Some(&labels),
                        queue: Some(queue),
                        partners: None,
                        gates: None,
                    })?,
                };
                Ok((
                    loss,
                    StepExtras {
                        keys: Some(k),
                        bank: None,
                    },
                ))
            }
            Method::Bank(m) => {
                let (
                    LossConfig::InvariancePropagation(c),
                    MethodConfig::Bank {
                        ramp_epochs,
                        gaussian_ramp,
                        ..
                    },
                ) = (&cfg.loss, &cfg.method)
                else {
                    bail!("method state and configuration disagree");
                };
                let (_, z) = model.forward_t(&view(0)?, true)?;
                // The background is at most the whole bank (a training subset can be smaller
                // than the configured M).
                let capped = contrast_losses::InvPConfig {
                    n_background: c.n_background.min(m.bank.len()),
                    ..c.clone()
                };
                let weight = ramp(batch.epoch, *ramp_epochs, *gaussian_ramp);
                let out = invariance_propagation(
                    &z,
                    &batch.indices,
                    m.bank.vectors(),
                    &m.neighbours,
                    weight,
                    &capped,
                )?;
                Ok((
                    out.loss,
                    StepExtras {
                        keys: None,
                        bank: Some((z.detach(), out.nearest)),
                    },
                ))
            }
        }
    }

    /// After the optimiser step: the momentum update, then the keys join the queue.
    pub fn after_step(
        &mut self,
        cfg: &Config,
        model: &ContrastiveModel,
        extras: StepExtras,
        batch: &Batch,
        step: usize,
        total: usize,
    ) -> Result<()> {
        if let (Method::Bank(m), Some((z, nearest))) = (&mut *self, &extras.bank) {
            let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            m.bank.update(&batch.indices, z, Some(&labels))?;
            for (&i, near) in batch.indices.iter().zip(nearest) {
                m.neighbours[i as usize] = refreshed_neighbours(i, near);
            }
        }
        if let (Method::Moco(m), MethodConfig::Moco { momentum, .. }) = (self, &cfg.method) {
            ema_update(&m.key.varmap, &model.varmap, momentum.at(step, total))?;
            if let Some(k) = extras.keys {
                let ids: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
                let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
                m.queue.enqueue(&k, &ids, &labels, None)?;
            }
        }
        Ok(())
    }

    /// Tensors to checkpoint.
    pub fn state(&self) -> Result<MethodState> {
        Ok(match self {
            Method::InBatch(m) => {
                let mining = m.pipeline.state(&Device::Cpu)?;
                if mining.is_empty() {
                    Vec::new()
                } else {
                    vec![("mining".into(), mining)]
                }
            }
            Method::Moco(m) => vec![
                ("key_encoder".into(), varmap_tensors(&m.key.varmap)),
                ("queue".into(), m.queue.state()?),
            ],
            Method::Bank(m) => {
                let mut state = m.bank.state()?;
                let k = m.neighbours.first().map_or(0, |n| n.len());
                let flat: Vec<u32> = m.neighbours.iter().flatten().copied().collect();
                state.insert(
                    "neighbours".into(),
                    Tensor::from_vec(flat, (m.neighbours.len(), k), m.bank.vectors().device())?,
                );
                vec![("bank".into(), state)]
            }
        })
    }

    /// Restores [`Method::state`].
    pub fn load_state(&mut self, mut state: TensorGroups) -> Result<()> {
        if let (Method::InBatch(m), Some(mining)) = (&mut *self, state.remove("mining")) {
            m.pipeline
                .load_state(&mining)
                .context("restoring the mining policies' state")?;
        }
        if let Method::Moco(m) = self {
            let key = state
                .remove("key_encoder")
                .context("checkpoint lacks the key encoder")?;
            load_varmap(&m.key.varmap, &key)?;
            let queue = state
                .remove("queue")
                .context("checkpoint lacks the queue")?;
            m.queue.load_state(&queue).context("restoring the queue")?;
        }
        if let Method::Bank(m) = self {
            let bank = state
                .remove("bank")
                .context("checkpoint lacks the memory bank")?;
            m.bank
                .load_state(&bank)
                .context("restoring the memory bank")?;
            let n = bank
                .get("neighbours")
                .context("checkpoint lacks the bank's neighbour lists")?;
            let rows: Vec<Vec<u32>> = n.to_dtype(candle_core::DType::U32)?.to_vec2()?;
            if rows.len() != m.neighbours.len() {
                bail!(
                    "checkpoint's bank has {} neighbour lists, the dataset {}",
                    rows.len(),
                    m.neighbours.len()
                );
            }
            m.neighbours = rows;
        }
        Ok(())
    }

    /// The epoch's mining diagnostics (in-batch and queue methods), resetting the
    /// counts.
    pub fn take_diagnostics(&mut self) -> Option<DiagnosticsSummary> {
        match self {
            Method::InBatch(state) => std::mem::take(&mut state.diagnostics).summary(),
            Method::Moco(m) => std::mem::take(&mut m.diagnostics).summary(),
            Method::Bank(_) => None,
        }
    }

    /// Bytes of memory the method keeps (the queue).
    pub fn memory_bytes(&self) -> usize {
        match self {
            Method::InBatch(_) => 0,
            Method::Moco(m) => m.queue.bytes(),
            Method::Bank(m) => m.bank.len() * (m.bank.vectors().dim(1).unwrap_or(0) * 4 + 8),
        }
    }
}

/// Keys of `x` `[B, ...]` from the momentum encoder, without gradient: shuffled, run
/// in `splits` groups with their own BatchNorm statistics, and put back in order.
fn shuffled_keys(
    key: &ContrastiveModel,
    x: &Tensor,
    splits: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let mut perm: Vec<u32> = (0..b as u32).collect();
    perm.shuffle(rng);
    let mut inverse = vec![0u32; b];
    for (pos, &i) in perm.iter().enumerate() {
        inverse[i as usize] = pos as u32;
    }
    let shuffled = x.index_select(&Tensor::from_slice(&perm, b, x.device())?, 0)?;
    // Groups of at least two keys: BatchNorm needs two values per channel.
    let size = b.div_ceil(splits.max(1).min((b / 2).max(1)));
    let mut parts = Vec::new();
    for start in (0..b).step_by(size) {
        let (_, z) = key.forward_t(
            &shuffled.narrow(0, start, size.min(b - start))?.detach(),
            true,
        )?;
        parts.push(z.detach());
    }
    let keys = Tensor::cat(&parts, 0)?;
    Ok(keys
        .index_select(&Tensor::from_slice(&inverse, b, x.device())?, 0)?
        .detach())
}
