//! What a finished run leaves for its user besides the checkpoint: the
//! representations of its images (`embeddings/<split>.safetensors`, with the image
//! files listed beside them for folder datasets) and a one-page `report.md`.

use crate::metrics::Summary;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use contrast_data::Dataset;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Writes `features` (`[N, D]`, one row per image of `data`) to
/// `dir/<split>.safetensors`: `embeddings` (f32 `[N, D]`), `indices` (i64 `[N]`, the
/// image's index in the split) and, when the images have them, `labels` (i64 `[N]`).
/// For images read from files, `dir/<split>.paths.txt` lists the file of each row.
/// Returns the files written.
pub fn write_embeddings(
    dir: &Path,
    split: &str,
    features: &Tensor,
    data: &Dataset,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let n = data.len();
    let mut tensors = HashMap::new();
    tensors.insert(
        "embeddings".to_string(),
        features.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
    );
    let indices: Vec<i64> = (0..n as i64).collect();
    tensors.insert(
        "indices".to_string(),
        Tensor::from_vec(indices, n, &Device::Cpu)?,
    );
    if let Some(labels) = data.labels() {
        let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        tensors.insert(
            "labels".to_string(),
            Tensor::from_vec(labels, n, &Device::Cpu)?,
        );
    }
    let file = dir.join(format!("{split}.safetensors"));
    candle_core::safetensors::save(&tensors, &file)
        .with_context(|| format!("writing {}", file.display()))?;
    let mut written = vec![file];
    if data.path(0).is_some() {
        let mut list = String::new();
        for i in 0..n {
            let p = data
                .path(i)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            writeln!(list, "{p}").expect("writing to a String");
        }
        let paths = dir.join(format!("{split}.paths.txt"));
        std::fs::write(&paths, list).with_context(|| format!("writing {}", paths.display()))?;
        written.push(paths);
    }
    Ok(written)
}

fn number(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.4}"))
}

/// Writes `report.md` in `out`: what was trained on what, the evaluation beside its
/// baselines, the training curves and the files the run left.
pub fn write_report(out: &Path, s: &Summary, class_names: &[String]) -> Result<PathBuf> {
    let mut r = String::new();
    let w = &mut r;
    let _ = writeln!(w, "# {}\n", s.name);
    let _ = writeln!(
        w,
        "{} epochs on `{}` ({} train / {} test images{}{}), {} parameters, on {}.\n",
        s.epochs,
        s.dataset,
        s.train_images,
        s.test_images,
        s.validation_images
            .map_or(String::new(), |v| format!(" / {v} validation")),
        if s.labelled { "" } else { ", unlabeled" },
        s.params,
        s.device
    );
    let _ = writeln!(
        w,
        "Encoder: `{}`. Training {:.0} s at {:.0} images/s ({:.1}% waiting for data), evaluation {:.0} s.\n",
        s.encoder,
        s.train_seconds,
        s.train_images_per_sec,
        100.0 * s.data_wait_fraction,
        s.eval_seconds
    );
    if s.skipped_files > 0 {
        let _ = writeln!(
            w,
            "{} image files could not be decoded and were left out (`run.log` names them).\n",
            s.skipped_files
        );
    }
    let _ = writeln!(w, "## Evaluation (test split)\n");
    let _ = writeln!(w, "| measure | trained | untrained encoder | raw pixels |");
    let _ = writeln!(w, "|---|---:|---:|---:|");
    let _ = writeln!(
        w,
        "| weighted kNN top-1 (k = {}, t = {}) | {} | {} | {} |",
        s.knn_k,
        s.knn_temperature,
        number(s.knn_top1),
        number(s.untrained_knn_top1),
        number(s.baseline_knn_top1)
    );
    let _ = writeln!(
        w,
        "| linear probe top-1 | {} | - | {} |",
        number(s.linear_top1),
        number(s.baseline_linear_top1)
    );
    let _ = writeln!(
        w,
        "| uniformity (lower is more spread) | {} | - | - |",
        number(s.uniformity)
    );
    let _ = writeln!(
        w,
        "| effective rank of the representation | {} | - | - |\n",
        number(s.effective_rank)
    );
    if !s.labelled {
        let _ = writeln!(
            w,
            "The images have no class labels, so kNN and the linear probe were not run; uniformity and effective rank need none.\n"
        );
    }
    if s.untrained_knn_top1.is_some() {
        let _ = writeln!(
            w,
            "The untrained encoder is measured on the {} split, before the first step.\n",
            s.monitor_split
        );
    }
    let _ = writeln!(w, "## Training\n");
    let _ = writeln!(w, "![loss](plots/loss.svg)\n");
    if s.labelled {
        let _ = writeln!(
            w,
            "![kNN on the {} split](plots/knn.svg)\n",
            s.monitor_split
        );
    }
    if !s.embeddings.is_empty() {
        let _ = writeln!(w, "## Embeddings\n");
        for f in &s.embeddings {
            let _ = writeln!(w, "- `{f}`");
        }
        let _ = writeln!(
            w,
            "\nEach `.safetensors` file holds `embeddings` (f32 `[N, D]`), `indices` (i64 `[N]`){}; a `.paths.txt` beside it names the image file of each row.\n",
            if s.labelled {
                " and `labels` (i64 `[N]`)"
            } else {
                ""
            }
        );
    }
    if !class_names.is_empty() {
        let _ = writeln!(w, "Classes by label, from 0: {}.\n", class_names.join(", "));
    }
    let _ = writeln!(
        w,
        "## Provenance\n\n- command: `{}`\n- commit: `{}`\n- contrast {}, seed {}\n- files: `config.toml`, `metrics.jsonl`, `metrics.csv`, `summary.json`, `run.log`, `checkpoints/`",
        s.command.as_deref().unwrap_or("-"),
        s.commit.as_deref().unwrap_or("unknown"),
        s.version,
        s.seed
    );
    let path = out.join("report.md");
    std::fs::write(&path, r).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
