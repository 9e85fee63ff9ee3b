//! The data of a run: the configured source loaded and split into train, validation
//! and test, with the labels checked against what the method reads.

use crate::config::{Config, DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_TEST};
use crate::log::RunLog;
use anyhow::{Context, Result, bail};
use contrast_data::folder::{self, CacheUse, FolderOptions, FolderParts, Listing, Skipped};
use contrast_data::{Dataset, DatasetChoice, Holdout, HoldoutPart, carve};
use contrast_losses::LossConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;

/// A run's images.
#[derive(Debug, Clone)]
pub struct RunData {
    pub train: Dataset,
    /// The split every choice during training reads (`data.validation`).
    pub validation: Option<Dataset>,
    /// Read once, by the final evaluation (and by the monitor when there is no
    /// validation split).
    pub test: Dataset,
    /// Image-folder files left out (unreadable or not an image).
    pub skipped: Vec<Skipped>,
}

/// What in the configuration reads class labels (loss, mining policies), for the
/// message when the data have none.
pub fn label_readers(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.loss.needs_labels() {
        out.push(format!("loss.name = \"{}\"", cfg.loss.name()));
    }
    if matches!(cfg.loss, LossConfig::Simlap(_)) && cfg.model.filter.is_some() {
        out.push("model.filter".into());
    }
    for p in cfg.mining.iter().filter(|p| p.uses_labels()) {
        out.push(format!("mining policy `{}`", p.name()));
    }
    out
}

fn refuse_unlabeled(cfg: &Config, source: &Path) -> Result<()> {
    let readers = label_readers(cfg);
    if !readers.is_empty() {
        bail!(
            "{} reads class labels, but {} has none (a flat folder or a manifest without labels). Use a label-free loss and policies (nt_xent, moco_info_nce, dcl, debiased, hcl, ...) or give the images classes: one sub-folder per class, or `path,label` manifest rows",
            readers.join(" and "),
            source.display()
        );
    }
    Ok(())
}

fn decode_bar(n: usize, what: &str, show: bool) -> ProgressBar {
    let pb = if show {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:28} {pos}/{len} eta {eta}")
            .expect("valid template"),
    );
    pb.set_prefix(format!("decoding {what}"));
    pb
}

/// Loads one listing through its cache, with a progress bar while decoding and a
/// line saying what happened.
fn load_listing(
    listing: &Listing,
    name: &str,
    opts: &FolderOptions,
    progress: bool,
    log: &RunLog,
) -> Result<folder::Loaded> {
    let what = listing.source.display().to_string();
    let pb = decode_bar(listing.entries.len(), &what, progress);
    let loaded = folder::load(listing, name, opts, &|done| pb.set_position(done as u64))
        .with_context(|| format!("loading images from {what}"))?;
    pb.finish_and_clear();
    let how = match loaded.cache_use {
        CacheUse::Reused => "cache reused",
        CacheUse::Built => "decoded, cache written",
    };
    let d = &loaded.dataset;
    log.say(format!(
        "{what}: {} images {}x{}x{}, {} ({how}: {})",
        d.len(),
        d.shape.height,
        d.shape.width,
        d.shape.channels,
        if d.is_labelled() {
            format!("{} classes", d.num_classes)
        } else {
            "unlabeled".to_string()
        },
        loaded.cache.display()
    ));
    for s in &loaded.skipped {
        log.warn(format!(
            "warning: skipped {}: {}",
            s.path.display(),
            s.reason
        ));
    }
    Ok(loaded)
}

/// Images from a folder or manifest read at `like`'s size and channels, for a
/// held-out split or for embedding new images with a trained model. With
/// `same_classes` (a split) its classes must be `like`'s and keep their indices;
/// otherwise (new images) they are the source's own. `what` names the source in
/// errors (`data.test = "DIR"`, `--images DIR`).
pub fn read_like(
    path: &Path,
    like: &Dataset,
    same_classes: bool,
    opts: &FolderOptions,
    what: &str,
    progress: bool,
    log: &RunLog,
) -> Result<folder::Loaded> {
    // A named dataset's folders are named by label index (its class names, such as
    // "T-shirt/top", need not be valid folder names); a folder dataset's by its own.
    let from_files = !like.is_empty() && like.path(0).is_some();
    let classes: Vec<String> = if like.class_names.is_empty() || !from_files {
        (0..like.num_classes).map(|c| c.to_string()).collect()
    } else {
        like.class_names.clone()
    };
    let fixed = (same_classes && like.is_labelled()).then_some(&classes[..]);
    let listing =
        Listing::scan(path, fixed).with_context(|| format!("{what} = \"{}\"", path.display()))?;
    let opts = FolderOptions {
        size: like.shape.height,
        channels: Some(like.shape.channels),
        ..opts.clone()
    };
    load_listing(&listing, &like.name, &opts, progress, log)
}

