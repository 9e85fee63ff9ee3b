//! Sampling policies and their order of application.
//!
//! A policy is a type implementing [`Policy`], in a file of its own that holds what it
//! reads (labels or not), its in-batch plan and, where it has one, its plan over a MoCo
//! queue, side by side. [`PolicyConfig`] is only the serde form of the config list: its
//! [`PolicyConfig::build`] is the one place a policy is registered. To add a policy,
//! write its file (a params struct deriving `Deserialize`, and `impl Policy` with
//! [`Policy::plan`]) and add one variant and one arm to [`PolicyConfig`].
//!
//! Policies run in stages ([`Stage`]), whatever their order in the config list (stable
//! within a stage):
//!
//! 1. **positives**: `supervised` (same-label candidates become positives), `fnc` with
//!    attraction (identified false negatives become positives);
//! 2. **removal**: `label_aware` (same-label candidates leave the negatives), `fnc` with
//!    elimination, `cluster` with `remove_same`;
//! 3. **selection** among the remaining negatives: `cluster` with `restrict_to_same`,
//!    `top_k`, `ring`, `semi_hard`, `batch_hard`, `batch_easy_hard`,
//!    `multi_similarity`;
//! 4. **weighting**: `cluster` with `downweight_same`, `hcl` (hardness), `debias`
//!    (class-prior correction);
//! 5. **synthesis**: `mochi` (mixed hard negatives, detached, never enqueued);
//! 6. **anchors**: `nearest_neighbour` (NNCLR: the anchor is replaced by its nearest
//!    past embedding).
//!
//! So identification always sees the full candidate set, selection sees what
//! cancellation left, weights apply to the selected negatives, synthetic points are
//! mixed from the final hardest negatives, and every decision is made on the batch's
//! own similarities before an anchor is swapped for its neighbour.

mod cluster;
mod debias;
mod fnc;
mod hcl;
mod label_aware;
mod mochi;
mod multi_similarity;
mod nearest_neighbour;
mod queue_pass;
mod ring;
mod selection;
mod semi_hard;
mod supervised;
mod top_k;
mod triplet;

pub use cluster::{Cluster, ClusterMode, OnlineKMeans};
pub use debias::Debias;
pub use fnc::Fnc;
pub use hcl::Hcl;
pub use label_aware::LabelAware;
pub use mochi::Mochi;
pub use multi_similarity::MultiSimilarity;
pub use nearest_neighbour::NearestNeighbour;
pub use ring::Ring;
pub use semi_hard::SemiHard;
pub use supervised::Supervised;
pub use top_k::TopK;
pub use triplet::{BatchEasyHard, BatchHard, PositiveChoice};

use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use crate::queue::{QueueBatch, QueuePlan};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Debug;

/// When a policy runs (see the module documentation); policies run in stage order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Positives = 1,
    Removal = 2,
    Selection = 3,
    Weighting = 4,
    Synthesis = 5,
    Anchors = 6,
}

/// What one step lends every policy: the step's random stream (k-means seeding,
/// MoCHi's mixing weights). A policy's own random state is seeded once through
/// [`Policy::set_seed`].
#[derive(Debug)]
pub struct Step<'a> {
    pub rng: &'a mut ChaCha8Rng,
}

/// What a policy's queue form needs the row pass to provide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueNeeds {
    /// The similarities of each query's support set (its key and the support views)
    /// to the queue (FNC); also records the identified entries for diagnostics.
    pub support_sims: bool,
    /// Synthetic points per query (MoCHi), which needs the raw queue and query rows.
    pub synthetic: usize,
}

/// One query's view of a queue step, handed to every policy's
/// [`Policy::plan_queue_row`] in stage order.
#[derive(Debug)]
pub struct QueueRow<'a> {
    /// The query's index `i` in `0..queries`.
    pub query: usize,
    pub queries: usize,
    /// Cosine of the query to every queue entry `[K]`.
    pub sims: &'a [f32],
    /// Cosines of the query's support set to every queue entry, `[K]` each: its key,
    /// then each support view; empty unless a policy asked.
    pub support_sims: &'a [&'a [f32]],
    /// Cosine of the query to its own key.
    pub positive_sim: f32,
    pub batch: &'a QueueBatch,
    pub plan: &'a mut QueuePlan,
    /// Entries identified as false negatives of this query (diagnostics).
    pub identified: &'a mut Vec<u32>,
    /// Queue rows `[K * D]` and this query's row `[D]`, when synthesis was asked for.
    pub vectors: Option<(&'a [f32], &'a [f32])>,
    /// This query's synthetic points `[S * D]`.
    pub synthetic: &'a mut [f32],
    pub rng: &'a mut ChaCha8Rng,
}

