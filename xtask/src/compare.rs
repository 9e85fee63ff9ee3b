//! `cargo xtask compare`: a suite of configurations, each trained with several seeds
//! under one budget, evaluated, and compared with the suite's baseline by paired
//! differences per seed with 95% confidence intervals; a difference whose interval
//! holds 0 is a tie.
//!
//! A suite file (TOML):
//!
//! ```toml
//! name = "default"
//! baseline = "simclr"                 # the entry the others are compared with
//! seeds = 3                           # --seeds overrides
//! set = ["data.validation=5000"]      # overrides for every run (the budget)
//! records = "results/default"         # where finished runs are kept (optional)
//! [[run]]
//! name = "simclr"
//! config = "configs/simclr-fmnist.toml"
//! [[run]]
//! name = "dcl"
//! config = "configs/dcl-fmnist.toml"
//! set = []                            # overrides for this entry
//! ```
//!
//! Each (entry, seed) trains in its own process into `OUT/<entry>/seed-<s>/` and is
//! evaluated on the test split (`eval.json`); a run whose `summary.json` and
//! `eval.json` exist is reused, so a suite can be split across invocations. A run
//! that stopped part way (the session ended, the process was killed) continues from
//! its newest checkpoint with `train --resume` when its `config.toml` is the entry's
//! configuration, and ends where an uninterrupted run would. `--no-train` trains and
//! evaluates nothing: it tables the runs and records already finished, and lists the
//! (entry, seed) pairs still missing, so a table can be read while a suite is part done.
//!
//! A suite may also name a `records` directory (`records = "results/default"`,
//! relative to the working directory like `config`). Every finished run then leaves
//! a small JSON [`Record`] there, `RECORDS/<entry>/seed-<s>.json`: its measurements
//! and the configuration it ran as written (the config file with its `extends`
//! merged, and the overrides). Records are meant to be committed: a suite of many
//! hours is split across machines and sessions whose run directories do not outlive
//! them, and a later invocation reuses every record whose configuration is the one it
//! would run, retraining only the rest. `--quick` neither reads nor writes records.
//!
//! A finished run directory is reused only when its `config.toml` is the
//! configuration the entry would run now; otherwise compare stops and says so rather
//! than overwrite it.
//!
//! An entry may name `trained_in = "configs/suites/default.toml"`: that suite's entry
//! of the same name trains exactly this run, because this suite changes only what
//! reads labels (`data.superclasses`: evaluation and the negative diagnostics) and
//! the method reads none. Each seed that suite has finished (in its default output
//! directory, `runs/compare-<name>`) is then evaluated here from its newest
//! checkpoint, on the validation split (the figure model choices read) and on the test
//! split, instead of trained again; `OUT/<entry>/seed-<s>/trained-in.json` names the
//! run. Such a run has no training diagnostics under this suite's labels (its
//! false-negative share is "-"); its images/s and wall time are the source run's. A
//! seed the other suite has not finished, or finished under another configuration, is
//! trained here. Where this suite changes nothing about the entry (not even
//! `data.superclasses`), the other suite's record of a seed is its result here too,
//! and neither a run directory nor a new evaluation is needed.

use anyhow::{Context, Result, bail};
use contrast_train::evaluate::EvalReport;
use contrast_train::metrics::{EpochRecord, Summary, write_json};
use contrast_train::{Config, checkpoint};
use serde::{Deserialize, Serialize};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A suite file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    pub baseline: String,
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    #[serde(default)]
    pub set: Vec<String>,
    /// Where finished runs leave their [`Record`]s (see the module docs); none kept
    /// when absent.
    #[serde(default)]
    pub records: Option<PathBuf>,
    pub run: Vec<Entry>,
}

fn default_seeds() -> usize {
    3
}

/// One configuration of a suite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub config: PathBuf,
    #[serde(default)]
    pub set: Vec<String>,
    /// The suite file whose entry of the same name trains exactly this run (see the
    /// module docs); its finished runs are evaluated here instead of trained again.
    #[serde(default)]
    pub trained_in: Option<PathBuf>,
}

/// The overrides `--quick` adds: a run of seconds that tests the machinery.
const QUICK: [&str; 8] = [
    "data.train_subset=1024",
    "data.test_subset=500",
    "data.validation=256",
    "data.batch_size=128",
    "train.epochs=1",
    "eval.baselines=false",
    "eval.probe.epochs=2",
    "eval.monitor_bank=512",
];

/// The measurements of one (entry, seed) run that the comparison reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub entry: String,
    pub seed: u64,
    pub dir: String,
    /// The final weighted kNN on the validation split (all training images as the
    /// bank), the figure that model choices may read.
    pub validation_knn: Option<f64>,
    pub test_knn: Option<f64>,
    pub linear: Option<f64>,
    pub map_at_r: Option<f64>,
    pub alignment: f64,
    pub uniformity: f64,
    pub effective_rank: f64,
    /// Share of same-class candidates among the negatives, last epoch.
    pub false_negative_fraction: Option<f64>,
    pub images_per_sec: f64,
    pub wall_seconds: f64,
    /// Share of the machine's CPU other processes took while it trained (records
    /// from before it was measured have none, and stay as they were written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_cpu_share: Option<f64>,
    /// The build the run was trained with (`git` commit), when known.
    pub commit: Option<String>,
    /// The device it trained on, as its summary names it.
    pub device: String,
    /// The run directory that trained it, when it is another suite's run evaluated
    /// here or read from that suite's record (an entry's `trained_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_in: Option<String>,
    /// The build that evaluated such a run, when known (`commit` is its training's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_by: Option<String>,
}

/// A finished run as kept in a suite's `records` directory: what it measured and
/// what it ran, so that a later invocation reuses it only for the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The configuration file as written, its `extends` chain merged, as TOML.
    pub config: String,
    /// The overrides over it, in order: the suite's, the entry's, then `seed=S`.
    pub set: Vec<String>,
    pub result: RunResult,
}

impl Record {
    /// What identifies the run of `entry` with `seed` as this suite would run it
    /// now: the config file as written (`extends` merged) and the overrides.
    fn identity(suite: &Suite, entry: &Entry, seed: u64) -> Result<(String, Vec<String>)> {
        let (table, _) = contrast_train::config::read_table(&entry.config, 0)?;
        Ok((
            toml::to_string(&table)?,
            overrides(suite, entry, seed, false),
        ))
    }

    fn path(records: &Path, entry: &str, seed: u64) -> PathBuf {
        records.join(entry).join(format!("seed-{seed}.json"))
    }

    /// The result kept at `path` when its configuration and overrides are `config`
    /// and `set`; `None` when there is no record or it was made for another run (a
    /// config edited since, or other overrides), which is then said on stdout.
    fn reusable(path: &Path, config: &str, set: &[String]) -> Result<Option<RunResult>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: Record = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a run record (expected JSON with `config`, `set` and `result`)",
                path.display()
            )
        })?;
        if record.config != config || record.set != set {
            println!(
                "{}: recorded for another configuration ({}); it will be trained again",
                path.display(),
                if record.set != set {
                    format!("overrides {:?}, now {set:?}", record.set)
                } else {
                    "the config file changed".to_string()
                }
            );
            return Ok(None);
        }
        Ok(Some(record.result))
    }
}

