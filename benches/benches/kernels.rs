//! Criterion benchmarks of the similarity hot path: the streaming kernel against the
//! dense candle composition, forward and backward, at training-sized shapes.
//! `cargo xtask bench kernels` runs the full-size cases and writes the JSON table.

use candle_core::{Device, Tensor, Var};
use contrast_kernels::{l2_normalize, topk_similarity};
use contrast_losses::{moco_info_nce, moco_info_nce_reference, nt_xent, nt_xent_reference};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

fn rows(seed: u64, n: usize, d: usize) -> Tensor {
    let v: Vec<f32> = (0..n * d)
        .map(|i| {
            (((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0) - 1.0
        })
        .collect();
    l2_normalize(&Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()).unwrap()
}

fn losses(c: &mut Criterion) {
    let mut g = c.benchmark_group("moco_256x16384x128");
    let q = Var::from_tensor(&rows(1, 256, 128)).unwrap();
    let (k, queue) = (rows(2, 256, 128), rows(3, 16384, 128));
    g.bench_function("kernel", |b| {
        b.iter(|| {
            moco_info_nce(q.as_tensor(), &k, &queue, 0.2)
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    g.bench_function("naive", |b| {
        b.iter(|| {
            moco_info_nce_reference(q.as_tensor(), &k, &queue, 0.2)
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("simclr_b256");
    let (z1, z2) = (
        Var::from_tensor(&rows(4, 256, 128)).unwrap(),
        Var::from_tensor(&rows(5, 256, 128)).unwrap(),
    );
    g.bench_function("kernel", |b| {
        b.iter(|| {
            nt_xent(z1.as_tensor(), z2.as_tensor(), 0.5)
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    g.bench_function("naive", |b| {
        b.iter(|| {
            nt_xent_reference(z1.as_tensor(), z2.as_tensor(), 0.5)
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("knn_1000x20000x128_top200");
    let (queries, bank) = (rows(6, 1000, 128), rows(7, 20000, 128));
    g.bench_function("kernel", |b| {
        b.iter(|| black_box(topk_similarity(&queries, &bank, 200).unwrap()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = losses
}
criterion_main!(benches);
