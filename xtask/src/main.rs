//! `cargo xtask`: project commands.
//!
//! - `cargo xtask train [--config FILE] [--set key=value ...] [--data-dir DIR] [--out DIR] [--resume]`
//! - `cargo xtask eval --run DIR [--split S] [--checkpoint PATH] [--device D]`
//! - `cargo xtask embed --run DIR [--split S | --images PATH] [--out FILE] [--format F]`
//! - `cargo xtask compare --suite FILE [--seeds N] [--jobs J] [--out DIR] [--quick] [--no-train]`
//! - `cargo xtask data fetch <dataset> [--data-dir DIR]`
//! - `cargo xtask fuzz [--runs N] [--seed S] [--target NAME]`
//! - `cargo xtask reliability [--kills N] [--seed S]`
//!
//! Errors print as one line (`error: ...`, the causes joined by `: `) and exit with 1.
//! SIGINT or SIGTERM during `train` finishes the current step, writes a checkpoint and
//! exits with 130; `--resume` continues exactly (a second signal exits at once).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use contrast_data::fetch::{Provisioned, fetch};
use contrast_data::{DatasetChoice, DatasetId};
use contrast_train::device::{MissingBackend, describe};
use contrast_train::distributed::{self, World};
use contrast_train::trainer::Interrupted;
use contrast_train::{Config, DeviceChoice, RunOptions, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

mod bench;
mod compare;
mod fuzz;
mod gpu_check;
mod inference;
mod launch;
mod mining_bench;
mod reliability;

/// mimalloc for the binaries: glibc's malloc returns large temporary buffers to the
/// kernel after every operation, which costs up to 2.5x on large tensor ops (see
/// docs/performance.md). Library crates leave the choice to their users.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's option enum (`mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process instead of returning it to the kernel after
/// mimalloc's purge delay. A training step frees and reallocates the same large
/// buffers every few milliseconds; returned pages come back through page faults
/// and kernel zeroing (13,000 faults over 12 default ConvNet steps against 400,
/// about 5% of the CPU time). The price is that resident memory stays at its high
/// mark, which is what a training run reaches anyway. `MIMALLOC_PURGE_DELAY` in the
/// environment still wins (the peak-memory benchmarks set it to 0).
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain option value; called first thing in `main`, before any
        // other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Runs candle's large element-wise CPU ops on the calling thread instead of its own
/// barrier pool. That pool adds one spinning thread per core beside the rayon pool
/// that already runs every GEMM, fused kernel and augmentation on one thread per
/// core, so the two pools oversubscribe the cores: on the 2-core Zen 3 the run kept
/// them 175% busy, the pool's thread ran 9% of a core, and the default run trains
/// at a median 1,609 images/s without it against 1,483 with it (10 epochs each, five
/// interleaved pairs, every pair faster; the same losses and monitor kNN to the last
/// digit, since each element is computed alike). Measured on 2 cores only.
/// `CANDLE_NUM_THREADS` in the environment still wins.
fn one_compute_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// What `cargo xtask train` runs without `--config`: the SimCLR preset, shortened to
/// fit the 15-minute budget on every 2-core machine kind (the file says how).
const DEFAULT_CONFIG: &str = "configs/default.toml";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Contrast project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a contrastive encoder and evaluate it (kNN, linear probe).
    Train {
        /// Run configuration (TOML).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Override a config value, e.g. `--set optim.lr=0.1` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Directory holding the dataset (before CONTRAST_DATA_DIR and the defaults).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Run directory; defaults to `runs/<name>-<timestamp>`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue the run in `--out` (or the newest run of this config) from its
        /// latest checkpoint.
        #[arg(long)]
        resume: bool,
        /// Device to train on: cpu, cuda, cuda:N, metal or auto (sets
        /// `train.device`; a GPU needs a build with its feature, e.g. `cargo xtask-cuda`).
        #[arg(long)]
        device: Option<DeviceChoice>,
        /// Data-parallel ranks: N > 1 starts N local processes through `mpirun`
        /// (building the MPI-enabled xtask first), each with batch_size / N images
        /// of every batch; docs/distributed.md.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        world: u16,
    },
    /// Evaluate a trained run on a split: kNN top-1/top-5, linear probe,
    /// precision@1, R-precision, MAP@R, NMI, AMI, alignment, uniformity, effective
    /// rank; writes RUN/eval.json and RUN/report.md.
    Eval {
        /// The run directory (`--out` of `cargo xtask train`).
        #[arg(long)]
        run: PathBuf,
        /// A checkpoint directory [default: the run's newest].
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// train, validation or test.
        #[arg(long, default_value = "test", value_parser = parse_split)]
        split: contrast_train::config::SplitName,
        #[arg(long)]
        device: Option<DeviceChoice>,
    },
    /// Write a trained run's representations of a split (or of any images) as
    /// safetensors (`embeddings` f32 [N, D], `indices` i64, `labels` i64 when known)
    /// or .npy files, with the image files listed beside them.
    Embed {
        /// The run directory (`--out` of `cargo xtask train`).
        #[arg(long)]
        run: PathBuf,
        #[arg(long, default_value = "test", value_parser = parse_split)]
        split: contrast_train::config::SplitName,
        /// Embed these images instead (a folder or manifest, read as the run's).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Output file (default: `RUN/embeddings/<split>.safetensors`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// safetensors, or npy (one `<stem>.<array>.npy` per array).
        #[arg(long, default_value = "safetensors", value_parser = parse_format)]
        format: contrast_train::report::EmbedFormat,
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        device: Option<DeviceChoice>,
    },
    /// Train a suite of configurations with several seeds under one budget, evaluate
    /// each run, and compare them with the suite's baseline (paired differences per
    /// seed, 95% intervals; an interval holding 0 is a tie). Writes results.json and
    /// results.md; runs already done are reused.
    Compare(compare::Options),
    /// Benchmarks: `kernels` (similarity hot path against the plain candle path and sgemm).
    Bench {
        /// Device to run the cases on: cpu, cuda, cuda:N, metal or auto.
        #[arg(long, global = true, default_value = "auto")]
        device: DeviceChoice,
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Fuzz the parsers of untrusted input (IDX, CIFAR, PNG/JPEG, manifests, config,
    /// checkpoint files):
    /// mutated inputs must give errors, never panics.
    Fuzz {
        /// Mutated inputs per target.
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
        /// Seed of the mutations.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Only this target (idx, cifar, image, manifest, config, checkpoint-state,
        /// checkpoint-model).
        #[arg(long)]
        target: Option<String>,
    },
    /// Kill a training run with SIGKILL at random moments, resume it each time, and
    /// check that it ends bit for bit where an uninterrupted run does.
    Reliability {
        /// SIGKILLs before the run may finish.
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Seed of the kill times.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Data-parallel ranks of both runs (`train --world N`).
        #[arg(long, default_value_t = 1)]
        world: usize,
    },
    /// Verify a GPU: its kernel paths against the CPU, one short epoch of the default
    /// preset against the CPU, and a throughput table beside PyTorch CUDA and sgemm;
    /// writes target/bench/gpu.json. Needs a GPU build (`cargo xtask-cuda gpu-check`).
    GpuCheck {
        /// The GPU to check: cuda, cuda:N, metal or auto.
        #[arg(long, default_value = "auto")]
        device: DeviceChoice,
        /// Training images in the short epoch.
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Directory holding Fashion-MNIST.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Dataset management.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// MoCo and SimCLR losses (forward and backward) and kNN top-k, kernel against naive;
    /// writes target/bench/kernels.json.
    Kernels {
        /// A Python with PyTorch: runs benches/torch/kernel_peer.py on each case right
        /// after Contrast's paths, and adds `torch_ms` and `ratio` (PyTorch / Contrast)
        /// to the kernel rows.
        #[arg(long, value_name = "PYTHON")]
        torch: Option<String>,
        /// Only the cases whose names start with one of these (comma-separated), e.g.
        /// `simclr,knn`.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Convolution layers of the default ConvNet and ResNet-18 (GFLOP/s), and full
    /// SimCLR training steps (images/s, peak memory); writes target/bench/encoders.json.
    Encoders,
    /// Resident memory over many MoCo steps with a 65,536-entry queue; writes
    /// target/bench/memory.json.
    Memory {
        #[arg(long, default_value_t = 20_000)]
        steps: usize,
    },
    /// Step time of every mining preset against plain SimCLR at batch 256; writes
    /// target/bench/mining.json.
    Mining,
    /// Internal: the peak memory of one case, in a fresh process.
    #[command(hide = true)]
    Peak { case: String, path: String },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Make a dataset available: Debian's package where there is one, otherwise a
    /// verified, resumable download into `./data/<name>`. For a dataset without a
    /// verified source it says where to put the files and in which layout.
    Fetch {
        /// fashion-mnist (Debian package or download); mnist, cifar-10 and cifar-100
        /// are found where they are placed.
        dataset: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn parse_split(s: &str) -> std::result::Result<contrast_train::config::SplitName, String> {
    use contrast_train::config::SplitName;
    match s {
        "train" => Ok(SplitName::Train),
        "validation" => Ok(SplitName::Validation),
        "test" => Ok(SplitName::Test),
        other => Err(format!("`{other}`: expected train, validation or test")),
    }
}

fn parse_format(s: &str) -> std::result::Result<contrast_train::report::EmbedFormat, String> {
    use contrast_train::report::EmbedFormat;
    match s {
        "safetensors" => Ok(EmbedFormat::Safetensors),
        "npy" => Ok(EmbedFormat::Npy),
        other => Err(format!("`{other}`: expected safetensors or npy")),
    }
}

/// UTC `YYYYMMDD-HHMMSS` for run directory names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The newest `runs/<name>-*` directory holding a checkpoint.
fn newest_run(name: &str) -> Option<PathBuf> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir("runs")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}-")))
                && p.join("checkpoints/latest").is_file()
        })
        .collect();
    runs.sort();
    runs.pop()
}

fn provision(id: DatasetId, data_dir: Option<&Path>) -> Result<PathBuf> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:28} [{elapsed_precise}] {bar:28} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let show = |name: &str, done: u64, total: Option<u64>| {
        if bar.message() != name {
            bar.set_message(name.to_string());
            bar.reset();
        }
        bar.set_length(total.unwrap_or(done));
        bar.set_position(done);
    };
    let got = fetch(id, data_dir, Path::new("data"), &show);
    bar.finish_and_clear();
    let got = got.with_context(|| format!("provisioning `{id}`"))?;
    match &got {
        Provisioned::Present(_) => {}
        Provisioned::Apt(d) => println!("installed Debian package for `{id}` into {}", d.display()),
        Provisioned::Downloaded(d) => {
            println!("downloaded and verified `{id}` into {}", d.display())
        }
    }
    Ok(got.dir().to_path_buf())
}