/// A held-out part given as a folder (see [`read_like`]); its skipped files join
/// `skipped`.
fn holdout_folder(
    path: &Path,
    train: &Dataset,
    opts: &FolderOptions,
    part: HoldoutPart,
    progress: bool,
    log: &RunLog,
    skipped: &mut Vec<Skipped>,
) -> Result<Dataset> {
    let loaded = read_like(path, train, true, opts, part.key(), progress, log)?;
    skipped.extend(loaded.skipped);
    Ok(loaded.dataset)
}

/// The folder options `cfg` gives (size, channels, error policy, cache).
pub fn folder_options(cfg: &Config) -> FolderOptions {
    let d = &cfg.data;
    FolderOptions {
        size: d.size.unwrap_or(DEFAULT_FOLDER_SIZE),
        channels: d.channels,
        on_error: d.on_error,
        cache_dir: d
            .cache
            .clone()
            .unwrap_or_else(FolderOptions::default_cache_dir),
    }
}

/// Loads the configured source and splits it: the test part (the dataset's own,
/// a folder's `test/`, or carved as `data.test` says), then the validation part
/// carved from the rest (or read from its folder), then the subsets. `data_dir`
/// (`--data-dir`) overrides `data.path` for a named dataset.
pub fn load_data(
    cfg: &Config,
    data_dir: Option<&Path>,
    progress: bool,
    log: &RunLog,
) -> Result<RunData> {
    let d = &cfg.data;
    let opts = folder_options(cfg);
    let mut skipped = Vec::new();
    let (mut train, test) = match d.dataset {
        DatasetChoice::Named(id) => {
            let split = id
                .load(data_dir.or(d.path.as_deref()))
                .with_context(|| format!("loading dataset `{id}`"))?;
            let test = match &d.test {
                Some(Holdout::Folder(p)) => holdout_folder(
                    p,
                    &split.train,
                    &opts,
                    HoldoutPart::Test,
                    progress,
                    log,
                    &mut skipped,
                )?,
                _ => split.test,
            };
            (split.train, test)
        }
        DatasetChoice::Folder => {
            let path = d.path.as_deref().context("data.path is required")?;
            let parts = FolderParts::find(path);
            let listing = Listing::scan(&parts.train, None)
                .with_context(|| format!("data.path = \"{}\"", path.display()))?;
            if !listing.is_labelled() {
                refuse_unlabeled(cfg, &parts.train)?;
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "folder".into());
            let loaded = load_listing(&listing, &name, &opts, progress, log)?;
            skipped.extend(loaded.skipped);
            let all = loaded.dataset;
            match (&d.test, &parts.test) {
                (Some(Holdout::Folder(p)), _) | (None, Some(p)) => {
                    let test = holdout_folder(
                        p,
                        &all,
                        &opts,
                        HoldoutPart::Test,
                        progress,
                        log,
                        &mut skipped,
                    )?;
                    (all, test)
                }
                (spec, _) => {
                    let spec = spec.clone().unwrap_or(DEFAULT_FOLDER_TEST);
                    let n = spec
                        .count(all.len(), HoldoutPart::Test)?
                        .expect("not a folder");
                    carve(&all, n, cfg.seed, HoldoutPart::Test)
                }
            }
        }
    };
    let validation_folder = match (d.dataset, &d.validation) {
        (_, Some(Holdout::Folder(p))) => Some(p.clone()),
        (DatasetChoice::Folder, None) => {
            FolderParts::find(d.path.as_deref().unwrap_or(Path::new("."))).validation
        }
        _ => None,
    };
    let validation = match (&d.validation, validation_folder) {
        (_, Some(p)) => Some(holdout_folder(
            &p,
            &train,
            &opts,
            HoldoutPart::Validation,
            progress,
            log,
            &mut skipped,
        )?),
        (Some(spec), None) => {
            let n = spec
                .count(train.len(), HoldoutPart::Validation)?
                .expect("not a folder");
            let (rest, held) = carve(&train, n, cfg.seed, HoldoutPart::Validation);
            train = rest;
            Some(held)
        }
        (None, None) => None,
    };
    if train.is_labelled() != test.is_labelled() && train.is_labelled() {
        log.warn(
            "note: the test images have no labels; the evaluations that need them (kNN, linear probe) are skipped",
        );
    }
    let train = match d.train_subset {
        Some(n) => train.head(n),
        None => train,
    };
    let test = match d.test_subset {
        Some(n) => test.head(n),
        None => test,
    };
    let (train, validation, test) = match &d.superclasses {
        None => (train, validation, test),
        Some(groups) => {
            if !train.is_labelled() {
                bail!("data.superclasses merges classes, but the training images have no labels");
            }
            let (map, names) = crate::config::superclass_map(groups, train.num_classes)?;
            let merge =
                |ds: &Dataset| -> Result<Dataset> { Ok(ds.merge_classes(&map, names.clone())?) };
            let validation = validation.as_ref().map(merge).transpose()?;
            (merge(&train)?, validation, merge(&test)?)
        }
    };
    if train.len() < d.batch_size {
        bail!(
            "{} training images are fewer than data.batch_size = {}: an epoch would have no full batch; lower data.batch_size",
            train.len(),
            d.batch_size
        );
    }
    Ok(RunData {
        train,
        validation,
        test,
        skipped,
    })
}