/// A sampling policy: it edits a [`MiningPlan`] for in-batch candidates and, if it has
/// a queue form, a [`QueuePlan`] one query at a time.
pub trait Policy: Debug + Send {
    /// The policy's name in configs.
    fn name(&self) -> &'static str;

    /// The stage it runs in.
    fn stage(&self) -> Stage;

    /// Whether it reads class labels to decide (never only for diagnostics).
    fn reads_labels(&self) -> bool {
        false
    }

    /// Checks the parameters; an error names the bad one.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Sets the seed of the policy's own random state (not its per-step draws, which
    /// come from [`Step::rng`]).
    fn set_seed(&mut self, _seed: u64) {}

    /// Told before each step which epoch (0-based) of how many the training is in,
    /// for policies with a schedule (MoCHi's warm-up, Ring's annealed band).
    fn set_progress(&mut self, _epoch: usize, _epochs: usize) {}

    /// Edits the in-batch plan. Stateful policies update their state.
    fn plan(
        &mut self,
        batch: &MiningBatch,
        plan: &mut MiningPlan,
        step: &mut Step<'_>,
    ) -> Result<()>;

    /// Whether the policy has a queue form.
    fn on_queue(&self) -> bool {
        false
    }

    /// What the queue form needs computed for each row.
    fn queue_needs(&self) -> QueueNeeds {
        QueueNeeds::default()
    }

    /// Runs once per queue step, before the rows.
    fn prepare_queue(&self, _batch: &QueueBatch, _plan: &mut QueuePlan) -> Result<()> {
        Ok(())
    }

    /// Edits one query's part of the queue plan.
    fn plan_queue_row(&self, _row: &mut QueueRow<'_>) -> Result<()> {
        Err(not_on_queue(self.name()))
    }

    /// The policy's state as named tensors, for checkpoints (empty when stateless).
    fn state(&self, _device: &Device) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }

    /// Restores [`Policy::state`].
    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Err(invalid(
            "state",
            format!("policy `{}` keeps no state", self.name()),
        ))
    }
}

fn not_on_queue(name: &str) -> crate::error::MiningError {
    invalid(
        "mining",
        format!("`{name}` works on in-batch candidates, not on a queue"),
    )
}

/// One policy and its parameters, tagged by `name` in configs. This enum is the
/// serde form only; [`PolicyConfig::build`] makes the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum PolicyConfig {
    Supervised(Supervised),
    Fnc(Fnc),
    LabelAware(LabelAware),
    Cluster(Cluster),
    TopK(TopK),
    Ring(Ring),
    SemiHard(SemiHard),
    BatchHard(BatchHard),
    BatchEasyHard(BatchEasyHard),
    MultiSimilarity(MultiSimilarity),
    Hcl(Hcl),
    Debias(Debias),
    Mochi(Mochi),
    NearestNeighbour(NearestNeighbour),
}

impl PolicyConfig {
    /// The policy this config describes, with fresh state: the registration of every
    /// policy.
    pub fn build(&self) -> Box<dyn Policy> {
        match self {
            PolicyConfig::Supervised(p) => Box::new(p.clone()),
            PolicyConfig::Fnc(p) => Box::new(p.clone()),
            PolicyConfig::LabelAware(p) => Box::new(p.clone()),
            PolicyConfig::Cluster(p) => Box::new(cluster::Clustering::new(p.clone())),
            PolicyConfig::TopK(p) => Box::new(p.clone()),
            PolicyConfig::Ring(p) => Box::new(p.clone()),
            PolicyConfig::SemiHard(p) => Box::new(p.clone()),
            PolicyConfig::BatchHard(p) => Box::new(p.clone()),
            PolicyConfig::BatchEasyHard(p) => Box::new(p.clone()),
            PolicyConfig::MultiSimilarity(p) => Box::new(p.clone()),
            PolicyConfig::Hcl(p) => Box::new(p.clone()),
            PolicyConfig::Debias(p) => Box::new(p.clone()),
            PolicyConfig::Mochi(p) => Box::new(p.clone()),
            PolicyConfig::NearestNeighbour(p) => {
                Box::new(nearest_neighbour::Neighbours::new(p.clone()))
            }
        }
    }

