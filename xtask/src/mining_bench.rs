//! `cargo xtask bench mining`: the step-time cost of every mining preset against
//! plain SimCLR at batch 256, measured side by side in one run.
//!
//! Each preset in `configs/mine-*.toml` runs full training steps of the default
//! ConvNet through the trainer's own method path (views, encoder, planning, the
//! generalised InfoNCE, backward, SGD, per-epoch diagnostics). The baseline is the
//! same step with no mining machinery at all (`nt_xent` straight on the views); the
//! `simclr-fmnist` preset row adds only the diagnostics. The MoCo presets with queue
//! mining (`moco-*` with a `mining` list) are compared with `moco-fmnist` (16,384-entry
//! queue, its diagnostics included) in the same way.

use anyhow::{Context, Result};
use candle_core::Device;
use contrast_data::{Batch, ImageShape};
use contrast_train::Config;
use contrast_train::method::Method;
use contrast_train::model::ContrastiveModel;
use contrast_train::optim::Optimizer;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// Timed steps per preset, after two warm-up steps (which also fill NNCLR's support
/// and seed the k-means centroids).
const REPS: usize = 7;

/// A deterministic batch of `b` 28x28 images in two views, labels cycling 0..10.
fn batch(b: usize, step: usize) -> Batch {
    let views = (0..2)
        .map(|v| {
            (0..b * 28 * 28)
                .map(|i| ((i * 31 + step * 7 + v * 13 + i / 784 * 17) % 251) as f32 / 251.0)
                .collect()
        })
        .collect();
    Batch {
        epoch: 0,
        step,
        indices: (0..b as u32).collect(),
        labels: (0..b as u32).map(|i| i % 10).collect(),
        views,
        shape: ImageShape {
            height: 28,
            width: 28,
            channels: 1,
        },
    }
}

/// Median milliseconds of one training step of `cfg` (mining through the method
/// path, or plain NT-Xent with `plain`).
fn step_ms(cfg: &Config, plain: bool) -> Result<f64> {
    let device = Device::Cpu;
    let input = contrast_encoders::InputShape {
        height: 28,
        width: 28,
        channels: 1,
    };
    let model = ContrastiveModel::new(&cfg.model, input, None, &device, 0)?;
    let mut opt = Optimizer::new(cfg.optim.clone(), model.params());
    let mut method = Method::new(cfg, &model, input, 1, &device)?;
    let b = cfg.data.batch_size;
    let mut times = Vec::new();
    for step in 0..REPS + 2 {
        let batch = batch(b, step);
        let t = Instant::now();
        if plain {
            let x = candle_core::Tensor::cat(
                &(0..2)
                    .map(|v| {
                        candle_core::Tensor::from_slice(&batch.views[v], (b, 28, 28, 1), &device)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?,
                0,
            )?;
            let (_, z) = model.forward_t(&x, true)?;
            let t_loss = match &cfg.loss {
                contrast_losses::LossConfig::NtXent(c) => c.temperature,
                _ => 0.2,
            };
            let loss = contrast_losses::nt_xent(&z.narrow(0, 0, b)?, &z.narrow(0, b, b)?, t_loss)?;
            opt.step(&loss.backward()?, 0.1)?;
        } else {
            let (loss, extras) = method.loss(cfg, &model, &batch, 10, &device)?;
            opt.step(&loss.backward()?, 0.1)?;
            method.after_step(cfg, &model, extras, &batch, step, REPS + 2)?;
        }
        if step >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    // The epoch's diagnostics summary is part of the cost of a logged run.
    let t = Instant::now();
    method.take_diagnostics();
    let summary_ms = t.elapsed().as_secs_f64() * 1e3 / REPS as f64;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2] + summary_ms)
}

/// Runs the table; writes `out` (JSON rows with `overhead_pct` against plain).
pub fn mining(out: &Path) -> Result<()> {
    let base = Config::load(Path::new("configs/simclr-fmnist.toml"), &[])?;
    let plain = step_ms(&base, true)?;
    println!("{:<32} {:>10} {:>10}", "preset", "step ms", "overhead");
    println!(
        "{:<32} {plain:>10.1} {:>10}",
        "plain simclr (no mining)", "-"
    );
    let mut presets: Vec<_> = std::fs::read_dir("configs")
        .context("reading configs/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mine-") && n.ends_with(".toml"))
        })
        .collect();
    presets.sort();
    presets.insert(0, "configs/simclr-fmnist.toml".into());
    let mut rows =
        vec![json!({"preset": "plain", "policies": [], "median_ms": plain, "overhead_pct": 0.0})];
    let mut row = |path: &Path, baseline: f64| -> Result<f64> {
        let cfg = Config::load(path, &[])?;
        let ms = step_ms(&cfg, false).with_context(|| format!("{}", path.display()))?;
        let overhead = 100.0 * (ms / baseline - 1.0);
        println!("{:<32} {ms:>10.1} {overhead:>9.1}%", cfg.name);
        let policies: Vec<&str> = cfg.mining.iter().map(|p| p.name()).collect();
        rows.push(json!({"preset": cfg.name, "policies": policies, "median_ms": ms, "overhead_pct": overhead}));
        Ok(ms)
    };
    for path in &presets {
        row(path, plain)?;
    }
    let moco = row(Path::new("configs/moco-fmnist.toml"), plain)?;
    let mut queue_presets: Vec<_> = std::fs::read_dir("configs")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("moco-") && n != "moco-fmnist.toml")
        })
        .filter(|p| Config::load(p, &[]).is_ok_and(|c| !c.mining.is_empty()))
        .collect();
    queue_presets.sort();
    println!("(queue mining: overhead against moco-fmnist)");
    for path in &queue_presets {
        row(path, moco)?;
    }
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(out, serde_json::to_string_pretty(&rows)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
