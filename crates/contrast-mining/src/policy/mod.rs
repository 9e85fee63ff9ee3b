//! Sampling policies and their order of application.
//!
//! A policy edits a [`MiningPlan`]. Policies run in stages, whatever their order in the
//! config list (stable within a stage):
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
mod fnc;
mod labels;
mod mochi;
mod neighbour;
mod on_queue;
mod selection;

pub use cluster::{ClusterMode, OnlineKMeans};
pub use labels::PositiveChoice;

use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use crate::queue::{QueueBatch, QueuePlan};
use candle_core::{Device, Tensor};
use contrast_losses::{Aggregation, Cancellation};
use contrast_memory::KeyQueue;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One policy and its parameters, tagged by `name` in configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// Same-label candidates are positives (SupCon); needs labels.
    Supervised,
    /// False negative cancellation: candidates whose similarity to the anchor's image
    /// (max or mean over its views) is among the `topk` highest and/or above
    /// `threshold` are attracted (made positives) or eliminated (removed).
    Fnc {
        #[serde(default)]
        topk: Option<usize>,
        #[serde(default)]
        threshold: Option<f64>,
        #[serde(default = "default_aggregation")]
        aggregation: Aggregation,
        #[serde(default = "default_cancellation")]
        cancellation: Cancellation,
    },
    /// Same-label candidates are not negatives (CrossBatchMemory-style); needs labels.
    LabelAware,
    /// Online spherical k-means with `k` centroids (moved by `lr` per step, seeded once
    /// the mean pair cosine is below `start_below`); the cluster id removes,
    /// restricts or down-weights (to `same_weight`) negatives.
    Cluster {
        k: usize,
        #[serde(default = "default_cluster_lr")]
        lr: f64,
        #[serde(default = "default_cluster_mode")]
        mode: ClusterMode,
        #[serde(default = "default_start_below")]
        start_below: f64,
        #[serde(default = "default_same_weight")]
        same_weight: f64,
    },
    /// Keep only the `k` most similar negatives.
    TopK { k: usize },
    /// Keep negatives ranked in `[floor(inner * outer_size), outer_size)`,
    /// `outer_size = floor(outer * count)` (Ring).
    Ring { outer: f64, inner: f64 },
    /// Keep negatives with `s_pos - margin < s < s_pos` (FaceNet's semi-hard band;
    /// `s_pos` is the anchor's mean positive similarity); all are kept when none is.
    SemiHard { margin: f64 },
    /// Metric learning: the hardest (least similar) same-label positive and the
    /// hardest (most similar) different-label negative; needs labels.
    BatchHard,
    /// Metric learning: the easiest (most similar) same-label positive and the
    /// hardest different-label negative; needs labels.
    BatchEasyHard,
    /// Multi-similarity mining: keep negatives with `s > min_pos - epsilon` and
    /// positives with `s < max_neg + epsilon`; needs labels.
    MultiSimilarity {
        #[serde(default = "default_epsilon")]
        epsilon: f64,
    },
    /// HCL importance weights `exp(beta l) / mean(exp(beta l))` over negatives.
    Hcl { beta: f64 },
    /// Debiasing with class prior `tau_plus` (Chuang et al.).
    Debias { tau_plus: f64 },
    /// MoCHi: from each anchor's `n_hardest` negatives, `mixes` points mixing two of
    /// them and `query_mixes` points mixing one with the anchor (its weight below 0.5).
    Mochi {
        n_hardest: usize,
        mixes: usize,
        query_mixes: usize,
    },
    /// NNCLR: anchors are replaced by their nearest neighbour in a FIFO support of
    /// `support_size` past anchors.
    NearestNeighbour {
        #[serde(default = "default_support_size")]
        support_size: usize,
    },
}

fn default_aggregation() -> Aggregation {
    Aggregation::Max
}

fn default_cancellation() -> Cancellation {
    Cancellation::Elimination
}

fn default_epsilon() -> f64 {
    0.1
}

fn default_cluster_lr() -> f64 {
    0.1
}

fn default_cluster_mode() -> ClusterMode {
    ClusterMode::RemoveSame
}

fn default_start_below() -> f64 {
    1.0
}

