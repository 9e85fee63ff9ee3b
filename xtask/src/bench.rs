//! `cargo xtask bench kernels`: the similarity hot path, kernel against the plain
//! candle composition and the machine's sgemm, measured side by side in one process.
//!
//! Every case is warmed up, then timed `reps` times; the median is reported. Peak
//! memory is the whole process's: `/proc/self/clear_refs` resets the high-water mark
//! before one call, and the figure is `VmHWM - VmRSS` before the call (the transient
//! peak on top of resident inputs), as `../shared/bench/torch_contrastive.py` does.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use contrast_kernels::{l2_normalize, topk_similarity};
use contrast_losses::{moco_info_nce, moco_info_nce_reference, nt_xent, nt_xent_reference};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// One row of `target/bench/kernels.json`.
struct Row {
    case: String,
    path: &'static str,
    median_ms: f64,
    gflops: f64,
    peak_rss_mb: f64,
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

/// Transient peak (MB) of one call of `f`.
fn peak_mb(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let before = status_kib("VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    f()?;
    Ok(((status_kib("VmHWM:") - before) / 1024.0).max(0.0))
}

fn measure(
    case: &str,
    path: &'static str,
    flops: f64,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Row> {
    f()?;
    let peak = peak_mb(&mut f)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let row = Row {
        case: case.to_string(),
        path,
        median_ms: median,
        gflops: flops / (median * 1e-3) / 1e9,
        peak_rss_mb: peak,
    };
    println!(
        "{:<32} {:<7} {:>10.1} ms {:>8.1} GFLOP/s {:>9.1} MB",
        row.case, row.path, row.median_ms, row.gflops, row.peak_rss_mb
    );
    Ok(row)
}

fn unit_rows(seed: u64, n: usize, d: usize) -> Result<Tensor> {
    // A deterministic fill; the values do not matter for timing.
    let v: Vec<f32> = (0..n * d)
        .map(|i| {
            (((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0) - 1.0
        })
        .collect();
    Ok(l2_normalize(&Tensor::from_vec(v, (n, d), &Device::Cpu)?)?)
}

fn sgemm(case: &str, m: usize, k: usize, n: usize, reps: usize) -> Result<Row> {
    let a = unit_rows(1, m, k)?;
    let b = unit_rows(2, n, k)?.t()?.contiguous()?;
    measure(case, "sgemm", 2.0 * (m * n * k) as f64, reps, || {
        a.matmul(&b)?;
        Ok(())
    })
}

fn moco(rows: &mut Vec<Row>) -> Result<()> {
    let (b, k, d) = (256, 65536, 128);
    let case = "moco_256x65536x128";
    let q = Var::from_tensor(&unit_rows(3, b, d)?)?;
    let key = unit_rows(4, b, d)?;
    let queue = unit_rows(5, k, d)?;
    let flops = 3.0 * 2.0 * (b * k * d) as f64;
    rows.push(measure(case, "kernel", flops, 7, || {
        moco_info_nce(q.as_tensor(), &key, &queue, 0.2)?.backward()?;
        Ok(())
    })?);
    rows.push(measure(case, "naive", flops, 5, || {
        moco_info_nce_reference(q.as_tensor(), &key, &queue, 0.2)?.backward()?;
        Ok(())
    })?);
    rows.push(sgemm(case, b, d, k, 7)?);
    Ok(())
}

fn simclr(rows: &mut Vec<Row>, b: usize) -> Result<()> {
    let d = 128;
    let case = format!("simclr_b{b}");
    let z1 = Var::from_tensor(&unit_rows(6, b, d)?)?;
    let z2 = Var::from_tensor(&unit_rows(7, b, d)?)?;
    let n = 2 * b;
    // Forward product plus the two backward products, the same work for both paths.
    let flops = 3.0 * 2.0 * (n * n * d) as f64;
    let reps = if b >= 4096 { 3 } else { 7 };
    rows.push(measure(&case, "kernel", flops, reps, || {
        nt_xent(z1.as_tensor(), z2.as_tensor(), 0.5)?.backward()?;
        Ok(())
    })?);
    rows.push(measure(&case, "naive", flops, reps, || {
        nt_xent_reference(z1.as_tensor(), z2.as_tensor(), 0.5)?.backward()?;
        Ok(())
    })?);
    rows.push(sgemm(&case, n, d, n, reps)?);
    Ok(())
}

fn knn(rows: &mut Vec<Row>) -> Result<()> {
    let (q, n, d, k) = (10_000, 60_000, 128, 200);
    let case = "knn_10000x60000x128_top200";
    let queries = unit_rows(8, q, d)?;
    let bank = unit_rows(9, n, d)?;
    let flops = 2.0 * (q * n * d) as f64;
    rows.push(measure(case, "kernel", flops, 3, || {
        topk_similarity(&queries, &bank, k)?;
        Ok(())
    })?);
    rows.push(measure(case, "naive", flops, 1, || {
        let sims = queries.matmul(&bank.t()?)?;
        let idx = sims.arg_sort_last_dim(false)?.narrow(1, 0, k)?;
        sims.gather(&idx.contiguous()?, 1)?;
        Ok(())
    })?);
    rows.push(sgemm(case, q, d, n, 3)?);
    Ok(())
}

/// Runs the kernel benchmarks and writes `target/bench/kernels.json`.
pub fn kernels(out: &Path) -> Result<()> {
    println!(
        "{:<32} {:<7} {:>13} {:>16} {:>12}",
        "case", "path", "median", "achieved", "peak extra"
    );
    let mut rows = Vec::new();
    moco(&mut rows)?;
    for b in [256, 1024, 4096] {
        simclr(&mut rows, b)?;
    }
    knn(&mut rows)?;
    let json: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({"case": r.case, "path": r.path, "median_ms": r.median_ms, "gflops": r.gflops, "peak_rss_mb": r.peak_rss_mb})
        })
        .collect();
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// A convolution layer shape: batch, side, input and output channels, kernel, stride.
struct ConvCase {
    b: usize,
    hw: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
}

/// One conv layer's forward and forward+backward rates.
fn conv_layer(name: &str, c: ConvCase, rows: &mut Vec<Row>) -> Result<()> {
    use contrast_kernels::{ConvGeometry, conv2d_nhwc};
    let ConvCase {
        b,
        hw,
        cin,
        cout,
        k,
        stride,
    } = c;
    let pad = k / 2;
    let g = ConvGeometry::from_shapes(&[b, hw, hw, cin], &[k * k * cin, cout], k, stride, pad)?;
    let x = Var::from_tensor(&unit_rows(10, b * hw * hw, cin)?.reshape((b, hw, hw, cin))?)?;
    let w = Var::from_tensor(&unit_rows(11, k * k * cin, cout)?)?;
    let case = format!("{name} {hw}x{hw} {cin}->{cout} k{k} s{stride} b{b}");
    rows.push(measure(&case, "fwd", g.forward_flops(), 5, || {
        conv2d_nhwc(
            &x.as_tensor().detach(),
            &w.as_tensor().detach(),
            k,
            stride,
            pad,
        )?;
        Ok(())
    })?);
    rows.push(measure(
        &case,
        "fwd+bwd",
        3.0 * g.forward_flops(),
        5,
        || {
            conv2d_nhwc(x.as_tensor(), w.as_tensor(), k, stride, pad)?
                .sum_all()?
                .backward()?;
            Ok(())
        },
    )?);
    Ok(())
}

/// A full SimCLR training step (forward, NT-Xent, backward, SGD) of `encoder` on
/// random images: images per second and peak memory.
fn training_step(
    name: &str,
    encoder: contrast_encoders::EncoderConfig,
    shape: (usize, usize, usize),
    pairs: usize,
    reps: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    use contrast_train::config::{ModelConfig, OptimConfig};
    use contrast_train::model::ContrastiveModel;
    use contrast_train::optim::Optimizer;
    let (h, w, c) = shape;
    let cfg = ModelConfig {
        encoder,
        head: contrast_encoders::HeadConfig {
            hidden: 512,
            out: 128,
            layers: 2,
            out_bn: false,
        },
        filter: None,
    };
    let input = contrast_encoders::InputShape {
        height: h,
        width: w,
        channels: c,
    };
    let model = ContrastiveModel::new(&cfg, input, None, &Device::Cpu, 0)?;
    let mut opt = Optimizer::new(
        OptimConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
        },
        model.params(),
    );
    let n = 2 * pairs;
    let x = unit_rows(12, n * h * w, c)?.reshape((n, h, w, c))?;
    let row = measure(name, "step", 0.0, reps, || {
        let (_, z) = model.forward_t(&x, true)?;
        let loss = nt_xent(&z.narrow(0, 0, pairs)?, &z.narrow(0, pairs, pairs)?, 0.2)?;
        let grads = loss.backward()?;
        opt.step(&grads, 0.1)?;
        Ok(())
    })?;
    println!(
        "{:<32} {:>10.1} images/s",
        name,
        n as f64 / (row.median_ms * 1e-3)
    );
    rows.push(Row {
        gflops: n as f64 / (row.median_ms * 1e-3),
        ..row
    });
    Ok(())
}

/// Runs the encoder benchmarks and writes `target/bench/encoders.json` (for `step`
/// rows, `gflops` holds images per second).
pub fn encoders(out: &Path) -> Result<()> {
    use contrast_encoders::EncoderConfig;
    println!(
        "{:<32} {:<7} {:>13} {:>16} {:>12}",
        "case", "path", "median", "achieved", "peak extra"
    );
    let mut rows = Vec::new();
    let b = 512;
    for (hw, cin, cout) in [(28, 1, 32), (14, 32, 64), (7, 64, 128), (3, 128, 256)] {
        let case = ConvCase {
            b,
            hw,
            cin,
            cout,
            k: 3,
            stride: 1,
        };
        conv_layer("convnet", case, &mut rows)?;
    }
    for (hw, cin, cout, k, s) in [
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
    ] {
        let case = ConvCase {
            b,
            hw,
            cin,
            cout,
            k,
            stride: s,
        };
        conv_layer("resnet18", case, &mut rows)?;
    }
    training_step(
        "step convnet default b256",
        EncoderConfig::Convnet {
            channels: vec![32, 64, 128, 256],
        },
        (28, 28, 1),
        256,
        7,
        &mut rows,
    )?;
    training_step(
        "step resnet18 cifar b256",
        EncoderConfig::Resnet18 { width: 64 },
        (32, 32, 3),
        256,
        3,
        &mut rows,
    )?;
    let json: Vec<_> = rows
        .iter()
        .map(|r| json!({"case": r.case, "path": r.path, "median_ms": r.median_ms, "gflops": r.gflops, "peak_rss_mb": r.peak_rss_mb}))
        .collect();
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(out, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `cargo xtask bench memory`: resident memory over `steps` MoCo steps with a
/// 65,536-entry queue, through the trainer's own method path (loss, backward, SGD,
/// momentum update, enqueue). A small MLP on 8x8 random images keeps the steps fast;
/// the queue, key encoder and optimiser state are the real ones.
pub fn memory(steps: usize, out: &Path) -> Result<()> {
    use contrast_data::{Batch, ImageShape};
    use contrast_train::Config;
    use contrast_train::method::Method;
    use contrast_train::model::ContrastiveModel;
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
    let device = Device::Cpu;
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
    let model = ContrastiveModel::new(&cfg.model, input, None, &device, 0)?;
    let mut opt = Optimizer::new(cfg.optim.clone(), model.params());
    let mut method = Method::new(&cfg, &model, input, &device)?;
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
        let batch = Batch {
            epoch: 0,
            step,
            indices: (0..b as u32).map(|i| (step * b) as u32 + i).collect(),
            labels: (0..b as u32).map(|i| i % 10).collect(),
            views,
            shape,
        };
        let (loss, extras) = method.loss(&cfg, &model, &batch, 10, &device)?;
        let grads = loss.backward()?;
        opt.step(&grads, 0.01)?;
        method.after_step(&cfg, &model, extras, &batch, step, steps)?;
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
