//! A run directory opened for inference (`cargo xtask eval`, `embed`): its
//! configuration, its data split as training split it, and the trained model from a
//! checkpoint, on a chosen device.

use crate::checkpoint;
use crate::config::{Config, SplitName};
use crate::data::{RunData, load_data};
use crate::device::DeviceChoice;
use crate::evaluate::{Evaluator, input_shape};
use crate::log::RunLog;
use crate::model::{ContrastiveModel, model_parts};
use anyhow::{Context, Result, bail};
use contrast_data::{Dataset, Normalization};
use std::path::{Path, PathBuf};

/// A trained run, ready to embed and evaluate.
#[derive(Debug)]
pub struct OpenedRun {
    pub dir: PathBuf,
    pub cfg: Config,
    pub data: RunData,
    pub model: ContrastiveModel,
    /// Features and metrics with the run's normalisation and evaluation settings.
    pub eval: Evaluator,
    /// The checkpoint the model was loaded from.
    pub checkpoint: PathBuf,
}

impl OpenedRun {
    /// Opens `dir`: reads `config.toml`, loads the data as the run did (the same
    /// splits and subsets, so the normalisation statistics are the run's), builds
    /// the model on `device` (default: the run's `train.device`) and loads
    /// `checkpoint` (default: the newest complete one).
    pub fn open(
        dir: &Path,
        checkpoint: Option<&Path>,
        device: Option<DeviceChoice>,
        data_dir: Option<&Path>,
        log: &RunLog,
    ) -> Result<Self> {
        let config = dir.join("config.toml");
        if !config.is_file() {
            bail!(
                "{}: not a run directory (no config.toml); pass the --out of a `cargo xtask train`",
                dir.display()
            );
        }
        let mut cfg = Config::load(&config, &[])?;
        if let Some(d) = device {
            cfg.train.device = d;
        }
        let checkpoint = match checkpoint {
            Some(c) => c.to_path_buf(),
            None => checkpoint::latest(&dir.join("checkpoints"))?.with_context(|| {
                format!("{}: no complete checkpoint to evaluate", dir.display())
            })?,
        };
        let dev = cfg.train.device.open()?;
        let data = load_data(&cfg, data_dir, true, log)?;
        let mut model = ContrastiveModel::new(
            &cfg.model,
            input_shape(&data.train),
            model_parts(&cfg, data.train.num_classes),
            &dev,
            0,
            cfg.train.precision,
        )?;
        checkpoint::load_model(&checkpoint, &mut model)
            .with_context(|| format!("loading {}", checkpoint.display()))?;
        let eval = Evaluator {
            norm: Normalization::from_dataset(&data.train),
            knn: cfg.eval.knn.clone(),
            probe: cfg.eval.probe.clone(),
            batch: cfg.eval.batch_size,
            device: dev,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            data,
            model,
            eval,
            checkpoint,
        })
    }

    /// The images of split `name`; an error when the run has no such split.
    pub fn split(&self, name: SplitName) -> Result<&Dataset> {
        match name {
            SplitName::Train => Ok(&self.data.train),
            SplitName::Test => Ok(&self.data.test),
            SplitName::Validation => self.data.validation.as_ref().with_context(|| {
                format!(
                    "{}: the run has no validation split (data.validation was not set)",
                    self.dir.display()
                )
            }),
        }
    }
}
