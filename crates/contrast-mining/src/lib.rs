//! Sampling policies for contrastive learning: which candidates are positives, which
//! negatives count and how much, and which synthetic negatives join them.
//!
//! A [`Pipeline`] of [`PolicyConfig`]s turns a [`MiningBatch`] (normalised anchors and
//! candidates with instance ids and, where known, labels) into a [`MiningPlan`]: the
//! positive targets, candidate weights, hardness, debiasing and synthetic negatives of
//! the generalised InfoNCE, which [`mined_info_nce`] evaluates. Policies run in a
//! documented stage order (see [`policy`]). [`Diagnostics`] judge the plan against
//! labels for reporting only.

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
pub use loss::mined_info_nce;
pub use plan::MiningPlan;
pub use policy::{
    ClusterMode, OnlineKMeans, Pipeline, Policy, PolicyConfig, PositiveChoice, QueueNeeds,
    QueueRow, Stage, Step,
};
pub use queue::{QueueBatch, QueuePlan, mined_moco_info_nce};
