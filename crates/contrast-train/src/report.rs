//! What a finished run leaves for its user besides the checkpoint: the
//! representations of its images (`embeddings/<split>.safetensors`, with the image
//! files listed beside them for folder datasets) and a one-page `report.md`.

use crate::contention::DISTURBED;
use crate::evaluate::EvalReport;
use crate::metrics::Summary;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use contrast_data::Dataset;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How `cargo xtask embed` writes embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedFormat {
    /// One safetensors file holding every array.
    #[default]
    Safetensors,
    /// One NumPy `.npy` file per array, `<stem>.<array>.npy`.
    Npy,
}

/// Writes `dir/<split>.safetensors` (see [`write_embedding_file`]).
pub fn write_embeddings(
    dir: &Path,
    split: &str,
    features: &Tensor,
    data: &Dataset,
) -> Result<Vec<PathBuf>> {
    write_embedding_file(
        &dir.join(format!("{split}.safetensors")),
        EmbedFormat::Safetensors,
        features,
        data,
    )
}

/// Writes `features` (`[N, D]`, one row per image of `data`): `embeddings` (f32
/// `[N, D]`), `indices` (i64 `[N]`, the image's index in its split) and, when the
/// images have them, `labels` (i64 `[N]`), as one safetensors `file` or as
/// `<stem>.embeddings.npy`, `<stem>.indices.npy`, `<stem>.labels.npy` beside it. For
/// images read from files, `<stem>.paths.txt` lists the file of each row. Returns the
/// files written.
pub fn write_embedding_file(
    file: &Path,
    format: EmbedFormat,
    features: &Tensor,
    data: &Dataset,
) -> Result<Vec<PathBuf>> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let n = data.len();
    let embeddings = features.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let indices = Tensor::from_vec((0..n as i64).collect::<Vec<_>>(), n, &Device::Cpu)?;
    let labels = data
        .labels()
        .map(|l| {
            Tensor::from_vec(
                l.iter().map(|&c| c as i64).collect::<Vec<_>>(),
                n,
                &Device::Cpu,
            )
        })
        .transpose()?;
    let mut arrays = vec![("embeddings", embeddings), ("indices", indices)];
    arrays.extend(labels.map(|l| ("labels", l)));
    let stem = file.with_extension("");
    let mut written = Vec::new();
    match format {
        EmbedFormat::Safetensors => {
            let tensors: HashMap<String, Tensor> = arrays
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            candle_core::safetensors::save(&tensors, file)
                .with_context(|| format!("writing {}", file.display()))?;
            written.push(file.to_path_buf());
        }
        EmbedFormat::Npy => {
            for (name, t) in arrays {
                let path = PathBuf::from(format!("{}.{name}.npy", stem.display()));
                std::fs::write(&path, npy(&t)?)
                    .with_context(|| format!("writing {}", path.display()))?;
                written.push(path);
            }
        }
    }
    if data.path(0).is_some() {
        let mut list = String::new();
        for i in 0..n {
            let p = data
                .path(i)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            writeln!(list, "{p}").expect("writing to a String");
        }
        let paths = PathBuf::from(format!("{}.paths.txt", stem.display()));
        std::fs::write(&paths, list).with_context(|| format!("writing {}", paths.display()))?;
        written.push(paths);
    }
    Ok(written)
}

