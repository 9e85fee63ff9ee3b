//! The streaming kernel path of the losses against their dense reference
//! compositions: values and gradients (1e-5 relative, f64 and f32), on shapes that
//! cross the kernel's row blocks (16 to 128 rows) and candidate tiles (1024) unevenly.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::l2_normalize;
use contrast_losses::{
    generalized_info_nce, moco_info_nce, moco_info_nce_keyed, moco_info_nce_reference, nt_xent,
    nt_xent_reference, one_hot,
};
#[cfg(any(feature = "cuda", feature = "metal"))]
use contrast_testing::device::streaming_against_cpu;
use contrast_testing::device::{every_rule, streaming_inputs, streaming_on};
use contrast_testing::{max_rel_with_floor, uniform_tensor};

/// An `[r, c]` tensor of `dtype`, uniform over `[-0.5, 0.5)` from `seed`.
fn rand(seed: u64, r: usize, c: usize, dtype: DType) -> Tensor {
    uniform_tensor(seed, (r, c), -0.5, 0.5)
        .to_dtype(dtype)
        .unwrap()
}

/// The relative error of `a` against the reference `b`, with no practical floor on
/// the scale (1e-30).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_with_floor(a, b, 1e-30)
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-9 } else { 1e-5 }
}

#[test]
fn nt_xent_kernel_matches_reference() {
    for dtype in [DType::F64, DType::F32] {
        for (b, d, t) in [(1, 3, 0.5), (5, 7, 0.1), (33, 16, 0.2), (529, 12, 0.05)] {
            let (x, y) = (
                Var::from_tensor(&rand(b as u64, b, d, dtype)).unwrap(),
                Var::from_tensor(&rand(99 + b as u64, b, d, dtype)).unwrap(),
            );
            let fast = nt_xent(x.as_tensor(), y.as_tensor(), t).unwrap();
            let slow = nt_xent_reference(x.as_tensor(), y.as_tensor(), t).unwrap();
            assert!(
                rel(&fast, &slow) < tol(dtype),
                "{dtype:?} b={b}: loss {} vs {}",
                fast,
                slow
            );
            let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
            for v in [&x, &y] {
                let e = rel(
                    gf.get(v.as_tensor()).unwrap(),
                    gs.get(v.as_tensor()).unwrap(),
                );
                assert!(e < tol(dtype), "{dtype:?} b={b}: gradient error {e}");
            }
        }
    }
}

#[test]
fn moco_kernel_matches_reference() {
    for dtype in [DType::F64, DType::F32] {
        for (b, k, d, t) in [(3, 5, 4, 0.2), (40, 1025, 8, 0.07), (70, 2100, 16, 0.2)] {
            let q = Var::from_tensor(&rand(k as u64, b, d, dtype)).unwrap();
            let key = Var::from_tensor(&rand(7 + k as u64, b, d, dtype)).unwrap();
            let queue = l2_normalize(&rand(13 + k as u64, k, d, dtype)).unwrap();
            let fast = moco_info_nce(q.as_tensor(), key.as_tensor(), &queue, t).unwrap();
            let slow = moco_info_nce_reference(q.as_tensor(), key.as_tensor(), &queue, t).unwrap();
            assert!(
                rel(&fast, &slow) < tol(dtype),
                "{dtype:?} K={k}: loss {fast} vs {slow}"
            );
            let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
            for v in [&q, &key] {
                let e = rel(
                    gf.get(v.as_tensor()).unwrap(),
                    gs.get(v.as_tensor()).unwrap(),
                );
                assert!(e < tol(dtype), "{dtype:?} K={k}: gradient error {e}");
            }
        }
    }
}

