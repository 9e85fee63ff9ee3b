//! `cargo xtask bench mining`: the step-time cost of every mining preset against
//! plain SimCLR at batch 256, measured side by side: each preset's steps alternate
//! with its baseline's, and the medians are compared.
//!
//! Each preset in `configs/mine-*.toml` runs full training steps of the default
//! ConvNet through the trainer's own method path (views, encoder, planning, the
//! generalised InfoNCE, backward, SGD, per-epoch diagnostics). The baseline is the
//! same step with no mining machinery at all (`nt_xent` straight on the views); the
//! `simclr-fmnist` preset row adds only the diagnostics. The MoCo presets with queue
//! mining (`moco-*` with a `mining` list) are compared with `moco-fmnist` (16,384-entry
//! queue, its diagnostics included) in the same way.

use anyhow::{Context, Result};
use candle_core::Tensor;
use contrast_data::{Batch, ImageShape};
use contrast_losses::nt_xent;
use contrast_train::Config;
use contrast_train::method::Method;
use contrast_train::model::{ContrastiveModel, ModelParts};
use contrast_train::optim::Optimizer;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Timed steps per setup, after `WARMUP` steps (which also fill NNCLR's support and
/// seed the k-means centroids).
const REPS: usize = 9;
const WARMUP: usize = 2;

/// A deterministic batch of `b` 28x28 images in `v` views, labels cycling 0..10.
fn batch(b: usize, v: usize, step: usize) -> Batch {
    let views = (0..v)
        .map(|v| {
            (0..b * 28 * 28)
                .map(|i| ((i * 31 + step * 7 + v * 13 + i / 784 * 17) % 251) as f32 / 251.0)
                .collect()
        })
        .collect();
    Batch::whole(
        0,
        step,
        (0..b as u32).collect(),
        Some((0..b as u32).map(|i| i % 10).collect()),
        views,
        ImageShape {
            height: 28,
            width: 28,
            channels: 1,
        },
    )
}

/// One training setup stepped by the bench: the trainer's method path (mining,
/// diagnostics, enqueue) or, with `plain`, NT-Xent straight on two views.
struct Runner {
    cfg: Config,
    plain: bool,
    model: ContrastiveModel,
    opt: Optimizer,
    method: Method,
}

impl Runner {
    fn new(cfg: Config, plain: bool) -> Result<Self> {
        let input = contrast_encoders::InputShape {
            height: 28,
            width: 28,
            channels: 1,
        };
        let device = crate::bench::device();
        let model = ContrastiveModel::new(
            &cfg.model,
            input,
            ModelParts::default(),
            device,
            0,
            cfg.train.precision,
        )?;
        let opt = Optimizer::new(cfg.optim.clone(), model.params());
        let method = Method::new(&cfg, &model, input, 1, device)?;
        Ok(Self {
            cfg,
            plain,
            model,
            opt,
            method,
        })
    }

    /// Milliseconds of training step `step`.
    fn step(&mut self, step: usize) -> Result<f64> {
        let (cfg, device) = (&self.cfg, crate::bench::device());
        let b = cfg.data.batch_size;
        let batch = batch(b, cfg.data.views, step);
        let t = Instant::now();
        if self.plain {
            let views = (0..2)
                .map(|v| Tensor::from_slice(&batch.views[v], (b, 28, 28, 1), device))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let (_, z) = self.model.forward_t(&Tensor::cat(&views, 0)?, true)?;
            let loss = nt_xent(&z.narrow(0, 0, b)?, &z.narrow(0, b, b)?, 0.2)?;
            self.opt.step(&loss.backward()?, 0.1)?;
        } else {
            self.method.step(
                cfg,
                &self.model,
                &mut self.opt,
                &batch,
                10,
                (step, REPS + WARMUP),
                0.1,
                device,
                &contrast_train::World::single(),
            )?;
            // The epoch's diagnostics summary is part of the cost of a logged run
            // (taken every step here, which overstates it).
            self.method.take_diagnostics();
        }
        device.synchronize()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median step times of `a` and `b`, stepped alternately so that the machine's
/// drifts hit both alike.
fn paired(a: &mut Runner, b: &mut Runner) -> Result<(f64, f64)> {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for step in 0..REPS + WARMUP {
        let (x, y) = (a.step(step)?, b.step(step)?);
        if step >= WARMUP {
            ta.push(x);
            tb.push(y);
        }
    }
    Ok((median(ta), median(tb)))
}

fn presets(prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir("configs")
        .context("reading configs/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".toml"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Runs the table; writes `out` (JSON rows with `overhead_pct` against the baseline
/// measured beside each preset).
pub fn mining(out: &Path) -> Result<()> {
    println!(
        "{:<30} {:>12} {:>12} {:>9}",
        "preset", "step ms", "baseline ms", "overhead"
    );
    let mut rows = Vec::new();
    let mut compare = |path: &Path, baseline: &Path, plain: bool| -> Result<()> {
        let cfg = Config::load(path, &[])?;
        let name = cfg.name.clone();
        let policies: Vec<String> = cfg.mining.iter().map(|p| p.name().to_string()).collect();
        let mut base = Runner::new(Config::load(baseline, &[])?, plain)?;
        let mut this = Runner::new(cfg, false).with_context(|| format!("{}", path.display()))?;
        let (b, t) = paired(&mut base, &mut this)?;
        let overhead = 100.0 * (t / b - 1.0);
        let base_name = if plain { "plain simclr" } else { "moco-fmnist" };
        println!("{name:<30} {t:>12.1} {b:>12.1} {overhead:>8.1}%  (vs {base_name})");
        rows.push(json!({"preset": name, "policies": policies, "median_ms": t, "baseline": base_name, "baseline_ms": b, "overhead_pct": overhead}));
        Ok(())
    };
    let simclr = Path::new("configs/simclr-fmnist.toml");
    compare(simclr, simclr, true)?;
    for path in presets("mine-")? {
        compare(&path, simclr, true)?;
    }
    let moco = Path::new("configs/moco-fmnist.toml");
    compare(moco, simclr, true)?;
    for path in presets("moco-")? {
        if Config::load(&path, &[]).is_ok_and(|c| !c.mining.is_empty()) {
            compare(&path, moco, false)?;
        }
    }
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(out, serde_json::to_string_pretty(&rows)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
