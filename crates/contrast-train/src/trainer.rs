//! The training loop: data, model, loss, optimiser, evaluation, checkpoints, reports.

use crate::checkpoint::{self, PartialEpoch, TrainState};
use crate::config::SplitName;
use crate::config::{Config, OnNonFinite};
use crate::contention::{CpuClock, DISTURBED};
use crate::data::{RunData, load_data};
use crate::device::describe;
use crate::distributed::World;
use crate::evaluate::{Evaluator, input_shape};
use crate::log::RunLog;
use crate::method::{Method, NonFinite};
use crate::metrics::{EpochRecord, Summary, others_cpu_share, write_json, write_metrics};
use crate::model::{ContrastiveModel, model_parts};
use crate::optim::Optimizer;
use crate::report;
use crate::schedule::warmup_cosine;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use contrast_data::{
    Batch, Dataset, DatasetChoice, EpochStream, LoaderConfig, Normalization, Region, Regions,
    Stream, ViewLoader, stream_seed,
};
use contrast_eval::{Series, line_plot};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Where a run reads and writes, and whether it continues an earlier one.
#[derive(Debug, Clone, Default)]
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
    /// The command line that started the run, for `summary.json`.
    pub command: Option<String>,
    /// The source revision of the build (`git` commit), for `summary.json`.
    pub commit: Option<String>,
    /// The ranks of a data-parallel run (default: this process alone). Rank 0
    /// writes the run directory and evaluates; every rank reads checkpoints.
    pub world: World,
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

/// The training curves under `dir` (SVG and PNG each): loss, learning rate, and the
/// monitor's kNN accuracy (from the untrained encoder's at epoch 0) when labelled.
fn plot_history(dir: &Path, history: &[EpochRecord], untrained: Option<f64>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let series = |name: &str, f: &dyn Fn(&EpochRecord) -> f64| Series {
        name: name.into(),
        points: history.iter().map(|r| (r.epoch as f64, f(r))).collect(),
    };
    line_plot(
        &dir.join("loss"),
        "Training loss (mean over each epoch)",
        "epoch",
        "loss",
        &[series("loss", &|r| r.loss)],
    )?;
    line_plot(
        &dir.join("lr"),
        "Learning rate (at the end of each epoch)",
        "epoch",
        "learning rate",
        &[series("learning rate", &|r| r.lr)],
    )?;
    if history.iter().any(|r| r.knn_top1.is_none()) {
        return Ok(()); // unlabeled: no kNN to plot
    }
    let split = history.last().map_or("monitor", |r| r.knn_split.as_str());
    let mut knn = series(&format!("kNN top-1 ({split})"), &|r| {
        r.knn_top1.unwrap_or(0.0)
    });
    if let Some(u) = untrained {
        knn.points.insert(0, (0.0, u));
    }
    line_plot(
        &dir.join("knn"),
        &format!("Weighted kNN accuracy on the {split} split (epoch 0: untrained)"),
        "epoch",
        "top-1",
        &[knn],
    )?;
    Ok(())
}

/// A training run, step by step: [`Trainer::new`] sets it up (data, loader, model,
/// optimiser, method state, and the checkpoint to continue from when resuming),
/// [`Trainer::train`] runs the remaining epochs ([`Trainer::epoch`], each a loop of
/// [`Trainer::step`] followed by the kNN monitor and a checkpoint), and
/// [`Trainer::finish`] evaluates and writes the summary. [`run`] chains the three.
#[derive(Debug)]
pub struct Trainer {
    cfg: Config,
    out: PathBuf,
    progress: bool,
    device: Device,
    train: Arc<Dataset>,
    test: Dataset,
    validation: Option<Dataset>,
    monitor_bank: Dataset,
    /// Image-folder files left out.
    skipped_files: usize,
    log: RunLog,
    command: Option<String>,
    commit: Option<String>,
    loader: ViewLoader,
    model: ContrastiveModel,
    opt: Optimizer,
    method: Method,
    eval: Evaluator,
    state: TrainState,
    config_toml: String,
    /// When this process set the run up.
    started: Instant,
    /// Wall-clock seconds the run had taken before this process (the resumed
    /// checkpoint's), so that a resumed run reports its whole wall time.
    wall_before: f64,
    interrupt: Option<&'static AtomicBool>,
    world: World,
    /// ContrastiveCrop's object boxes, one per training image, once located
    /// (`None`: the whole images).
    boxes: Option<Vec<Region>>,
}