/// The directory holding `id`: an explicit one (`--data-dir` or `data.path`, named
/// by the first element for the message) must
/// hold it, since silently training on a copy found elsewhere would hide the
/// mistake; without one, the dataset is found or provisioned.
fn resolve(id: DatasetId, explicit: Option<(String, PathBuf)>) -> Result<PathBuf> {
    match explicit {
        Some((what, dir)) => id.resolve(Some(&dir)).with_context(|| {
            format!("{what}: `{id}` is not there (`cargo xtask data fetch {id}` provisions it)")
        }),
        None => provision(id, None),
    }
}

/// This process's command line, as `cargo xtask` shows it.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains([' ', '"', '\'']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect();
    format!("cargo xtask {}", quoted.join(" "))
}

fn train(
    config: &Path,
    set: &[String],
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    resume: bool,
    ranks: usize,
) -> Result<()> {
    let mut cfg = Config::load(config, set)?;
    let data_dir = match cfg.data.dataset {
        DatasetChoice::Named(id) => {
            let explicit = match (data_dir, &cfg.data.path) {
                (Some(d), _) => Some((format!("--data-dir {}", d.display()), d)),
                (None, Some(p)) => Some((format!("data.path = \"{}\"", p.display()), p.clone())),
                (None, None) => None,
            };
            Some(resolve(id, explicit)?)
        }
        DatasetChoice::Folder if data_dir.is_some() => anyhow::bail!(
            "--data-dir names where a named dataset is; a folder dataset is read from data.path"
        ),
        DatasetChoice::Folder => None,
    };
    let out_dir = match out {
        Some(o) => o,
        None if resume => newest_run(&cfg.name).with_context(|| {
            format!(
                "--resume: no run of `{}` with a checkpoint under runs/",
                cfg.name
            )
        })?,
        None => PathBuf::from("runs").join(format!("{}-{}", cfg.name, timestamp())),
    };
    if ranks > 1 && distributed::launched_size().is_none() {
        return launch::train_world(ranks, &rank_args(), &out_dir);
    }
    // One GPU per rank: a plain `cuda` means the rank's own.
    if distributed::launched_size().is_some_and(|n| n > 1)
        && cfg.train.device == DeviceChoice::Cuda(0)
    {
        cfg.train.device = DeviceChoice::Cuda(distributed::local_rank().unwrap_or(0));
    }
    let world = World::from_env(&cfg.train.device.open()?)?;
    // Every rank writes under rank 0's choice (its clock named the directory).
    let out_dir = PathBuf::from(world.broadcast_text(&out_dir.to_string_lossy())?);
    if world.is_root() {
        println!("run directory: {}", out_dir.display());
    }
    install_interrupt_handler();
    let mut trainer = Trainer::new(
        &cfg,
        &RunOptions {
            out_dir: out_dir.clone(),
            data_dir,
            resume,
            progress: true,
            command: Some(command_line()),
            commit: option_env!("CONTRAST_COMMIT").map(str::to_string),
            world: world.clone(),
        },
    )?
    .with_interrupt(&INTERRUPT);
    trainer.train()?;
    let summary = trainer.finish()?;
    if world.is_root() {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        println!("wrote {}", out_dir.join("summary.json").display());
    }
    Ok(())
}