/// A label-aware queue equals the dense generalised InfoNCE with the same-label
/// queue entries weighted 0.
#[test]
fn label_aware_queue_matches_dense_elimination() {
    let (b, k, d, t) = (37, 1100, 6, 0.1);
    let q = Var::from_tensor(&rand(1, b, d, DType::F64)).unwrap();
    let key = rand(2, b, d, DType::F64);
    let queue = l2_normalize(&rand(3, k, d, DType::F64)).unwrap();
    let ql: Vec<i64> = (0..b as i64).map(|i| i % 5).collect();
    let kl: Vec<i64> = (0..k as i64)
        .map(|j| if j % 11 == 0 { -1 } else { j % 7 })
        .collect();
    let fast = moco_info_nce_keyed(
        q.as_tensor(),
        &key,
        &queue,
        t,
        Some((ql.clone(), kl.clone())),
    )
    .unwrap();
    let (qn, kn) = (
        l2_normalize(q.as_tensor()).unwrap(),
        l2_normalize(&key).unwrap(),
    );
    let logits = (Tensor::cat(
        &[
            (&qn * &kn).unwrap().sum_keepdim(1).unwrap(),
            qn.matmul(&queue.t().unwrap()).unwrap(),
        ],
        1,
    )
    .unwrap()
        / t)
        .unwrap();
    let w: Vec<f64> = (0..b)
        .flat_map(|i| (0..=k).map(move |c| (i, c)))
        .map(|(i, c)| {
            if c > 0 && kl[c - 1] >= 0 && kl[c - 1] == ql[i] {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let w = Tensor::from_vec(w, (b, k + 1), &Device::Cpu).unwrap();
    let targets = one_hot(&vec![0; b], k + 1, DType::F64, &Device::Cpu).unwrap();
    let slow = generalized_info_nce(&logits, &targets, Some(&w), None)
        .unwrap()
        .mean_all()
        .unwrap();
    assert!(rel(&fast, &slow) < 1e-10, "{fast} vs {slow}");
    let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
    assert!(
        rel(
            gf.get(q.as_tensor()).unwrap(),
            gs.get(q.as_tensor()).unwrap()
        ) < 1e-10
    );
}

/// Per-anchor windows and eliminated and always-kept lists mask the kernel exactly as
/// dense weights do, in the candidates' gradient (pass 2) as well.
#[test]
fn kernel_masks_match_dense_weights_with_candidate_gradients() {
    use contrast_kernels::{Candidates, Positive, streaming_info_nce};
    let (b, n, d, t) = (21usize, 1100usize, 6usize, 0.3);
    let a = Var::from_tensor(&l2_normalize(&rand(41, b, d, DType::F64)).unwrap()).unwrap();
    let c = Var::from_tensor(&l2_normalize(&rand(42, n, d, DType::F64)).unwrap()).unwrap();
    let sims: Vec<Vec<f64>> = a
        .as_tensor()
        .matmul(&c.as_tensor().t().unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    let pos: Vec<u32> = (0..b as u32).map(|i| 3 * i + 1).collect();
    let window: Vec<(f32, f32)> = (0..b).map(|i| (-0.4 + 0.02 * i as f32, 0.6)).collect();
    let excluded: Vec<Vec<u32>> = (0..b as u32).map(|i| vec![i, 500 + i, 900]).collect();
    let always: Vec<Vec<u32>> = (0..b as u32).map(|i| vec![700 + 2 * i]).collect();
    let spec = Candidates {
        positive: Positive::Column(pos.clone()),
        exclude_self: false,
        keys: None,
        window: Some(window.clone()),
        excluded: Some(excluded.clone()),
        always_kept: Some(always.clone()),
    };
    let unused = Tensor::zeros(b, DType::F64, &Device::Cpu).unwrap();
    let fast = streaming_info_nce(a.as_tensor(), c.as_tensor(), &unused, spec, t).unwrap();
    let mut w = vec![0f64; b * n];
    for i in 0..b {
        for j in 0..n {
            let s = sims[i][j];
            let keep = j == pos[i] as usize
                || always[i].contains(&(j as u32))
                || (s >= window[i].0 as f64
                    && s <= window[i].1 as f64
                    && !excluded[i].contains(&(j as u32)));
            w[i * n + j] = keep as u8 as f64;
        }
    }
    let w = Tensor::from_vec(w, (b, n), &Device::Cpu).unwrap();
    let logits = (a.as_tensor().matmul(&c.as_tensor().t().unwrap()).unwrap() / t).unwrap();
    let pos_index: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
    let targets = one_hot(&pos_index, n, DType::F64, &Device::Cpu).unwrap();
    let slow = generalized_info_nce(&logits, &targets, Some(&w), None)
        .unwrap()
        .mean_all()
        .unwrap();
    assert!(rel(&fast, &slow) < 1e-10, "{fast} vs {slow}");
    let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
    for v in [&a, &c] {
        let e = rel(
            gf.get(v.as_tensor()).unwrap(),
            gs.get(v.as_tensor()).unwrap(),
        );
        assert!(e < 1e-9, "gradient error {e}");
    }
}

/// The tensor-op path (the one non-CPU devices take) equals the dense reference with
/// the same masks, across several candidate tiles, with gradients to anchors, extra
/// logits and candidates; and the custom kernel equals it on the same inputs.
#[test]
fn tiled_path_matches_dense_weights_and_the_kernel() {
    use contrast_kernels::{Candidates, Positive, streaming_info_nce, tiled_info_nce};
    for dtype in [DType::F64, DType::F32] {
        let (b, n, d, t) = (30usize, 9000usize, 5usize, 0.25);
        let a = Var::from_tensor(&l2_normalize(&rand(51, b, d, dtype)).unwrap()).unwrap();
        let c = Var::from_tensor(&l2_normalize(&rand(52, n, d, dtype)).unwrap()).unwrap();
        let e =
            Var::from_tensor(&(rand(53, b, 1, dtype).squeeze(1).unwrap() * 4.0).unwrap()).unwrap();
        let rk: Vec<i64> = (0..b as i64)
            .map(|i| if i % 6 == 0 { -1 } else { i % 4 })
            .collect();
        let ck: Vec<i64> = (0..n as i64)
            .map(|j| if j % 13 == 0 { -1 } else { j % 5 })
            .collect();
        for positive in [
            Positive::Extra,
            Positive::Column((0..b as u32).map(|i| 40 + 7 * i).collect()),
        ] {
            let spec = Candidates {
                positive: positive.clone(),
                exclude_self: matches!(positive, Positive::Column(_)),
                keys: Some((rk.clone(), ck.clone())),
                ..Default::default()
            };
            let tiled =
                tiled_info_nce(a.as_tensor(), c.as_tensor(), e.as_tensor(), &spec, t).unwrap();
            let kernel =
                streaming_info_nce(a.as_tensor(), c.as_tensor(), e.as_tensor(), spec.clone(), t)
                    .unwrap();
            // Dense: [extra | candidates] with weights from the same rules.
            let logits = Tensor::cat(
                &[
                    e.as_tensor().unsqueeze(1).unwrap(),
                    (a.as_tensor().matmul(&c.as_tensor().t().unwrap()).unwrap() / t).unwrap(),
                ],
                1,
            )
            .unwrap();
            let pos: Vec<usize> = match &positive {
                Positive::Extra => vec![0; b],
                Positive::Column(p) => p.iter().map(|&j| j as usize + 1).collect(),
            };
            let w: Vec<f64> = (0..b)
                .flat_map(|i| (0..=n).map(move |col| (i, col)))
                .map(|(i, col)| {
                    let keep = if col == pos[i] {
                        true
                    } else if col == 0 {
                        matches!(positive, Positive::Extra)
                    } else {
                        let j = col - 1;
                        let own = spec.exclude_self && i == j;
                        let same_key = rk[i] >= 0 && rk[i] == ck[j];
                        !own && !same_key
                    };
                    keep as u8 as f64
                })
                .collect();
            let w = Tensor::from_vec(w, (b, n + 1), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let targets = one_hot(&pos, n + 1, dtype, &Device::Cpu).unwrap();
            let dense = generalized_info_nce(&logits, &targets, Some(&w), None)
                .unwrap()
                .mean_all()
                .unwrap();
            assert!(
                rel(&tiled, &dense) < tol(dtype),
                "{dtype:?}: {tiled} vs {dense}"
            );
            assert!(
                rel(&kernel, &dense) < tol(dtype),
                "{dtype:?}: {kernel} vs {dense}"
            );
            let (gt, gd) = (tiled.backward().unwrap(), dense.backward().unwrap());
            // The extra logit takes part only as the positive.
            let vars = match positive {
                Positive::Extra => vec![&a, &c, &e],
                Positive::Column(_) => vec![&a, &c],
            };
            for v in vars {
                let err = rel(
                    gt.get(v.as_tensor()).unwrap(),
                    gd.get(v.as_tensor()).unwrap(),
                );
                assert!(
                    err < tol(dtype),
                    "{dtype:?} {positive:?}: gradient error {err}"
                );
            }
        }
    }
}

/// Windows and column lists reach the tensor-op path through the mask-tile op: it
/// equals the CPU kernel with every rule on, across several candidate tiles.
#[test]
fn tiled_path_with_windows_and_lists_matches_the_kernel() {
    for dtype in [DType::F64, DType::F32] {
        let (b, n, d, t) = (30usize, 9000usize, 5usize, 0.25);
        let x = streaming_inputs(b, n, d, dtype).unwrap();
        let spec = every_rule(b, n);
        let x = [&x[0], &x[1], &x[2]];
        let tiled = streaming_on(&Device::Cpu, x, &spec, t, true).unwrap();
        let kernel = streaming_on(&Device::Cpu, x, &spec, t, false).unwrap();
        for (k, (p, q)) in tiled.iter().zip(&kernel).enumerate() {
            let err = rel(p, q);
            assert!(err < tol(dtype), "{dtype:?} output {k}: error {err}");
        }
    }
}

/// On a GPU (features `cuda` or `metal`, with a device present) the device path
/// equals the CPU kernel on the same vectors: plain, keyed and every-rule specs,
/// odd sizes, several tiles (`contrast_testing::device`, which `cargo xtask
/// gpu-check` also runs). Without a device the test says so and checks nothing.
#[cfg(any(feature = "cuda", feature = "metal"))]
#[test]
fn gpu_path_matches_the_cpu_kernel() {
    let device = if cfg!(feature = "cuda") {
        Device::new_cuda(0)
    } else {
        Device::new_metal(0)
    };
    let Ok(device) = device else {
        eprintln!("gpu_path_matches_the_cpu_kernel: no GPU device, nothing checked");
        return;
    };
    for check in streaming_against_cpu(&device).unwrap() {
        assert!(check.passed(), "{check:?}");
    }
}
