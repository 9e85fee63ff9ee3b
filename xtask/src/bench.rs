//! `cargo xtask bench kernels | encoders | memory`: measured side by side in one run.
//! The kernels table has a `tiled` row per loss case: the tensor-op streaming path that
//! devices without the custom kernel take, timed here on the CPU.
//!
//! Every case runs on the device of `--device` (CPU by default); on a GPU each call is
//! timed to the device's completion (`synchronize`), and peak memory is measured on
//! the CPU only.
//!
//! Every timed case is warmed up, then timed several times; the median is reported.
//! Peak memory is the whole process's transient peak of one call, measured in a fresh
//! child process (`cargo xtask bench peak CASE PATH`) where mimalloc returns freed
//! memory at once (`MIMALLOC_PURGE_DELAY=0`): one warm-up call, then
//! `/proc/self/clear_refs` resets the high-water mark and the figure is
//! `VmHWM - VmRSS` before the call, as `benches/torch/torch_contrastive.py` measures
//! PyTorch.

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor, Var};
use contrast_kernels::{
    Candidates, ConvGeometry, Positive, conv2d_nhwc, l2_normalize, streaming_info_nce,
    tiled_info_nce, topk_similarity,
};
use contrast_losses::{moco_info_nce, moco_info_nce_reference, nt_xent, nt_xent_reference};
use serde_json::json;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

/// The device the benchmarks run on; the CPU unless [`set_device`] chose another.
static DEVICE: OnceLock<Device> = OnceLock::new();

/// Runs every later benchmark case on `device` (first call wins).
pub fn set_device(device: Device) {
    let _ = DEVICE.set(device);
}

/// The benchmarks' device.
pub fn device() -> &'static Device {
    DEVICE.get_or_init(|| Device::Cpu)
}

type CaseFn = Box<dyn FnMut() -> Result<()>>;

/// One row of a benchmark table.
pub(crate) struct Row {
    pub(crate) case: String,
    pub(crate) path: String,
    pub(crate) median_ms: f64,
    /// GFLOP/s, or images/s for training steps.
    pub(crate) rate: f64,
    pub(crate) peak_rss_mb: Option<f64>,
    /// PyTorch's median on the same case (`--torch`), on the kernel row.
    pub(crate) torch_ms: Option<f64>,
}

fn status_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
}

