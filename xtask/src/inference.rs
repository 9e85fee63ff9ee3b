//! `cargo xtask eval` and `cargo xtask embed`: a trained run directory measured or
//! turned into embeddings, from its newest checkpoint or a given one.

use anyhow::{Context, Result};
use contrast_train::config::SplitName;
use contrast_train::log::RunLog;
use contrast_train::metrics::Summary;
use contrast_train::report::{self, EmbedFormat};
use contrast_train::run_dir::OpenedRun;
use contrast_train::{DeviceChoice, data};
use std::path::{Path, PathBuf};

/// Evaluates `split` of the run in `dir` and writes `dir/eval.json` and
/// `dir/report.md`.
pub fn eval(
    dir: &Path,
    checkpoint: Option<&Path>,
    split: SplitName,
    device: Option<DeviceChoice>,
) -> Result<()> {
    let log = RunLog::stdout_only();
    let run = OpenedRun::open(dir, checkpoint, device, None, &log)?;
    let images = run.split(split)?;
    println!(
        "evaluating {} ({} images of the {} split) with {}",
        dir.display(),
        images.len(),
        split.name(),
        run.checkpoint.display()
    );
    let report = run.eval.report(
        &run.model.representation(run.cfg.eval.representation),
        &run.data.train,
        images,
        split.name(),
        &run.cfg.data.augment,
        run.cfg.seed,
        &run.checkpoint.display().to_string(),
        Some((dir, &run.cfg.name)),
    )?;
    let json = dir.join("eval.json");
    contrast_train::metrics::write_json(&json, &report)?;
    let summary: Option<Summary> = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let md = report::write_report(
        dir,
        summary.as_ref(),
        Some(&report),
        &run.data.train.class_names,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("wrote {} and {}", json.display(), md.display());
    Ok(())
}

/// Embeds `split` of the run in `dir`, or the images at `images` read as the run's
/// were, into `out`.
pub fn embed(
    dir: &Path,
    checkpoint: Option<&Path>,
    split: SplitName,
    images: Option<&Path>,
    out: &Path,
    format: EmbedFormat,
    device: Option<DeviceChoice>,
) -> Result<()> {
    let log = RunLog::stdout_only();
    let run = OpenedRun::open(dir, checkpoint, device, None, &log)?;
    let loaded;
    let data = match images {
        Some(path) => {
            let opts = data::folder_options(&run.cfg);
            loaded = data::read_like(path, &run.data.train, false, &opts, "--images", true, &log)?;
            &loaded.dataset
        }
        None => run.split(split)?,
    };
    let features = run
        .eval
        .features(&run.model.representation(run.cfg.eval.representation), data)?;
    let written = report::write_embedding_file(out, format, &features, data)
        .with_context(|| format!("writing embeddings to {}", out.display()))?;
    println!(
        "embedded {} images into [{}, {}] with {}:",
        data.len(),
        features.dim(0)?,
        features.dim(1)?,
        run.checkpoint.display()
    );
    for f in written {
        println!("  {}", f.display());
    }
    Ok(())
}

/// The default output of `embed`: `<run>/embeddings/<split or images>.safetensors`.
pub fn default_out(dir: &Path, split: SplitName, images: Option<&Path>) -> PathBuf {
    let stem = match images {
        Some(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "images".into()),
        None => split.name().to_string(),
    };
    dir.join("embeddings").join(format!("{stem}.safetensors"))
}
