//! Run configuration: TOML files, `--set key=value` overrides and validation.
//!
//! Unknown keys are errors (every table denies them), so a typo never silently falls
//! back to a default.

use crate::device::{DeviceChoice, OpsChoice, Precision};
use crate::provenance::{self, Origins};
use anyhow::{Context, Result, bail};
use contrast_data::recipe::Family;
use contrast_data::{ContrastiveCropConfig, DatasetChoice, Holdout, OnError, ViewRecipe};
use contrast_encoders::{EncoderConfig, FeatureFilterConfig, HeadConfig, MomentumSchedule};
use contrast_eval::{KnnConfig, ProbeConfig};
use contrast_losses::LossConfig;
use contrast_mining::{Pipeline, PolicyConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name; output directories default to `runs/<name>-<timestamp>`.
    pub name: String,
    /// Seed of every random choice (initialisation, order, augmentation, probe).
    #[serde(default)]
    pub seed: u64,
    pub data: DataConfig,
    /// How batches become loss inputs (default: in-batch, as SimCLR).
    #[serde(default)]
    pub method: MethodConfig,
    pub model: ModelConfig,
    pub loss: LossConfig,
    /// Sampling policies, applied in their documented stage order (in-batch method).
    #[serde(default)]
    pub mining: Vec<PolicyConfig>,
    pub optim: OptimConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// Dataset, batching and augmentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A dataset by name (`fashion-mnist`, `mnist`, `cifar-10`, `cifar-100`) or
    /// `folder`: the images at `data.path`.
    pub dataset: DatasetChoice,
    /// For `folder`: a folder of PNG/JPEG images (one sub-folder per class, or flat
    /// and unlabeled; `train/`, `val/` and `test/` sub-folders are taken as splits)
    /// or a `.csv`/`.jsonl` manifest of `path[,label]`. For a named dataset: the
    /// directory holding its files (as `--data-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<std::path::PathBuf>,
    /// For `folder`: side in pixels of the square images (shorter side resized, the
    /// centre cropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// For `folder`: 1 or 3 channels (default: 1 when every image is grayscale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// For `folder`: a file that can't be decoded is skipped with a warning
    /// (`"skip"`) or fails the run (`"fail"`).
    #[serde(default)]
    pub on_error: OnError,
    /// For `folder`: directory of the decoded-image caches (default
    /// `~/.cache/contrast`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<std::path::PathBuf>,
    /// The validation split, carved from the training images (a count or a
    /// fraction, seeded) or a folder. When set, the per-epoch kNN monitor reads it
    /// instead of the test set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Holdout>,
    /// For `folder`: the test split (a count or a fraction carved from the images, or
    /// a folder). Default: the source's `test/` sub-folder, else a tenth of the
    /// images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Holdout>,
    /// Images per batch (each contributes one sample per view).
    pub batch_size: usize,
    /// Use only the first `n` training images (all when absent).
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Use only the first `n` test images (all when absent).
    #[serde(default)]
    pub test_subset: Option<usize>,
    /// Views per image.
    #[serde(default = "default_views")]
    pub views: usize,
    /// Batches prepared ahead of the model.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// The augmentation recipe applied to every view.
    pub augment: ViewRecipe,
    /// ContrastiveCrop: after a warm-up, every view's crop is placed inside its
    /// image's object box, located from the encoder's heat map every `loc_interval`
    /// epochs. Needs `data.augment.crop` and a convolutional encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrastive_crop: Option<ContrastiveCropConfig>,
    /// The source's classes merged into named groups, in every split: evaluation,
    /// the negative diagnostics (`neg_false_fraction`) and anything that reads labels
    /// (SupCon, label-aware policies) see the groups. With few groups many negatives
    /// are false, the regime where false-negative handling should matter. Every class
    /// goes in exactly one group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superclasses: Option<Vec<Superclass>>,
}

/// One group of `data.superclasses`: a name and the source class indices it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Superclass {
    pub name: String,
    pub classes: Vec<u32>,
}

