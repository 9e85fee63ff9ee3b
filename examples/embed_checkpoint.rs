//! Load a trained run's checkpoint and embed images into a file.
//!
//! Shows how to use a run directory written by `cargo xtask train` (its
//! `config.toml` and `checkpoints/latest`) for inference: the model is rebuilt from
//! the configuration ([`ContrastiveModel::new`]), its variables restored with
//! [`checkpoint::load_model`], and the backbone's representations `[N, D]` (eval
//! mode, no augmentation, the trainer's per-channel normalisation) are written as
//! safetensors: `embeddings` (`[N, D]` f32) and `labels` (`[N]` u32).
//!
//! With a run directory it embeds the first `--images` test images of the run's
//! dataset. Without one it makes its own tiny run first, so that it works anywhere:
//! the default configuration (`configs/simclr-fmnist.toml`, with a `--set`-style
//! override), one SGD step on synthetic 28x28 images, [`checkpoint::save`]; then it
//! loads that run like any other and checks that the loaded model's embeddings equal
//! the saved model's bit for bit.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --release -p contrast-examples --example embed_checkpoint
//! cargo run --release -p contrast-examples --example embed_checkpoint -- runs/simclr-fmnist-<timestamp>
//! ```

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use contrast_data::{Dataset, LoaderConfig, Normalization, ViewLoader};
use contrast_encoders::{Encoder, InputShape};
use contrast_losses::LossInputs;
use contrast_train::Config;
use contrast_train::checkpoint::{self, TrainState};
use contrast_train::model::{ContrastiveModel, model_parts};
use contrast_train::optim::Optimizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Embeds images with a trained run's encoder.
#[derive(Parser)]
struct Args {
    /// Run directory (`config.toml`, `checkpoints/latest`); without it, a tiny run is
    /// made in a temporary directory (removed at exit).
    run_dir: Option<PathBuf>,
    /// Output file [default: RUN_DIR/embeddings.safetensors, or
    /// contrast-embeddings.safetensors in the system's temporary directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Test images to embed (all when larger than the test split).
    #[arg(long, default_value_t = 1000)]
    images: usize,
    /// Where the run's dataset is (as `cargo xtask train --data-dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Images embedded per forward pass.
const EMBED_BATCH: usize = 256;

fn input_shape(d: &Dataset) -> InputShape {
    InputShape {
        height: d.shape.height,
        width: d.shape.width,
        channels: d.shape.channels,
    }
}

/// The model a run's configuration describes, with seeded initial values. A SimLAP
/// run also trains a feature filter over the dataset's classes, which its checkpoint
/// holds, so the model must have one to load it.
fn build_model(cfg: &Config, data: &Dataset) -> Result<ContrastiveModel> {
    ContrastiveModel::new(
        &cfg.model,
        input_shape(data),
        model_parts(cfg, data.num_classes),
        &Device::Cpu,
        cfg.seed,
        cfg.train.precision,
    )
}

/// Representations `[N, D]` of every image of `data`, in eval mode: un-augmented
/// pixels normalised with `norm`, BatchNorm on its running statistics.
fn embed(encoder: &dyn Encoder, data: &Dataset, norm: &Normalization) -> Result<Tensor> {
    let s = data.shape;
    let mut parts = Vec::new();
    for start in (0..data.len()).step_by(EMBED_BATCH) {
        let end = (start + EMBED_BATCH).min(data.len());
        let x = Tensor::from_vec(
            data.normalized_f32(start..end, &norm.mean, &norm.std),
            (end - start, s.height, s.width, s.channels),
            &Device::Cpu,
        )?;
        parts.push(encoder.forward_t(&x, false)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Rebuilds `run_dir`'s model and restores its latest checkpoint.
fn load_run(run_dir: &Path, cfg: &Config, data: &Dataset) -> Result<ContrastiveModel> {
    let dir = checkpoint::latest(&run_dir.join("checkpoints"))?
        .with_context(|| format!("{}: no checkpoint", run_dir.display()))?;
    let mut model = build_model(cfg, data)?;
    checkpoint::load_model(&dir, &mut model)?;
    println!("loaded {}", dir.display());
    Ok(model)
}

/// Writes a tiny run into `run_dir`: the default configuration, one SGD step on
/// `data`, a checkpoint. Returns the model as saved.
fn make_tiny_run(
    run_dir: &Path,
    data: &Arc<Dataset>,
    norm: &Normalization,
) -> Result<ContrastiveModel> {
    let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/simclr-fmnist.toml");
    // Overrides as `cargo xtask train --set key=value` applies them.
    let overrides = [
        "name=embed-example".to_string(),
        "data.batch_size=32".to_string(),
    ];
    let cfg = Config::load(&preset, &overrides)?;
    let model = build_model(&cfg, data)?;
    let mut opt = Optimizer::new(cfg.optim.clone(), model.params());

    // One step of the configured loss on two augmented views of one batch, so that
    // the weights and BatchNorm's running statistics differ from the seeded ones.
    let loader = ViewLoader::new(
        data.clone(),
        vec![cfg.data.augment.clone(); 2],
        norm.clone(),
        LoaderConfig {
            batch_size: cfg.data.batch_size,
            drop_last: true,
            shuffle: true,
            seed: cfg.seed,
            prefetch: 1,
        },
    )?;
    let batch = loader.batch(0, 0, &loader.order(0));
    let s = batch.shape;
    let dims = (batch.len(), s.height, s.width, s.channels);
    let views = Tensor::cat(
        &[
            Tensor::from_slice(&batch.views[0], dims, &Device::Cpu)?,
            Tensor::from_slice(&batch.views[1], dims, &Device::Cpu)?,
        ],
        0,
    )?;
    let (_, z) = model.forward_t(&views, true)?;
    let b = batch.len();
    let loss = cfg
        .loss
        .compute(LossInputs::views(&[z.narrow(0, 0, b)?, z.narrow(0, b, b)?]))?;
    opt.step(&loss.backward()?, cfg.optim.lr())?;
    println!(
        "tiny run: {} ({} parameters), one step on {b} pairs, {} loss {:.4}",
        run_dir.display(),
        model.num_params(),
        cfg.loss.name(),
        loss.to_scalar::<f32>()?
    );

    std::fs::write(run_dir.join("config.toml"), cfg.to_toml()?)?;
    let state = TrainState {
        epoch: 1,
        optimizer_steps: opt.steps(),
        images_seen: b as u64,
        ..TrainState::new(cfg.to_toml()?)
    };
    checkpoint::save(
        &run_dir.join("checkpoints"),
        &model,
        &opt,
        &state,
        &Vec::new(),
        1,
    )?;
    Ok(model)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|x| x.to_bits())
        .collect())
}

fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let tiny_run;
    let (run_dir, images, norm, saved) = match &args.run_dir {
        Some(dir) => {
            let cfg = Config::load(&dir.join("config.toml"), &[])?;
            let contrast_data::DatasetChoice::Named(id) = cfg.data.dataset else {
                anyhow::bail!("this example embeds a named dataset's test images");
            };
            let split = id.load(args.data_dir.as_deref())?;
            // The trainer normalises with the statistics of the training images it
            // used; the checkpoint does not store them, so they are recomputed.
            let train = match cfg.data.train_subset {
                Some(n) => split.train.head(n),
                None => split.train,
            };
            let norm = Normalization::from_dataset(&train);
            (dir.clone(), split.test.head(args.images), norm, None)
        }
        None => {
            tiny_run = tempfile::Builder::new()
                .prefix("contrast-embed-example-")
                .tempdir()?;
            // 64 synthetic 28x28 images (Fashion-MNIST's size) to train the step on,
            // the first `--images` of them to embed.
            let train = Arc::new(contrast_examples::bars(64, 28, 10, 0)?);
            let norm = Normalization::from_dataset(&train);
            let model = make_tiny_run(tiny_run.path(), &train, &norm)?;
            let images = train.head(args.images);
            let saved = embed(model.backbone.as_ref(), &images, &norm)?;
            (tiny_run.path().to_path_buf(), images, norm, Some(saved))
        }
    };

    let cfg = Config::load(&run_dir.join("config.toml"), &[])?;
    let model = load_run(&run_dir, &cfg, &images)?;
    let embeddings = embed(model.backbone.as_ref(), &images, &norm)?;
    if let Some(saved) = &saved {
        // A freshly built model (seeded, untrained) embeds differently, so equality
        // below shows the checkpoint was restored, every variable of it.
        let fresh = embed(
            build_model(&cfg, &images)?.backbone.as_ref(),
            &images,
            &norm,
        )?;
        ensure!(bits(&fresh)? != bits(saved)?, "the step changed nothing");
        ensure!(
            bits(&embeddings)? == bits(saved)?,
            "the loaded model embeds differently from the saved one"
        );
        println!("loaded model's embeddings equal the saved model's bit for bit");
    }

    let out = args.out.clone().unwrap_or_else(|| match &args.run_dir {
        Some(dir) => dir.join("embeddings.safetensors"),
        None => std::env::temp_dir().join("contrast-embeddings.safetensors"),
    });
    let labels = Tensor::new(
        images.labels().context("the images have no labels")?,
        &Device::Cpu,
    )?;
    let tensors = HashMap::from([
        ("embeddings".to_string(), embeddings.clone()),
        ("labels".to_string(), labels),
    ]);
    candle_core::safetensors::save(&tensors, &out)?;
    let back = candle_core::safetensors::load(&out, &Device::Cpu)?;
    let read = back
        .get("embeddings")
        .context("embeddings missing from the file")?;
    ensure!(
        read.dtype() == DType::F32 && bits(read)? == bits(&embeddings)?,
        "{} does not read back as written",
        out.display()
    );
    println!(
        "wrote {} : embeddings {:?} f32, labels [{}] ({:.1} s)",
        out.display(),
        embeddings.dims(),
        images.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    run(&Args::parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_run_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            run_dir: None,
            out: Some(dir.path().join("embeddings.safetensors")),
            images: 16,
            data_dir: None,
        };
        run(&args).unwrap();
    }
}