fn peak_mb(f: &mut CaseFn) -> Result<f64> {
    let before = status_kib("VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    f()?;
    Ok(((status_kib("VmHWM:") - before) / 1024.0).max(0.0))
}

fn child_peak(case: &str, path: &str) -> Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "peak", case, path])
        .env("MIMALLOC_PURGE_DELAY", "0")
        .output()
        .context("starting the peak-memory child process")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("PEAK_MB ")
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| {
            format!(
                "peak of {case}/{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Child side of the peak measurement.
pub fn peak(case: &str, path: &str) -> Result<()> {
    let (_, mut f) = build_case(case, path)?;
    f()?;
    println!("PEAK_MB {}", peak_mb(&mut f)?);
    Ok(())
}

fn unit_rows(seed: u64, n: usize, d: usize) -> Result<Tensor> {
    // A deterministic fill; the values do not matter for timing.
    let v: Vec<f32> = (0..n * d)
        .map(|i| {
            (((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0) - 1.0
        })
        .collect();
    Ok(l2_normalize(&Tensor::from_vec(v, (n, d), device())?)?)
}

fn sgemm_case(m: usize, k: usize, n: usize) -> Result<(f64, CaseFn)> {
    let a = unit_rows(1, m, k)?;
    let b = unit_rows(2, n, k)?.t()?.contiguous()?;
    Ok((
        2.0 * (m * n * k) as f64,
        Box::new(move || {
            a.matmul(&b)?;
            Ok(())
        }),
    ))
}

fn moco_case(path: &str) -> Result<(f64, CaseFn)> {
    let (b, k, d) = (256, 65536, 128);
    if path == "sgemm" {
        return sgemm_case(b, d, k);
    }
    let q = Var::from_tensor(&unit_rows(3, b, d)?)?;
    let key = unit_rows(4, b, d)?;
    let queue = unit_rows(5, k, d)?;
    let path = path.to_string();
    let f: CaseFn = Box::new(move || {
        let loss = match path.as_str() {
            "naive" => moco_info_nce_reference(q.as_tensor(), &key, &queue, 0.2)?,
            "tiled" => {
                let (qn, kn) = (l2_normalize(q.as_tensor())?, l2_normalize(&key)?);
                let extra = ((&qn * &kn)?.sum(1)? / 0.2)?;
                tiled_info_nce(&qn, &queue, &extra, &Candidates::default(), 0.2)?
            }
            _ => moco_info_nce(q.as_tensor(), &key, &queue, 0.2)?,
        };
        loss.backward()?;
        Ok(())
    });
    Ok((3.0 * 2.0 * (b * k * d) as f64, f))
}

fn simclr_case(b: usize, path: &str) -> Result<(f64, CaseFn)> {
    let (d, n) = (128, 2 * b);
    if path == "sgemm" {
        return sgemm_case(n, d, n);
    }
    let z1 = Var::from_tensor(&unit_rows(6, b, d)?)?;
    let z2 = Var::from_tensor(&unit_rows(7, b, d)?)?;
    let path = path.to_string();
    let f: CaseFn = Box::new(move || {
        let loss = match path.as_str() {
            "naive" => nt_xent_reference(z1.as_tensor(), z2.as_tensor(), 0.5)?,
            // The general streaming kernel with the candidates as a second input:
            // what NT-Xent ran before its paired kernel.
            "general" => {
                let z = l2_normalize(&Tensor::cat(&[z1.as_tensor(), z2.as_tensor()], 0)?)?;
                let spec = Candidates {
                    positive: Positive::Column((0..n).map(|i| ((i + b) % n) as u32).collect()),
                    exclude_self: true,
                    ..Default::default()
                };
                streaming_info_nce(&z, &z, &Tensor::zeros(n, z.dtype(), z.device())?, spec, 0.5)?
            }
            "tiled" => {
                let z = l2_normalize(&Tensor::cat(&[z1.as_tensor(), z2.as_tensor()], 0)?)?;
                let spec = Candidates {
                    positive: Positive::Column((0..n).map(|i| ((i + b) % n) as u32).collect()),
                    exclude_self: true,
                    ..Default::default()
                };
                tiled_info_nce(
                    &z,
                    &z,
                    &Tensor::zeros(n, z.dtype(), z.device())?,
                    &spec,
                    0.5,
                )?
            }
            _ => nt_xent(z1.as_tensor(), z2.as_tensor(), 0.5)?,
        };
        loss.backward()?;
        Ok(())
    });
    // The forward product and the two backward products: the same work for both paths.
    Ok((3.0 * 2.0 * (n * n * d) as f64, f))
}

fn knn_case(path: &str) -> Result<(f64, CaseFn)> {
    let (q, n, d, k) = (10_000, 60_000, 128, 200);
    if path == "sgemm" {
        return sgemm_case(q, d, n);
    }
    let queries = unit_rows(8, q, d)?;
    let bank = unit_rows(9, n, d)?;
    let naive = path == "naive";
    let f: CaseFn = Box::new(move || {
        if naive {
            let sims = queries.matmul(&bank.t()?)?;
            let idx = sims.arg_sort_last_dim(false)?.narrow(1, 0, k)?;
            sims.gather(&idx.contiguous()?, 1)?;
        } else {
            topk_similarity(&queries, &bank, k)?;
        }
        Ok(())
    });
    Ok((2.0 * (q * n * d) as f64, f))
}

/// `conv BxHWxHWxCIN->COUT kK sS`: a layer's forward (`fwd`) or forward+backward.
fn conv_case(case: &str, path: &str) -> Result<(f64, CaseFn)> {
    let nums: Vec<usize> = case
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("digits"))
        .collect();
    let &[b, hw, _, cin, cout, k, stride] = nums.as_slice() else {
        bail!("bad conv case `{case}`");
    };
    let pad = k / 2;
    let g = ConvGeometry::from_shapes(&[b, hw, hw, cin], &[k * k * cin, cout], k, stride, pad)?;
    let x = Var::from_tensor(&unit_rows(10, b * hw * hw, cin)?.reshape((b, hw, hw, cin))?)?;
    let w = Var::from_tensor(&unit_rows(11, k * k * cin, cout)?)?;
    let backward = path == "fwd+bwd";
    let f: CaseFn = Box::new(move || {
        if backward {
            conv2d_nhwc(x.as_tensor(), w.as_tensor(), k, stride, pad)?
                .sum_all()?
                .backward()?;
        } else {
            conv2d_nhwc(
                &x.as_tensor().detach(),
                &w.as_tensor().detach(),
                k,
                stride,
                pad,
            )?;
        }
        Ok(())
    });
    Ok((if backward { 3.0 } else { 1.0 } * g.forward_flops(), f))
}

/// A full SimCLR training step (forward, NT-Xent, backward, SGD) on random images;
/// the rate is images (both views) per second. A ` bf16` suffix runs the encoders in
/// bf16 (`train.precision`).
fn step_case(case: &str) -> Result<(f64, CaseFn)> {
    use contrast_encoders::{ConvPool, EncoderConfig, HeadConfig, InputShape};
    use contrast_train::Precision;
    use contrast_train::config::{ModelConfig, OptimConfig};
    use contrast_train::model::{ContrastiveModel, ModelParts};
    use contrast_train::optim::Optimizer;
    let (case, precision) = match case.strip_suffix(" bf16") {
        Some(base) => (base, Precision::Bf16),
        None => (case, Precision::F32),
    };
    // The default config's network: two stages in the encoder, two in the head.
    let (encoder, head_conv, (h, w, c), t) = match case {
        "step convnet default b256" => (
            EncoderConfig::Convnet {
                channels: vec![32, 64],
                pool: ConvPool::Flatten,
            },
            vec![128, 256],
            (28, 28, 1),
            0.2,
        ),
        "step resnet18 cifar b256" => (
            EncoderConfig::Resnet18 {
                width: 64,
                recompute_stages: 2,
            },
            Vec::new(),
            (32, 32, 3),
            0.5,
        ),
        other => bail!("unknown step case `{other}`"),
    };
    let pairs = 256;
    let cfg = ModelConfig {
        encoder,
        head: HeadConfig {
            conv: head_conv,
            hidden: 512,
            out: 128,
            layers: 2,
            out_bn: false,
        },
        filter: None,
        ops: Default::default(),
        sync_bn: false,
    };
    let model = ContrastiveModel::new(
        &cfg,
        InputShape {
            height: h,
            width: w,
            channels: c,
        },
        ModelParts::default(),
        device(),
        0,
        precision,
    )?;
    let optim = OptimConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 5e-4,
    };
    let mut opt = Optimizer::new(optim, model.params());
    let n = 2 * pairs;
    let x = unit_rows(12, n * h * w, c)?.reshape((n, h, w, c))?;
    let f: CaseFn = Box::new(move || {
        let (_, z) = model.forward_t(&x, true)?;
        let loss = nt_xent(&z.narrow(0, 0, pairs)?, &z.narrow(0, pairs, pairs)?, t)?;
        opt.step(&loss.backward()?, 0.1)?;
        Ok(())
    });
    Ok((n as f64, f))
}

fn build_case(case: &str, path: &str) -> Result<(f64, CaseFn)> {
    match case {
        "moco_256x65536x128" => moco_case(path),
        "knn_10000x60000x128_top200" => knn_case(path),
        c if c.starts_with("simclr_b") => simclr_case(c["simclr_b".len()..].parse()?, path),
        c if c.starts_with("conv ") => conv_case(c, path),
        c if c.starts_with("step ") => step_case(c),
        other => bail!("unknown benchmark case `{other}`"),
    }
}

/// Times `case`/`path` (`reps` runs after a warm-up); with `peak`, also its transient
/// peak memory in a child process.
pub(crate) fn measure(case: &str, path: &str, reps: usize, peak: bool) -> Result<Row> {
    let (work, mut f) = build_case(case, path)?;
    f()?;
    device().synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        device().synchronize()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(f);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let per_second = work / (median * 1e-3);
    let row = Row {
        case: case.to_string(),
        path: path.to_string(),
        median_ms: median,
        rate: if case.starts_with("step ") {
            per_second
        } else {
            per_second / 1e9
        },
        peak_rss_mb: if peak && device().is_cpu() {
            Some(child_peak(case, path)?)
        } else {
            None
        },
        torch_ms: None,
    };
    let unit = if case.starts_with("step ") {
        "img/s"
    } else {
        "GFLOP/s"
    };
    let peak = row.peak_rss_mb.map_or("".into(), |p| format!("{p:9.1} MB"));
    println!(
        "{:<36} {:<8} {:>10.1} ms {:>9.1} {:<8} {peak}",
        row.case, row.path, row.median_ms, row.rate, unit
    );
    Ok(row)
}

fn write_rows(out: &Path, rows: &[Row], rate_key: &str) -> Result<()> {
    let json: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut v = json!({"case": r.case, "path": r.path, "median_ms": r.median_ms, "peak_rss_mb": r.peak_rss_mb});
            v[rate_key] = json!(r.rate);
            if let Some(t) = r.torch_ms {
                v["torch_ms"] = json!(t);
                v["ratio"] = json!(t / r.median_ms);
            }
            v
        })
        .collect();
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// PyTorch's median time on `case` (`benches/torch/kernel_peer.py` run by `python`
/// with as many threads as rayon uses), in ms.
fn torch_peer(python: &str, case: &str, reps: usize) -> Result<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/torch/kernel_peer.py");
    let threads = contrast_train::device::rayon_threads().to_string();
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([
            "--case",
            case,
            "--reps",
            &reps.to_string(),
            "--threads",
            &threads,
        ])
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{python} {} --case {case} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("reading the PyTorch peer's answer `{}`", line.trim()))?;
    let ms = v["median_ms"]
        .as_f64()
        .context("the PyTorch peer's answer has no median_ms")?;
    let chunk = v["chunk"]
        .as_u64()
        .map_or(String::new(), |c| format!(" (best chunk {c})"));
    println!(
        "{case:<36} {:<8} {ms:>10.1} ms   PyTorch {}{chunk}",
        "torch",
        v["torch"].as_str().unwrap_or("?")
    );
    Ok(ms)
}