/// The class-to-group map of `groups` over `num_classes` source classes, and the
/// group names; an error names the class or group at fault.
pub fn superclass_map(
    groups: &[Superclass],
    num_classes: usize,
) -> Result<(Vec<u32>, Vec<String>)> {
    let mut map = vec![u32::MAX; num_classes];
    for (g, group) in groups.iter().enumerate() {
        if group.classes.is_empty() {
            bail!("data.superclasses[{g}] (`{}`) holds no class", group.name);
        }
        if groups[..g].iter().any(|o| o.name == group.name) {
            bail!("data.superclasses: the name `{}` is used twice", group.name);
        }
        for &c in &group.classes {
            let Some(slot) = map.get_mut(c as usize) else {
                bail!(
                    "data.superclasses[{g}] (`{}`): class {c} does not exist; the dataset has classes 0..{num_classes}",
                    group.name
                );
            };
            if *slot != u32::MAX {
                bail!(
                    "data.superclasses: class {c} is in both `{}` and `{}`",
                    groups[*slot as usize].name,
                    group.name
                );
            }
            *slot = g as u32;
        }
    }
    if let Some(c) = map.iter().position(|&m| m == u32::MAX) {
        bail!(
            "data.superclasses: class {c} is in no group; every class 0..{num_classes} needs one"
        );
    }
    Ok((map, groups.iter().map(|g| g.name.clone()).collect()))
}

fn default_views() -> usize {
    2
}

/// Side of a folder dataset's images when `data.size` is absent (CIFAR's).
pub const DEFAULT_FOLDER_SIZE: usize = 32;

/// The test share carved from a folder dataset without `data.test` or a `test/`
/// sub-folder.
pub const DEFAULT_FOLDER_TEST: Holdout = Holdout::Fraction(0.1);

fn default_prefetch() -> usize {
    3
}

impl DataConfig {
    /// Checks the source keys against `data.dataset`.
    fn validate(&self) -> Result<()> {
        match self.dataset {
            DatasetChoice::Folder => {
                if self.path.is_none() {
                    bail!(
                        "data.dataset = \"folder\" needs data.path: a folder of PNG/JPEG images (a sub-folder per class, or flat) or a .csv/.jsonl manifest"
                    );
                }
                if let Some(s) = self.size
                    && !(1..=4096).contains(&s)
                {
                    bail!("data.size = {s} must be in 1..=4096 pixels");
                }
                if let Some(c) = self.channels
                    && c != 1
                    && c != 3
                {
                    bail!("data.channels = {c} must be 1 (grayscale) or 3 (RGB)");
                }
            }
            DatasetChoice::Named(id) => {
                let folder_only = [
                    ("data.size", self.size.is_some()),
                    ("data.channels", self.channels.is_some()),
                    ("data.cache", self.cache.is_some()),
                    ("data.on_error", self.on_error != OnError::default()),
                ];
                if let Some((key, _)) = folder_only.iter().find(|(_, set)| *set) {
                    bail!(
                        "{key} applies to data.dataset = \"folder\", not \"{id}\" (its images have a fixed size and format)"
                    );
                }
                if matches!(self.test, Some(Holdout::Count(_) | Holdout::Fraction(_))) {
                    bail!(
                        "data.test = {} carves a test split from a folder dataset; \"{id}\" has its own test split (data.test_subset evaluates on fewer of its images)",
                        self.test.as_ref().expect("matched")
                    );
                }
            }
        }
        Ok(())
    }
}