/// A tensor (f32 or i64, any rank) as NumPy's `.npy` format version 1.0: the magic,
/// a header dict padded to 64 bytes, then the little-endian values in C order.
pub fn npy(t: &Tensor) -> Result<Vec<u8>> {
    let (descr, data): (&str, Vec<u8>) = match t.dtype() {
        DType::F32 => (
            "<f4",
            t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::I64 => (
            "<i8",
            t.flatten_all()?
                .to_vec1::<i64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        other => anyhow::bail!("npy: dtype {other:?} is not written (f32 and i64 are)"),
    };
    let dims: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, to a multiple of 64.
    let total = (10 + header.len() + 1).next_multiple_of(64);
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    Ok(out)
}

fn number(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.4}"))
}

/// The training part of `report.md`: what was trained on what, the evaluation beside
/// its baselines, the training curves and the files the run left.
fn training_section(s: &Summary, class_names: &[String]) -> String {
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
        if s.ranks > 1 {
            format!("{} data-parallel ranks, each {}", s.ranks, s.device)
        } else {
            s.device.clone()
        }
    );
    let _ = writeln!(
        w,
        "Encoder: `{}`. Training {:.0} s at {:.0} images/s ({:.1}% waiting for data{}), evaluation {:.0} s.\n",
        s.encoder,
        s.train_seconds,
        s.train_images_per_sec,
        100.0 * s.data_wait_fraction,
        match s.others_cpu_share {
            Some(x) if x >= DISTURBED => format!(
                "; other processes{} took {:.0}% of the machine's CPU, so the timing is disturbed",
                if s.ranks > 1 {
                    " (this machine's other ranks included)"
                } else {
                    ""
                },
                100.0 * x
            ),
            _ => String::new(),
        },
        s.eval_seconds
    );
    if s.skipped_files > 0 {
        let _ = writeln!(
            w,
            "{} image files could not be decoded and were left out (`run.log` names them).\n",
            s.skipped_files
        );
    }
    let _ = writeln!(w, "## Evaluation\n");
    let _ = writeln!(
        w,
        "| measure | split | trained | untrained encoder | raw pixels |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|");
    let knn = format!(
        "weighted kNN top-1 (k = {}, t = {})",
        s.knn_k, s.knn_temperature
    );
    // The untrained encoder was measured on the monitored split before the first
    // step; its figure goes in that split's row.
    let on_validation = s.monitor_split == "validation";
    if s.validation_knn_top1.is_some() || (on_validation && s.untrained_knn_top1.is_some()) {
        let _ = writeln!(
            w,
            "| {knn} | validation | {} | {} | - |",
            number(s.validation_knn_top1),
            number(s.untrained_knn_top1.filter(|_| on_validation)),
        );
    }
    let _ = writeln!(
        w,
        "| {knn} | test | {} | {} | {} |",
        number(s.knn_top1),
        number(s.untrained_knn_top1.filter(|_| !on_validation)),
        number(s.baseline_knn_top1)
    );
    let _ = writeln!(
        w,
        "| linear probe top-1 | test | {} | - | {} |",
        number(s.linear_top1),
        number(s.baseline_linear_top1)
    );
    let _ = writeln!(
        w,
        "| uniformity (lower is more spread) | test | {} | - | - |",
        number(s.uniformity)
    );
    let _ = writeln!(
        w,
        "| effective rank of the representation | test | {} | - | - |\n",
        number(s.effective_rank)
    );
    if !s.labelled {
        let _ = writeln!(
            w,
            "The images have no class labels, so kNN and the linear probe were not run; uniformity and effective rank need none.\n"
        );
    }
    if s.labelled {
        let _ = writeln!(
            w,
            "Every kNN uses all {} training images as its bank. The untrained encoder is the run's initialisation, measured before the first step.\n",
            s.train_images
        );
    }
    let _ = writeln!(w, "## Training\n");
    let _ = writeln!(w, "![loss](plots/loss.svg)\n");
    let _ = writeln!(w, "![learning rate](plots/lr.svg)\n");
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
    r
}

