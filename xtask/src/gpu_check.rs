//! `cargo xtask gpu-check`: everything a GPU must pass, in one command.
//!
//! 1. Kernel paths, the device against the CPU on the same inputs
//!    ([`contrast_testing::device`]): the streaming InfoNCE (its CUDA kernels on CUDA)
//!    and the encoders' candle op set against the fused CPU ops; values and gradients,
//!    1e-5 relative in f32 and 1e-9 in f64.
//! 2. One short epoch of the default preset on the GPU and on the CPU, stepped on the
//!    same batches: the loss curves must agree (1e-3 relative at every step, the bound
//!    the CPU's two op sets meet).
//! 3. A throughput table on the GPU: the ConvNet and ResNet-18 SimCLR steps
//!    (images/s; ResNet-18 also with `train.precision = "bf16"`), the MoCo loss step (256 x 65,536 x 128) and NT-Xent at B = 1024 and
//!    4096 (GFLOP/s), each beside PyTorch CUDA eager (`benches/torch/gpu_steps.py`,
//!    when `python3` with a CUDA torch is there) and beside the sgemm of the same
//!    product shape on the same device.
//!
//! Everything goes to `target/bench/gpu.json`; the command fails when a check or the
//! loss curves disagree.

use crate::bench;
use anyhow::{Context, Result, bail};
use contrast_testing::device::{Check, cnn_against_cpu, streaming_against_cpu};
use contrast_train::device::describe;
use contrast_train::{Config, DeviceChoice, RunOptions, Trainer};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Relative loss difference allowed between the GPU and CPU runs at any step.
const LOSS_BOUND: f64 = 1e-3;

/// Prints the checks and returns how many failed.
fn report(title: &str, checks: &[Check]) -> usize {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.passed()).collect();
    let worst = checks.iter().map(|c| c.error).fold(0f64, f64::max);
    println!(
        "{title}: {} of {} agree (worst relative error {worst:.2e})",
        checks.len() - failed.len(),
        checks.len()
    );
    for c in &failed {
        println!(
            "  FAILED {}: {:.2e} (bound {:.0e})",
            c.name, c.error, c.tolerance
        );
    }
    failed.len()
}

fn checks_json(checks: &[Check]) -> Value {
    json!(
        checks
            .iter()
            .map(|c| json!({"name": c.name, "error": c.error, "tolerance": c.tolerance, "passed": c.passed()}))
            .collect::<Vec<_>>()
    )
}

/// A trainer for one epoch of the default preset on `images` images, on `device`.
fn short_run(
    device: DeviceChoice,
    images: usize,
    data_dir: Option<&Path>,
    out: &Path,
) -> Result<Trainer> {
    let overrides = [
        format!("data.train_subset={images}"),
        "data.test_subset=1000".to_string(),
        "train.epochs=1".to_string(),
        "eval.baselines=false".to_string(),
        format!("train.device=\"{device}\""),
    ];
    let cfg = Config::load(Path::new(crate::DEFAULT_CONFIG), &overrides)?;
    let contrast_data::DatasetChoice::Named(id) = cfg.data.dataset else {
        anyhow::bail!("gpu-check runs the default preset on its named dataset");
    };
    let data_dir = id.resolve(data_dir).with_context(|| {
        format!("gpu-check needs `{id}` (`cargo xtask data fetch {id}`, or --data-dir)")
    })?;
    Trainer::new(
        &cfg,
        &RunOptions {
            out_dir: out.to_path_buf(),
            data_dir: Some(data_dir),
            resume: false,
            progress: false,
            ..Default::default()
        },
    )
}

/// Steps a GPU and a CPU trainer on the same batches; returns both loss curves.
fn loss_curves(
    gpu: DeviceChoice,
    images: usize,
    data_dir: Option<&Path>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut on_gpu = short_run(gpu, images, data_dir, dirs.0.path())?;
    let mut on_cpu = short_run(DeviceChoice::Cpu, images, data_dir, dirs.1.path())?;
    let (mut g, mut c) = (Vec::new(), Vec::new());
    for batch in on_cpu.batches(0)? {
        c.push(on_cpu.step(&batch)?.0);
        g.push(on_gpu.step(&batch)?.0);
        let (lg, lc) = (g[g.len() - 1], c[c.len() - 1]);
        println!(
            "  step {:>3}: gpu {lg:.6}  cpu {lc:.6}  ({:.1e})",
            g.len() - 1,
            (lg - lc).abs() / lc.abs()
        );
    }
    Ok((g, c))
}