/// The training method, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum MethodConfig {
    /// Every view through the online network; negatives from the batch.
    #[default]
    Simclr,
    /// MoCo v2: momentum key encoder and a FIFO queue of negatives.
    Moco {
        /// Queue capacity `K` (any size; the batch need not divide it).
        queue_size: usize,
        /// Momentum of the key encoder.
        #[serde(default)]
        momentum: MomentumSchedule,
        /// Groups the shuffled keys are normalised in (Shuffle-BN on one device).
        #[serde(default = "default_splits")]
        shuffle_splits: usize,
        /// LooC (with `loss.name = "looc"`): the augmentation families left out, each
        /// with its own embedding space, head and queue, and its own key that shares
        /// that family's random choices with the query. Empty for plain MoCo.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        families: Vec<Family>,
    },
    /// Instance discrimination against a memory bank of every training image (InstDisc,
    /// Invariance Propagation): one view per image, the bank updated with momentum.
    Bank {
        /// Weight of the old vector in a bank update (InvP: 0.5).
        #[serde(default = "default_bank_momentum")]
        momentum: f64,
        /// Neighbours stored per entry for propagation (InvP: 4).
        #[serde(default = "default_neighbours")]
        neighbours: usize,
        /// Epochs before the invariance term switches on (InvP: 30).
        ramp_epochs: usize,
        /// Gaussian instead of binary ramp.
        #[serde(default)]
        gaussian_ramp: bool,
    },
}

fn default_bank_momentum() -> f64 {
    0.5
}

fn default_neighbours() -> usize {
    4
}

fn default_splits() -> usize {
    4
}

impl MethodConfig {
    /// LooC's leave-one-out families (empty for every other method).
    pub fn families(&self) -> &[Family] {
        match self {
            MethodConfig::Moco { families, .. } => families,
            _ => &[],
        }
    }
}

/// Backbone and projection head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub encoder: EncoderConfig,
    /// The projection head (default: an MLP of width 512 to 128 on the
    /// representation). When `--set` changes the encoder's kind without setting the
    /// head, the default head replaces the file's.
    #[serde(default)]
    pub head: HeadConfig,
    /// SimLAP's feature filter (used only with `loss.name = "simlap"`).
    #[serde(default)]
    pub filter: Option<FeatureFilterConfig>,
    /// The encoders' op set: `"auto"` (fused on the CPU, candle elsewhere),
    /// `"fused"` (the CPU kernels) or `"candle"` (tensor ops, any device; on the CPU
    /// the path a GPU runs).
    #[serde(default)]
    pub ops: OpsChoice,
    /// Synchronised BatchNorm in a data-parallel run: the online network's
    /// BatchNorm layers normalise with the statistics of the global batch, every
    /// rank's rows together, so that N ranks train as one process with the whole
    /// batch (at the cost of two small all-reduces per layer and direction, and of
    /// the candle composition for those layers). Off: each rank normalises its own
    /// rows, as PyTorch's DDP does by default. No effect in one process. MoCo's key
    /// encoder always normalises per rank (Shuffle-BN).
    #[serde(default)]
    pub sync_bn: bool,
}

/// Optimiser and its hyper-parameters, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimConfig {
    /// SGD with (optionally Nesterov) momentum and decoupled-from-bias weight decay.
    Sgd {
        lr: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default)]
        nesterov: bool,
        #[serde(default)]
        weight_decay: f64,
    },
    /// AdamW (decoupled weight decay).
    Adamw {
        lr: f64,
        #[serde(default = "default_betas")]
        betas: [f64; 2],
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default)]
        weight_decay: f64,
    },
}

fn default_momentum() -> f64 {
    0.9
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_eps() -> f64 {
    1e-8
}

impl OptimConfig {
    /// Peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimConfig::Sgd { lr, .. } | OptimConfig::Adamw { lr, .. } => *lr,
        }
    }
}

/// Learning-rate schedule: linear warm-up, then cosine decay to `final_lr_fraction`
/// of the peak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    #[serde(default)]
    pub warmup_epochs: f64,
    #[serde(default)]
    pub final_lr_fraction: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_epochs: 0.0,
            final_lr_fraction: 0.0,
        }
    }
}

