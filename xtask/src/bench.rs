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