fn default_same_weight() -> f64 {
    0.5
}

fn default_support_size() -> usize {
    8192
}

impl PolicyConfig {
    /// The policy's name in configs.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyConfig::Supervised => "supervised",
            PolicyConfig::Fnc { .. } => "fnc",
            PolicyConfig::LabelAware => "label_aware",
            PolicyConfig::Cluster { .. } => "cluster",
            PolicyConfig::TopK { .. } => "top_k",
            PolicyConfig::Ring { .. } => "ring",
            PolicyConfig::SemiHard { .. } => "semi_hard",
            PolicyConfig::BatchHard => "batch_hard",
            PolicyConfig::BatchEasyHard => "batch_easy_hard",
            PolicyConfig::MultiSimilarity { .. } => "multi_similarity",
            PolicyConfig::Hcl { .. } => "hcl",
            PolicyConfig::Debias { .. } => "debias",
            PolicyConfig::Mochi { .. } => "mochi",
            PolicyConfig::NearestNeighbour { .. } => "nearest_neighbour",
        }
    }

    /// The stage the policy runs in (see the module documentation).
    pub fn stage(&self) -> u8 {
        match self {
            PolicyConfig::Supervised => 1,
            PolicyConfig::Fnc { cancellation, .. } => match cancellation {
                Cancellation::Attraction => 1,
                Cancellation::Elimination => 2,
            },
            PolicyConfig::LabelAware => 2,
            PolicyConfig::Cluster { mode, .. } => match mode {
                ClusterMode::RemoveSame => 2,
                ClusterMode::RestrictToSame => 3,
                ClusterMode::DownweightSame => 4,
            },
            PolicyConfig::TopK { .. }
            | PolicyConfig::Ring { .. }
            | PolicyConfig::SemiHard { .. }
            | PolicyConfig::BatchHard
            | PolicyConfig::BatchEasyHard
            | PolicyConfig::MultiSimilarity { .. } => 3,
            PolicyConfig::Hcl { .. } | PolicyConfig::Debias { .. } => 4,
            PolicyConfig::Mochi { .. } => 5,
            PolicyConfig::NearestNeighbour { .. } => 6,
        }
    }

    /// Whether the policy reads class labels to decide (never only for diagnostics).
    pub fn uses_labels(&self) -> bool {
        matches!(
            self,
            PolicyConfig::Supervised
                | PolicyConfig::LabelAware
                | PolicyConfig::BatchHard
                | PolicyConfig::BatchEasyHard
                | PolicyConfig::MultiSimilarity { .. }
        )
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            PolicyConfig::Fnc {
                topk, threshold, ..
            } if topk.is_none() && threshold.is_none() => {
                Err(invalid("topk", "fnc needs topk, threshold or both"))
            }
            PolicyConfig::Cluster { k, .. } if *k < 2 => {
                Err(invalid("k", format!("cluster needs k >= 2, got {k}")))
            }
            PolicyConfig::Cluster { same_weight, .. } if !(0.0..=1.0).contains(same_weight) => {
                Err(invalid(
                    "same_weight",
                    format!("cluster needs same_weight in [0, 1], got {same_weight}"),
                ))
            }
            PolicyConfig::Cluster { lr, .. } if !(*lr > 0.0 && *lr <= 1.0) => Err(invalid(
                "lr",
                format!("cluster needs lr in (0, 1], got {lr}"),
            )),
            PolicyConfig::TopK { k } if *k == 0 => Err(invalid("k", "top_k needs k >= 1")),
            PolicyConfig::Ring { outer, inner }
                if !(*outer > 0.0 && *outer <= 1.0 && (0.0..1.0).contains(inner)) =>
            {
                Err(invalid(
                    "outer",
                    format!("ring needs outer in (0, 1] and inner in [0, 1), got {outer}, {inner}"),
                ))
            }
            PolicyConfig::SemiHard { margin } if margin.is_nan() || *margin <= 0.0 => {
                Err(invalid("margin", format!("{margin} must be > 0")))
            }
            PolicyConfig::MultiSimilarity { epsilon } if epsilon.is_nan() || *epsilon < 0.0 => {
                Err(invalid("epsilon", format!("{epsilon} must be >= 0")))
            }
            PolicyConfig::Hcl { beta } if beta.is_nan() || *beta < 0.0 => {
                Err(invalid("beta", format!("{beta} must be >= 0")))
            }
            PolicyConfig::Debias { tau_plus } if !(0.0..1.0).contains(tau_plus) => {
                Err(invalid("tau_plus", format!("{tau_plus} is outside [0, 1)")))
            }
            PolicyConfig::Mochi {
                n_hardest,
                mixes,
                query_mixes,
            } if *n_hardest < 2 || mixes + query_mixes == 0 => Err(invalid(
                "n_hardest",
                "mochi needs n_hardest >= 2 and at least one mixed point",
            )),
            PolicyConfig::NearestNeighbour { support_size } if *support_size == 0 => Err(invalid(
                "support_size",
                "nearest_neighbour needs support_size >= 1",
            )),
            _ => Ok(()),
        }
    }
}