/// The run stopped on request after writing the checkpoint in `dir`.
#[derive(Debug, Clone)]
pub struct Interrupted {
    pub dir: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted; checkpoint {} written, continue with --resume",
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

impl Trainer {
    /// Sets up a run in `opts.out_dir`: loads the data, builds the loader, the seeded
    /// model, the optimiser and the method's state, then continues from the latest
    /// checkpoint when `opts.resume` (refusing to overwrite one otherwise), and
    /// measures the untrained encoder when baselines are on.
    pub fn new(cfg: &Config, opts: &RunOptions) -> Result<Self> {
        let started = Instant::now();
        let device = cfg.train.device.open()?;
        let world = opts.world.clone();
        let log = if world.is_root() {
            let ckpt_dir = opts.out_dir.join("checkpoints");
            std::fs::create_dir_all(&ckpt_dir)
                .with_context(|| format!("creating {}", ckpt_dir.display()))?;
            RunLog::open(&opts.out_dir)
        } else {
            RunLog::silent()
        };
        if let Some(c) = &opts.command {
            log.say(format!("command: {c}"));
        }
        log.say(format!(
            "device: {} (train.device = \"{}\"), model.ops = {}, precision {}",
            describe(&device),
            cfg.train.device,
            cfg.model.ops.resolve(&device, cfg.train.precision)?.name(),
            cfg.train.precision
        ));
        if world.size() > 1 && cfg.train.gathered_loss == crate::config::GatheredLoss::Ring {
            crate::distributed::check_ring(cfg)?;
        }
        if world.size() > 1 {
            log.say(format!(
                "data-parallel: {} ranks over {}, {} of the {} images of each batch per rank",
                world.size(),
                world.engine(),
                cfg.data.batch_size / world.size(),
                cfg.data.batch_size
            ));
        }
        let config_toml = cfg.to_toml()?;

        // Rank 0 reads (and for an image folder, caches) the data first; the others
        // then read what it left.
        if !world.is_root() {
            world.barrier()?;
        }
        let RunData {
            train,
            validation,
            test,
            skipped,
        } = load_data(
            cfg,
            opts.data_dir.as_deref(),
            opts.progress && world.is_root(),
            &log,
        )?;
        if world.is_root() {
            world.barrier()?;
        }
        let train = Arc::new(train);
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
        .and_then(|l| l.sharded(world.rank(), world.size()))
        .and_then(|l| match cfg.method.families() {
            [] => Ok(l),
            families => l.leave_one_out(families.to_vec()),
        })
        .context("configuring the data loader")?;
        let (model, opt, method) = fresh(cfg, &train, &device, &world)?;
        let eval = Evaluator {
            norm,
            knn: cfg.eval.knn.clone(),
            probe: cfg.eval.probe.clone(),
            batch: cfg.eval.batch_size,
            device: device.clone(),
        };
        let monitor_bank = train.head(cfg.eval.monitor_bank);
        let state = TrainState::new(config_toml.clone());
        let mut trainer = Self {
            cfg: cfg.clone(),
            out: opts.out_dir.clone(),
            progress: opts.progress,
            device,
            train,
            test,
            validation,
            monitor_bank,
            skipped_files: skipped.len(),
            log,
            command: opts.command.clone(),
            commit: opts.commit.clone(),
            loader,
            model,
            opt,
            method,
            eval,
            state,
            config_toml,
            started,
            wall_before: 0.0,
            interrupt: None,
            world,
            boxes: None,
        };
        trainer.resume(opts.resume)?;
        if trainer.world.is_root() {
            std::fs::write(trainer.out.join("config.toml"), &trainer.config_toml)?;
        }
        trainer.announce();
        trainer.untrained_baseline()?;
        Ok(trainer)
    }

    /// The model being trained.
    pub fn model(&self) -> &ContrastiveModel {
        &self.model
    }

    /// Optimiser steps taken so far (updated every step).
    pub fn optimizer_steps(&self) -> u64 {
        self.opt.steps()
    }

    /// The batches of epoch `epoch` (0-based) as the run draws them, prepared on a
    /// background thread: for driving [`Trainer::step`] by hand.
    pub fn batches(&self, epoch: usize) -> Result<EpochStream> {
        Ok(self.loader_for(epoch)?.stream(epoch, 0))
    }

    /// The loader of epoch `epoch`: with ContrastiveCrop past its warm-up, crops are
    /// placed inside the current object boxes.
    fn loader_for(&self, epoch: usize) -> Result<ViewLoader> {
        let mut loader = self.loader.clone();
        if let Some(cc) = &self.cfg.data.contrastive_crop
            && cc.uses_boxes(epoch)
        {
            let boxes = self
                .boxes
                .clone()
                .unwrap_or_else(|| vec![Region::WHOLE; self.train.len()]);
            loader.set_regions(Some(Arc::new(Regions::new(cc.alpha, boxes)?)))?;
        }
        Ok(loader)
    }