    /// The policy's name in configs.
    pub fn name(&self) -> &'static str {
        self.build().name()
    }

    /// The stage the policy runs in.
    pub fn stage(&self) -> Stage {
        self.build().stage()
    }

    /// Whether the policy reads class labels to decide (never only for diagnostics).
    pub fn uses_labels(&self) -> bool {
        self.build().reads_labels()
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        self.build().validate()
    }
}

/// An ordered list of policies and their state (k-means centroids, NNCLR support).
#[derive(Debug, Default)]
pub struct Pipeline {
    configs: Vec<PolicyConfig>,
    policies: Vec<Box<dyn Policy>>,
}

impl Pipeline {
    /// Validates the policies and orders them by stage (stable within a stage).
    pub fn new(mut configs: Vec<PolicyConfig>) -> Result<Self> {
        for p in &configs {
            p.validate()
                .map_err(|e| crate::error::MiningError::Policy {
                    policy: p.name(),
                    source: Box::new(e),
                })?;
        }
        configs.sort_by_key(|p| p.stage());
        let policies = configs.iter().map(PolicyConfig::build).collect();
        Ok(Self { configs, policies })
    }

    /// Sets the seed of the policies' own random state (the NNCLR support's initial
    /// keys); per-step randomness comes from the RNG given to [`Pipeline::plan`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        for p in &mut self.policies {
            p.set_seed(seed);
        }
        self
    }

    /// The policies in application order.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &PolicyConfig> {
        self.configs.iter()
    }

    /// Whether no policy is configured (plain instance discrimination).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The plan for `batch`: instance discrimination, then every policy in order.
    /// Stateful policies update their state.
    /// Tells every policy the training's progress (see [`Policy::set_progress`]).
    pub fn set_progress(&mut self, epoch: usize, epochs: usize) {
        for p in &mut self.policies {
            p.set_progress(epoch, epochs);
        }
    }

    pub fn plan(&mut self, batch: &MiningBatch, rng: &mut ChaCha8Rng) -> Result<MiningPlan> {
        let mut plan = batch.default_plan();
        let mut step = Step { rng };
        for p in &mut self.policies {
            p.plan(batch, &mut plan, &mut step)?;
        }
        Ok(plan)
    }

    /// The plan for a queue step (MoCo): every policy's queue form in stage order; a
    /// policy without one is an error naming it.
    pub fn plan_queue(&self, batch: &QueueBatch, rng: &mut ChaCha8Rng) -> Result<QueuePlan> {
        self.check_queue()?;
        queue_pass::plan_queue(&self.policies, batch, rng)
    }

    /// Checks that every policy has a queue form.
    pub fn check_queue(&self) -> Result<()> {
        match self.policies.iter().find(|p| !p.on_queue()) {
            Some(p) => Err(not_on_queue(p.name())),
            None => Ok(()),
        }
    }

    /// The stateful policies' state as named tensors (`<position>.<name>.<tensor>`),
    /// for checkpoints.
    pub fn state(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, p) in self.policies.iter().enumerate() {
            for (k, v) in p.state(device)? {
                out.insert(format!("{i}.{}.{k}", p.name()), v);
            }
        }
        Ok(out)
    }

    /// Restores [`Pipeline::state`] into a pipeline of the same configuration. State
    /// that no policy of this pipeline claims (a checkpoint of another mining list) is
    /// an error naming it, never silently dropped.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let claimed: Vec<String> = self
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{i}.{}.", p.name()))
            .collect();
        let mut stray: Vec<&String> = state
            .keys()
            .filter(|k| !claimed.iter().any(|c| k.starts_with(c.as_str())))
            .collect();
        if !stray.is_empty() {
            stray.sort();
            return Err(invalid(
                "state",
                format!(
                    "mining state {stray:?} belongs to no configured policy (policies in order: {claimed:?})"
                ),
            ));
        }
        for (i, p) in self.policies.iter_mut().enumerate() {
            let prefix = format!("{i}.{}.", p.name());
            let mine: HashMap<String, Tensor> = state
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
                .collect();
            if !mine.is_empty() {
                p.load_state(&mine)?;
            }
        }
        Ok(())
    }
}