/// Length of training and checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Checkpoints kept on disk (older ones are deleted).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Also write a checkpoint every this many steps inside an epoch (none: only at
    /// the end of each epoch). A run resumed from one continues mid-epoch exactly.
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// What a non-finite loss or gradient does (the weights are never updated with
    /// one): stop with an error naming the step and the tensor, or roll back.
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
    /// Where to train: `"cpu"`, `"cuda"`, `"cuda:N"`, `"metal"` or `"auto"` (the first
    /// GPU the build supports, else the CPU).
    #[serde(default)]
    pub device: DeviceChoice,
    /// `"f32"`, or `"bf16"`: the encoders' activations and matrix products in bf16,
    /// with f32 parameters, optimiser state and loss.
    #[serde(default)]
    pub precision: Precision,
    /// How a data-parallel run evaluates the loss over the gathered batch:
    /// `"replicated"` (every rank computes the whole loss; any loss and policy) or
    /// `"ring"` (NT-Xent without mining policies: each rank streams its own anchors
    /// against the other ranks' rows as they pass around a ring, holding one block
    /// at a time; docs/distributed.md). No effect in one process.
    #[serde(default)]
    pub gathered_loss: GatheredLoss,
}

/// See [`TrainConfig::gathered_loss`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatheredLoss {
    /// The whole loss on every rank.
    #[default]
    Replicated,
    /// NT-Xent streamed around the ranks.
    Ring,
}

/// The answer to a non-finite loss or gradient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Stop the run with an error that names the step and the first non-finite
    /// tensor; `--resume` continues from the last checkpoint.
    #[default]
    Stop,
    /// Go back to the last checkpoint (or the start), halve the learning rate and
    /// train on; after 5 rollbacks in one run, stop.
    Rollback,
}

fn default_keep() -> usize {
    2
}

/// Evaluation protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    #[serde(default)]
    pub knn: KnnConfig,
    #[serde(default)]
    pub probe: ProbeConfig,
    /// Training images in the per-epoch kNN bank (the final evaluation uses all).
    #[serde(default = "default_monitor_bank")]
    pub monitor_bank: usize,
    /// Run kNN on the untrained encoder and on raw pixels as references.
    #[serde(default = "default_true")]
    pub baselines: bool,
    /// Images per forward pass when extracting features.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// What evaluation embeds: the backbone's representation (`"backbone"`), or
    /// every embedding space's L2-normalised projection concatenated (`"spaces"`:
    /// LooC++ with LooC's heads; the head's projection otherwise).
    #[serde(default, skip_serializing_if = "is_default")]
    pub representation: RepresentationChoice,
    /// Splits whose representations the run writes to `embeddings/<split>.safetensors`
    /// at the end (`"train"`, `"validation"`, `"test"`). Default: every split of a
    /// folder dataset (your images), none of a named one (the default Fashion-MNIST
    /// run would write about 1 GB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<Vec<SplitName>>,
}

/// What evaluation embeds with (`eval.representation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepresentationChoice {
    #[default]
    Backbone,
    Spaces,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A split of a run's data, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Validation,
    Test,
}

impl SplitName {
    /// The name, as in configs and file names.
    pub fn name(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Validation => "validation",
            SplitName::Test => "test",
        }
    }
}

fn default_monitor_bank() -> usize {
    10_000
}

fn default_true() -> bool {
    true
}

fn default_eval_batch() -> usize {
    1000
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            knn: KnnConfig::default(),
            probe: ProbeConfig::default(),
            monitor_bank: default_monitor_bank(),
            baselines: true,
            batch_size: default_eval_batch(),
            representation: RepresentationChoice::default(),
            embed: None,
        }
    }
}

/// Sets `path` (dotted, e.g. `optim.lr`) in a TOML table to `raw`, parsed as a TOML
/// value when it is one (`0.1`, `true`, `[1, 2]`) and as a string otherwise.
pub fn set_path(table: &mut toml::Table, path: &str, raw: &str) -> Result<()> {
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        bail!("--set {path}={raw}: empty key in path `{path}`");
    }
    let mut cur = table;
    for k in &keys[..keys.len() - 1] {
        cur = cur
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {path}={raw}: `{k}` is not a table"))?;
    }
    cur.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