/// The overrides one run of `entry` takes, in order: the suite's, the entry's,
/// `seed=S`, and the `--quick` budget.
fn overrides(suite: &Suite, entry: &Entry, seed: u64, quick: bool) -> Vec<String> {
    suite
        .set
        .iter()
        .chain(&entry.set)
        .cloned()
        .chain([format!("seed={seed}")])
        .chain(quick.then(|| QUICK.map(String::from)).into_iter().flatten())
        .collect()
}

/// A metric compared: its column name, how it is read from a [`RunResult`], and the
/// decimals its mean and spread are printed with (those the spread over seeds
/// needs, so that a table can stand in docs as written).
struct Metric {
    name: &'static str,
    get: fn(&RunResult) -> Option<f64>,
    decimals: usize,
    /// A figure of the machine as much as of the method (speed, time): its cell says
    /// when an entry's runs trained on several machine kinds.
    per_machine: bool,
}

impl Metric {
    const fn new(name: &'static str, get: fn(&RunResult) -> Option<f64>, decimals: usize) -> Self {
        Self {
            name,
            get,
            decimals,
            per_machine: false,
        }
    }

    /// A speed or a time, in whole units, marked when an entry's machines differ.
    const fn timing(name: &'static str, get: fn(&RunResult) -> Option<f64>) -> Self {
        Self {
            per_machine: true,
            ..Self::new(name, get, 0)
        }
    }
}

const METRICS: [Metric; 11] = [
    Metric::new("validation kNN", |r| r.validation_knn, 4),
    Metric::new("test kNN", |r| r.test_knn, 4),
    Metric::new("linear probe", |r| r.linear, 4),
    Metric::new("MAP@R", |r| r.map_at_r, 4),
    Metric::new("alignment", |r| Some(r.alignment), 3),
    Metric::new("uniformity", |r| Some(r.uniformity), 3),
    Metric::new("effective rank", |r| Some(r.effective_rank), 1),
    Metric::new("false-negative share", |r| r.false_negative_fraction, 4),
    Metric::timing("images/s", |r| Some(r.images_per_sec)),
    Metric::timing("wall s", |r| Some(r.wall_seconds)),
    Metric::new(
        "others' CPU %",
        |r| r.others_cpu_share.map(|x| 100.0 * x),
        0,
    ),
];

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Student's t quantile at 0.975 for `df` degrees of freedom (two-sided 95%).
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// A paired difference (method minus baseline, per seed) with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub pairs: usize,
}

impl Paired {
    /// Whether the interval holds 0 (a tie).
    pub fn tie(&self) -> bool {
        self.low <= 0.0 && self.high >= 0.0
    }
}

/// The mean of `differences` with a t interval (infinite with one pair).
pub fn paired(differences: &[f64]) -> Paired {
    let (mean, sd) = mean_std(differences);
    let n = differences.len();
    let half = t975(n.saturating_sub(1)) * sd / (n as f64).sqrt();
    let half = if n < 2 { f64::INFINITY } else { half };
    Paired {
        mean,
        low: mean - half,
        high: mean + half,
        pairs: n,
    }
}

/// `trained-in.json`: a run of another suite (an entry's `trained_in`) evaluated here.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainedIn {
    /// The run directory that trained it.
    run: PathBuf,
    /// The checkpoint evaluated.
    checkpoint: PathBuf,
    /// That run's summary: its throughput, wall time, commit and device stand for
    /// this run's (its label-dependent figures are not read).
    summary: Summary,
    /// The build (`git` commit) that evaluated it here, when known.
    #[serde(default)]
    evaluated_by: Option<String>,
}

const TRAINED_IN: &str = "trained-in.json";
/// The evaluation of the validation split of a run evaluated from another suite's.
const VALIDATION_EVAL: &str = "eval-validation.json";

/// Whether `dir` holds a finished run: trained here (`summary.json`) or evaluated
/// from another suite's run ([`TRAINED_IN`] and [`VALIDATION_EVAL`]), and evaluated
/// on the test split (`eval.json`).
fn finished(dir: &Path) -> bool {
    dir.join("eval.json").is_file()
        && (dir.join("summary.json").is_file()
            || (dir.join(TRAINED_IN).is_file() && dir.join(VALIDATION_EVAL).is_file()))
}

/// Whether `dir` holds a training run of `cfg` that stopped before it finished (a
/// session that ended, a killed process) and left a checkpoint to continue from.
/// Training resumes bit for bit, so continuing it gives the result an
/// uninterrupted run would; anything else in `dir` (another configuration, no
/// checkpoint, a damaged pointer) is started over.
fn interrupted(dir: &Path, cfg: &Config) -> bool {
    let same = Config::load(&dir.join("config.toml"), &[]).is_ok_and(|ran| ran == *cfg);
    same && matches!(checkpoint::latest(&dir.join("checkpoints")), Ok(Some(_)))
}

/// Reads `name` in `dir` as JSON, naming the file when it is missing or damaged.
fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid", path.display()))
}

/// One run's results, from its directory.
fn read_result(entry: &str, seed: u64, dir: &Path) -> Result<RunResult> {
    let eval: EvalReport = read_json(dir, "eval.json")?;
    let trained_in: Option<TrainedIn> = if dir.join(TRAINED_IN).is_file() {
        Some(read_json(dir, TRAINED_IN)?)
    } else {
        None
    };
    let (summary, validation_knn, false_negative_fraction) = match &trained_in {
        None => {
            let summary: Summary = read_json(dir, "summary.json")?;
            let last: Option<EpochRecord> = std::fs::read_to_string(dir.join("metrics.jsonl"))
                .ok()
                .and_then(|t| t.lines().last().and_then(|l| serde_json::from_str(l).ok()));
            let fnf = last
                .as_ref()
                .and_then(|r| r.mining.as_ref())
                .map(|m| m.neg_false_fraction);
            let validation = summary.validation_knn_top1;
            (summary, validation, fnf)
        }
        // Trained under other labels: the validation kNN is this suite's evaluation
        // of it, and its training diagnostics read the other labels.
        Some(t) => {
            let validation: EvalReport = read_json(dir, VALIDATION_EVAL)?;
            (t.summary.clone(), validation.knn_top1, None)
        }
    };
    Ok(RunResult {
        entry: entry.to_string(),
        seed,
        dir: dir.display().to_string(),
        validation_knn,
        test_knn: eval.knn_top1,
        linear: eval.linear_top1,
        map_at_r: eval.map_at_r,
        alignment: eval.alignment,
        uniformity: eval.uniformity,
        effective_rank: eval.effective_rank,
        false_negative_fraction,
        images_per_sec: summary.train_images_per_sec,
        wall_seconds: summary.wall_seconds,
        others_cpu_share: summary.others_cpu_share,
        commit: summary.commit,
        device: summary.device,
        evaluated_by: trained_in.as_ref().and_then(|t| t.evaluated_by.clone()),
        trained_in: trained_in.map(|t| t.run.display().to_string()),
    })
}

