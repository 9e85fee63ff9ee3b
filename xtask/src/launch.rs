//! `cargo xtask train --world N`: N local ranks of a data-parallel run through
//! `mpirun`. The default build has no MPI, so the launcher first builds the
//! MPI-enabled xtask (in the same target directory: cargo keeps both builds' artifacts
//! apart by their features, so only the crates that differ compile, once), then
//! starts it under `mpirun` with the same arguments and one run directory for all
//! ranks. On a cluster the same binary runs under `mpirun`/`srun` with a hostfile
//! (docs/distributed.md).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `args` (the train command's arguments without `--world`) on `ranks` local
/// ranks, in `out`; returns when they have all ended.
pub fn train_world(ranks: usize, args: &[String], out: &Path) -> Result<()> {
    let mpirun = which("mpirun").context(
        "--world needs Open MPI's `mpirun`; install it (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev libclang-dev) or run one process without --world",
    )?;
    let exe = mpi_build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or((cores / ranks).max(1));
    println!(
        "launching {ranks} ranks x {threads} threads: {} -np {ranks} {}",
        mpirun.display(),
        exe.display()
    );
    let mut cmd = Command::new(&mpirun);
    cmd.arg("-np").arg(ranks.to_string());
    // Threads, not single cores: each rank runs a thread pool of its own.
    cmd.args(["--bind-to", "none"]);
    if ranks > cores {
        cmd.arg("--oversubscribe");
    }
    cmd.arg(&exe)
        .arg("train")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("RAYON_NUM_THREADS", threads.to_string());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Open MPI refuses to start as root unless both are set.
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", mpirun.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        // A rank stopped on request (SIGINT/SIGTERM) after its checkpoint.
        Some(130) => std::process::exit(130),
        _ => bail!("mpirun ended with {status}"),
    }
}

/// This binary when it already has MPI, else the MPI build of xtask (built now if
/// missing or stale; cargo decides).
pub fn mpi_build() -> Result<PathBuf> {
    if cfg!(feature = "mpi") {
        return std::env::current_exe().context("locating this executable");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building xtask with the `mpi` feature (the first time only)");
    let mut cmd = Command::new(cargo);
    // The variables `cargo run` set for this process describe xtask's package; build
    // scripts that watch them (ring's) would see them change and rebuild.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "OUT_DIR",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let out = cmd
        .args([
            "build",
            "--release",
            "--package",
            "xtask",
            "--features",
            "mpi",
            "--message-format",
            "json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !out.status.success() {
        bail!(
            "building xtask with the `mpi` feature failed ({}); it needs Open MPI's headers and libclang (apt-get install libopenmpi-dev libclang-dev)",
            out.status
        );
    }
    // The binary is the last `executable` cargo reports.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| m.get("executable")?.as_str().map(PathBuf::from))
        .context("cargo built xtask but named no executable")
}

/// The first `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