/// Reads a config file into a table, with the origin of every key. A file may name a
/// base with `extends = "other.toml"` (relative to its own directory); the file's keys
/// are then merged over the base's: tables merge key by key, except tables with a
/// `name` key (tagged choices such as `[loss]` and `[optim]`), which replace the base's
/// whole.
pub fn read_table(path: &Path, depth: usize) -> Result<(toml::Table, Origins)> {
    if depth > 8 {
        bail!("{}: `extends` chain is too deep (a cycle?)", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
    let origins = Origins::from_text(&text, &path.display().to_string());
    match table.remove("extends") {
        None => Ok((table, origins)),
        Some(toml::Value::String(base)) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(&base);
            let (mut merged, mut merged_origins) = read_table(&base_path, depth + 1)
                .with_context(|| format!("{}: extends \"{base}\"", path.display()))?;
            merge(&mut merged, table);
            merged_origins.overlay(origins);
            Ok((merged, merged_origins))
        }
        Some(other) => bail!(
            "{}: `extends` must be a file name, got {other}",
            path.display()
        ),
    }
}

fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) if !t.contains_key("name") => {
                merge(b, t)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Parses TOML text (with `origin` naming it in errors), applies `key=value`
    /// overrides, and validates the result.
    pub fn from_toml(text: &str, origin: &str, overrides: &[String]) -> Result<Self> {
        let table: toml::Table =
            toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        Self::from_table(table, Origins::from_text(text, origin), origin, overrides)
    }

    /// Reads and parses a config file, resolving `extends` (see [`read_table`]).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let (table, origins) = read_table(path, 0)?;
        Self::from_table(table, origins, &path.display().to_string(), overrides)
    }

    /// Applies `overrides` to a merged table and parses it. A parse error names the
    /// key path and where its value came from (`file:line` or `--set`); a validation
    /// error names `origin`, the file the run was started from.
    fn from_table(
        mut table: toml::Table,
        mut origins: Origins,
        origin: &str,
        overrides: &[String],
    ) -> Result<Self> {
        let kind = |t: &toml::Table| {
            t.get("model")
                .and_then(|m| m.get("encoder"))
                .and_then(|e| e.get("kind"))
                .cloned()
        };
        let kind_before = kind(&table);
        let mut head_set = false;
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--set `{o}`: expected key=value"))?;
            set_path(&mut table, k.trim(), v.trim())?;
            origins.set(k.trim(), o);
            head_set |= k.trim().starts_with("model.head");
        }
        // A different encoder kind from the command line takes the default head
        // (an MLP on its representation), unless the head is set there too: the
        // file's head was sized for the file's encoder.
        if kind(&table) != kind_before
            && !head_set
            && let Some(toml::Value::Table(model)) = table.get_mut("model")
        {
            model.remove("head");
        }
        let cfg: Config = provenance::deserialize(&table, &origins)?;
        cfg.validate().map_err(|e| {
            // Name where the value at fault was written, when the message names its key.
            let message = format!("{e:#}");
            let source = origins
                .mentioned(&message)
                .map(|(key, o)| format!(" (`{key}` from {o})"))
                .unwrap_or_default();
            anyhow::anyhow!("{origin}: invalid configuration: {message}{source}")
        })?;
        Ok(cfg)
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Checks the encoder's and the head's sizes, which otherwise fail only when the
    /// model is built, after the data are loaded.
    fn validate_model(&self) -> Result<()> {
        let zero = |key: &str, widths: &[usize]| -> Result<()> {
            if let Some(i) = widths.iter().position(|w| *w == 0) {
                bail!("{key} = {widths:?}: width {i} is 0, every width must be at least 1");
            }
            Ok(())
        };
        match &self.model.encoder {
            EncoderConfig::Mlp { hidden } => zero("model.encoder.hidden", hidden)?,
            EncoderConfig::Convnet { channels, .. } => {
                if channels.is_empty() {
                    bail!("model.encoder.channels is empty: a convnet needs at least one stage");
                }
                zero("model.encoder.channels", channels)?
            }
            EncoderConfig::Resnet18 {
                width,
                recompute_stages,
            } => {
                if *width == 0 {
                    bail!("model.encoder.width = 0 must be at least 1 (64 is standard)");
                }
                if *recompute_stages > 4 {
                    bail!(
                        "model.encoder.recompute_stages = {recompute_stages} must be in 0..=4 (the stem and four stages)"
                    );
                }
            }
            EncoderConfig::Identity => {}
        }
        let head = &self.model.head;
        if head.out == 0 || head.layers == 0 {
            bail!(
                "model.head.out = {} and model.head.layers = {} must both be at least 1",
                head.out,
                head.layers
            );
        }
        if head.layers > 1 && head.hidden == 0 {
            bail!(
                "model.head.hidden = 0 must be at least 1 when model.head.layers = {} > 1",
                head.layers
            );
        }
        zero("model.head.conv", &head.conv)?;
        let flattened = matches!(
            self.model.encoder,
            EncoderConfig::Convnet {
                pool: contrast_encoders::ConvPool::Flatten,
                ..
            }
        );
        if !head.conv.is_empty() && !flattened {
            bail!(
                "model.head.conv = {:?} runs on a feature map: it needs model.encoder.kind = \"convnet\" with pool = \"flatten\" (or remove model.head.conv for an MLP head)",
                head.conv
            );
        }
        Ok(())
    }

    /// Checks values that the types alone cannot.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        match &self.method {
            MethodConfig::Bank {
                momentum,
                neighbours,
                ..
            } => {
                if !matches!(self.loss, LossConfig::InvariancePropagation(_)) {
                    bail!(
                        "method.name = \"bank\" trains with loss.name = \"invariance_propagation\", not \"{}\"",
                        self.loss.name()
                    );
                }
                if !(0.0..1.0).contains(momentum) || *neighbours == 0 {
                    bail!("method.momentum must be in [0, 1) and method.neighbours >= 1");
                }
            }
            _ if matches!(self.loss, LossConfig::InvariancePropagation(_)) => bail!(
                "loss.name = \"invariance_propagation\" reads a memory bank: use it with [method] name = \"bank\""
            ),
            MethodConfig::Simclr if self.loss.needs_queue() => bail!(
                "loss.name = \"{}\" reads negatives from a queue: use it with [method] name = \"moco\"",
                self.loss.name()
            ),
            MethodConfig::Moco { .. } if !self.loss.accepts_queue() => bail!(
                "method.name = \"moco\" needs a queue-based loss (moco_info_nce, ring, ascl, debiased, hcl), not \"{}\"",
                self.loss.name()
            ),
            MethodConfig::Moco {
                queue_size,
                momentum,
                shuffle_splits,
                families,
            } => {
                let looc = matches!(self.loss, LossConfig::Looc(_));
                if looc == families.is_empty() {
                    bail!(
                        "loss.name = \"looc\" and method.families go together: LooC needs the augmentation families it leaves out (e.g. families = [\"color\", \"rotation\"]), and only LooC reads them"
                    );
                }
                if let Some(f) = families
                    .iter()
                    .enumerate()
                    .find_map(|(i, f)| families[..i].contains(f).then_some(f))
                {
                    bail!("method.families names `{}` twice", f.name());
                }
                if looc && self.data.views != 2 + families.len() {
                    bail!(
                        "method.families = {:?} needs data.views = {} (the query, a key that redraws every augmentation, and one key per family), not {}",
                        families.iter().map(|f| f.name()).collect::<Vec<_>>(),
                        2 + families.len(),
                        self.data.views
                    );
                }
                if *queue_size == 0 || *shuffle_splits == 0 {
                    bail!("method.queue_size and method.shuffle_splits must be >= 1");
                }
                if *queue_size < self.data.batch_size {
                    bail!(
                        "method.queue_size = {queue_size} is smaller than data.batch_size = {}: every step enqueues a whole batch of keys, so the queue must hold at least one batch",
                        self.data.batch_size
                    );
                }
                momentum
                    .validate()
                    .map_err(|e| anyhow::anyhow!("method.momentum.{e}"))?;
                let fnc = self.mining.iter().any(|p| p.name() == "fnc");
                if !looc && (self.data.views < 2 || (self.data.views > 2 && !fnc)) {
                    bail!(
                        "method.name = \"moco\" uses 2 views (query and key), data.views = {}; more are support views, which only an fnc mining policy reads",
                        self.data.views
                    );
                }
            }
            MethodConfig::Simclr => {}
        }
        // The recipe names its own fields (`hflip`, `crop.scale`): give their key path.
        self.data.augment.validate().map_err(|e| match e {
            contrast_data::DataError::Config { field, message } => {
                anyhow::anyhow!("data.augment.{field}: {message}")
            }
            other => other.into(),
        })?;
        self.data.validate()?;
        self.validate_model()?;
        if let Some(cc) = &self.data.contrastive_crop {
            cc.validate().map_err(|e| match e {
                contrast_data::DataError::Config { field, message } => {
                    anyhow::anyhow!("data.{field}: {message}")
                }
                other => other.into(),
            })?;
            if self.data.augment.crop.is_none() {
                bail!(
                    "data.contrastive_crop places random resized crops: it needs data.augment.crop (e.g. crop = {{ scale = [0.2, 1.0] }})"
                );
            }
            if !matches!(
                self.model.encoder,
                EncoderConfig::Convnet { .. } | EncoderConfig::Resnet18 { .. }
            ) {
                bail!(
                    "data.contrastive_crop locates objects on the encoder's last feature map: it needs model.encoder.kind = \"convnet\" or \"resnet18\", not an encoder without one"
                );
            }
        }
        if self.data.batch_size < 2 {
            bail!(
                "data.batch_size = {} must be at least 2",
                self.data.batch_size
            );
        }
        if self.data.test_subset == Some(0) {
            bail!("data.test_subset = 0 must be at least 1 (or absent: every test image)");
        }
        if let Some(n) = self.data.train_subset
            && n < self.data.batch_size
        {
            bail!(
                "data.train_subset = {n} is smaller than data.batch_size = {}: an epoch would have no full batch (the last partial batch is dropped)",
                self.data.batch_size
            );
        }
        if !self.mining.is_empty() {
            let pipeline =
                Pipeline::new(self.mining.clone()).map_err(|e| anyhow::anyhow!("mining: {e}"))?;
            match (&self.method, &self.loss) {
                (MethodConfig::Simclr, LossConfig::NtXent(_)) => {}
                (MethodConfig::Moco { .. }, LossConfig::MocoInfoNce(_)) => {
                    pipeline
                        .check_queue()
                        .map_err(|e| anyhow::anyhow!("mining with method.name = \"moco\": {e}"))?
                }
                (MethodConfig::Simclr | MethodConfig::Moco { .. }, loss) => bail!(
                    "mining policies shape the generalised InfoNCE themselves: set loss.name = \"nt_xent\" (simclr) or \"moco_info_nce\" (moco) for the temperature, not \"{}\"",
                    loss.name()
                ),
                (MethodConfig::Bank { .. }, _) => bail!(
                    "mining policies apply to the simclr (in-batch) and moco (queue) methods; the bank method is Invariance Propagation's own sampling"
                ),
            }
        }
        let min_views = if matches!(self.method, MethodConfig::Bank { .. }) {
            1
        } else {
            2
        };
        if self.data.views < min_views {
            bail!(
                "data.views = {} must be at least {min_views} for this method",
                self.data.views
            );
        }
        // NT-Xent takes any number of views (each an anchor, every other view of its
        // image a positive), as SupCon and FNC do; the other in-batch losses pair two.
        if matches!(self.method, MethodConfig::Simclr)
            && self.data.views != 2
            && !matches!(
                self.loss,
                LossConfig::NtXent(_) | LossConfig::Supcon(_) | LossConfig::Fnc(_)
            )
        {
            bail!(
                "loss.name = \"{}\" contrasts exactly 2 views, not data.views = {}: more views train with nt_xent (every other view of an image a positive), supcon or fnc",
                self.loss.name(),
                self.data.views
            );
        }
        if self.train.epochs == 0 {
            bail!("train.epochs must be at least 1");
        }
        if self.train.keep_checkpoints == 0 {
            bail!(
                "train.keep_checkpoints = 0 must be at least 1 (the newest checkpoint is what --resume continues)"
            );
        }
        if self.train.checkpoint_every == Some(0) {
            bail!("train.checkpoint_every = 0 must be at least 1 (or absent: end of epoch only)");
        }
        let lr = self.optim.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            bail!("optim.lr = {lr} must be a finite number > 0");
        }
        match &self.optim {
            OptimConfig::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                if !(0.0..1.0).contains(momentum) {
                    bail!("optim.momentum = {momentum} must be in [0, 1)");
                }
                if *weight_decay < 0.0 {
                    bail!("optim.weight_decay = {weight_decay} must be >= 0");
                }
            }
            OptimConfig::Adamw {
                betas,
                eps,
                weight_decay,
                ..
            } => {
                if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                    bail!("optim.betas = {betas:?} must lie in [0, 1)");
                }
                if *eps <= 0.0 || *weight_decay < 0.0 {
                    bail!("optim.eps must be > 0 and optim.weight_decay >= 0");
                }
            }
        }
        if !(0.0..=1.0).contains(&self.schedule.final_lr_fraction) {
            bail!(
                "schedule.final_lr_fraction = {} must be in [0, 1]",
                self.schedule.final_lr_fraction
            );
        }
        if self.schedule.warmup_epochs.is_nan() || self.schedule.warmup_epochs < 0.0 {
            bail!(
                "schedule.warmup_epochs = {} must be >= 0",
                self.schedule.warmup_epochs
            );
        }
        if self.eval.knn.k == 0 {
            bail!("eval.knn.k = 0 must be at least 1");
        }
        if self.eval.knn.temperature.is_nan() || self.eval.knn.temperature <= 0.0 {
            bail!(
                "eval.knn.temperature = {} must be > 0",
                self.eval.knn.temperature
            );
        }
        // Checked now, not when the probe runs after the whole training.
        let probe = &self.eval.probe;
        if probe.epochs == 0 {
            bail!("eval.probe.epochs = 0 must be at least 1");
        }
        if probe.batch_size == 0 {
            bail!("eval.probe.batch_size = 0 must be at least 1");
        }
        if !(probe.lr > 0.0 && probe.lr.is_finite()) {
            bail!("eval.probe.lr = {} must be a finite number > 0", probe.lr);
        }
        if probe.weight_decay.is_nan() || probe.weight_decay < 0.0 {
            bail!(
                "eval.probe.weight_decay = {} must be >= 0",
                probe.weight_decay
            );
        }
        if self.eval.monitor_bank == 0 {
            bail!(
                "eval.monitor_bank = 0 must be at least 1 (training images in the per-epoch kNN bank)"
            );
        }
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size = 0 must be at least 1");
        }
        if let Some(embed) = &self.eval.embed
            && embed.contains(&SplitName::Validation)
            && self.data.validation.is_none()
            && self.data.dataset != DatasetChoice::Folder
        {
            bail!(
                "eval.embed names \"validation\" but data.validation is not set (a count, a fraction or a folder)"
            );
        }
        Ok(())
    }
}
