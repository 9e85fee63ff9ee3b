//! Per-epoch records (`metrics.jsonl`) and the run summary (`summary.json`).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Optimiser steps taken by the end of the epoch.
    pub step: u64,
    /// Mean training loss over the epoch.
    pub loss: f64,
    /// Learning rate at the last step.
    pub lr: f64,
    /// Augmented images (all views) processed per second of training.
    pub images_per_sec: f64,
    /// Fraction of the epoch spent waiting for the loader.
    pub data_wait_fraction: f64,
    /// Seconds the epoch's training took (evaluation excluded).
    pub epoch_seconds: f64,
    /// Weighted-kNN top-1 on the test set against `knn_bank` training images.
    pub knn_top1: f64,
    pub knn_bank: usize,
    /// What the negatives were, judged against labels (in-batch methods).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub mining: Option<contrast_mining::DiagnosticsSummary>,
}

/// The whole run's result, `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub dataset: String,
    pub encoder: String,
    pub params: usize,
    pub epochs: usize,
    /// Final weighted kNN (all training images as the bank) on the test set.
    pub knn_top1: f64,
    /// Linear probe on frozen backbone features: test and train accuracy.
    pub linear_top1: f64,
    pub linear_train_top1: f64,
    /// The same kNN on the randomly initialised encoder.
    pub untrained_knn_top1: Option<f64>,
    /// The same kNN and probe on raw (normalised) pixels.
    pub baseline_knn_top1: Option<f64>,
    pub baseline_linear_top1: Option<f64>,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub train_images: usize,
    pub test_images: usize,
    /// Augmented images per second over all training steps.
    pub train_images_per_sec: f64,
    /// Share of training time spent waiting for data.
    pub data_wait_fraction: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub wall_seconds: f64,
    /// The device trained on, with its name (`cpu (<model>, N threads)`,
    /// `cuda:0 (<GPU>)`).
    pub device: String,
    /// The encoders' op set (`fused` or `candle`).
    pub ops: String,
    /// The encoders' arithmetic (`f32` or `bf16`).
    pub precision: String,
}

/// Rewrites `metrics.jsonl` from the records (used after every epoch, so a resumed
/// run never duplicates lines).
/// The keys of a `metrics.jsonl` line that a run determines (everything but
/// wall-clock measurements): a resumed or interrupted run must reproduce them exactly.
pub const DETERMINISTIC_KEYS: [&str; 10] = [
    "epoch",
    "step",
    "loss",
    "lr",
    "knn_top1",
    "neg_false_fraction",
    "neg_sim_mean",
    "neg_sim_p90",
    "fn_identified_precision",
    "nn_positive_precision",
];

/// The [`DETERMINISTIC_KEYS`] of every line of a run's `metrics.jsonl`, as JSON text
/// (`null` where a line has no such key), for exact comparison of two runs.
pub fn deterministic_metrics(path: &Path) -> Result<Vec<Vec<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: a line is not JSON", path.display()))?;
            Ok(DETERMINISTIC_KEYS
                .iter()
                .map(|k| v[*k].to_string())
                .collect())
        })
        .collect()
}

pub fn write_metrics(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        for r in records {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Writes `value` as pretty JSON through a temporary file and a rename.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