/// The configuration a run of `entry` with `overrides` trains with, as its
/// `config.toml` holds it; a relative config path is read from `root` (`""`: the
/// working directory).
fn resolved(entry: &Entry, overrides: &[String], root: &Path) -> Result<Config> {
    Config::load(&root.join(&entry.config), overrides)
        .with_context(|| format!("entry `{}`", entry.name))
}

/// `cfg` as another suite would train it: without what only reads labels.
fn training_of(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    cfg.data.superclasses = None;
    cfg
}

/// The first key where configuration `here` differs from `there`, as `key: here's
/// value, there's value` (`-` where a side lacks the key), for messages.
fn first_difference(here: &Config, there: &Config) -> Result<String> {
    fn walk(path: &str, a: Option<&toml::Value>, b: Option<&toml::Value>) -> Option<String> {
        match (a, b) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    let key = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(&key, a.get(k), b.get(k))
                })
            }
            (a, b) if a == b => None,
            (a, b) => {
                let show = |v: Option<&toml::Value>| v.map_or("-".to_string(), |v| v.to_string());
                Some(format!("`{path}`: {} here, {} there", show(a), show(b)))
            }
        }
    }
    let (a, b) = (toml::Value::try_from(here)?, toml::Value::try_from(there)?);
    Ok(walk("", Some(&a), Some(&b)).unwrap_or_else(|| "no key differs".into()))
}

/// The default output directory of `suite` (`runs/compare-<name>[-quick]`).
fn default_out(suite: &Suite, quick: bool) -> PathBuf {
    PathBuf::from("runs").join(format!(
        "compare-{}{}",
        suite.name,
        if quick { "-quick" } else { "" }
    ))
}

/// Reads a suite file.
fn read_suite(file: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read suite {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", file.display()))
}

/// Checks that each entry naming `trained_in` trains exactly as that suite's entry
/// of the same name and reads no labels; returns those suites by entry name.
/// Relative paths are read from `root` (`""`: the working directory).
fn trained_in_suites(
    suite: &Suite,
    file: &Path,
    quick: bool,
    root: &Path,
) -> Result<Vec<(String, Suite)>> {
    let mut out = Vec::new();
    for entry in &suite.run {
        let Some(other_file) = &entry.trained_in else {
            continue;
        };
        let at = format!("{} entry `{}`: trained_in", file.display(), entry.name);
        let other = read_suite(&root.join(other_file)).with_context(|| at.clone())?;
        let Some(twin) = other.run.iter().find(|e| e.name == entry.name) else {
            bail!(
                "{at} = {:?}: that suite has no entry `{}`",
                other_file.display().to_string(),
                entry.name
            );
        };
        let cfg = resolved(entry, &overrides(suite, entry, 0, quick), root)?;
        let readers = contrast_train::data::label_readers(&cfg);
        if !readers.is_empty() {
            bail!(
                "{at}: {} reads class labels, so this suite's labels change its training; it must be trained here",
                readers.join(" and ")
            );
        }
        if cfg.data.validation.is_none() {
            bail!(
                "{at}: the suite sets no data.validation, and a run evaluated from another suite's checkpoint reads its validation kNN there"
            );
        }
        let theirs = resolved(twin, &overrides(&other, twin, 0, quick), root)?;
        if training_of(&cfg) != training_of(&theirs) {
            bail!(
                "{at}: it trains differently from {}'s `{}` ({}); only data.superclasses may differ",
                other_file.display(),
                twin.name,
                first_difference(&training_of(&cfg), &training_of(&theirs))?
            );
        }
        out.push((entry.name.clone(), other));
    }
    Ok(out)
}

/// The other suite's record of `entry` with `seed`, when that suite runs it exactly
/// as `cfg` (this suite changes nothing about it, not even the labels evaluation
/// reads): its evaluation is then this suite's too, and is reused without opening
/// the run. `None` when the other suite keeps no such record or this suite reads
/// other labels (the run is then evaluated from its checkpoint, if one is there).
/// The result names the run that trained it (`trained_in`) and the build that
/// evaluated it (`evaluated_by`): its own, at the end of training.
fn recorded_elsewhere(
    other: &Suite,
    entry: &Entry,
    seed: u64,
    cfg: &Config,
    quick: bool,
) -> Result<Option<RunResult>> {
    let (Some(records), false) = (&other.records, quick) else {
        return Ok(None);
    };
    let Some(twin) = other.run.iter().find(|e| e.name == entry.name) else {
        return Ok(None);
    };
    if resolved(twin, &overrides(other, twin, seed, false), Path::new(""))? != *cfg {
        return Ok(None);
    }
    let path = Record::path(records, &twin.name, seed);
    let (config, set) = Record::identity(other, twin, seed)?;
    let Some(mut result) = Record::reusable(&path, &config, &set)? else {
        return Ok(None);
    };
    if result.trained_in.is_none() {
        result.trained_in = Some(result.dir.clone());
        result.evaluated_by = result.commit.clone();
    }
    println!(
        "{} seed {seed}: reused {} (suite `{}` runs it unchanged)",
        entry.name,
        path.display(),
        other.name
    );
    Ok(Some(result))
}

/// The other suite's finished run of `entry` with `seed` that trained exactly as
/// `cfg` would, as a [`TrainedIn`]; `None`, said on stdout, when there is none.
fn trained_elsewhere(
    other: &Suite,
    entry: &Entry,
    seed: u64,
    cfg: &Config,
    quick: bool,
) -> Result<Option<TrainedIn>> {
    let run = default_out(other, quick)
        .join(&entry.name)
        .join(format!("seed-{seed}"));
    let why = if !finished(&run) || !run.join("summary.json").is_file() {
        "no finished run directory with a summary.json there".to_string()
    } else {
        let theirs = Config::load(&run.join("config.toml"), &[])?;
        if training_of(&theirs) == training_of(cfg) {
            let checkpoint = checkpoint::latest(&run.join("checkpoints"))?;
            match checkpoint {
                Some(checkpoint) => {
                    return Ok(Some(TrainedIn {
                        summary: read_json(&run, "summary.json")?,
                        run,
                        checkpoint,
                        evaluated_by: option_env!("CONTRAST_COMMIT").map(String::from),
                    }));
                }
                None => "it kept no checkpoint".to_string(),
            }
        } else {
            format!(
                "it trained with another configuration ({})",
                first_difference(&training_of(cfg), &training_of(&theirs))?
            )
        }
    };
    println!(
        "{} seed {seed}: not evaluated from {} ({why}); it will be trained here",
        entry.name,
        run.display()
    );
    Ok(None)
}

/// The arguments of `xtask eval` on `split` of the run in `dir`, from `checkpoint`
/// when given (else the run's newest).
fn eval_args(dir: &Path, checkpoint: Option<&Path>, split: &str) -> Vec<String> {
    let mut args: Vec<String> = vec!["eval".into(), "--run".into(), dir.display().to_string()];
    if let Some(c) = checkpoint {
        args.extend(["--checkpoint".into(), c.display().to_string()]);
    }
    args.extend(["--split".into(), split.into()]);
    args
}

/// Runs `xtask` with `args` in a child process (its output to `log`), `threads`
/// rayon threads. The child has a process group of its own, so a terminal's Ctrl-C
/// reaches `compare` alone, which passes it on once ([`wait_or_stop`]): a second
/// signal would make a training child exit without its checkpoint.
fn child(args: &[String], log: &Path, threads: usize) -> Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Ok(Command::new(std::env::current_exe()?)
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()?)
}

