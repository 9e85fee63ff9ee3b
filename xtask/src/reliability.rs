//! `cargo xtask reliability`: a training run killed with SIGKILL at random moments
//! (some inside checkpoint writes) and resumed each time ends with exactly the weights
//! and metrics of an uninterrupted run.
//!
//! Both runs are real `cargo xtask train` processes (this binary) on 4,000
//! Fashion-MNIST images, batch 64, 3 epochs, a checkpoint every 3 steps. The killed
//! run is started, killed after a random delay, and restarted with `--resume`, `kills`
//! times; then it is left to finish. The comparison is bit for bit (same thread count
//! on the same machine): every tensor of the final model, every deterministic field of
//! `metrics.jsonl`, and the final kNN and linear-probe accuracy.
//!
//! With `--world N` both runs are data-parallel (`train --world N`, through
//! `mpirun`), and each SIGKILL goes to the whole process group: the launcher,
//! `mpirun` and every rank die at once, as when a job is cancelled.

use anyhow::{Context, Result, bail, ensure};
use contrast_train::metrics::deterministic_metrics;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ARGS: [&str; 17] = [
    "train",
    "--set",
    "data.train_subset=4000",
    "--set",
    "data.test_subset=500",
    "--set",
    "data.validation=500",
    "--set",
    "data.batch_size=64",
    "--set",
    "train.epochs=3",
    "--set",
    "train.checkpoint_every=3",
    "--set",
    "train.keep_checkpoints=3",
    "--set",
    "eval.baselines=false",
];

/// Starts `exe train` in a process group of its own (with `world > 1`, the
/// launcher, `mpirun` and the ranks).
fn train(exe: &Path, out: &Path, resume: bool, world: usize) -> Result<std::process::Child> {
    let mut cmd = Command::new(exe);
    cmd.args(ARGS).arg("--out").arg(out);
    if resume {
        cmd.arg("--resume");
    }
    if world > 1 {
        cmd.arg("--world").arg(world.to_string());
    }
    cmd.process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a training process")
}

/// Whether a kill left a torn checkpoint behind: a temporary file, or a checkpoint
/// directory without its state file.
fn torn(checkpoints: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let p = e.path();
        p.extension().is_some_and(|x| x == "tmp")
            || (p.is_dir()
                && (!p.join("state.json").is_file()
                    || std::fs::read_dir(&p).is_ok_and(|mut d| {
                        d.any(|f| f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "tmp")))
                    })))
    })
}

fn final_model(run: &Path) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    let ckpt = run.join("checkpoints");
    let latest = std::fs::read_to_string(ckpt.join("latest"))?;
    Ok(candle_core::safetensors::load(
        ckpt.join(latest.trim()).join("model.safetensors"),
        &candle_core::Device::Cpu,
    )?)
}

/// Kills a run `kills` times at random moments (seeded by `seed`), resumes it after
/// each, and compares the result with an uninterrupted run.
pub fn reliability(kills: usize, seed: u64, world: usize) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let (straight, killed) = (
        scratch.path().join("straight"),
        scratch.path().join("killed"),
    );
    // This binary, named before the MPI build replaces the file it was run from.
    let exe = std::env::current_exe()?;
    if world > 1 {
        // Built before the clock starts, so that the delays fit the runs.
        crate::launch::mpi_build()?;
    }
    let t = Instant::now();
    let status = train(&exe, &straight, false, world)?.wait()?;
    ensure!(status.success(), "the uninterrupted run failed ({status})");
    let reference = t.elapsed();
    // Delays averaging half a run's length over all the kills, start-up included, so
    // that every kill lands before the run can finish.
    let longest = (reference.as_secs_f64() / kills.max(1) as f64).max(0.3);
    println!(
        "uninterrupted run: {:.1} s; killing the other run {kills} times, each after a random delay in [0.2, {longest:.1}] s",
        reference.as_secs_f64(),
    );

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut done_kills, mut torn_writes, mut finished_early) = (0, 0, 0);
    let mut resume = false;
    loop {
        let mut child = train(&exe, &killed, resume, world)?;
        resume = true;
        if done_kills == kills {
            let status = child.wait()?;
            ensure!(status.success(), "the last resumed run failed ({status})");
            break;
        }
        let delay = Duration::from_secs_f64(rng.random_range(0.2..longest));
        let started = Instant::now();
        let exited = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if started.elapsed() >= delay {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        match exited {
            Some(status) if status.success() => {
                // The run completed before the kill: the remaining kills hit finished
                // runs, so stop here.
                finished_early += 1;
                break;
            }
            Some(status) => bail!("a resumed run failed before it was killed ({status})"),
            None => {
                // SIGKILL to the child's process group (its id).
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                child.wait()?;
                done_kills += 1;
                torn_writes += torn(&killed.join("checkpoints")) as usize;
                let latest = std::fs::read_to_string(killed.join("checkpoints/latest"))
                    .unwrap_or_else(|_| "(none yet)".into());
                println!(
                    "kill {done_kills:>2} after {:>5.2} s: latest checkpoint {}{}",
                    delay.as_secs_f64(),
                    latest.trim(),
                    if torn(&killed.join("checkpoints")) {
                        ", a checkpoint write was torn"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    if finished_early > 0 {
        println!("the run finished after {done_kills} kills (fewer than {kills} asked)");
    }

    let (a, b) = (final_model(&straight)?, final_model(&killed)?);
    ensure!(a.len() == b.len(), "the models have different variables");
    let mut differing = Vec::new();
    for (name, x) in &a {
        let y = b.get(name).with_context(|| format!("`{name}` missing"))?;
        let same = x.dims() == y.dims()
            && x.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .eq(y
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits()));
        if !same {
            differing.push(name.clone());
        }
    }
    let metrics_equal = deterministic_metrics(&straight.join("metrics.jsonl"))?
        == deterministic_metrics(&killed.join("metrics.jsonl"))?;
    let summary = |run: &Path| -> Result<(f64, f64)> {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json"))?)?;
        Ok((
            v["knn_top1"].as_f64().unwrap_or(-1.0),
            v["linear_top1"].as_f64().unwrap_or(-1.0),
        ))
    };
    let (sa, sb) = (summary(&straight)?, summary(&killed)?);
    println!(
        "{done_kills} SIGKILLs ({torn_writes} inside a checkpoint write), {} tensors compared: {} differ; metrics.jsonl {}; kNN {} / {}, probe {} / {}",
        a.len(),
        differing.len(),
        if metrics_equal {
            "identical"
        } else {
            "DIFFERENT"
        },
        sa.0,
        sb.0,
        sa.1,
        sb.1
    );
    ensure!(differing.is_empty(), "final weights differ: {differing:?}");
    ensure!(
        metrics_equal,
        "metrics.jsonl differs from the uninterrupted run's"
    );
    ensure!(sa == sb, "the final evaluation differs");
    println!("the killed and resumed run equals the uninterrupted run bit for bit");
    Ok(())
}
