//! Training for Contrast: configuration, model assembly, optimisers and schedules,
//! the training loop with evaluation, checkpoints and reports.
//!
//! [`trainer::run`] executes a [`Config`]; `cargo xtask train` is a thin CLI over it.

pub mod checkpoint;
pub mod config;
pub mod evaluate;
pub mod method;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::Config;
pub use metrics::{EpochRecord, Summary};
pub use trainer::{RunOptions, run};