/// How often a waiting `compare` looks at its child and at the interrupt flag.
const POLL: Duration = Duration::from_millis(200);

/// Waits for `child`. When `interrupt` is set (SIGINT or SIGTERM to `compare`), asks
/// `child` and every one of `others` to stop (SIGTERM: a training run finishes its
/// step and writes a checkpoint), waits for them all, and fails, so that stopping a
/// suite stops its runs instead of leaving them to train unwatched; the same
/// command then resumes each from its checkpoint.
fn wait_or_stop(
    child: &mut Child,
    others: &mut [&mut Child],
    interrupt: &AtomicBool,
) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if interrupt.load(Ordering::SeqCst) {
            let mut all: Vec<&mut Child> = std::iter::once(child)
                .chain(others.iter_mut().map(|c| &mut **c))
                .collect();
            for c in &all {
                // SAFETY: kill only sends a signal to the child's process id, which
                // stays reserved until the child is waited for below.
                unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            }
            for c in &mut all {
                c.wait()?;
            }
            bail!(
                "interrupted: every running seed was asked to write a checkpoint and stop; the same command resumes them"
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Runs the suite in `file` (see the module docs) into `out`.
/// `cargo xtask compare`'s options.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The suite file (configs/suites/*.toml).
    #[arg(long)]
    pub suite: PathBuf,
    /// Seeds per entry [default: the suite's, 2 with --quick].
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Runs trained at once (each gets its share of the cores).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Output directory (default: `runs/compare-<suite>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A tiny budget (1,024 images, one epoch) that tests the machinery in
    /// minutes; its numbers make no claims.
    #[arg(long)]
    pub quick: bool,
    /// Only these entries (comma-separated names) and the baseline: to split a
    /// suite across invocations or machines (their missing seeds train; with
    /// --no-train, only what is done is tabled).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Compare with this entry instead of the suite's baseline (e.g. SimCLR at
    /// another method's temperature); with --only, it is kept like the baseline.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Train and evaluate nothing: table only the runs and records already
    /// finished, and list each (entry, seed) still missing.
    #[arg(long)]
    pub no_train: bool,
}

/// Runs (or, with `--no-train`, only tables) the suite `options` name; see the
/// module docs.
pub fn compare(options: &Options) -> Result<()> {
    let Options {
        suite: ref file,
        seeds,
        jobs,
        ref out,
        quick,
        ref only,
        ref baseline,
        no_train,
    } = *options;
    let (file, out, baseline) = (file.as_path(), out.as_deref(), baseline.as_deref());
    crate::install_interrupt_handler();
    let mut suite = read_suite(file)?;
    if let Some(b) = baseline {
        suite.baseline = b.to_string();
    }
    if let Some(unknown) = only
        .iter()
        .find(|name| !suite.run.iter().any(|r| &r.name == *name))
    {
        bail!(
            "--only {unknown}: {} has no such [[run]]; its entries are {}",
            file.display(),
            suite
                .run
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !only.is_empty() {
        let keep = |r: &Entry| only.contains(&r.name) || r.name == suite.baseline;
        suite.run.retain(keep);
    }
    if !suite.run.iter().any(|r| r.name == suite.baseline) {
        bail!(
            "{}: baseline `{}`{} is not the name of a [[run]]",
            file.display(),
            suite.baseline,
            if baseline.is_some() {
                " (--baseline)"
            } else {
                ""
            }
        );
    }
    let seeds = seeds.unwrap_or(if quick { 2 } else { suite.seeds });
    if seeds == 0 {
        bail!("--seeds 0: at least one seed is needed (three to call anything beyond noise)");
    }
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_out(&suite, quick));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if quick {
        println!("--quick: a tiny budget that tests the machinery; its numbers make no claims");
    }
    let jobs = jobs.max(1);
    let threads = (std::thread::available_parallelism().map_or(2, |n| n.get()) / jobs).max(1);
    if quick {
        // A tiny budget's runs are not the suite's: they are not kept, nor reused.
        suite.records = None;
    }
    let records = suite.records.clone();
    let here = Path::new("");
    let elsewhere = trained_in_suites(&suite, file, quick, here)?;
    // Each (entry, seed): its result when a run directory or a record holds it.
    let mut results: Vec<(String, u64, Option<RunResult>)> = Vec::new();
    // Each (entry, seed) to run: its directory, its configuration, and the other
    // suite's run to evaluate instead of training, if any.
    let mut pending = Vec::new();
    for entry in &suite.run {
        for seed in 0..seeds as u64 {
            let dir = out.join(&entry.name).join(format!("seed-{seed}"));
            let cfg = resolved(entry, &overrides(&suite, entry, seed, quick), here)?;
            let mut found = None;
            if finished(&dir) {
                let ran = Config::load(&dir.join("config.toml"), &[]).with_context(|| {
                    format!(
                        "{} is a finished run whose configuration this build cannot read; move it away, or pass another --out, to train it again",
                        dir.display()
                    )
                })?;
                if ran != cfg {
                    bail!(
                        "{} ran another configuration than {} seed {seed} would now ({}); move it away, or pass another --out, to train it again",
                        dir.display(),
                        entry.name,
                        first_difference(&cfg, &ran)?
                    );
                }
                println!("{} seed {seed}: reused {}", entry.name, dir.display());
                let result = read_result(&entry.name, seed, &dir)?;
                if let Some(records) = &records {
                    keep(records, &suite, entry, seed, &result)?;
                }
                found = Some(result);
            } else if let Some(records) = &records {
                let path = Record::path(records, &entry.name, seed);
                let (config, set) = Record::identity(&suite, entry, seed)?;
                found = Record::reusable(&path, &config, &set)?;
                if found.is_some() {
                    println!("{} seed {seed}: reused {}", entry.name, path.display());
                }
            }
            let other = elsewhere
                .iter()
                .find(|(name, _)| *name == entry.name)
                .map(|(_, other)| other);
            if found.is_none()
                && let Some(other) = other
            {
                found = recorded_elsewhere(other, entry, seed, &cfg, quick)?;
            }
            if found.is_none() {
                let source = match other {
                    Some(other) => trained_elsewhere(other, entry, seed, &cfg, quick)?,
                    None => None,
                };
                pending.push((entry.clone(), seed, dir, cfg, source));
            }
            results.push((entry.name.clone(), seed, found));
        }
    }
    if no_train {
        for (entry, seed, ..) in pending.drain(..) {
            println!("{} seed {seed}: not run (--no-train)", entry.name);
        }
    }
    let total = pending.len();
    let mut running = Vec::new();
    let mut done = 0;
    let mut queue = pending.into_iter();
    loop {
        while running.len() < jobs {
            let Some((entry, seed, dir, cfg, source)) = queue.next() else {
                break;
            };
            let resume = source.is_none() && interrupted(&dir, &cfg);
            if resume {
                println!("{} seed {seed}: resuming {}", entry.name, dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
            }
            let args = match &source {
                // Another suite's run: its checkpoint evaluated on the validation
                // split first (the test split follows, as for a run trained here).
                Some(t) => {
                    std::fs::write(dir.join("config.toml"), cfg.to_toml()?)?;
                    write_json(&dir.join(TRAINED_IN), t)?;
                    println!(
                        "{} seed {seed}: evaluating {} (trained in {})",
                        entry.name,
                        t.checkpoint.display(),
                        t.run.display()
                    );
                    eval_args(&dir, Some(&t.checkpoint), "validation")
                }
                None => {
                    let mut args = vec![
                        "train".to_string(),
                        "--config".into(),
                        entry.config.display().to_string(),
                        "--out".into(),
                        dir.display().to_string(),
                    ];
                    for s in overrides(&suite, &entry, seed, quick) {
                        args.push("--set".into());
                        args.push(s);
                    }
                    if resume {
                        args.push("--resume".into());
                    }
                    args
                }
            };
            let c = child(&args, &dir.join("compare.log"), threads)?;
            running.push((entry, seed, dir, source, c));
        }
        if running.is_empty() {
            break;
        }
        let (entry, seed, dir, source, mut c) = running.remove(0);
        let mut others: Vec<&mut Child> = running.iter_mut().map(|r| &mut r.4).collect();
        let status = wait_or_stop(&mut c, &mut others, &crate::INTERRUPT)?;
        if !status.success() {
            bail!(
                "{} seed {seed} failed ({status}); its output is in {}",
                entry.name,
                dir.join("compare.log").display()
            );
        }
        let checkpoint = source.as_ref().map(|t| t.checkpoint.as_path());
        if checkpoint.is_some() {
            std::fs::rename(dir.join("eval.json"), dir.join(VALIDATION_EVAL))?;
        }
        let mut eval = child(
            &eval_args(&dir, checkpoint, "test"),
            &dir.join("eval.log"),
            threads * jobs,
        )?;
        let mut others: Vec<&mut Child> = running.iter_mut().map(|r| &mut r.4).collect();
        let status = wait_or_stop(&mut eval, &mut others, &crate::INTERRUPT)?;
        if !status.success() {
            bail!(
                "evaluating {} failed; see {}",
                dir.display(),
                dir.join("eval.log").display()
            );
        }
        let result = read_result(&entry.name, seed, &dir)?;
        if let Some(records) = &records {
            keep(records, &suite, &entry, seed, &result)?;
        }
        if let Some(slot) = results
            .iter_mut()
            .find(|(name, s, _)| *name == entry.name && *s == seed)
        {
            slot.2 = Some(result);
        }
        done += 1;
        println!("[{done}/{total}] {} seed {seed} done", entry.name);
    }
    let results: Vec<RunResult> = results.into_iter().filter_map(|(_, _, r)| r).collect();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let plots = draw_plots(&out, &suite, &results)?;
    let mut table = summarise(&suite, &results, &command);
    for p in &plots {
        table.push_str(&format!("\n![{p}]({p})\n"));
    }
    write_json(
        &out.join("results.json"),
        &serde_json::json!({
            "suite": suite.name,
            "file": file.display().to_string(),
            "baseline": suite.baseline,
            "seeds": seeds,
            "quick": quick,
            "commit": option_env!("CONTRAST_COMMIT"),
            "command": command,
            "runs": results,
        }),
    )?;
    let md = out.join("results.md");
    std::fs::write(&md, &table).with_context(|| format!("writing {}", md.display()))?;
    println!("{table}");
    println!(
        "wrote {} and {}",
        out.join("results.json").display(),
        md.display()
    );
    Ok(())
}

/// Writes the [`Record`] of a finished run of `entry` with `seed` into `records`.
fn keep(records: &Path, suite: &Suite, entry: &Entry, seed: u64, result: &RunResult) -> Result<()> {
    let (config, set) = Record::identity(suite, entry, seed)?;
    let path = Record::path(records, &entry.name, seed);
    std::fs::create_dir_all(path.parent().expect("a record has a directory"))
        .with_context(|| format!("creating {}", path.display()))?;
    write_json(
        &path,
        &Record {
            config,
            set,
            result: result.clone(),
        },
    )
}

/// The paired differences `entry - baseline` of `get` over the seeds both have.
fn differences(
    base: &[&RunResult],
    runs: &[&RunResult],
    get: fn(&RunResult) -> Option<f64>,
) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let b = base.iter().find(|b| b.seed == r.seed)?;
            Some(get(r)? - get(b)?)
        })
        .collect()
}

/// The distinct values of `f` over `results`, joined with ", ".
fn distinct(results: &[RunResult], f: impl Fn(&RunResult) -> String) -> String {
    let mut v: Vec<String> = results.iter().map(f).collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

/// The results as markdown: where they come from (the command, the commits and the
/// machines of the runs), mean ± standard deviation per entry and metric, then each
/// entry's paired difference from the baseline on the headline metrics.
pub fn summarise(suite: &Suite, results: &[RunResult], command: &str) -> String {
    let mut s = format!(
        "# Suite `{}`: mean ± standard deviation over seeds\n\n\
         - command: `{command}`\n- commit: {}\n- machine: {}\n\
         - others' CPU %: the share of the machine's CPU that other processes took while \
         a run trained; above {:.0}, its images/s and wall time are disturbed\n\
         - images/s: augmented views encoded per second of training, every view counted \
         (two per image for a two-view method, four for a four-view one)\n{}{}\n| entry | seeds |",
        suite.name,
        distinct(results, |r| r
            .commit
            .clone()
            .unwrap_or_else(|| "unknown".into())),
        distinct(results, |r| r.device.clone()),
        100.0 * contrast_train::contention::DISTURBED,
        {
            let moved: Vec<RunResult> = results
                .iter()
                .filter(|r| r.trained_in.is_some())
                .cloned()
                .collect();
            if moved.is_empty() {
                String::new()
            } else {
                format!(
                    "- {} runs trained in another suite (`trained_in`), evaluated by: {}\n",
                    moved.len(),
                    distinct(&moved, |r| r
                        .evaluated_by
                        .clone()
                        .unwrap_or_else(|| "unknown".into()))
                )
            }
        },
        suite
            .records
            .as_ref()
            .map(|r| format!("- records: `{}` (one file per run)\n", r.display()))
            .unwrap_or_default(),
    );
    for metric in &METRICS {
        s.push_str(&format!(" {} |", metric.name));
    }
    s.push_str(&format!("\n|---|---:|{}\n", "---:|".repeat(METRICS.len())));
    let of =
        |entry: &str| -> Vec<&RunResult> { results.iter().filter(|r| r.entry == entry).collect() };
    for entry in &suite.run {
        let runs = of(&entry.name);
        s.push_str(&format!("| {} | {} |", entry.name, runs.len()));
        let mut devices: Vec<&str> = runs.iter().map(|r| r.device.as_str()).collect();
        devices.sort_unstable();
        devices.dedup();
        for metric in &METRICS {
            let v: Vec<f64> = runs.iter().filter_map(|r| (metric.get)(r)).collect();
            if v.is_empty() {
                s.push_str(" - |");
            } else {
                let (m, sd) = mean_std(&v);
                let d = metric.decimals;
                // Over fewer runs than the entry has (records from before a
                // measurement existed): say over how many.
                let mut part = if v.len() < runs.len() {
                    format!(" ({} of {})", v.len(), runs.len())
                } else {
                    String::new()
                };
                // Speeds of several machine kinds: their spread is the machines'.
                if metric.per_machine && devices.len() > 1 {
                    part.push_str(&format!(" ({} machines)", devices.len()));
                }
                // One value has no spread to show.
                if v.len() == 1 {
                    s.push_str(&format!(" {m:.d$}{part} |"));
                } else {
                    s.push_str(&format!(" {m:.d$} ± {sd:.d$}{part} |"));
                }
            }
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "\n## Paired differences from `{}` (same seed), 95% interval; an interval holding 0 is a tie\n\n| entry | validation kNN | test kNN | linear probe | MAP@R |\n|---|---|---|---|---|\n",
        suite.baseline
    ));
    let base = of(&suite.baseline);
    for entry in suite.run.iter().filter(|e| e.name != suite.baseline) {
        let runs = of(&entry.name);
        s.push_str(&format!("| {} |", entry.name));
        for metric in &METRICS[..HEADLINE] {
            let d = differences(&base, &runs, metric.get);
            if d.is_empty() {
                s.push_str(" - |");
                continue;
            }
            let p = paired(&d);
            if p.pairs == 1 {
                s.push_str(&format!(" {:+.4} (one seed, no interval) |", p.mean));
                continue;
            }
            let verdict = if p.tie() {
                "tie"
            } else if p.mean > 0.0 {
                "better"
            } else {
                "worse"
            };
            s.push_str(&format!(
                " {:+.4} [{:+.4}, {:+.4}] {verdict} |",
                p.mean, p.low, p.high
            ));
        }
        s.push('\n');
    }
    s
}

/// The headline metrics: the first [`METRICS`], compared pairwise and plotted.
const HEADLINE: usize = 4;

/// Two plots per headline metric under `out/plots/` (SVG and PNG): every entry's mean
/// ± standard deviation beside the baseline's mean, and every entry's paired
/// difference from the baseline with its 95% interval. Returns the SVG paths
/// relative to `out`.
fn draw_plots(out: &Path, suite: &Suite, results: &[RunResult]) -> Result<Vec<String>> {
    use contrast_eval::{Interval, interval_plot};
    std::fs::create_dir_all(out.join("plots"))?;
    let of =
        |entry: &str| -> Vec<&RunResult> { results.iter().filter(|r| r.entry == entry).collect() };
    let base = of(&suite.baseline);
    let mut written = Vec::new();
    for Metric { name, get, .. } in &METRICS[..HEADLINE] {
        let slug = name.replace(['@', ' '], "-").to_lowercase();
        let mut means = Vec::new();
        let mut diffs = Vec::new();
        for entry in &suite.run {
            let runs = of(&entry.name);
            let v: Vec<f64> = runs.iter().filter_map(|r| get(r)).collect();
            if !v.is_empty() {
                let (m, sd) = mean_std(&v);
                means.push(Interval {
                    name: format!("{} ({})", entry.name, v.len()),
                    centre: m,
                    low: m - sd,
                    high: m + sd,
                });
            }
            let d = differences(&base, &runs, *get);
            if entry.name != suite.baseline && d.len() >= 2 {
                let p = paired(&d);
                diffs.push(Interval {
                    name: entry.name.clone(),
                    centre: p.mean,
                    low: p.low,
                    high: p.high,
                });
            }
        }
        let baseline_mean = means
            .iter()
            .zip(&suite.run)
            .find(|(_, e)| e.name == suite.baseline)
            .map(|(m, _)| m.centre);
        if !means.is_empty() {
            let file = format!("plots/{slug}");
            interval_plot(
                &out.join(&file),
                &format!("{}: {name}, mean ± sd over seeds", suite.name),
                name,
                &means,
                baseline_mean,
            )?;
            written.push(format!("{file}.svg"));
        }
        if !diffs.is_empty() {
            let file = format!("plots/{slug}-difference");
            interval_plot(
                &out.join(&file),
                &format!(
                    "{}: {name} minus {}'s, 95% interval",
                    suite.name, suite.baseline
                ),
                &format!("difference in {name}"),
                &diffs,
                Some(0.0),
            )?;
            written.push(format!("{file}.svg"));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_intervals_follow_the_t_distribution() {
        // Differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t(2) = 4.303, so the
        // interval (half-width 0.0248) holds 0: three seeds this spread are a tie.
        let p = paired(&[0.01, 0.02, 0.03]);
        let half = 4.303 * 0.01 / 3f64.sqrt();
        assert!((p.mean - 0.02).abs() < 1e-12);
        assert!((p.low - (0.02 - half)).abs() < 1e-12 && (p.high - (0.02 + half)).abs() < 1e-12);
        assert!(p.tie(), "{p:?}");
        // Ten times tighter: beyond noise.
        assert!(!paired(&[0.019, 0.020, 0.021]).tie());
        // A spread that straddles 0 is a tie; one pair has no interval.
        assert!(paired(&[0.03, -0.02, 0.01]).tie());
        assert!(paired(&[0.05]).tie());
        let (m, sd) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (sd - (5f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn an_interrupt_stops_every_running_child_and_fails() {
        use std::os::unix::process::ExitStatusExt;
        let sleeper = || {
            Command::new("sleep")
                .arg("600")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        // Not interrupted: the wait returns the child's own status.
        let mut quick = Command::new("true").spawn().unwrap();
        let status = wait_or_stop(&mut quick, &mut [], &AtomicBool::new(false)).unwrap();
        assert!(status.success());
        // Interrupted: the waited child and the other running one both get SIGTERM,
        // are reaped, and the wait fails saying how to resume.
        let (mut first, mut second) = (sleeper(), sleeper());
        let e = wait_or_stop(&mut first, &mut [&mut second], &AtomicBool::new(true)).unwrap_err();
        assert!(e.to_string().contains("resumes"), "{e}");
        for c in [&mut first, &mut second] {
            let status = c.try_wait().unwrap().expect("the child was reaped");
            assert_eq!(status.signal(), Some(libc::SIGTERM));
        }
    }

    #[test]
    fn records_are_reused_only_for_the_run_they_describe() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.toml");
        let config = tmp.path().join("a.toml");
        // The base extends a real preset, so that the configuration also loads whole.
        let preset = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/simclr-fmnist.toml");
        let extends = format!("extends = {:?}\n", preset.display().to_string());
        std::fs::write(&base, format!("{extends}seed = 1\n[train]\nepochs = 12\n")).unwrap();
        std::fs::write(&config, "extends = \"base.toml\"\n[train]\nepochs = 3\n").unwrap();
        let records = tmp.path().join("records");
        let suite_text = |name: &str, set: &str, extra: &str| {
            format!(
                "name = \"{name}\"\nbaseline = \"a\"\nset = [\"data.validation=50\"{set}]\n\
                 records = {:?}\n[[run]]\nname = \"a\"\nconfig = {:?}\n\
                 set = [\"loss.temperature=0.5\"]\n{extra}",
                records.display().to_string(),
                config.display().to_string()
            )
        };
        let suite: Suite = toml::from_str(&suite_text("t", "", "")).unwrap();
        let entry = &suite.run[0];
        let result = RunResult {
            entry: "a".into(),
            seed: 2,
            dir: "runs/a/seed-2".into(),
            validation_knn: Some(0.81),
            test_knn: Some(0.8),
            linear: Some(0.85),
            map_at_r: Some(0.3),
            alignment: 0.7,
            uniformity: -2.0,
            effective_rank: 100.0,
            false_negative_fraction: None,
            images_per_sec: 3000.0,
            wall_seconds: 400.0,
            others_cpu_share: Some(0.01),
            commit: Some("abc1234".into()),
            device: "cpu (test)".into(),
            trained_in: None,
            evaluated_by: None,
        };
        keep(&records, &suite, entry, 2, &result).unwrap();
        let path = Record::path(&records, "a", 2);
        // The identity holds the merged file (the child's epochs over the base's) and
        // the overrides in the order the run takes them.
        let (config_text, set) = Record::identity(&suite, entry, 2).unwrap();
        assert!(config_text.contains("epochs = 3") && config_text.contains("seed = 1"));
        assert_eq!(
            set,
            ["data.validation=50", "loss.temperature=0.5", "seed=2"].map(String::from)
        );
        assert_eq!(
            Record::reusable(&path, &config_text, &set).unwrap(),
            Some(result.clone())
        );
        // A suite naming this one's entry `trained_in` and changing nothing about it
        // takes the record as a run trained there, evaluated by its own build; not
        // under --quick, nor for a seed without a record, nor where it evaluates
        // against other labels (superclasses).
        let elsewhere = |set: &str, seed: u64, quick: bool| {
            let this: Suite =
                toml::from_str(&suite_text("u", set, "trained_in = \"t.toml\"\n")).unwrap();
            let cfg = resolved(
                &this.run[0],
                &overrides(&this, &this.run[0], seed, quick),
                Path::new(""),
            )
            .unwrap();
            recorded_elsewhere(&suite, &this.run[0], seed, &cfg, quick).unwrap()
        };
        assert_eq!(
            elsewhere("", 2, false),
            Some(RunResult {
                trained_in: Some("runs/a/seed-2".into()),
                evaluated_by: Some("abc1234".into()),
                ..result.clone()
            })
        );
        assert_eq!(elsewhere("", 2, true), None);
        assert_eq!(elsewhere("", 1, false), None);
        let merged = ", 'data.superclasses=[{ name = \"a\", classes = [0, 1, 2, 3, 4] }, \
                      { name = \"b\", classes = [5, 6, 7, 8, 9] }]'";
        assert_eq!(elsewhere(merged, 2, false), None);
        // Another seed's overrides, or the config file edited: not this run.
        let (_, other_seed) = Record::identity(&suite, entry, 1).unwrap();
        assert_eq!(
            Record::reusable(&path, &config_text, &other_seed).unwrap(),
            None
        );
        std::fs::write(
            &base,
            format!("{extends}seed = 1\n[train]\nepochs = 12\nlr = 0.1\n"),
        )
        .unwrap();
        let (edited, _) = Record::identity(&suite, entry, 2).unwrap();
        assert_eq!(Record::reusable(&path, &edited, &set).unwrap(), None);
        // No record: nothing to reuse. A damaged one: an error that names the file.
        assert_eq!(
            Record::reusable(&Record::path(&records, "a", 0), &config_text, &set).unwrap(),
            None
        );
        std::fs::write(&path, "{\"config\": 3}").unwrap();
        let err = format!(
            "{:#}",
            Record::reusable(&path, &config_text, &set).unwrap_err()
        );
        assert!(
            err.contains("seed-2.json") && err.contains("not a run record"),
            "{err}"
        );
    }

    #[test]
    fn every_suite_names_its_baseline_and_its_runs_configure() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (mut seen, mut trained_in) = (0, 0);
        for file in std::fs::read_dir(root.join("configs/suites")).unwrap() {
            let path = file.unwrap().path();
            let suite: Suite = toml::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                suite.run.iter().any(|r| r.name == suite.baseline),
                "{}: no baseline run",
                path.display()
            );
            for entry in &suite.run {
                resolved(entry, &overrides(&suite, entry, 0, false), &root)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            }
            // An entry evaluated from another suite's runs trains exactly as there.
            let elsewhere =
                trained_in_suites(&suite, &path, false, &root).unwrap_or_else(|e| panic!("{e:#}"));
            trained_in += elsewhere.len();
            seen += 1;
        }
        assert!(seen >= 5, "{seen} suites");
        assert!(
            trained_in >= 4,
            "{trained_in} entries evaluated from another suite"
        );
    }

    /// Every suite entry that trains differently from its preset (the presets alone
    /// train in contrast-train's `presets` test) trains `--quick`'s short epoch on the
    /// real data, so that an entry which configures but cannot train fails here
    /// rather than hours into a suite, as `simclr-4views` did at step 1 before
    /// 762facc. `--quick`'s budget replaces the suites' own (batch size, epochs), so
    /// an entry differs from its preset through its sampling, loss or views.
    #[test]
    fn every_suite_entry_that_changes_its_preset_trains_a_quick_epoch() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let data = contrast_data::DatasetId::FashionMnist
            .resolve(None)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("configs/suites"))
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        let quick_preset: Vec<String> = std::iter::once("seed=0".to_string())
            .chain(QUICK.map(String::from))
            .collect();
        let mut trained: Vec<(String, Config)> = Vec::new();
        for path in files {
            let suite = read_suite(&path).unwrap();
            for entry in suite.run.iter().filter(|e| e.trained_in.is_none()) {
                let name = format!("{}: {}", path.file_name().unwrap().display(), entry.name);
                let cfg = resolved(entry, &overrides(&suite, entry, 0, true), &root)
                    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
                let preset = resolved(entry, &quick_preset, &root).unwrap();
                if cfg == preset || trained.iter().any(|(_, c)| *c == cfg) {
                    continue;
                }
                let out = tempfile::tempdir().unwrap();
                let summary = contrast_train::run(
                    &cfg,
                    &contrast_train::RunOptions {
                        out_dir: out.path().to_path_buf(),
                        data_dir: Some(data.clone()),
                        progress: false,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
                assert_eq!(summary.epochs, 1, "{name}");
                assert!(summary.knn_top1.is_some(), "{name}: no kNN");
                trained.push((name, cfg));
            }
        }
        let names: Vec<&str> = trained.iter().map(|(n, _)| n.as_str()).collect();
        println!("suite entries trained: {names:?}");
        // simclr-t0.5, simclr-4views, FNC's three thresholds, and the superclass
        // suite's debiased, HCL and SupCon at least.
        assert!(trained.len() >= 8, "{names:?}");
        assert!(
            names.iter().any(|n| n.ends_with(": simclr-4views")),
            "{names:?}"
        );
    }

    #[test]
    fn trained_in_is_refused_where_this_suite_changes_training() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tmp = tempfile::tempdir().unwrap();
        let suite_file = |name: &str, body: &str| {
            let path = tmp.path().join(format!("{name}.toml"));
            std::fs::write(
                &path,
                format!("name = \"{name}\"\nbaseline = \"simclr\"\n{body}"),
            )
            .unwrap();
            path
        };
        let entry = |name: &str, config: &str, extra: &str| {
            format!("[[run]]\nname = \"{name}\"\nconfig = \"configs/{config}.toml\"\n{extra}\n")
        };
        let other = suite_file(
            "other",
            &(entry("simclr", "simclr-fmnist", "") + &entry("supcon", "supcon-fmnist", "")),
        );
        let from = format!("trained_in = {:?}", other.display().to_string());
        // The default config without its validation split.
        let bare = tmp.path().join("bare.toml");
        let text = std::fs::read_to_string(root.join("configs/simclr-fmnist.toml")).unwrap();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("validation ="))
            .collect();
        assert!(
            kept.len() < text.lines().count(),
            "no validation line to drop"
        );
        std::fs::write(&bare, kept.join("\n")).unwrap();
        let check = |body: &str| {
            let file = suite_file("this", body);
            let suite = read_suite(&file).unwrap();
            trained_in_suites(&suite, &file, false, &root).map(|v| v.len())
        };
        // Superclasses change only what reads labels: accepted.
        let merged = "set = ['data.superclasses=[{ name = \"a\", classes = [0, 1, 2, 3, 4] }, { name = \"b\", classes = [5, 6, 7, 8, 9] }]']\n";
        assert_eq!(
            check(&(merged.to_string() + &entry("simclr", "simclr-fmnist", &from))).unwrap(),
            1
        );
        // Another temperature trains differently; SupCon reads the labels; the other
        // suite must hold the entry.
        let refused = [
            (
                entry(
                    "simclr",
                    "simclr-fmnist",
                    &format!("{from}\nset = [\"loss.temperature=0.5\"]"),
                ),
                "trains differently from",
            ),
            (
                entry(
                    "simclr",
                    "simclr-fmnist",
                    &format!("{from}\nset = [\"loss.temperature=0.5\"]"),
                ),
                "`loss.temperature`: 0.5 here, 0.2 there",
            ),
            (
                merged.to_string() + &entry("supcon", "supcon-fmnist", &from),
                "reads class labels",
            ),
            (entry("dcl", "dcl-fmnist", &from), "has no entry `dcl`"),
            // Without a validation split there is no validation kNN to evaluate.
            (
                format!(
                    "[[run]]\nname = \"simclr\"\nconfig = {:?}\n{from}\n",
                    bare.display().to_string()
                ),
                "no data.validation",
            ),
        ];
        for (body, expected) in refused {
            let err = format!("{:#}", check(&body).unwrap_err());
            assert!(
                err.contains(expected) && err.contains("trained_in"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_table_names_ties_and_differences() {
        let suite: Suite = toml::from_str(
            "name = \"t\"\nbaseline = \"a\"\nrecords = \"results/t\"\n[[run]]\nname = \"a\"\nconfig = \"x\"\n[[run]]\nname = \"b\"\nconfig = \"y\"\n[[run]]\nname = \"c\"\nconfig = \"z\"\n",
        )
        .unwrap();
        let r = |entry: &str, seed: u64, knn: f64| RunResult {
            entry: entry.into(),
            seed,
            dir: String::new(),
            validation_knn: Some(knn),
            test_knn: Some(knn),
            linear: None,
            map_at_r: None,
            alignment: 0.5,
            uniformity: -3.0,
            effective_rank: 50.0,
            false_negative_fraction: Some(0.1),
            images_per_sec: 1000.0,
            wall_seconds: 10.0,
            others_cpu_share: Some(0.25),
            commit: Some("abc1234".into()),
            device: "cpu (test)".into(),
            trained_in: None,
            evaluated_by: None,
        };
        // One of b's runs predates the CPU-share measurement, on another machine.
        let older = RunResult {
            others_cpu_share: None,
            device: "cpu (other)".into(),
            ..r("b", 2, 0.84)
        };
        let results = [
            r("a", 0, 0.80),
            r("a", 1, 0.81),
            r("a", 2, 0.79),
            r("b", 0, 0.85),
            r("b", 1, 0.855),
            older,
            r("c", 0, 0.86),
        ];
        let md = summarise(&suite, &results, "xtask compare --suite t.toml");
        assert!(md.contains("| a | 3 | 0.8000 ± 0.0100 |"), "{md}");
        // Each metric at its own precision: alignment, uniformity, effective rank,
        // false-negative share, images/s, wall seconds, others' share of the CPU.
        assert!(
            md.contains("| 0.500 ± 0.000 | -3.000 ± 0.000 | 50.0 ± 0.0 | 0.1000 ± 0.0000 | 1000 ± 0 | 10 ± 0 | 25 ± 0 |"),
            "{md}"
        );
        assert!(
            md.contains("command: `xtask compare --suite t.toml`")
                && md.contains("commit: abc1234")
                && md.contains("machine: cpu (other), cpu (test)")
                && md.contains("records: `results/t`"),
            "{md}"
        );
        assert!(md.contains("better"), "{md}");
        assert!(md.contains("| b |") && md.contains(" - |"), "{md}");
        // b's speed and time mix two machines, and say so; a's do not.
        assert!(
            md.contains("| 1000 ± 0 (2 machines) | 10 ± 0 (2 machines) | 25 ± 0 (2 of 3) |\n"),
            "{md}"
        );
        assert!(md.contains("| 1000 ± 0 | 10 ± 0 | 25 ± 0 |\n"), "{md}");
        // One seed: no spread, and no interval to call a tie.
        assert!(md.contains("| c | 1 | 0.8600 | 0.8600 | - |"), "{md}");
        assert!(
            md.contains(
                "| c | +0.0600 (one seed, no interval) | +0.0600 (one seed, no interval) | - | - |"
            ),
            "{md}"
        );
    }
}
