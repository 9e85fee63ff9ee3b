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

use crate::config::{Config, GatheredLoss, MethodConfig};
use crate::distributed::{World, ring_nt_xent};
use crate::model::{ContrastiveModel, ModelParts};
use crate::optim::Optimizer;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use contrast_data::{Batch, Stream, stream_rng, stream_seed};
use contrast_encoders::{InputShape, copy_vars, ema_update};
use contrast_losses::{
    LossConfig, LossInputs, invariance_propagation, looc, partner_classes, ramp,
    refreshed_neighbours,
};
use contrast_memory::{KeyQueue, MemoryBank};
use contrast_mining::{
    Diagnostics, DiagnosticsSummary, MiningBatch, Pipeline, PolicyConfig, QueueBatch, QueuePlan,
    mined_debias_floored, mined_info_nce, mined_moco_info_nce,
};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// A step met a non-finite loss or gradient; the optimiser did not step (see
/// [`Method::step`]). `epoch` is 0-based; `what` names the first non-finite tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFinite {
    pub epoch: usize,
    pub step: usize,
    pub what: String,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "non-finite {} at epoch {} step {}",
            self.what,
            self.epoch + 1,
            self.step
        )
    }
}

impl std::error::Error for NonFinite {}

/// Named groups of tensors a method adds to checkpoints.
pub type MethodState = Vec<(String, HashMap<String, Tensor>)>;

/// Tensor groups read back from a checkpoint, by name.
pub type TensorGroups = HashMap<String, HashMap<String, Tensor>>;

/// In-batch state: the mining pipeline and the epoch's diagnostics.
#[derive(Debug)]
pub struct InBatch {
    pub pipeline: Pipeline,
    pub diagnostics: Diagnostics,
}

/// The memory bank's state: one vector per training image and its stored neighbours.
#[derive(Debug)]
pub struct Bank {
    pub bank: MemoryBank,
    pub neighbours: Vec<Vec<u32>>,
    /// The epoch's diagnostics: the background's same-class share, the hard
    /// positives' precision.
    pub diagnostics: Diagnostics,
}

/// MoCo's extra state.
#[derive(Debug)]
pub struct Moco {
    /// Mining policies on the queue, and the epoch's diagnostics.
    pub pipeline: Pipeline,
    pub diagnostics: Diagnostics,
    pub key: ContrastiveModel,
    pub queue: KeyQueue,
    /// LooC: one more queue per embedding space after the first (one per family).
    pub space_queues: Vec<KeyQueue>,
}

/// The runtime state of the configured method.
#[derive(Debug)]
pub enum Method {
    /// In-batch candidates, with mining policies and their diagnostics.
    InBatch(Box<InBatch>),
    Moco(Box<Moco>),
    Bank(Box<Bank>),
}