/// What a stateful policy carries from step to step.
#[derive(Debug, Clone, Default)]
enum PolicyState {
    #[default]
    Stateless,
    KMeans(OnlineKMeans),
    Support(Option<KeyQueue>),
}

/// A policy with its state.
#[derive(Debug, Clone)]
struct Policy {
    config: PolicyConfig,
    state: PolicyState,
}

impl Policy {
    fn apply(
        &mut self,
        batch: &MiningBatch,
        plan: &mut MiningPlan,
        rng: &mut ChaCha8Rng,
        seed: u64,
    ) -> Result<()> {
        match (&self.config, &mut self.state) {
            (PolicyConfig::Supervised, _) => labels::supervised(batch, plan),
            (
                PolicyConfig::Fnc {
                    topk,
                    threshold,
                    aggregation,
                    cancellation,
                },
                _,
            ) => fnc::fnc(batch, plan, *topk, *threshold, *aggregation, *cancellation),
            (PolicyConfig::LabelAware, _) => labels::label_aware(batch, plan),
            (
                PolicyConfig::Cluster {
                    k,
                    lr,
                    mode,
                    start_below,
                    same_weight,
                },
                PolicyState::KMeans(state),
            ) => {
                let params = cluster::ClusterParams {
                    k: *k,
                    lr: *lr,
                    mode: *mode,
                    start_below: *start_below,
                    same_weight: *same_weight,
                };
                cluster::cluster(batch, plan, state, params, rng)
            }
            (PolicyConfig::TopK { k }, _) => {
                selection::top_k(batch, plan, *k);
                Ok(())
            }
            (PolicyConfig::Ring { outer, inner }, _) => {
                selection::ring(batch, plan, *outer, *inner);
                Ok(())
            }
            (PolicyConfig::SemiHard { margin }, _) => {
                selection::semi_hard(batch, plan, *margin);
                Ok(())
            }
            (PolicyConfig::BatchHard, _) => {
                labels::triplet(batch, plan, PositiveChoice::Hardest, "batch_hard")
            }
            (PolicyConfig::BatchEasyHard, _) => {
                labels::triplet(batch, plan, PositiveChoice::Easiest, "batch_easy_hard")
            }
            (PolicyConfig::MultiSimilarity { epsilon }, _) => {
                labels::multi_similarity(batch, plan, *epsilon)
            }
            (PolicyConfig::Hcl { beta }, _) => {
                plan.hardness_beta = Some(*beta);
                Ok(())
            }
            (PolicyConfig::Debias { tau_plus }, _) => {
                plan.tau_plus = Some(*tau_plus);
                Ok(())
            }
            (
                PolicyConfig::Mochi {
                    n_hardest,
                    mixes,
                    query_mixes,
                },
                _,
            ) => mochi::mochi(batch, plan, *n_hardest, *mixes, *query_mixes, rng),
            (PolicyConfig::NearestNeighbour { support_size }, PolicyState::Support(queue)) => {
                neighbour::nearest_neighbour(batch, plan, queue, *support_size, seed)
            }
            (config, _) => Err(invalid(
                "policy",
                format!("`{}` has no state", config.name()),
            )),
        }
    }
}

