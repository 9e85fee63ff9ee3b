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
    /// Share (0 to 1) of the machine's CPU time that went to anything but this
    /// process while the epoch trained (or, for an epoch resumed mid-way, its last
    /// stretch): above a few percent, its timings were disturbed. `None` where the
    /// operating system does not say ([`crate::contention`]).
    #[serde(default)]
    pub others_cpu_share: Option<f64>,
    /// Weighted-kNN top-1 on the monitored split against `knn_bank` training images
    /// (`None` for unlabeled data).
    pub knn_top1: Option<f64>,
    pub knn_bank: usize,
    /// The split the monitor read: `validation` when configured, else `test`.
    #[serde(default = "test_split")]
    pub knn_split: String,
    /// Uniformity, effective rank and alignment (on its first 1,000 images) of the
    /// monitored split's representations; they need no labels.
    #[serde(default)]
    pub uniformity: Option<f64>,
    #[serde(default)]
    pub effective_rank: Option<f64>,
    #[serde(default)]
    pub alignment: Option<f64>,
    /// What the negatives were, judged against labels (in-batch methods).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub mining: Option<contrast_mining::DiagnosticsSummary>,
}

/// The mean of the epochs' [`EpochRecord::others_cpu_share`] weighted by their
/// training seconds, over the epochs that have one.
pub fn others_cpu_share(history: &[EpochRecord]) -> Option<f64> {
    let (shared, seconds) = history
        .iter()
        .filter_map(|r| Some((r.others_cpu_share? * r.epoch_seconds, r.epoch_seconds)))
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    (seconds > 0.0).then(|| shared / seconds)
}

fn test_split() -> String {
    "test".into()
}

/// The whole run's result, `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    /// The command line that started the run, when known.
    pub command: Option<String>,
    /// The source revision of the build (`git` commit), when known.
    pub commit: Option<String>,
    /// The version of `contrast-train`.
    pub version: String,
    pub seed: u64,
    pub dataset: String,
    /// `model.encoder` as configured.
    pub encoder: serde_json::Value,
    pub params: usize,
    pub epochs: usize,
    /// True when the training and test images have class labels (else kNN and the
    /// probe are `null`).
    pub labelled: bool,
    /// Final weighted kNN (all training images as the bank) on the test set.
    pub knn_top1: Option<f64>,
    /// The same kNN on the validation split (when there is one), comparable with
    /// [`Summary::untrained_knn_top1`].
    #[serde(default)]
    pub validation_knn_top1: Option<f64>,
    /// Linear probe on frozen backbone features: test and train accuracy.
    pub linear_top1: Option<f64>,
    pub linear_train_top1: Option<f64>,
    /// Uniformity (Wang & Isola, t = 2) of the test representations.
    pub uniformity: Option<f64>,
    /// Effective rank (RankMe) of the test representations.
    pub effective_rank: Option<f64>,
    /// The kNN of the randomly initialised encoder on the monitored split, with all
    /// training images as the bank.
    pub untrained_knn_top1: Option<f64>,
    /// The split the per-epoch monitor read (`validation` or `test`).
    pub monitor_split: String,
    /// The same kNN and probe on raw (normalised) pixels.
    pub baseline_knn_top1: Option<f64>,
    pub baseline_linear_top1: Option<f64>,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub train_images: usize,
    pub validation_images: Option<usize>,
    pub test_images: usize,
    /// Image files that could not be decoded and were left out.
    pub skipped_files: usize,
    /// Files of `embeddings/` written at the end, relative to the run directory.
    pub embeddings: Vec<String>,
    /// Augmented images per second over all training steps.
    pub train_images_per_sec: f64,
    /// Share of training time spent waiting for data.
    pub data_wait_fraction: f64,
    /// The epochs' [`EpochRecord::others_cpu_share`], weighted by their training
    /// seconds: how much of the machine other processes took while this run trained.
    #[serde(default)]
    pub others_cpu_share: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// Wall-clock seconds of the whole run, summed over the processes that trained
    /// it when it was resumed (each up to the checkpoint the next one continued).
    pub wall_seconds: f64,
    /// The device trained on, with its name (`cpu (<model>, N threads)`,
    /// `cuda:0 (<GPU>)`).
    pub device: String,
    /// The encoders' op set (`fused` or `candle`).
    pub ops: String,
    /// The encoders' arithmetic (`f32` or `bf16`).
    pub precision: String,
    /// Data-parallel ranks (1: one process), each on a `device` like this one.
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

/// The keys of a `metrics.jsonl` line that a run determines (everything but
/// wall-clock measurements): a resumed or interrupted run must reproduce them exactly.
pub const DETERMINISTIC_KEYS: [&str; 15] = [
    "epoch",
    "step",
    "loss",
    "lr",
    "knn_top1",
    "uniformity",
    "effective_rank",
    "alignment",
    "neg_false_fraction",
    "neg_sim_mean",
    "neg_sim_p90",
    "fn_identified_precision",
    "nn_positive_precision",
    "debias_floor_share",
    "positive_share",
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

/// Rewrites `dir/metrics.jsonl` and `dir/metrics.csv` from the records (after every
/// epoch, so a resumed run never duplicates lines). The CSV has a column for every key
/// any record has (mining diagnostics appear with the method that has them), in
/// first-seen order, and an empty cell where a record lacks one.
pub fn write_metrics(dir: &Path, records: &[EpochRecord]) -> Result<()> {
    let rows: Vec<serde_json::Map<String, serde_json::Value>> = records
        .iter()
        .map(|r| match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => unreachable!("a record serialises to an object"),
            Err(e) => Err(e),
        })
        .collect::<std::result::Result<_, _>>()?;
    let mut jsonl = Vec::new();
    for r in &rows {
        serde_json::to_writer(&mut jsonl, r)?;
        jsonl.push(b'\n');
    }
    replace(&dir.join("metrics.jsonl"), &jsonl)?;
    // The record's own fields first, in their order; then any diagnostics, by name.
    let mut columns: Vec<&str> = CSV_LEADING.to_vec();
    let mut rest: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.keys().map(String::as_str))
        .filter(|k| !CSV_LEADING.contains(k))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    columns.extend(rest);
    let mut csv = columns.join(",");
    csv.push('\n');
    for r in &rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match r.get(*c) {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => csv_cell(s),
                Some(v) => csv_cell(&v.to_string()),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    replace(&dir.join("metrics.csv"), csv.as_bytes())
}

/// The first columns of `metrics.csv`: [`EpochRecord`]'s own fields.
pub const CSV_LEADING: [&str; 14] = [
    "epoch",
    "step",
    "loss",
    "lr",
    "images_per_sec",
    "data_wait_fraction",
    "epoch_seconds",
    "others_cpu_share",
    "knn_top1",
    "knn_bank",
    "knn_split",
    "uniformity",
    "effective_rank",
    "alignment",
];

/// A CSV cell: quoted when it holds a comma, a quote or a line break.
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Writes `value` as pretty JSON through a temporary file and a rename.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    replace(path, serde_json::to_string_pretty(value)?.as_bytes())
}