/// The similarity hot path: MoCo and SimCLR losses (forward and backward) and kNN
/// top-k, kernel against the plain candle path and the machine's sgemm for the
/// product shape; writes `target/bench/kernels.json`. With `torch` (a Python with
/// PyTorch), each case's PyTorch peer runs right after Contrast's paths for it, so
/// both see the same machine state, and the kernel row gets `torch_ms` and `ratio`.
/// `only` keeps the cases whose names start with one of its prefixes (all when empty).
pub fn kernels(out: &Path, torch: Option<&str>, only: &[String]) -> Result<()> {
    let mut rows = Vec::new();
    for (case, reps) in [
        ("moco_256x65536x128", 7),
        ("simclr_b256", 41),
        ("simclr_b512", 21),
        ("simclr_b1024", 7),
        ("simclr_b2048", 5),
        ("simclr_b4096", 3),
        ("knn_10000x60000x128_top200", 3),
    ] {
        if !only.is_empty() && !only.iter().any(|p| case.starts_with(p.as_str())) {
            continue;
        }
        let paths: &[&str] = if case.starts_with("knn") {
            &["kernel", "naive", "sgemm"]
        } else {
            &["kernel", "general", "tiled", "naive", "sgemm"]
        };
        for &path in paths {
            let reps = if path == "naive" && case.starts_with("knn") {
                1
            } else {
                reps
            };
            rows.push(measure(case, path, reps, true)?);
        }
        if let Some(python) = torch {
            let ms = torch_peer(python, case, reps)?;
            let kernel = rows
                .iter_mut()
                .find(|r| r.case == case && r.path == "kernel")
                .expect("every case has a kernel row");
            kernel.torch_ms = Some(ms);
        }
    }
    if torch.is_some() {
        println!(
            "\n{:<36} {:>10} {:>10} {:>16}",
            "case", "Contrast", "PyTorch", "PyTorch/Contrast"
        );
        for r in rows.iter().filter(|r| r.torch_ms.is_some()) {
            let t = r.torch_ms.expect("filtered");
            println!(
                "{:<36} {:>7.1} ms {:>7.1} ms {:>16.2}",
                r.case,
                r.median_ms,
                t,
                t / r.median_ms
            );
        }
    }
    write_rows(out, &rows, "gflops")
}

