//! Checkpoints: model and optimiser tensors as safetensors, training state as JSON.
//!
//! Each checkpoint is written into a fresh directory `checkpoints/epoch-NNNN/`; only
//! when all of its files are complete does the `checkpoints/latest` pointer move to
//! it (temporary file plus rename). An interrupted write therefore never damages the
//! checkpoint that `--resume` uses.

use crate::method::{MethodState, TensorGroups};
use crate::metrics::EpochRecord;
use crate::model::ContrastiveModel;
use crate::optim::Optimizer;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Everything besides tensors needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    pub optimizer_steps: u64,
    pub history: Vec<EpochRecord>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub images_seen: u64,
    pub data_wait_seconds: f64,
    /// The untrained encoder's weighted kNN on the monitored split, with every
    /// training image as the bank (as the final evaluation counts it).
    pub untrained_knn_top1: Option<f64>,
    /// The same against the per-epoch monitor's smaller bank: epoch 0 of the kNN
    /// curve, comparable with the monitor's later points.
    #[serde(default)]
    pub untrained_monitor_knn_top1: Option<f64>,
    /// The run's configuration, to detect a resume under a different one.
    pub config_toml: String,
    /// Factor on the scheduled learning rate: halved by every rollback after a
    /// non-finite step (`train.on_nonfinite = "rollback"`).
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Rollbacks so far.
    #[serde(default)]
    pub rollbacks: usize,
    /// The epoch in progress when the checkpoint was written mid-epoch.
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
    /// Wall-clock seconds of the run up to this checkpoint, summed over every process
    /// that trained it (a resumed run adds its own). Time a killed process spent after
    /// its last checkpoint is lost with the work it did.
    #[serde(default)]
    pub wall_seconds: f64,
}

/// How far an epoch had got when a mid-epoch checkpoint was written: enough to
/// continue it and to report it as if it had not stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Steps of it done.
    pub steps: usize,
    /// Sum of their losses.
    pub loss_sum: f64,
    /// Images (times views) they trained on.
    pub images: u64,
    /// The learning rate of the last of them.
    pub lr: f64,
    /// Seconds spent on them, and of those waiting for data.
    pub seconds: f64,
    pub waited_seconds: f64,
    /// The mining diagnostics counted over them.
    #[serde(default)]
    pub diagnostics: Option<contrast_mining::Diagnostics>,
}

impl PartialEpoch {
    /// Epoch `epoch` before its first step.
    pub fn start(epoch: usize) -> Self {
        Self {
            epoch,
            steps: 0,
            loss_sum: 0.0,
            images: 0,
            lr: 0.0,
            seconds: 0.0,
            waited_seconds: 0.0,
            diagnostics: None,
        }
    }
}

fn one() -> f64 {
    1.0
}

impl TrainState {
    /// The state of a run that has not trained yet, under `config_toml`.
    pub fn new(config_toml: String) -> Self {
        Self {
            epoch: 0,
            optimizer_steps: 0,
            history: Vec::new(),
            train_seconds: 0.0,
            eval_seconds: 0.0,
            images_seen: 0,
            data_wait_seconds: 0.0,
            untrained_knn_top1: None,
            untrained_monitor_knn_top1: None,
            config_toml,
            lr_scale: 1.0,
            rollbacks: 0,
            partial: None,
            wall_seconds: 0.0,
        }
    }
}

const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "state.json";
const LATEST: &str = "latest";

/// Writes `path` through a temporary file: `write` fills `<path>.tmp`, which is flushed
/// to disk (`fsync`) and renamed over `path`, and the directory is flushed so that the
/// rename itself survives a crash. A reader sees the old file or the complete new one.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    sync(&tmp)?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    sync(path.parent().unwrap_or(Path::new(".")))
}

/// Flushes a file's or (on Unix, where a directory opens as a file) a directory's
/// contents to disk.
fn sync(path: &Path) -> Result<()> {
    if path.is_dir() && !cfg!(unix) {
        return Ok(());
    }
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing {} to disk", path.display()))
}

