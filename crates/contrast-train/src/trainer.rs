//! The training loop: data, model, loss, optimiser, evaluation, checkpoints, reports.

use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::evaluate::{Evaluator, input_shape};
use crate::method::Method;
use crate::metrics::{EpochRecord, Summary, write_json, write_metrics};
use crate::model::ContrastiveModel;
use crate::optim::Optimizer;
use crate::schedule::warmup_cosine;
use anyhow::{Context, Result, bail};
use candle_core::Device;
use contrast_data::{Batch, Dataset, LoaderConfig, Normalization, Split, ViewLoader};
use contrast_eval::{Series, line_plot};
use contrast_losses::LossConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a run reads and writes, and whether it continues an earlier one.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory (`config.toml`, `metrics.jsonl`, `summary.json`,
    /// `checkpoints/`, `plots/`).
    pub out_dir: PathBuf,
    /// Explicit data directory (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Show a progress bar (it is hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// Loads the configured dataset and applies the subsets.
pub fn load_data(cfg: &Config, data_dir: Option<&Path>) -> Result<Split> {
    let split = cfg
        .data
        .dataset
        .load(data_dir)
        .with_context(|| format!("loading dataset `{}`", cfg.data.dataset))?;
    let cut = |d: Dataset, n: Option<usize>| match n {
        Some(n) => d.head(n),
        None => d,
    };
    Ok(Split {
        train: cut(split.train, cfg.data.train_subset),
        test: cut(split.test, cfg.data.test_subset),
    })
}

/// One optimisation step on a batch; returns the loss.
#[allow(clippy::too_many_arguments)]
fn train_step(
    cfg: &Config,
    model: &ContrastiveModel,
    method: &mut Method,
    opt: &mut Optimizer,
    batch: &Batch,
    num_classes: usize,
    (step, total): (usize, usize),
    lr: f64,
    device: &Device,
) -> Result<f64> {
    let (loss, extras) = method.loss(cfg, model, batch, num_classes, device)?;
    let value = loss.to_scalar::<f32>()? as f64;
    if !value.is_finite() {
        bail!(
            "non-finite loss ({value}) at epoch {} step {}: lower optim.lr or raise the temperature, then continue from the last checkpoint with --resume",
            batch.epoch + 1,
            batch.step
        );
    }
    let grads = loss.backward()?;
    opt.step(&grads, lr)?;
    method.after_step(cfg, model, extras, batch, step, total)?;
    Ok(value)
}

fn progress_bar(steps: usize, epoch: usize, epochs: usize, show: bool) -> ProgressBar {
    let pb = if show {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>11} [{elapsed_precise}] {bar:28.cyan/blue} {pos:>4}/{len:4} {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(format!("epoch {epoch}/{epochs}"));
    pb
}

fn plot_history(dir: &Path, history: &[EpochRecord], untrained: Option<f64>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let series = |name: &str, f: &dyn Fn(&EpochRecord) -> f64| Series {
        name: name.into(),
        points: history.iter().map(|r| (r.epoch as f64, f(r))).collect(),
    };
    line_plot(
        &dir.join("loss.svg"),
        "Training loss",
        "epoch",
        "loss",
        &[series("loss", &|r| r.loss)],
    )?;
    let mut knn = series("kNN top-1 (monitor bank)", &|r| r.knn_top1);
    if let Some(u) = untrained {
        knn.points.insert(0, (0.0, u));
    }
    line_plot(
        &dir.join("knn.svg"),
        "Weighted kNN accuracy",
        "epoch",
        "top-1",
        &[knn],
    )?;
    Ok(())
}

/// Runs (or resumes) training as configured and returns the summary.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<Summary> {
    let started = Instant::now();
    let device = Device::Cpu;
    let out = &opts.out_dir;
    let ckpt_dir = out.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir)
        .with_context(|| format!("creating {}", ckpt_dir.display()))?;
    let config_toml = cfg.to_toml()?;

    let data = load_data(cfg, opts.data_dir.as_deref())?;
    let (train, test) = (Arc::new(data.train), data.test);
    let norm = Normalization::from_dataset(&train);
    let loader = ViewLoader::new(
        train.clone(),
        vec![cfg.data.augment.clone(); cfg.data.views],
        norm.clone(),
        LoaderConfig {
            batch_size: cfg.data.batch_size,
            drop_last: true,
            shuffle: true,
            seed: cfg.seed,
            prefetch: cfg.data.prefetch,
        },
    )
    .context("configuring the data loader")?;
    let filter_classes = matches!(cfg.loss, LossConfig::Simlap(_)).then_some(train.num_classes);
    let mut model = ContrastiveModel::new(
        &cfg.model,
        input_shape(&train),
        filter_classes,
        &device,
        cfg.seed,
    )?;
    let mut opt = Optimizer::new(cfg.optim.clone(), model.params());
    let mut method = Method::new(cfg, &model, input_shape(&train), train.len(), &device)?;
    let eval = Evaluator {
        norm: &norm,
        knn: &cfg.eval.knn,
        probe: &cfg.eval.probe,
        batch: cfg.eval.batch_size,
        device: &device,
    };
    let monitor_bank = train.head(cfg.eval.monitor_bank);

    let mut state = match checkpoint::latest(&ckpt_dir)? {
        Some(dir) if opts.resume => {
            let (state, extras) = checkpoint::load(&dir, &mut model, &mut opt)?;
            method
                .load_state(extras)
                .with_context(|| format!("{}: method state", dir.display()))?;
            if state.config_toml != config_toml {
                eprintln!(
                    "note: the configuration differs from the checkpoint's; continuing with the new one"
                );
            }
            println!(
                "resuming from {} (epoch {} done)",
                dir.display(),
                state.epoch
            );
            state
        }
        Some(dir) => bail!(
            "{} already holds a checkpoint ({}); pass --resume to continue it or choose another --out",
            out.display(),
            dir.display()
        ),
        None => {
            if opts.resume {
                println!(
                    "no checkpoint in {}; starting from scratch",
                    ckpt_dir.display()
                );
            }
            TrainState {
                epoch: 0,
                optimizer_steps: 0,
                history: Vec::new(),
                train_seconds: 0.0,
                eval_seconds: 0.0,
                images_seen: 0,
                data_wait_seconds: 0.0,
                untrained_knn_top1: None,
                config_toml: config_toml.clone(),
            }
        }
    };
    std::fs::write(out.join("config.toml"), &config_toml)?;
    println!(
        "{}: {} on {} ({} train / {} test images), {} parameters, {} epochs of {} steps",
        cfg.name,
        cfg.loss.name(),
        cfg.data.dataset,
        train.len(),
        test.len(),
        model.num_params(),
        cfg.train.epochs,
        loader.steps_per_epoch()
    );
    if !cfg.mining.is_empty() {
        let names: Vec<&str> = cfg.mining.iter().map(|p| p.name()).collect();
        let labelled: Vec<&str> = cfg
            .mining
            .iter()
            .filter(|p| p.uses_labels())
            .map(|p| p.name())
            .collect();
        let supervision = if labelled.is_empty() {
            String::new()
        } else {
            format!(" (reading class labels: {})", labelled.join(", "))
        };
        println!("mining: {}{supervision}", names.join(", "));
    }

    if cfg.eval.baselines && state.epoch == 0 && state.untrained_knn_top1.is_none() {
        let t = Instant::now();
        let top1 = eval.knn(model.backbone.as_ref(), &train, &test)?;
        state.untrained_knn_top1 = Some(top1);
        state.eval_seconds += t.elapsed().as_secs_f64();
        println!("untrained encoder: kNN top-1 {top1:.4}");
    }

    let steps = loader.steps_per_epoch();
    let total_steps = steps * cfg.train.epochs;
    let warmup = (cfg.schedule.warmup_epochs * steps as f64).round() as usize;
    let peak = cfg.optim.lr();
    let floor = peak * cfg.schedule.final_lr_fraction;
    let views = cfg.data.views as u64;
    for epoch in state.epoch..cfg.train.epochs {
        let t0 = Instant::now();
        let pb = progress_bar(steps, epoch + 1, cfg.train.epochs, opts.progress);
        let mut stream = loader.stream(epoch, 0);
        let (mut loss_sum, mut lr) = (0.0, 0.0);
        let mut images = 0u64;
        for batch in stream.by_ref() {
            let step = epoch * steps + batch.step;
            lr = warmup_cosine(step, total_steps, warmup, peak, floor);
            let loss = train_step(
                cfg,
                &model,
                &mut method,
                &mut opt,
                &batch,
                train.num_classes,
                (step, total_steps),
                lr,
                &device,
            )
            .inspect_err(|_| pb.abandon())?;
            loss_sum += loss;
            images += batch.len() as u64 * views;
            let rate = images as f64 / t0.elapsed().as_secs_f64();
            pb.set_message(format!("loss {loss:.4} lr {lr:.4} {rate:.0} img/s"));
            pb.inc(1);
        }
        let waited = stream.waited().as_secs_f64();
        drop(stream);
        pb.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        state.train_seconds += secs;
        state.images_seen += images;
        state.data_wait_seconds += waited;
        state.optimizer_steps = opt.steps();

        let te = Instant::now();
        let knn = eval.knn(model.backbone.as_ref(), &monitor_bank, &test)?;
        state.eval_seconds += te.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            step: opt.steps(),
            loss: loss_sum / steps as f64,
            lr,
            images_per_sec: images as f64 / secs,
            data_wait_fraction: waited / secs,
            epoch_seconds: secs,
            knn_top1: knn,
            knn_bank: monitor_bank.len(),
            mining: method.take_diagnostics(),
        };
        let negatives = record.mining.as_ref().map_or(String::new(), |m| {
            let fnc = match (m.fn_identified_precision, m.fn_identified_recall) {
                (Some(p), Some(r)) => format!(", FN found p {p:.2} r {r:.2}"),
                _ => String::new(),
            };
            format!(
                "  negatives: {:.1}% same-class, sim {:.2}{fnc}",
                100.0 * m.neg_false_fraction,
                m.neg_sim_mean
            )
        });
        println!(
            "epoch {:>3}/{}  loss {:.4}  lr {:.4}  {:.0} img/s  data wait {:.1}%  kNN@{} {:.4}{negatives}  ({:.0} s)",
            record.epoch,
            cfg.train.epochs,
            record.loss,
            record.lr,
            record.images_per_sec,
            100.0 * record.data_wait_fraction,
            record.knn_bank,
            record.knn_top1,
            secs
        );
        state.history.push(record);
        state.epoch = epoch + 1;
        state.config_toml = config_toml.clone();
        checkpoint::save(
            &ckpt_dir,
            &model,
            &opt,
            &state,
            &method.state()?,
            cfg.train.keep_checkpoints,
        )?;
        write_metrics(&out.join("metrics.jsonl"), &state.history)?;
        plot_history(&out.join("plots"), &state.history, state.untrained_knn_top1)?;
    }

    let te = Instant::now();
    println!(
        "final evaluation: kNN and linear probe on {} train / {} test images",
        train.len(),
        test.len()
    );
    let (knn_top1, probe) = eval.full(model.backbone.as_ref(), &train, &test)?;
    let (baseline_knn, baseline_probe) = if cfg.eval.baselines {
        let (k, p) = eval.pixels(&train, &test)?;
        (Some(k), Some(p.test_top1))
    } else {
        (None, None)
    };
    let eval_seconds = state.eval_seconds + te.elapsed().as_secs_f64();
    let summary = Summary {
        name: cfg.name.clone(),
        dataset: cfg.data.dataset.to_string(),
        encoder: serde_json::to_string(&cfg.model.encoder)?,
        params: model.num_params(),
        epochs: state.epoch,
        knn_top1,
        linear_top1: probe.test_top1,
        linear_train_top1: probe.train_top1,
        untrained_knn_top1: state.untrained_knn_top1,
        baseline_knn_top1: baseline_knn,
        baseline_linear_top1: baseline_probe,
        knn_k: cfg.eval.knn.k,
        knn_temperature: cfg.eval.knn.temperature,
        train_images: train.len(),
        test_images: test.len(),
        train_images_per_sec: state.images_seen as f64 / state.train_seconds.max(1e-9),
        data_wait_fraction: state.data_wait_seconds / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        eval_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}