/// The PyTorch CUDA rows from `benches/torch/gpu_steps.py`, or why there are none.
fn torch_rows(out: &Path) -> std::result::Result<Vec<Value>, String> {
    let script = Path::new("benches/torch/gpu_steps.py");
    let status = std::process::Command::new("python3")
        .arg(script)
        .arg("--json")
        .arg(out)
        .status()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !status.success() {
        return Err(format!("{} failed ({status})", script.display()));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(v["rows"].as_array().cloned().unwrap_or_default())
}

/// Runs the three parts on `device` (a GPU) and writes `target/bench/gpu.json`.
pub fn gpu_check(device: DeviceChoice, images: usize, data_dir: Option<PathBuf>) -> Result<()> {
    let dev = device.open()?;
    if dev.is_cpu() {
        let gpu = if cfg!(feature = "cuda") {
            DeviceChoice::Cuda(0)
        } else if cfg!(feature = "metal") {
            DeviceChoice::Metal
        } else {
            bail!(
                "gpu-check needs a GPU, and this build has no GPU backend: run `cargo xtask-cuda gpu-check` (docs/gpu.md)"
            );
        };
        let why = gpu
            .open()
            .err()
            .map_or(String::new(), |e| format!(": {e:#}"));
        bail!("gpu-check needs a GPU, and --device {device} found none{why}");
    }
    let name = describe(&dev);
    println!("gpu-check on {name}");
    let started = std::time::Instant::now();

    println!("1. kernel paths, {name} against the CPU");
    let streaming = streaming_against_cpu(&dev)?;
    let cnn = cnn_against_cpu(&dev)?;
    let mut failures = report("   streaming InfoNCE", &streaming);
    failures += report("   encoder ops (candle on the GPU, fused on the CPU)", &cnn);

    println!("2. one epoch of the default preset on {images} images, GPU and CPU");
    let (gpu_losses, cpu_losses) = loss_curves(device, images, data_dir.as_deref())?;
    let worst = gpu_losses
        .iter()
        .zip(&cpu_losses)
        .map(|(g, c)| (g - c).abs() / c.abs())
        .fold(0f64, f64::max);
    let curves_agree = worst < LOSS_BOUND;
    println!(
        "   worst relative loss difference {worst:.2e} over {} steps (bound {LOSS_BOUND:.0e}): {}",
        cpu_losses.len(),
        if curves_agree { "ok" } else { "FAILED" }
    );

    println!("3. throughput on {name}");
    bench::set_device(dev.clone());
    let mut rows = Vec::new();
    for (case, paths, reps) in [
        ("step convnet default b256", &["step"][..], 10),
        ("step resnet18 cifar b256", &["step"][..], 5),
        ("step resnet18 cifar b256 bf16", &["step"][..], 5),
        ("moco_256x65536x128", &["kernel", "sgemm"][..], 10),
        ("simclr_b1024", &["kernel", "sgemm"][..], 10),
        ("simclr_b4096", &["kernel", "sgemm"][..], 5),
    ] {
        for &path in paths {
            rows.push(bench::measure(case, path, reps, false)?);
        }
    }
    std::fs::create_dir_all("target/bench")?;
    let torch = torch_rows(Path::new("target/bench/torch_gpu.json"));
    match &torch {
        Ok(rows) => println!("   PyTorch CUDA: {} rows", rows.len()),
        Err(why) => println!("   PyTorch CUDA: not measured ({why})"),
    }
    println!(
        "   {:<28} {:>12} {:>12} {:>12} {:>9}",
        "case", "contrast", "pytorch", "sgemm", "of sgemm"
    );
    let mut table = Vec::new();
    for r in rows.iter().filter(|r| r.path != "sgemm") {
        let sgemm = rows
            .iter()
            .find(|s| s.case == r.case && s.path == "sgemm")
            .map(|s| s.rate);
        let ours_sgemm = sgemm.map(|s| r.rate / s);
        let torch_img = torch_value(&torch, &r.case, "rate");
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "   {:<28} {:>12.1} {:>12} {:>12} {:>9}",
            r.case,
            r.rate,
            show(torch_img),
            show(sgemm),
            ours_sgemm.map_or("-".into(), |f| format!("{:.0}%", 100.0 * f))
        );
        table.push(json!({
            "case": r.case,
            "unit": if r.case.starts_with("step ") { "img/s" } else { "GFLOP/s" },
            "contrast": r.rate,
            "contrast_median_ms": r.median_ms,
            "pytorch": torch_img,
            "pytorch_peak_mb": torch_value(&torch, &r.case, "peak_mb"),
            "sgemm": sgemm,
            "fraction_of_sgemm": ours_sgemm,
        }));
    }

    let report = json!({
        "device": name,
        "seconds": started.elapsed().as_secs_f64(),
        "kernel_checks": {"streaming_info_nce": checks_json(&streaming), "encoder_ops": checks_json(&cnn)},
        "loss_curves": {"gpu": gpu_losses, "cpu": cpu_losses, "worst_relative": worst, "bound": LOSS_BOUND},
        "throughput": table,
        "pytorch": torch.err().map_or(json!("measured"), |why| json!(format!("not measured: {why}"))),
    });
    let out = Path::new("target/bench/gpu.json");
    std::fs::write(out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if failures > 0 || !curves_agree {
        bail!("gpu-check: {failures} kernel checks failed, loss curves agree: {curves_agree}");
    }
    Ok(())
}

/// `field` of PyTorch's row for `case` (its own step, not its sgemm), when measured.
fn torch_value(
    torch: &std::result::Result<Vec<Value>, String>,
    case: &str,
    field: &str,
) -> Option<f64> {
    torch
        .as_ref()
        .ok()?
        .iter()
        .find_map(|r| (r["case"] == case && r["path"] == "torch").then(|| r[field].as_f64())?)
}