/// What a step produced besides the loss, for the update afterwards: keys to enqueue
/// (MoCo: one set per embedding space), or features and nearest entries for the bank
/// (InvP).
#[derive(Debug, Default)]
pub struct StepExtras {
    keys: Vec<Tensor>,
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

/// The in-batch method's policies: the configured ones, or for the `fnc` loss its own
/// identification rule as the `fnc` policy. The loss identifies and cancels inside
/// itself and keeps nothing; the planned copy (no randomness, so training is
/// unchanged) gives its runs the negatives' same-class share and the identification
/// precision and recall that the `fnc` policy's runs log, so the two forms compare.
fn in_batch_policies(cfg: &Config) -> Vec<PolicyConfig> {
    match &cfg.loss {
        LossConfig::Fnc(c) => vec![PolicyConfig::Fnc(c.into())],
        _ => cfg.mining.clone(),
    }
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
                pipeline: Pipeline::new(in_batch_policies(cfg))?.with_seed(stream_seed(
                    cfg.seed,
                    Stream::PolicyState,
                    &[],
                )),
                diagnostics: Diagnostics::default(),
            })),
            MethodConfig::Moco { queue_size, .. } => {
                // The key encoder starts as a copy of the online one.
                let init = stream_seed(cfg.seed, Stream::ModelInit, &[]);
                let families = cfg.method.families();
                let key = ContrastiveModel::new(
                    &cfg.model,
                    input,
                    ModelParts {
                        simlap: None,
                        spaces: families.to_vec(),
                    },
                    device,
                    init,
                    cfg.train.precision,
                )?;
                copy_vars(&key.varmap, &model.varmap)?;
                // Each space's queue starts from its own random unit rows (space 0's
                // are plain MoCo's).
                let queue = |s: u64| {
                    let seed = match s {
                        0 => stream_seed(cfg.seed, Stream::QueueInit, &[]),
                        s => stream_seed(cfg.seed, Stream::SpaceQueueInit, &[s]),
                    };
                    KeyQueue::new(*queue_size, cfg.model.head.out, seed, device)
                };
                Method::Moco(Box::new(Moco {
                    key,
                    queue: queue(0)?,
                    space_queues: (1..=families.len() as u64)
                        .map(queue)
                        .collect::<contrast_memory::Result<_>>()?,
                    pipeline: Pipeline::new(cfg.mining.clone())?.with_seed(stream_seed(
                        cfg.seed,
                        Stream::PolicyState,
                        &[],
                    )),
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
                    stream_seed(cfg.seed, Stream::BankInit, &[]),
                    device,
                )?;
                // Until refreshed, an entry's neighbours are itself (the invariance
                // term is off during the warm-up).
                let neighbours = (0..dataset_size as u32)
                    .map(|i| vec![i; *neighbours])
                    .collect();
                Method::Bank(Box::new(Bank {
                    bank,
                    neighbours,
                    diagnostics: Diagnostics::default(),
                }))
            }
        })
    }

    /// The loss of `batch` (to be differentiated) and what the update needs afterwards.
    fn loss(
        &mut self,
        cfg: &Config,
        model: &ContrastiveModel,
        batch: &Batch,
        num_classes: usize,
        device: &Device,
        world: &World,
    ) -> Result<(Tensor, StepExtras)> {
        let step = StepInputs {
            cfg,
            model,
            batch,
            num_classes,
            device,
            world,
        };
        match self {
            Method::InBatch(m) => m.loss(&step),
            Method::Moco(m) => m.loss(&step),
            Method::Bank(m) => m.loss(&step),
        }
    }

    /// One optimisation step on `batch`: the loss, its gradients, the optimiser's
    /// update at learning rate `lr`, then the method's own update (`after_step`: enqueue, bank or momentum update);
    /// `progress` is `(step, total)` over the whole run. In a data-parallel `world`
    /// the loss is the global batch's, the same on every rank, and the parameter
    /// gradients are summed over the ranks before the update (see
    /// [`crate::distributed`]). Returns the loss. A
    /// non-finite loss or gradient returns a [`NonFinite`] error before the optimiser
    /// step and the method's update (queue, bank, momentum encoder). The forward pass
    /// has by then updated what it always updates (BatchNorm running statistics, the
    /// state of stateful mining policies, the epoch's diagnostics): a rollback restores
    /// those from the checkpoint, and a stopped run's checkpoint on disk is intact.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        cfg: &Config,
        model: &ContrastiveModel,
        opt: &mut Optimizer,
        batch: &Batch,
        num_classes: usize,
        progress: (usize, usize),
        lr: f64,
        device: &Device,
        world: &World,
    ) -> Result<f64> {
        let (loss, extras) = self.loss(cfg, model, batch, num_classes, device, world)?;
        let value = loss.to_scalar::<f32>()? as f64;
        let fault = |what: String| NonFinite {
            epoch: batch.epoch,
            step: batch.step,
            what,
        };
        if !value.is_finite() {
            return Err(fault(format!("loss ({value})")).into());
        }
        let mut grads = loss.backward()?;
        world.sum_gradients(&mut grads, opt.params())?;
        if let Some(name) = opt.first_nonfinite(&grads)? {
            return Err(fault(format!("gradient of `{name}`")).into());
        }
        opt.step(&grads, lr)?;
        self.after_step(cfg, model, extras, batch, progress.0, progress.1)?;
        Ok(value)
    }

    /// After the optimiser step: the momentum update, then the keys join the queue.
    fn after_step(
        &mut self,
        cfg: &Config,
        model: &ContrastiveModel,
        extras: StepExtras,
        batch: &Batch,
        step: usize,
        total: usize,
    ) -> Result<()> {
        if let (Method::Bank(m), Some((z, nearest))) = (&mut *self, &extras.bank) {
            m.bank
                .update(&batch.indices, z, batch.class_ids().as_deref())?;
            for (&i, near) in batch.indices.iter().zip(nearest) {
                m.neighbours[i as usize] = refreshed_neighbours(i, near);
            }
        }
        if let (Method::Moco(m), MethodConfig::Moco { momentum, .. }) = (self, &cfg.method) {
            ema_update(&m.key.varmap, &model.varmap, momentum.at(step, total))?;
            if !extras.keys.is_empty() {
                let ids: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
                // Unlabeled keys enter with class -1, as empty slots hold.
                let labels = batch.class_ids().unwrap_or_else(|| vec![-1; ids.len()]);
                let queues = std::iter::once(&mut m.queue).chain(&mut m.space_queues);
                for (queue, k) in queues.zip(&extras.keys) {
                    queue.enqueue(k, &ids, &labels, None)?;
                }
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
            Method::Moco(m) => {
                let mut state = vec![
                    ("key_encoder".into(), varmap_tensors(&m.key.varmap)),
                    ("queue".into(), m.queue.state()?),
                ];
                for (s, q) in m.space_queues.iter().enumerate() {
                    state.push((format!("queue.space{}", s + 1), q.state()?));
                }
                state
            }
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
            for (s, q) in m.space_queues.iter_mut().enumerate() {
                let name = format!("queue.space{}", s + 1);
                let state = state
                    .remove(&name)
                    .with_context(|| format!("checkpoint lacks LooC's queue `{name}`"))?;
                q.load_state(&state)
                    .with_context(|| format!("restoring LooC's queue `{name}`"))?;
            }
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

    /// The epoch's sampling diagnostics, resetting the counts; `None` without labels.
    pub fn take_diagnostics(&mut self) -> Option<DiagnosticsSummary> {
        std::mem::take(self.diagnostics_mut()).summary()
    }

    /// The epoch's diagnostics so far.
    pub fn diagnostics(&self) -> &Diagnostics {
        match self {
            Method::InBatch(state) => &state.diagnostics,
            Method::Moco(m) => &m.diagnostics,
            Method::Bank(m) => &m.diagnostics,
        }
    }

    fn diagnostics_mut(&mut self) -> &mut Diagnostics {
        match self {
            Method::InBatch(state) => &mut state.diagnostics,
            Method::Moco(m) => &mut m.diagnostics,
            Method::Bank(m) => &mut m.diagnostics,
        }
    }

    /// Restores [`Method::diagnostics`] (from a mid-epoch checkpoint).
    pub fn restore_diagnostics(&mut self, diagnostics: Diagnostics) {
        *self.diagnostics_mut() = diagnostics;
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

/// What every method's loss reads for one step.
struct StepInputs<'a> {
    cfg: &'a Config,
    model: &'a ContrastiveModel,
    batch: &'a Batch,
    num_classes: usize,
    device: &'a Device,
    world: &'a World,
}

impl StepInputs<'_> {
    /// View `v` of this process's rows of the batch as images `[b, H, W, C]`.
    fn view(&self, v: usize) -> candle_core::Result<Tensor> {
        let s = self.batch.shape;
        Tensor::from_slice(
            &self.batch.views[v],
            (self.batch.local.len(), s.height, s.width, s.channels),
            self.device,
        )
    }

    /// This step's draws from `stream` (one of the per-step streams).
    fn rng(&self, stream: Stream) -> ChaCha8Rng {
        let coords = [self.batch.epoch as u64, self.batch.step as u64];
        stream_rng(self.cfg.seed, stream, &coords)
    }

    fn ids(&self) -> Vec<i64> {
        self.batch.indices.iter().map(|&i| i as i64).collect()
    }

    /// The batch's class ids, `None` for unlabeled data.
    fn classes(&self) -> Option<Vec<i64>> {
        self.batch.class_ids()
    }

    /// The labels as a tensor `[B]`, `None` for unlabeled data.
    fn label_tensor(&self) -> candle_core::Result<Option<Tensor>> {
        self.batch
            .labels
            .as_ref()
            .map(|l| Tensor::from_slice(l, l.len(), self.device))
            .transpose()
    }
}

impl InBatch {
    /// Every view through the online network in one pass; the loss over the batch's
    /// own views (mined when policies are configured), over every rank's rows.
    fn loss(&mut self, step: &StepInputs<'_>) -> Result<(Tensor, StepExtras)> {
        let StepInputs {
            cfg,
            model,
            batch,
            world,
            ..
        } = *step;
        let (b, local) = (batch.len(), batch.local.len());
        let x = Tensor::cat(
            &(0..batch.views.len())
                .map(|v| step.view(v))
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?;
        let (_, z) = model.forward_t(&x, true)?;
        // The ring streams this rank's own views; every other loss reads the gathered
        // ones. (`check_ring` has refused the ring for anything but plain NT-Xent.)
        let ring = world.size() > 1 && cfg.train.gathered_loss == GatheredLoss::Ring;
        let views = (0..batch.views.len())
            .map(|v| {
                let own = z.narrow(0, v * local, local)?;
                if ring {
                    Ok(own)
                } else {
                    world.gather_rows(&own)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // The gathered views stacked `[V * B, D]`, as the mined loss takes them.
        let z = if world.size() == 1 || ring {
            z
        } else {
            Tensor::cat(&views, 0)?
        };
        // The rows the views hold: the whole batch's, or this rank's with the ring.
        let rows = if ring { batch.local.clone() } else { 0..b };
        let labels = step.label_tensor()?;
        let (partners, gates) = match (&cfg.loss, &model.filter) {
            (LossConfig::Simlap(c), Some(filter)) => {
                let (Some(classes), Some(labels)) = (&batch.labels, &labels) else {
                    bail!("SimLAP pairs classes: the images need labels");
                };
                let p = partner_classes(
                    classes,
                    step.num_classes,
                    c.pairs,
                    &mut step.rng(Stream::Partners),
                )?;
                let p = Tensor::from_vec(p, b, step.device)?;
                let g = world.after_gather(&filter.forward_t(labels, &p, true)?);
                (Some(p), Some(g))
            }
            _ => (None, None),
        };
        // Instance discrimination: plan with the policies (none: every other instance,
        // as SimCLR, DCL, debiased and HCL take them), and judge the plan's negatives
        // against the labels. Policies are for NT-Xent only (`Config::validate`), and
        // the `fnc` loss's own rule, planned for its diagnostics alone
        // (`in_batch_policies`).
        let plan = if cfg.loss.contrasts_every_instance() || !self.pipeline.is_empty() {
            let classes = step.classes().map(|c| c[rows.clone()].to_vec());
            let mining =
                MiningBatch::in_batch(&views, &step.ids()[rows.clone()], classes.as_deref())?;
            self.pipeline.set_progress(batch.epoch, cfg.train.epochs);
            let plan = self.pipeline.plan(&mining, &mut step.rng(Stream::Mining))?;
            self.diagnostics
                .add(&mining, &plan, &mut step.rng(Stream::Diagnostics));
            Some(plan)
        } else {
            None
        };
        let loss = match (&cfg.loss, &plan) {
            (LossConfig::NtXent(c), Some(plan)) => {
                if ring {
                    ring_nt_xent(world, &views[0], &views[1], c.temperature)?
                } else if self.pipeline.is_empty() && views.len() == 2 {
                    cfg.loss.compute(LossInputs::views(&views))?
                } else {
                    // Policies, or more than two views (every other view of the image
                    // a positive): the planned loss.
                    mined_info_nce(&z, &z, plan, c.temperature)?
                }
            }
            _ => cfg.loss.compute(LossInputs {
                views: &views,
                labels: labels.as_ref(),
                queue: None,
                partners: partners.as_ref(),
                gates: gates.as_ref(),
                log_scale: model
                    .filter
                    .as_ref()
                    .and_then(|f| f.log_scale())
                    .map(|s| world.after_gather(s))
                    .as_ref(),
            })?,
        };
        // The debiased losses, and the `debias` policy: how often the correction hit
        // its floor.
        if batch.labels.is_some() {
            let floored = match (&cfg.loss, &plan) {
                (LossConfig::NtXent(c), Some(plan)) => {
                    let z = z.detach();
                    mined_debias_floored(&z, &z, plan, c.temperature)?
                }
                _ => {
                    let detached = views.iter().map(Tensor::detach).collect::<Vec<_>>();
                    cfg.loss.debias_floored(LossInputs::views(&detached))?
                }
            };
            if let Some((floored, anchors)) = floored {
                self.diagnostics.add_debias_floor(floored, anchors);
            }
            // The positive's softmax share, where the loss sees every instance of the
            // whole batch as is (no policies, two views, not ring-sharded).
            if self.pipeline.is_empty() && views.len() == 2 && !ring {
                let detached = views.iter().map(Tensor::detach).collect::<Vec<_>>();
                if let Some((sum, anchors)) =
                    cfg.loss.positive_share(LossInputs::views(&detached))?
                {
                    self.diagnostics.add_positive_share(sum, anchors);
                }
            }
        }
        Ok((loss, StepExtras::default()))
    }
}

impl Moco {
    /// Queries from the online network, keys from the momentum encoder (Shuffle-BN),
    /// negatives from the queue (mined when policies are configured). With LooC's
    /// families, every embedding space gets its queries, keys and queue.
    fn loss(&mut self, step: &StepInputs<'_>) -> Result<(Tensor, StepExtras)> {
        let cfg = step.cfg;
        let MethodConfig::Moco { shuffle_splits, .. } = cfg.method else {
            bail!("method state and configuration disagree");
        };
        let (_, queries) = step.model.forward_spaces(&step.view(0)?, true)?;
        let queries = queries
            .iter()
            .map(|q| step.world.gather_rows(q))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Views 1 and up through the momentum encoder, each in every space: the key,
        // then FNC's support views or LooC's leave-one-out keys.
        let mut shuffle = step.rng(Stream::KeyShuffle);
        let momentum = (1..step.batch.views.len())
            .map(|v| {
                shuffled_keys(
                    &self.key,
                    &step.view(v)?,
                    shuffle_splits,
                    &mut shuffle,
                    step.world,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let (q, k) = (&queries[0], &momentum[0][0]);
        let support: Vec<Tensor> = if self.space_queues.is_empty() {
            momentum[1..].iter().map(|m| m[0].clone()).collect()
        } else {
            Vec::new()
        };
        let queue = self.queue.keys();
        let mining = QueueBatch::new(
            q,
            k,
            queue,
            step.ids(),
            step.classes(),
            self.queue.ids().to_vec(),
            self.queue.labels().to_vec(),
        )?
        .with_support(&support)?;
        self.pipeline
            .set_progress(step.batch.epoch, cfg.train.epochs);
        let plan = if self.pipeline.is_empty() {
            QueuePlan::new(step.batch.len())
        } else {
            self.pipeline
                .plan_queue(&mining, &mut step.rng(Stream::Mining))?
        };
        self.diagnostics
            .add_queue(&mining, &plan, &mut step.rng(Stream::Diagnostics))?;
        let labels = step.label_tensor()?;
        let loss = match &cfg.loss {
            LossConfig::MocoInfoNce(c) if !self.pipeline.is_empty() => {
                mined_moco_info_nce(q, k, queue, &plan, c.temperature)?
            }
            LossConfig::Looc(c) => {
                // keys[h][j]: key j (view 1 + j) in space h; space h's queue.
                let spaces = queries.len();
                let keys: Vec<Vec<Tensor>> = (0..spaces)
                    .map(|h| momentum.iter().map(|m| m[h].clone()).collect())
                    .collect();
                let negatives: Vec<Tensor> = std::iter::once(&self.queue)
                    .chain(&self.space_queues)
                    .map(|q| q.keys().clone())
                    .collect();
                looc(&queries, &keys, &negatives, c.temperature)?
            }
            _ => cfg.loss.compute(LossInputs {
                views: &[q.clone(), k.clone()],
                labels: labels.as_ref(),
                queue: Some(queue),
                partners: None,
                gates: None,
                log_scale: None,
            })?,
        };
        if step.batch.labels.is_some() {
            let floored = cfg.loss.debias_floored(LossInputs {
                queue: Some(queue),
                ..LossInputs::views(&[q.detach(), k.detach()])
            })?;
            if let Some((floored, anchors)) = floored {
                self.diagnostics.add_debias_floor(floored, anchors);
            }
        }
        // Space h's queue takes the keys positive in it: key h in space h.
        let keys = (0..queries.len()).map(|h| momentum[h][h].clone()).collect();
        Ok((loss, StepExtras { keys, bank: None }))
    }
}

impl Bank {
    /// Invariance Propagation against the memory bank: the first view's embeddings,
    /// their propagated positives and background from the bank.
    fn loss(&mut self, step: &StepInputs<'_>) -> Result<(Tensor, StepExtras)> {
        let (
            LossConfig::InvariancePropagation(c),
            MethodConfig::Bank {
                ramp_epochs,
                gaussian_ramp,
                ..
            },
        ) = (&step.cfg.loss, &step.cfg.method)
        else {
            bail!("method state and configuration disagree");
        };
        let (_, z) = step.model.forward_t(&step.view(0)?, true)?;
        let z = step.world.gather_rows(&z)?;
        // The background is at most the whole bank (a training subset can be smaller
        // than the configured M).
        let capped = contrast_losses::InvPConfig {
            n_background: c.n_background.min(self.bank.len()),
            ..c.clone()
        };
        let weight = ramp(step.batch.epoch, *ramp_epochs, *gaussian_ramp);
        let out = invariance_propagation(
            &z,
            &step.batch.indices,
            self.bank.vectors(),
            &self.neighbours,
            weight,
            &capped,
        )?;
        if let Some(labels) = step.classes() {
            self.diagnostics.add_bank(
                &step.batch.indices,
                &labels,
                self.bank.labels(),
                &out.background,
                &out.positives,
                &mut step.rng(Stream::Diagnostics),
            );
        }
        Ok((
            out.loss,
            StepExtras {
                keys: Vec::new(),
                bank: Some((z.detach(), out.nearest)),
            },
        ))
    }
}

/// Keys of the global batch from the momentum encoder, without gradient, one `[B, D]`
/// per embedding space (one for MoCo, `1 + families` for LooC),
/// given this rank's images `x_local` `[b, ...]`: the batch is gathered and shuffled
/// (one permutation on every rank), each rank encodes its share of the shuffled batch
/// in `splits / ranks` groups (at least one) with their own BatchNorm statistics,
/// and the keys are gathered and put back in order. In one process that is `splits`
/// groups of the shuffled batch; N ranks with `splits = N * g` compute the same keys.
fn shuffled_keys(
    key: &ContrastiveModel,
    x_local: &Tensor,
    splits: usize,
    rng: &mut ChaCha8Rng,
    world: &World,
) -> Result<Vec<Tensor>> {
    let x = world.collective().all_gather(&x_local.detach())?;
    let b = x.dim(0)?;
    let mut perm: Vec<u32> = (0..b as u32).collect();
    perm.shuffle(rng);
    let mut inverse = vec![0u32; b];
    for (pos, &i) in perm.iter().enumerate() {
        inverse[i as usize] = pos as u32;
    }
    let shuffled = x.index_select(&Tensor::from_slice(&perm, b, x.device())?, 0)?;
    let share = b / world.size();
    let mine = shuffled.narrow(0, world.rank() * share, share)?;
    // Groups of at least two keys: BatchNorm needs two values per channel.
    let groups = (splits / world.size()).max(1);
    let size = share.div_ceil(groups.min((share / 2).max(1)));
    let mut parts = Vec::new();
    for start in (0..share).step_by(size) {
        let (_, z) = key.forward_spaces(&mine.narrow(0, start, size.min(share - start))?, true)?;
        // Every space side by side `[g, S * D]`, so that one gather moves them all.
        parts.push(Tensor::cat(&z, 1)?.detach());
    }
    let keys = world.collective().all_gather(&Tensor::cat(&parts, 0)?)?;
    let keys = keys
        .index_select(&Tensor::from_slice(&inverse, b, x.device())?, 0)?
        .detach();
    let d = key.head.out_dim();
    (0..keys.dim(1)? / d)
        .map(|s| Ok(keys.narrow(1, s * d, d)?.contiguous()?))
        .collect()
}