/// The `cargo xtask eval` section: every metric of `e` with its settings.
fn eval_section(e: &EvalReport) -> String {
    let mut r = String::new();
    let w = &mut r;
    let st = &e.settings;
    let _ = writeln!(
        w,
        "\n## `cargo xtask eval`: the {} split ({} images)\n\nCheckpoint `{}`; kNN bank and probe: {} training images; representation {}-d.\n",
        st.split, st.images, st.checkpoint, st.train_images, st.representation_dim
    );
    let _ = writeln!(w, "| metric | value | settings |");
    let _ = writeln!(w, "|---|---:|---|");
    let knn = format!("k = {}, t = {}", st.knn_k, st.knn_temperature);
    let rows = [
        ("kNN top-1", number(e.knn_top1), knn.clone()),
        ("kNN top-5", number(e.knn_top5), knn),
        (
            "linear probe top-1",
            number(e.linear_top1),
            format!("{} epochs, lr {}", st.probe.epochs, st.probe.lr),
        ),
        (
            "precision@1",
            number(e.precision_at_1),
            "within the split, cosine".into(),
        ),
        (
            "R-precision",
            number(e.r_precision),
            "within the split, cosine".into(),
        ),
        (
            "MAP@R",
            number(e.map_at_r),
            "within the split, cosine".into(),
        ),
        (
            "NMI",
            number(e.nmi),
            format!("k-means, seed {}", st.kmeans_seed),
        ),
        (
            "AMI",
            number(e.ami),
            format!("k-means, seed {}", st.kmeans_seed),
        ),
        (
            "alignment",
            number(Some(e.alignment)),
            format!("two views of the run's recipe, seed {}", st.alignment_seed),
        ),
        ("uniformity", number(Some(e.uniformity)), "t = 2".into()),
        (
            "effective rank",
            number(Some(e.effective_rank)),
            "RankMe".into(),
        ),
        (
            "std of the normalised embedding",
            number(Some(e.embedding_std)),
            format!(
                "1/sqrt(D) = {:.4}",
                1.0 / (st.representation_dim as f64).sqrt()
            ),
        ),
    ];
    for (name, value, how) in rows {
        let _ = writeln!(w, "| {name} | {value} | {how} |");
    }
    if let Some(h) = &e.similarity {
        let _ = writeln!(
            w,
            "\nCosine similarity of same-class pairs {:.3} on average, of different-class pairs {:.3}; the two histograms overlap by {:.3} ({} and {} pairs).",
            h.positive_mean, h.negative_mean, h.overlap, h.positive_pairs, h.negative_pairs
        );
    }
    for plot in &e.plots {
        let _ = writeln!(w, "\n![{plot}]({plot})");
    }
    if !e.knn_sweep.is_empty() {
        // One row per k, one column per temperature, in the sweep's order.
        let mut temperatures: Vec<f64> = Vec::new();
        let mut ks: Vec<usize> = Vec::new();
        for p in &e.knn_sweep {
            if !temperatures.contains(&p.temperature) {
                temperatures.push(p.temperature);
            }
            if !ks.contains(&p.k) {
                ks.push(p.k);
            }
        }
        let _ = writeln!(
            w,
            "\nWeighted kNN on the {} split, top-1 (top-5), from one neighbour search:\n",
            st.split
        );
        let _ = writeln!(
            w,
            "| k | {} |",
            temperatures
                .iter()
                .map(|t| format!("t = {t}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(w, "|---:|{}", "---:|".repeat(temperatures.len()));
        for k in ks {
            let cells: Vec<String> = temperatures
                .iter()
                .map(|&t| {
                    e.knn_sweep
                        .iter()
                        .find(|p| p.k == k && p.temperature == t)
                        .map_or("-".into(), |p| format!("{:.4} ({:.4})", p.top1, p.top5))
                })
                .collect();
            let _ = writeln!(w, "| {k} | {} |", cells.join(" | "));
        }
    }
    r
}

/// Writes `report.md` in `out`: what was trained on what, the evaluation beside its
/// baselines, the training curves and the files the run left (`summary`, when the
/// run finished), and what `cargo xtask eval` measured (`eval`, when it ran).
pub fn write_report(
    out: &Path,
    summary: Option<&Summary>,
    eval: Option<&EvalReport>,
    class_names: &[String],
) -> Result<PathBuf> {
    let mut r = match summary {
        Some(s) => training_section(s, class_names),
        None => format!(
            "# {}\n\nThe run has no `summary.json` (it did not finish); its checkpoint was evaluated.\n",
            out.display()
        ),
    };
    if let Some(e) = eval {
        r.push_str(&eval_section(e));
    }
    let path = out.join("report.md");
    std::fs::write(&path, r).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