/// This command's arguments after `train`, without `--world` and `--out` (the
/// launcher passes the ranks their run directory).
fn rank_args() -> Vec<String> {
    let mut args = std::env::args().skip_while(|a| a != "train").skip(1);
    let mut kept = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--world" | "--out" => {
                args.next();
            }
            _ if a.starts_with("--world=") || a.starts_with("--out=") => {}
            _ => kept.push(a),
        }
    }
    kept
}

/// Set by SIGINT or SIGTERM: the trainer finishes its step, writes a checkpoint
/// and stops; `compare` passes the request on to its runs.
static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// The signal handler: the first signal asks for a clean stop, a second one ends the
/// process at once (the last complete checkpoint stays valid either way).
extern "C" fn on_signal(_: libc::c_int) {
    if INTERRUPT.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe; nothing else runs in the handler.
        unsafe { libc::_exit(130) };
    }
}

fn install_interrupt_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit, both
        // async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    // A write past the file-size limit (`ulimit -f`) then fails with an error that
    // names the file, instead of killing the process without a word.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// Runs a benchmark on `device` (the peak-memory child always on the CPU).
fn bench_command(device: DeviceChoice, command: BenchCommand) -> Result<()> {
    if !matches!(command, BenchCommand::Peak { .. }) {
        let device = device.open()?;
        println!("device: {}", describe(&device));
        bench::set_device(device);
    }
    match command {
        BenchCommand::Kernels { torch, only } => bench::kernels(
            Path::new("target/bench/kernels.json"),
            torch.as_deref(),
            &only,
        ),
        BenchCommand::Encoders => bench::encoders(Path::new("target/bench/encoders.json")),
        BenchCommand::Memory { steps } => {
            bench::memory(steps, Path::new("target/bench/memory.json"))
        }
        BenchCommand::Mining => mining_bench::mining(Path::new("target/bench/mining.json")),
        BenchCommand::Peak { case, path } => bench::peak(&case, &path),
    }
}