/// Saves a checkpoint under `root` (`epoch-NNNN`, or `epoch-NNNN-step-SSSSSS` during
/// epoch `NNNN + 1`) and points `latest` at it; keeps the newest `keep`.
pub fn save(
    root: &Path,
    model: &ContrastiveModel,
    opt: &Optimizer,
    state: &TrainState,
    extras: &MethodState,
    keep: usize,
) -> Result<PathBuf> {
    // Names sort in training order: epoch-0002 < epoch-0002-step-000040 < epoch-0003.
    let dir = match &state.partial {
        None => root.join(format!("epoch-{:04}", state.epoch)),
        Some(p) => root.join(format!("epoch-{:04}-step-{:06}", state.epoch, p.steps)),
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sync(root)?;
    write_atomic(&dir.join(MODEL_FILE), |p| {
        model
            .varmap
            .save(p)
            .with_context(|| format!("writing {}", p.display()))
    })?;
    let (buffers, _) = opt.state();
    write_atomic(&dir.join(OPTIM_FILE), |p| {
        candle_core::safetensors::save(&buffers, p)
            .with_context(|| format!("writing {}", p.display()))
    })?;
    for (name, tensors) in extras {
        write_atomic(&dir.join(format!("{name}.safetensors")), |p| {
            candle_core::safetensors::save(tensors, p)
                .with_context(|| format!("writing {}", p.display()))
        })?;
    }
    write_atomic(&dir.join(STATE_FILE), |p| {
        std::fs::write(p, serde_json::to_string_pretty(state)?)
            .with_context(|| format!("writing {}", p.display()))
    })?;
    let name = dir
        .file_name()
        .expect("dir name")
        .to_string_lossy()
        .to_string();
    write_atomic(&root.join(LATEST), |p| {
        std::fs::write(p, &name).with_context(|| format!("writing {}", p.display()))
    })?;
    prune(root, keep.max(1))?;
    Ok(dir)
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("epoch-"))
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for d in &dirs[..excess] {
        std::fs::remove_dir_all(d)
            .with_context(|| format!("removing old checkpoint {}", d.display()))?;
    }
    Ok(())
}

/// The directory `latest` points to, if any.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    let pointer = root.join(LATEST);
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer)
        .with_context(|| format!("reading {}", pointer.display()))?;
    let dir = root.join(name.trim());
    if !dir.join(STATE_FILE).is_file() {
        bail!(
            "{} points to {}, which holds no complete checkpoint",
            pointer.display(),
            dir.display()
        );
    }
    Ok(Some(dir))
}

/// Restores model variables and optimiser state from `dir`; returns the state and
/// the method's tensor groups by name.
pub fn load(
    dir: &Path,
    model: &mut ContrastiveModel,
    opt: &mut Optimizer,
) -> Result<(TrainState, TensorGroups)> {
    let state: TrainState = serde_json::from_str(
        &std::fs::read_to_string(dir.join(STATE_FILE))
            .with_context(|| format!("reading {}", dir.join(STATE_FILE).display()))?,
    )
    .with_context(|| format!("{}: corrupt training state", dir.join(STATE_FILE).display()))?;
    model.varmap.load(dir.join(MODEL_FILE)).with_context(|| {
        format!(
            "{}: cannot restore the model",
            dir.join(MODEL_FILE).display()
        )
    })?;
    let device = model.device().clone();
    let buffers =
        candle_core::safetensors::load(dir.join(OPTIM_FILE), &device).with_context(|| {
            format!(
                "{}: cannot read optimizer state",
                dir.join(OPTIM_FILE).display()
            )
        })?;
    opt.load_state(buffers, state.optimizer_steps)
        .with_context(|| {
            format!(
                "{}: optimizer state does not fit the model",
                dir.join(OPTIM_FILE).display()
            )
        })?;
    let mut extras = HashMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some(group) = name.strip_suffix(".safetensors")
            && ![MODEL_FILE, OPTIM_FILE].contains(&name.as_str())
        {
            let tensors = candle_core::safetensors::load(&path, &device)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            extras.insert(group.to_string(), tensors);
        }
    }
    Ok((state, extras))
}

/// Restores only the model variables (backbone, head, filter, BatchNorm running
/// statistics) from checkpoint `dir`, without an optimiser: what inference needs,
/// e.g. embedding images with a trained run. `model` must be built from the run's
/// configuration, so that its variables match the checkpoint's by name and shape.
pub fn load_model(dir: &Path, model: &mut ContrastiveModel) -> Result<()> {
    let path = dir.join(MODEL_FILE);
    model
        .varmap
        .load(&path)
        .with_context(|| format!("{}: cannot restore the model", path.display()))
}