/// An ordered list of policies and their state (k-means centroids, NNCLR support).
#[derive(Debug, Clone, Default)]
pub struct Pipeline {
    policies: Vec<Policy>,
    seed: u64,
}

impl Pipeline {
    /// Validates the policies and orders them by stage (stable within a stage).
    pub fn new(mut policies: Vec<PolicyConfig>) -> Result<Self> {
        for p in &policies {
            p.validate()?;
        }
        policies.sort_by_key(|p| p.stage());
        let policies = policies
            .into_iter()
            .map(|config| {
                let state = match config {
                    PolicyConfig::Cluster { .. } => PolicyState::KMeans(OnlineKMeans::default()),
                    PolicyConfig::NearestNeighbour { .. } => PolicyState::Support(None),
                    _ => PolicyState::Stateless,
                };
                Policy { config, state }
            })
            .collect();
        Ok(Self { policies, seed: 0 })
    }

    /// Sets the seed of the policies' own random state (the NNCLR support's initial
    /// keys); per-step randomness comes from the RNG given to [`Pipeline::plan`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The policies in application order.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &PolicyConfig> {
        self.policies.iter().map(|p| &p.config)
    }

    /// Whether no policy is configured (plain instance discrimination).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The plan for `batch`: instance discrimination, then every policy in order.
    /// Stateful policies update their state.
    pub fn plan(&mut self, batch: &MiningBatch, rng: &mut ChaCha8Rng) -> Result<MiningPlan> {
        let mut plan = batch.default_plan();
        let seed = self.seed;
        for p in &mut self.policies {
            p.apply(batch, &mut plan, rng, seed)?;
        }
        Ok(plan)
    }

    /// The plan for a queue step (MoCo): the policies with a queue form
    /// (`fnc`, `label_aware`, `top_k`, `ring`, `semi_hard`, `mochi`) in stage order;
    /// any other policy is an error naming it.
    pub fn plan_queue(&self, batch: &QueueBatch, rng: &mut ChaCha8Rng) -> Result<QueuePlan> {
        let configs: Vec<PolicyConfig> = self.policies().cloned().collect();
        on_queue::plan_queue(&configs, batch, rng)
    }

    /// Checks that every policy has a queue form.
    pub fn check_queue(&self) -> Result<()> {
        match self.policies().find(|p| !on_queue::applies_to_queue(p)) {
            Some(p) => Err(invalid(
                "mining",
                format!(
                    "`{}` works on in-batch candidates, not on a queue",
                    p.name()
                ),
            )),
            None => Ok(()),
        }
    }

    /// The stateful policies' state as named tensors (`<position>.<name>.<tensor>`),
    /// for checkpoints.
    pub fn state(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, p) in self.policies.iter().enumerate() {
            let tensors = match &p.state {
                PolicyState::Stateless | PolicyState::Support(None) => continue,
                PolicyState::KMeans(k) => k.state(device)?,
                PolicyState::Support(Some(q)) => q.state()?,
            };
            for (k, v) in tensors {
                out.insert(format!("{i}.{}.{k}", p.config.name()), v);
            }
        }
        Ok(out)
    }

    /// Restores [`Pipeline::state`] into a pipeline of the same configuration.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, p) in self.policies.iter_mut().enumerate() {
            let prefix = format!("{i}.{}.", p.config.name());
            let mine: HashMap<String, Tensor> = state
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
                .collect();
            if mine.is_empty() {
                continue;
            }
            match (&p.config, &mut p.state) {
                (_, PolicyState::KMeans(k)) => k.load_state(&mine)?,
                (PolicyConfig::NearestNeighbour { support_size }, PolicyState::Support(q)) => {
                    let keys = mine
                        .get("keys")
                        .ok_or_else(|| invalid("state", "missing support `keys`"))?;
                    let mut queue =
                        KeyQueue::new(*support_size, keys.dim(1)?, self.seed, keys.device())?;
                    queue.load_state(&mine)?;
                    *q = Some(queue);
                }
                _ => {
                    return Err(invalid(
                        "state",
                        format!("policy `{}` keeps no state", p.config.name()),
                    ));
                }
            }
        }
        Ok(())
    }
}