fn main() {
    keep_freed_memory();
    one_compute_pool();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train {
            config,
            mut set,
            data_dir,
            out,
            resume,
            device,
            world,
        } => {
            set.extend(device.map(|d| format!("train.device=\"{d}\"")));
            train(&config, &set, data_dir, out, resume, world as usize)
        }
        Command::Bench { device, command } => bench_command(device, command),
        Command::Reliability { kills, seed, world } => reliability::reliability(kills, seed, world),
        Command::GpuCheck {
            device,
            images,
            data_dir,
        } => gpu_check::gpu_check(device, images, data_dir),
        Command::Eval {
            run,
            checkpoint,
            split,
            device,
        } => inference::eval(&run, checkpoint.as_deref(), split, device),
        Command::Embed {
            run,
            split,
            images,
            out,
            format,
            checkpoint,
            device,
        } => {
            let out = out.unwrap_or_else(|| inference::default_out(&run, split, images.as_deref()));
            inference::embed(
                &run,
                checkpoint.as_deref(),
                split,
                images.as_deref(),
                &out,
                format,
                device,
            )
        }
        Command::Compare(options) => compare::compare(&options),
        Command::Fuzz { runs, seed, target } => {
            fuzz::fuzz(Path::new("."), runs, seed, target.as_deref())
        }
        Command::Data {
            command: DataCommand::Fetch { dataset, data_dir },
        } => dataset
            .parse::<DatasetId>()
            .map_err(anyhow::Error::from)
            .and_then(|id| provision(id, data_dir.as_deref()))
            .map(|dir| println!("{dir}", dir = dir.display())),
    };
    if let Err(e) = result {
        if e.is::<Interrupted>() {
            // Asked to stop: not a failure of the run, which continues with --resume.
            eprintln!("{e}");
            std::process::exit(130);
        }
        if let Some(missing) = e.chain().find_map(|c| c.downcast_ref::<MissingBackend>()) {
            // The exact command to run instead: these arguments through the GPU alias.
            let args: Vec<String> = std::env::args().skip(1).collect();
            eprintln!(
                "error: device \"{}\" needs a build with the `{}` feature; run `{}` (docs/gpu.md lists what the build needs)",
                missing.device,
                missing.feature,
                missing.command(&args)
            );
            std::process::exit(1);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