    /// Locates the object box of every training image on the current encoder
    /// (ContrastiveCrop): rank 0 computes them and every rank receives its copy.
    fn locate_objects(&mut self, threshold: f32) -> Result<()> {
        let t = Instant::now();
        let n = self.train.len();
        let flat: Vec<f32> = if self.world.is_root() {
            self.eval
                .object_boxes(self.model.backbone.as_ref(), &self.train, threshold)?
                .into_iter()
                .flat_map(Region::to_array)
                .collect()
        } else {
            vec![0.0; n * 4]
        };
        let flat = self
            .world
            .broadcast(&Tensor::from_vec(flat, (n, 4), &self.device)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let boxes = boxes_from(&flat, n).context("ContrastiveCrop's boxes")?;
        let area = boxes.iter().map(|b| b.area() as f64).sum::<f64>() / n.max(1) as f64;
        self.boxes = Some(boxes);
        let secs = t.elapsed().as_secs_f64();
        self.state.train_seconds += secs;
        self.log.say(format!(
            "ContrastiveCrop: located the objects of {n} images in {secs:.1} s; boxes cover {:.1}% of an image on average",
            100.0 * area
        ));
        Ok(())
    }

    /// The run's progress (epochs done, history, learning-rate scale, rollbacks).
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Wall-clock seconds of the run so far: this process's and, after a resume, those
    /// of the processes before it up to the checkpoint it continued.
    fn wall_seconds(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    fn checkpoints(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    /// Loads the checkpoint in `dir` into the model, optimiser, method and state.
    fn load(&mut self, dir: &Path) -> Result<()> {
        let (state, mut extras) = checkpoint::load(dir, &mut self.model, &mut self.opt)?;
        self.boxes = match extras.remove(BOXES_GROUP) {
            Some(group) => {
                let n = self.train.len();
                let flat = group
                    .get("boxes")
                    .context("no `boxes` tensor")
                    .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                    .and_then(|flat| boxes_from(&flat, n))
                    .with_context(|| {
                        format!(
                            "{}: ContrastiveCrop's boxes",
                            dir.join(format!("{BOXES_GROUP}.safetensors")).display()
                        )
                    })?;
                Some(flat)
            }
            None => None,
        };
        self.method
            .load_state(extras)
            .with_context(|| format!("{}: method state", dir.display()))?;
        self.state = state;
        Ok(())
    }

    /// Continues from the latest checkpoint if asked; refuses to start over one.
    fn resume(&mut self, resume: bool) -> Result<()> {
        let ckpt_dir = self.checkpoints();
        match checkpoint::latest(&ckpt_dir)? {
            Some(dir) if resume => {
                self.load(&dir)?;
                self.wall_before = self.state.wall_seconds;
                if self.state.config_toml != self.config_toml {
                    self.log.warn(
                        "note: the configuration differs from the checkpoint's; continuing with the new one",
                    );
                }
                let at = match &self.state.partial {
                    Some(p) => format!("epoch {} at step {}", p.epoch + 1, p.steps),
                    None => format!("epoch {} done", self.state.epoch),
                };
                self.log
                    .say(format!("resuming from {} ({at})", dir.display()));
            }
            Some(dir) => bail!(
                "{} already holds a checkpoint ({}); pass --resume to continue it or choose another --out",
                self.out.display(),
                dir.display()
            ),
            None if resume => self.log.say(format!(
                "no checkpoint in {}; starting from scratch",
                ckpt_dir.display()
            )),
            None => {}
        }
        Ok(())
    }

    /// The run's first lines: what trains on what, and which policies read labels.
    fn announce(&self) {
        let cfg = &self.cfg;
        let validation = self
            .validation
            .as_ref()
            .map_or(String::new(), |v| format!(" / {} validation", v.len()));
        self.log.say(format!(
            "{}: {} on {} ({} train{validation} / {} test images{}), {} parameters, {} epochs of {} steps",
            cfg.name,
            cfg.loss.name(),
            self.train.name,
            self.train.len(),
            self.test.len(),
            if self.train.is_labelled() {
                ""
            } else {
                ", unlabeled"
            },
            self.model.num_params(),
            cfg.train.epochs,
            self.loader.steps_per_epoch()
        ));
        if !self.monitors() {
            self.log.say(
                "no class labels: the kNN monitor, the linear probe and the kNN baselines are skipped; the embedding diagnostics (uniformity, effective rank) still run",
            );
        }
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
            self.log
                .say(format!("mining: {}{supervision}", names.join(", ")));
        }
    }

    /// The split the per-epoch monitor reads: validation when configured, else
    /// test.
    fn monitor_split(&self) -> (&Dataset, &'static str) {
        match &self.validation {
            Some(v) => (v, "validation"),
            None => (&self.test, "test"),
        }
    }

    /// True when the kNN monitor can run (the bank and the monitored split have
    /// labels).
    fn monitors(&self) -> bool {
        self.train.is_labelled() && self.monitor_split().0.is_labelled()
    }

    /// kNN of the untrained encoder on the monitored split, once per run
    /// (baselines on, labelled data).
    fn untrained_baseline(&mut self) -> Result<()> {
        if self.cfg.eval.baselines
            && self.world.is_root()
            && self.monitors()
            && self.state.epoch == 0
            && self.state.untrained_knn_top1.is_none()
        {
            let t = Instant::now();
            let (split, name) = self.monitor_split();
            let encoder = self.model.representation(self.cfg.eval.representation);
            // The monitor bank is the head of the training set: one pass serves both.
            let fb = self.eval.features(&encoder, &self.train)?;
            let ft = self.eval.features(&encoder, split)?;
            let top1 = self.eval.knn_on(&fb, &self.train, &ft, split)?;
            let bank = &self.monitor_bank;
            let monitor = self
                .eval
                .knn_on(&fb.narrow(0, 0, bank.len())?, bank, &ft, split)?;
            self.state.untrained_knn_top1 = Some(top1);
            self.state.untrained_monitor_knn_top1 = Some(monitor);
            self.state.eval_seconds += t.elapsed().as_secs_f64();
            self.log
                .say(format!(
                    "untrained encoder: kNN top-1 {top1:.4} ({name}; {monitor:.4} against the {}-image monitor bank)",
                    bank.len()
                ));
        }
        Ok(())
    }

    /// Runs the epochs that remain; stops with [`Interrupted`] after the checkpoint
    /// of the step or epoch at which an interrupt arrived.
    pub fn train(&mut self) -> Result<()> {
        for epoch in self.state.epoch..self.cfg.train.epochs {
            self.epoch(epoch)?;
            if self.interrupted() && epoch + 1 < self.cfg.train.epochs {
                let dir = checkpoint::latest(&self.checkpoints())?.unwrap_or_default();
                return Err(Interrupted { dir }.into());
            }
        }
        Ok(())
    }

    /// Optimiser steps over the learning-rate schedule: (steps per epoch, total,
    /// warm-up steps).
    fn schedule(&self) -> (usize, usize, usize) {
        let steps = self.loader.steps_per_epoch();
        let warmup = (self.cfg.schedule.warmup_epochs * steps as f64).round() as usize;
        (steps, steps * self.cfg.train.epochs, warmup)
    }

    /// One optimisation step on `batch` at global step `step`; returns the loss and the
    /// learning rate it used.
    pub fn step(&mut self, batch: &Batch) -> Result<(f64, f64)> {
        let (steps, total, warmup) = self.schedule();
        let step = batch.epoch * steps + batch.step;
        let peak = self.cfg.optim.lr() * self.state.lr_scale;
        let lr = warmup_cosine(
            step,
            total,
            warmup,
            peak,
            peak * self.cfg.schedule.final_lr_fraction,
        );
        let loss = self.method.step(
            &self.cfg,
            &self.model,
            &mut self.opt,
            batch,
            self.train.num_classes,
            (step, total),
            lr,
            &self.device,
            &self.world,
        )?;
        Ok((loss, lr))
    }

    /// Trains epoch `epoch` (0-based), then monitors kNN, checkpoints and writes the
    /// metrics and plots. A non-finite loss or gradient stops the run, or with
    /// `train.on_nonfinite = "rollback"` restores the last checkpoint, halves the
    /// learning rate and trains the epoch again.
    pub fn epoch(&mut self, epoch: usize) -> Result<EpochRecord> {
        loop {
            let err = match self.train_epoch(epoch) {
                Ok(record) => return Ok(record),
                Err(e) => e,
            };
            let Some(fault) = err.downcast_ref::<NonFinite>().cloned() else {
                return Err(err);
            };
            match self.cfg.train.on_nonfinite {
                OnNonFinite::Stop => bail!(
                    "{fault}; no weight was updated with it. Lower optim.lr or raise the temperature, or set train.on_nonfinite = \"rollback\"; continue from the last checkpoint with --resume"
                ),
                OnNonFinite::Rollback => self.roll_back(&fault, epoch)?,
            }
        }
    }

    /// Rollbacks allowed in one run before a non-finite step stops it.
    const MAX_ROLLBACKS: usize = 5;

    /// Restores the last checkpoint (or the initial state) after `fault` in `epoch`,
    /// with the learning rate halved.
    fn roll_back(&mut self, fault: &NonFinite, epoch: usize) -> Result<()> {
        let rollbacks = self.state.rollbacks + 1;
        if rollbacks > Self::MAX_ROLLBACKS {
            bail!(
                "{fault}, still after {} rollbacks with the learning rate scaled by {}: lower optim.lr or raise the temperature",
                Self::MAX_ROLLBACKS,
                self.state.lr_scale
            );
        }
        let lr_scale = self.state.lr_scale * 0.5;
        let kept = (
            self.state.untrained_knn_top1,
            self.state.untrained_monitor_knn_top1,
            self.state.eval_seconds,
        );
        let from = match checkpoint::latest(&self.checkpoints())? {
            Some(dir) => {
                self.load(&dir)?;
                dir.display().to_string()
            }
            None => {
                (self.model, self.opt, self.method) =
                    fresh(&self.cfg, &self.train, &self.device, &self.world)?;
                self.state = TrainState::new(self.config_toml.clone());
                (
                    self.state.untrained_knn_top1,
                    self.state.untrained_monitor_knn_top1,
                    self.state.eval_seconds,
                ) = kept;
                self.boxes = None;
                "the initial weights".to_string()
            }
        };
        if self.state.epoch != epoch {
            bail!(
                "{fault}: the last checkpoint ({from}) ends at epoch {}, not {epoch}; continue with --resume",
                self.state.epoch
            );
        }
        // The failed attempt's diagnostics are not the epoch's.
        self.method.take_diagnostics();
        self.state.lr_scale = lr_scale;
        self.state.rollbacks = rollbacks;
        self.log.say(format!(
            "{fault}: rolled back to {from}, learning rate scaled by {lr_scale}"
        ));
        Ok(())
    }

    /// One attempt at epoch `epoch` (see [`Trainer::epoch`]), from where a mid-epoch
    /// checkpoint left it if the run resumed from one.
    fn train_epoch(&mut self, epoch: usize) -> Result<EpochRecord> {
        let epochs = self.cfg.train.epochs;
        let (steps, _, _) = self.schedule();
        let mut part = match self.state.partial.take() {
            Some(mut p) if p.epoch == epoch => {
                if let Some(d) = p.diagnostics.take() {
                    self.method.restore_diagnostics(d);
                }
                p
            }
            _ => PartialEpoch::start(epoch),
        };
        let (t0, seconds_before, waited_before) =
            (Instant::now(), part.seconds, part.waited_seconds);
        let clock = CpuClock::now();
        let pb = progress_bar(
            steps,
            epoch + 1,
            epochs,
            self.progress && self.world.is_root(),
        );
        pb.set_position(part.steps as u64);
        let mut stream = self.loader_for(epoch)?.stream(epoch, part.steps);
        let views = self.cfg.data.views as u64;
        while let Some(batch) = stream.next() {
            let (loss, lr) = self.step(&batch).inspect_err(|_| pb.abandon())?;
            part.steps += 1;
            part.lr = lr;
            part.loss_sum += loss;
            part.images += batch.len() as u64 * views;
            let rate = part.images as f64 / (seconds_before + t0.elapsed().as_secs_f64());
            pb.set_message(format!("loss {loss:.4} lr {lr:.4} {rate:.0} img/s"));
            pb.inc(1);
            let scheduled = self
                .cfg
                .train
                .checkpoint_every
                .is_some_and(|n| n > 0 && part.steps % n == 0);
            let interrupted = self.world.any(self.interrupted())?;
            if (scheduled || interrupted) && part.steps < steps {
                part.seconds = seconds_before + t0.elapsed().as_secs_f64();
                part.waited_seconds = waited_before + stream.waited().as_secs_f64();
                part.diagnostics = Some(self.method.diagnostics().clone());
                self.state.partial = Some(part.clone());
                self.state.optimizer_steps = self.opt.steps();
                let dir = self.save_checkpoint()?;
                if interrupted {
                    pb.abandon();
                    return Err(Interrupted { dir }.into());
                }
            }
        }
        let waited = waited_before + stream.waited().as_secs_f64();
        drop(stream);
        pb.finish_and_clear();
        let secs = seconds_before + t0.elapsed().as_secs_f64();
        let others_cpu_share = clock
            .zip(CpuClock::now())
            .and_then(|(a, b)| a.others_share(&b));
        let (loss_sum, lr, images) = (part.loss_sum, part.lr, part.images);
        self.state.partial = None;
        self.state.train_seconds += secs;
        self.state.images_seen += images;
        self.state.data_wait_seconds += waited;
        self.state.optimizer_steps = self.opt.steps();
        self.world.check_in_sync(self.opt.params())?;

        // The monitor runs on rank 0 alone; the other ranks go on to the next
        // epoch's first gather and wait for it there.
        let te = Instant::now();
        let (split, split_name) = self.monitor_split();
        let monitor = if self.world.is_root() {
            Some(self.eval.monitor(
                &self.model.representation(self.cfg.eval.representation),
                &self.monitor_bank,
                split,
                self.monitors(),
                &self.cfg.data.augment,
                self.cfg.seed,
            )?)
        } else {
            None
        };
        self.state.eval_seconds += te.elapsed().as_secs_f64();
        let record = EpochRecord {
            epoch: epoch + 1,
            step: self.opt.steps(),
            loss: loss_sum / steps as f64,
            lr,
            images_per_sec: images as f64 / secs,
            data_wait_fraction: waited / secs,
            epoch_seconds: secs,
            others_cpu_share,
            knn_top1: monitor.as_ref().and_then(|m| m.knn_top1),
            knn_bank: self.monitor_bank.len(),
            knn_split: split_name.to_string(),
            uniformity: monitor.as_ref().map(|m| m.uniformity),
            effective_rank: monitor.as_ref().map(|m| m.effective_rank),
            alignment: monitor.as_ref().map(|m| m.alignment),
            mining: self.method.take_diagnostics(),
        };
        // Every epoch so far, trained before a resume or not, with its monitor.
        let per_epoch = (self.state.train_seconds + self.state.eval_seconds) / (epoch + 1) as f64;
        let remaining = per_epoch * (epochs - epoch - 1) as f64;
        self.log.say(epoch_line(&record, epochs, remaining));
        self.state.history.push(record.clone());
        self.state.epoch = epoch + 1;
        if let Some(cc) = &self.cfg.data.contrastive_crop
            && cc.refreshes_after(epoch, epochs)
        {
            self.locate_objects(cc.threshold)?;
        }
        self.save_checkpoint()?;
        if self.world.is_root() {
            write_metrics(&self.out, &self.state.history)?;
            plot_history(
                &self.out.join("plots"),
                &self.state.history,
                self.state.untrained_monitor_knn_top1,
            )?;
        }
        Ok(record)
    }

    /// Writes the current state as a checkpoint (mid-epoch when `state.partial`):
    /// rank 0 writes, and every rank returns once it has (so that no rank stops, or
    /// reads the checkpoint, before it is whole). Returns its directory.
    fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.config_toml = self.config_toml.clone();
        self.state.wall_seconds = self.wall_seconds();
        let dir = if self.world.is_root() {
            let mut extras = self.method.state()?;
            if let Some(boxes) = &self.boxes {
                let flat: Vec<f32> = boxes.iter().flat_map(|b| b.to_array()).collect();
                let t = Tensor::from_vec(flat, (boxes.len(), 4), &Device::Cpu)?;
                extras.push((BOXES_GROUP.into(), [("boxes".to_string(), t)].into()));
            }
            checkpoint::save(
                &self.checkpoints(),
                &self.model,
                &self.opt,
                &self.state,
                &extras,
                self.cfg.train.keep_checkpoints,
            )?
        } else {
            self.checkpoints()
        };
        self.world.barrier()?;
        Ok(dir)
    }

    /// Asks the run to stop at the next step boundary when `flag` is set (a signal
    /// handler's flag): it writes a checkpoint there and returns [`Interrupted`].
    pub fn with_interrupt(mut self, flag: &'static AtomicBool) -> Self {
        self.interrupt = Some(flag);
        self
    }

    fn interrupted(&self) -> bool {
        self.interrupt.is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// The final evaluation into `summary.json` and `report.md`: kNN and the linear
    /// probe on the full sets with raw-pixel baselines (labelled data), uniformity and
    /// effective rank of the test representations (always), and the representations
    /// of the splits `eval.embed` names under `embeddings/`.
    pub fn finish(self) -> Result<Summary> {
        // Rank 0 evaluates and writes; the others wait and read its summary.
        if !self.world.is_root() {
            self.world.barrier()?;
            let path = self.out.join("summary.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading rank 0's {}", path.display()))?;
            return serde_json::from_str(&text)
                .with_context(|| format!("parsing rank 0's {}", path.display()));
        }
        let summary = self.evaluate_and_report()?;
        self.world.barrier()?;
        Ok(summary)
    }

    /// [`Trainer::finish`] on rank 0.
    fn evaluate_and_report(&self) -> Result<Summary> {
        let (cfg, train, test) = (&self.cfg, &self.train, &self.test);
        let te = Instant::now();
        let labelled = train.is_labelled() && test.is_labelled();
        let encoder = &self.model.representation(self.cfg.eval.representation);
        self.log.say(format!(
            "final evaluation on {} train / {} test images: {}",
            train.len(),
            test.len(),
            if labelled {
                "kNN, linear probe, uniformity, effective rank"
            } else {
                "uniformity and effective rank (no labels: no kNN or probe)"
            }
        ));
        let ftr = self.eval.features(encoder, train)?;
        let fte = self.eval.features(encoder, test)?;
        let (knn_top1, probe) = if labelled {
            let (k, p) = self.eval.scores(&ftr, train, &fte, test)?;
            (Some(k), Some(p))
        } else {
            (None, None)
        };
        // The trained encoder on the split the untrained one was measured on, with
        // the same bank: what training bought, without reading the test set for it.
        // Its features also serve the validation embeddings.
        let fval = match &self.validation {
            Some(v) => Some((self.eval.features(encoder, v)?, v)),
            None => None,
        };
        let validation_knn = match &fval {
            Some((fv, v)) if labelled && v.is_labelled() => {
                Some(self.eval.knn_on(&ftr, train, fv, v)?)
            }
            _ => None,
        };
        let (baseline_knn, baseline_probe) = if cfg.eval.baselines && labelled {
            let (k, p) = self.eval.pixels(train, test)?;
            (Some(k), Some(p.test_top1))
        } else {
            (None, None)
        };
        let (uniformity, effective_rank) = if test.len() >= 2 {
            (
                Some(contrast_eval::uniformity(&fte)?),
                Some(contrast_eval::effective_rank(&fte)?),
            )
        } else {
            (None, None)
        };
        let embeddings = self.write_embeddings(&ftr, &fte, fval.as_ref().map(|(f, _)| f))?;
        let state = &self.state;
        let eval_seconds = state.eval_seconds + te.elapsed().as_secs_f64();
        let summary = Summary {
            name: cfg.name.clone(),
            command: self.command.clone(),
            commit: self.commit.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            seed: cfg.seed,
            dataset: match &cfg.data.path {
                Some(p) if cfg.data.dataset == DatasetChoice::Folder => {
                    format!("folder {}", p.display())
                }
                _ => cfg.data.dataset.to_string(),
            },
            encoder: serde_json::to_value(&cfg.model.encoder)?,
            params: self.model.num_params(),
            epochs: state.epoch,
            labelled,
            knn_top1,
            validation_knn_top1: validation_knn,
            linear_top1: probe.as_ref().map(|p| p.test_top1),
            linear_train_top1: probe.as_ref().map(|p| p.train_top1),
            uniformity,
            effective_rank,
            untrained_knn_top1: state.untrained_knn_top1,
            monitor_split: self.monitor_split().1.to_string(),
            baseline_knn_top1: baseline_knn,
            baseline_linear_top1: baseline_probe,
            knn_k: cfg.eval.knn.k,
            knn_temperature: cfg.eval.knn.temperature,
            train_images: train.len(),
            validation_images: self.validation.as_ref().map(Dataset::len),
            test_images: test.len(),
            skipped_files: self.skipped_files,
            embeddings,
            train_images_per_sec: state.images_seen as f64 / state.train_seconds.max(1e-9),
            data_wait_fraction: state.data_wait_seconds / state.train_seconds.max(1e-9),
            others_cpu_share: others_cpu_share(&state.history),
            train_seconds: state.train_seconds,
            eval_seconds,
            wall_seconds: self.wall_seconds(),
            device: describe(&self.device),
            ops: self.model.ops().name().to_string(),
            precision: self.cfg.train.precision.to_string(),
            ranks: self.world.size(),
        };
        write_json(&self.out.join("summary.json"), &summary)?;
        let report = report::write_report(&self.out, Some(&summary), None, &train.class_names)?;
        self.log.say(format!(
            "kNN top-1 {}, linear top-1 {}, uniformity {}, effective rank {}; report: {}",
            fmt_opt(summary.knn_top1),
            fmt_opt(summary.linear_top1),
            fmt_opt(summary.uniformity),
            fmt_opt(summary.effective_rank),
            report.display()
        ));
        Ok(summary)
    }

    /// Writes the representations of the splits `eval.embed` names (default: all of
    /// a folder dataset's, none of a named one's); returns the files, relative to the
    /// run directory. `ftr`, `fte` and `fval` are the train, test and validation
    /// features already extracted.
    fn write_embeddings(
        &self,
        ftr: &Tensor,
        fte: &Tensor,
        fval: Option<&Tensor>,
    ) -> Result<Vec<String>> {
        let splits = match &self.cfg.eval.embed {
            Some(s) => s.clone(),
            None if self.cfg.data.dataset == DatasetChoice::Folder => {
                vec![SplitName::Train, SplitName::Validation, SplitName::Test]
            }
            None => Vec::new(),
        };
        let dir = self.out.join("embeddings");
        let mut files = Vec::new();
        for split in splits {
            let written = match split {
                SplitName::Train => report::write_embeddings(&dir, "train", ftr, &self.train)?,
                SplitName::Test => report::write_embeddings(&dir, "test", fte, &self.test)?,
                SplitName::Validation => match (&self.validation, fval) {
                    (Some(v), Some(f)) => report::write_embeddings(&dir, "validation", f, v)?,
                    _ => continue,
                },
            };
            files.extend(written.into_iter().map(|p| {
                p.strip_prefix(&self.out)
                    .unwrap_or(&p)
                    .display()
                    .to_string()
            }));
        }
        Ok(files)
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.4}"))
}

/// A seeded model, its optimiser and the method's state, as at the start of a run
/// (the online network's BatchNorm synchronised over `world` with `model.sync_bn`).
/// The checkpoint group (`contrastive_crop.safetensors`) holding ContrastiveCrop's
/// boxes as `boxes` `[N, 4]` f32: top, left, bottom, right as image fractions.
const BOXES_GROUP: &str = "contrastive_crop";

/// `n` boxes from `[n, 4]` values, each checked to lie inside the image.
fn boxes_from(flat: &[f32], n: usize) -> Result<Vec<Region>> {
    if flat.len() != n * 4 {
        bail!(
            "{} values for the {n} training images, expected {} (4 per box)",
            flat.len(),
            n * 4
        );
    }
    Ok(flat
        .chunks_exact(4)
        .map(|c| Region::from_array([c[0], c[1], c[2], c[3]]))
        .collect::<std::result::Result<_, _>>()?)
}

fn fresh(
    cfg: &Config,
    train: &Dataset,
    device: &Device,
    world: &World,
) -> Result<(ContrastiveModel, Optimizer, Method)> {
    let sync: Option<Arc<dyn contrast_kernels::CrossProcessSum>> =
        (cfg.model.sync_bn && world.size() > 1).then(|| Arc::new(world.clone()) as _);
    let model = ContrastiveModel::with_sync_bn(
        &cfg.model,
        input_shape(train),
        model_parts(cfg, train.num_classes),
        device,
        stream_seed(cfg.seed, Stream::ModelInit, &[]),
        cfg.train.precision,
        sync,
    )?;
    let opt = Optimizer::new(cfg.optim.clone(), model.params());
    let method = Method::new(cfg, &model, input_shape(train), train.len(), device)?;
    Ok((model, opt, method))
}

/// The epoch's line: loss, rate, data wait, monitor kNN, what the negatives were,
/// the share of the CPU other processes took when it disturbed the timing, and the
/// time the remaining epochs should take (`remaining`, seconds), so that a run
/// followed through its log alone shows when it will end.
fn epoch_line(record: &EpochRecord, epochs: usize, remaining: f64) -> String {
    let negatives = record.mining.as_ref().map_or(String::new(), |m| {
        let fnc = match (m.fn_identified_precision, m.fn_identified_recall) {
            (Some(p), Some(r)) => format!(", FN found p {p:.2} r {r:.2}"),
            _ => String::new(),
        };
        let floor = m.debias_floor_share.map_or(String::new(), |f| {
            format!(", debias floor {:.0}%", 100.0 * f)
        });
        let positives = m.nn_positive_precision.map_or(String::new(), |p| {
            format!(", neighbour positives {:.0}% same-class", 100.0 * p)
        });
        let share = m
            .positive_share
            .map_or(String::new(), |p| format!(", positive share {p:.2}"));
        format!(
            "  negatives: {:.1}% same-class, sim {:.2}{fnc}{floor}{positives}{share}",
            100.0 * m.neg_false_fraction,
            m.neg_sim_mean
        )
    });
    let knn = record.knn_top1.map_or(String::new(), |k| {
        format!("  kNN@{} {k:.4} ({})", record.knn_bank, record.knn_split)
    });
    // Said only when it matters: the epoch's timing is not the method's alone.
    let shared = match record.others_cpu_share {
        Some(x) if x >= DISTURBED => format!(", others took {:.0}% of the CPU", 100.0 * x),
        _ => String::new(),
    };
    let eta = if record.epoch < epochs {
        format!(", eta {}", clock(remaining))
    } else {
        String::new()
    };
    format!(
        "epoch {:>3}/{}  loss {:.4}  lr {:.4}  {:.0} img/s  data wait {:.1}%{knn}{negatives}  ({:.0} s{shared}{eta})",
        record.epoch,
        epochs,
        record.loss,
        record.lr,
        record.images_per_sec,
        100.0 * record.data_wait_fraction,
        record.epoch_seconds
    )
}

/// Seconds as `1h02m`, `4m05s` or `12s`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// Runs (or resumes) training as configured and returns the summary.
pub fn run(cfg: &Config, opts: &RunOptions) -> Result<Summary> {
    let mut trainer = Trainer::new(cfg, opts)?;
    trainer.train()?;
    trainer.finish()
}
