//! Sampling policies for contrastive learning: which candidates are positives, which
//! negatives count and how much, and which synthetic negatives join them.
//!
//! A [`Pipeline`] of [`PolicyConfig`]s turns a [`MiningBatch`] (normalised anchors and
//! candidates with instance ids and, where known, labels) into a [`MiningPlan`]: the
//! positive targets, candidate weights, hardness, debiasing and synthetic negatives of
//! the generalised InfoNCE, which [`mined_info_nce`] evaluates. Policies run in a
//! documented stage order (see [`policy`]). [`Diagnostics`] judge the plan against
//! labels for reporting only.
//!
//! Each policy implements [`Policy`] in a file of its own (its in-batch plan and its
//! queue form side by side); [`PolicyConfig`] is the config's serde form and
//! [`PolicyConfig::build`] registers every policy. The decisions the policies share
//! with the losses (FNC's identification, Ring's band, HCL's weights) are
//! `contrast_losses::sampling`'s.
//!
//! # Example
//!
//! False negatives with known labels removed, the rest weighted by hardness:
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use contrast_mining::policy::{Hcl, LabelAware};
//! use contrast_mining::{MiningBatch, Pipeline, PolicyConfig, mined_info_nce};
//! use rand::SeedableRng;
//!
//! let dev = Device::Cpu;
//! let views = [
//!     Tensor::randn(0f32, 1.0, (6, 8), &dev)?,
//!     Tensor::randn(0f32, 1.0, (6, 8), &dev)?,
//! ];
//! let ids: [i64; 6] = [0, 1, 2, 3, 4, 5];
//! let labels: [i64; 6] = [0, 0, 1, 1, 2, 2];
//! let batch = MiningBatch::in_batch(&views, &ids, Some(&labels))?;
//! let policies = vec![
//!     PolicyConfig::Hcl(Hcl::new(1.0)),
//!     PolicyConfig::LabelAware(LabelAware {}),
//! ];
//! let mut pipeline = Pipeline::new(policies)?;
//! // Stages order the list: label_aware (removal) runs before hcl (weighting).
//! let names: Vec<&str> = pipeline.policies().map(|p| p.name()).collect();
//! assert_eq!(names, ["label_aware", "hcl"]);
//!
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let plan = pipeline.plan(&batch, &mut rng)?;
//! // Anchor 0 (label 0) keeps every candidate of another label and no other view
//! // of label 0 but its own positive (candidate 6, its second view).
//! let kept = plan.kept_negatives(0);
//! assert!(kept.iter().all(|&c| labels[c % 6] != 0));
//! assert_eq!(kept.len(), 8);
//! let z = Tensor::cat(&views, 0)?;
//! let loss = mined_info_nce(&z, &z, &plan, 0.2)?.to_scalar::<f32>()?;
//! assert!(loss.is_finite() && loss > 0.0);
//! # Ok::<(), contrast_mining::MiningError>(())
//! ```

pub mod batch;
pub mod diagnostics;
pub mod error;
pub mod loss;
pub mod plan;
pub mod policy;
pub mod queue;

pub use batch::MiningBatch;
pub use diagnostics::{Diagnostics, DiagnosticsSummary};
pub use error::{MiningError, Result};
pub use loss::{mined_debias_floored, mined_info_nce};
pub use plan::MiningPlan;
pub use policy::{
    ClusterMode, OnlineKMeans, Pipeline, Policy, PolicyConfig, PositiveChoice, QueueNeeds,
    QueueRow, Stage, Step,
};
pub use queue::{QueueBatch, QueuePlan, mined_moco_info_nce};