/// Convolution layers of the default ConvNet and the CIFAR ResNet-18 at batch 512
/// (GFLOP/s), and full SimCLR training steps at 256 pairs (images/s, peak memory);
/// writes `target/bench/encoders.json`.
pub fn encoders(out: &Path) -> Result<()> {
    let mut rows = Vec::new();
    let layers = [
        (28, 1, 32, 3, 1),
        (14, 32, 64, 3, 1),
        (7, 64, 128, 3, 1),
        (3, 128, 256, 3, 1),
        (32, 3, 64, 3, 1),
        (32, 64, 64, 3, 1),
        (32, 64, 128, 3, 2),
        (16, 128, 128, 3, 1),
        (32, 64, 128, 1, 2),
        (16, 128, 256, 3, 2),
        (8, 256, 256, 3, 1),
        (16, 128, 256, 1, 2),
        (8, 256, 512, 3, 2),
        (4, 512, 512, 3, 1),
        (8, 256, 512, 1, 2),
    ];
    for (hw, cin, cout, k, s) in layers {
        let case = format!("conv 512x{hw}x{hw}x{cin}->{cout} k{k} s{s}");
        for path in ["fwd", "fwd+bwd"] {
            rows.push(measure(&case, path, 5, false)?);
        }
    }
    rows.push(measure("step convnet default b256", "step", 7, true)?);
    rows.push(measure("step resnet18 cifar b256", "step", 3, true)?);
    write_rows(out, &rows, "rate")
}
/// `cargo xtask bench memory`: resident memory over `steps` MoCo steps with a
/// 65,536-entry queue, through the trainer's own method path (loss, backward, SGD,
/// momentum update, enqueue). A small MLP on 8x8 random images keeps the steps fast;
/// the queue, key encoder and optimiser state are the real ones.
pub fn memory(steps: usize, out: &Path) -> Result<()> {
    use contrast_data::{Batch, ImageShape};
    use contrast_train::Config;
    use contrast_train::method::Method;
    use contrast_train::model::{ContrastiveModel, ModelParts};
    use contrast_train::optim::Optimizer;
    let cfg = Config::from_toml(
        r#"
name = "memory-bench"
[data]
dataset = "fashion-mnist"
batch_size = 32
augment = {}
[method]
name = "moco"
queue_size = 65536
momentum = { base = 0.99 }
shuffle_splits = 2
[model]
encoder = { kind = "mlp", hidden = [64] }
head = { hidden = 64, out = 128 }
[loss]
name = "moco_info_nce"
temperature = 0.2
[optim]
name = "sgd"
lr = 0.01
[train]
epochs = 1
"#,
        "memory-bench",
        &[],
    )?;
    let device = device().clone();
    let shape = ImageShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let input = contrast_encoders::InputShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let model = ContrastiveModel::new(
        &cfg.model,
        input,
        ModelParts::default(),
        &device,
        0,
        cfg.train.precision,
    )?;
    let mut opt = Optimizer::new(cfg.optim.clone(), model.params());
    let mut method = Method::new(&cfg, &model, input, 1, &device)?;
    let b = cfg.data.batch_size;
    let queue_mb = method.memory_bytes() as f64 / 1e6;
    println!("queue: 65536 x 128 keys, {queue_mb:.1} MB (K x D x 4 bytes plus ids and labels)");
    let mut samples = Vec::new();
    let start = Instant::now();
    for step in 0..steps {
        let views = (0..2)
            .map(|v| {
                (0..b * 64)
                    .map(|i| ((i * 31 + step * 7 + v * 13) % 97) as f32 / 97.0)
                    .collect()
            })
            .collect();
        let batch = Batch::whole(
            0,
            step,
            (0..b as u32).map(|i| (step * b) as u32 + i).collect(),
            Some((0..b as u32).map(|i| i % 10).collect()),
            views,
            shape,
        );
        method.step(
            &cfg,
            &model,
            &mut opt,
            &batch,
            10,
            (step, steps),
            0.01,
            &device,
            &contrast_train::World::single(),
        )?;
        if step % 500 == 0 || step + 1 == steps {
            let rss = status_kib("VmRSS:") / 1024.0;
            samples.push((step, rss));
            if step % 5000 == 0 || step + 1 == steps {
                println!(
                    "step {step:>6}  resident {rss:8.1} MB  ({:.0} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    // Growth after warm-up: compare the first sample past 1,000 steps with the last.
    let after_warmup = samples
        .iter()
        .find(|(s, _)| *s >= 1000)
        .map(|(_, r)| *r)
        .unwrap_or(samples[0].1);
    let last = samples.last().map(|(_, r)| *r).unwrap_or(0.0);
    let max = samples.iter().map(|(_, r)| *r).fold(0.0, f64::max);
    println!(
        "resident after 1,000 steps {after_warmup:.1} MB, at the end {last:.1} MB, peak {max:.1} MB"
    );
    let json = json!({
        "steps": steps,
        "queue_size": 65536,
        "queue_mb": queue_mb,
        "rss_after_1000_steps_mb": after_warmup,
        "rss_end_mb": last,
        "rss_peak_mb": max,
        "samples": samples.iter().map(|(s, r)| json!({"step": s, "rss_mb": r})).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(out, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
