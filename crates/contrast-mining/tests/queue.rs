//! Mining on a MoCo queue: the kernel-backed loss against the dense generalised
//! InfoNCE, and each queue policy against brute force over the full similarity rows.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::l2_normalize;
use contrast_losses::{Aggregation, Cancellation, generalized_info_nce};
use contrast_mining::policy::{
    Fnc, Hcl, LabelAware, Mochi, NearestNeighbour, Ring, SemiHard, Supervised, TopK,
};
use contrast_mining::{
    Diagnostics, Pipeline, PolicyConfig, QueueBatch, QueuePlan, mined_moco_info_nce,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::views;
use contrast_testing::values;

#[derive(Clone)]
struct Setup {
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    batch: QueueBatch,
}

/// `b` queries with keys against a queue of `n` entries (ids `1000 + j`, except every
/// 7th entry repeats a query's id and every 11th is unwritten), labels in `0..3`.
fn setup(seed: u64, b: usize, n: usize, d: usize) -> Setup {
    let (q, k) = views(seed, b, d);
    let (bank, _) = views(seed ^ 0xABCD, n, d);
    let queue = l2_normalize(&bank).unwrap();
    let ids: Vec<i64> = (0..n as i64)
        .map(|j| match j {
            j if j % 11 == 0 => -1,
            j if j % 7 == 0 => j % b as i64,
            j => 1000 + j,
        })
        .collect();
    let labels: Vec<i64> = ids
        .iter()
        .map(|&i| if i < 0 { -1 } else { i % 3 })
        .collect();
    let batch = QueueBatch::new(
        &q,
        &k,
        &queue,
        (0..b as i64).collect(),
        Some((0..b as i64).map(|i| i % 3).collect()),
        ids,
        labels,
    )
    .unwrap();
    Setup { q, k, queue, batch }
}

fn plan(s: &Setup, policies: Vec<PolicyConfig>) -> QueuePlan {
    Pipeline::new(policies)
        .unwrap()
        .plan_queue(&s.batch, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap()
}

/// Full similarity rows `[B][K]` (queries) and the keys'.
fn rows(s: &Setup) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let f = |x: &Tensor| -> Vec<Vec<f32>> {
        l2_normalize(x)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .matmul(&s.queue.to_dtype(DType::F32).unwrap().t().unwrap())
            .unwrap()
            .to_vec2()
            .unwrap()
    };
    (f(&s.q), f(&s.k))
}

fn kept(plan: &QueuePlan, i: usize, sims: &[f32]) -> Vec<usize> {
    (0..sims.len())
        .filter(|&j| plan.is_negative(i, j, sims[j]))
        .collect()
}

/// Indices of `sims` restricted to `pool`, most similar first.
fn ranked(pool: &[usize], sims: &[f32]) -> Vec<usize> {
    let mut r = pool.to_vec();
    r.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Top-k and Ring keep exactly their ranks of the queue; semi-hard exactly its band.
    #[test]
    fn selection_on_the_queue_is_exact(seed in any::<u64>(), k in 1usize..40, outer in 0.2f64..1.0, inner in 0.0f64..0.5, margin in 0.1f64..0.8) {
        let s = setup(seed, 6, 300, 8);
        let (sq, _) = rows(&s);
        let all: Vec<usize> = (0..300).collect();
        let p = plan(&s, vec![PolicyConfig::TopK(TopK { k })]);
        for (i, row) in sq.iter().enumerate() {
            let mut want = ranked(&all, row)[..k].to_vec();
            want.sort();
            prop_assert_eq!(kept(&p, i, row), want);
        }
        let p = plan(&s, vec![PolicyConfig::Ring(Ring::new(outer, inner))]);
        for (i, row) in sq.iter().enumerate() {
            let o = (outer * 300.0).floor() as usize;
            let lo = ((inner * o as f64).floor() as usize).min(o);
            let mut want = ranked(&all, row)[lo..o].to_vec();
            want.sort();
            prop_assert_eq!(kept(&p, i, row), want);
        }
        let p = plan(&s, vec![PolicyConfig::SemiHard(SemiHard { margin })]);
        let pos = s.batch.positive_sims().unwrap();
        for (i, row) in sq.iter().enumerate() {
            let band: Vec<usize> = all.iter().copied().filter(|&j| row[j] > pos[i] - margin as f32 && row[j] < pos[i]).collect();
            let want = if band.is_empty() { all.clone() } else { band };
            prop_assert_eq!(kept(&p, i, row), want);
        }
    }

    /// FNC on a queue identifies the brute-force top-k (and threshold) of the max or
    /// mean of query and key similarity among written entries of other images; label-aware
    /// keeps no same-label negative.
    #[test]
    fn fnc_and_label_aware_on_the_queue(seed in any::<u64>(), topk in 1usize..12, thr in -0.5f64..0.6, mean in any::<bool>(), supports in 0usize..3) {
        let mut s = setup(seed, 5, 200, 6);
        let (sq, sk) = rows(&s);
        // Support views: more momentum embeddings of each query's image, which join
        // the query and key in scoring entries.
        let (sa, sb) = views(seed ^ 0x5EED, 5, 6);
        let support = [sa, sb];
        s.batch = s.batch.clone().with_support(&support[..supports]).unwrap();
        let ss: Vec<Vec<Vec<f32>>> = support[..supports].iter().map(|x| rows(&Setup { q: x.clone(), ..s.clone() }).0).collect();
        let aggregation = if mean { Aggregation::Mean } else { Aggregation::Max };
        for cancellation in [Cancellation::Elimination, Cancellation::Attraction] {
            let p = plan(&s, vec![PolicyConfig::Fnc(Fnc { topk: Some(topk), threshold: Some(thr), aggregation, cancellation })]);
            for i in 0..5 {
                let score = |j: usize| {
                    let all: Vec<f32> = [sq[i][j], sk[i][j]].into_iter().chain(ss.iter().map(|r| r[i][j])).collect();
                    if mean { all.iter().sum::<f32>() / all.len() as f32 } else { all.into_iter().fold(f32::NEG_INFINITY, f32::max) }
                };
                let pool: Vec<usize> = (0..200).filter(|&j| s.batch.queue_ids[j] >= 0 && s.batch.queue_ids[j] != i as i64).collect();
                let scores: Vec<f32> = (0..200).map(score).collect();
                let mut want: Vec<u32> = ranked(&pool, &scores).into_iter().take(topk).filter(|&j| scores[j] as f64 > thr).map(|j| j as u32).collect();
                want.sort();
                let list = if cancellation == Cancellation::Elimination { &p.excluded[i] } else { &p.attracted[i] };
                prop_assert_eq!(list, &want);
                let mut found = p.identified.as_ref().unwrap()[i].clone();
                found.sort();
                prop_assert_eq!(found, want);
            }
        }
        let p = plan(&s, vec![PolicyConfig::LabelAware(LabelAware {})]);
        for (i, row) in sq.iter().enumerate() {
            prop_assert!(kept(&p, i, row).iter().all(|&j| s.batch.queue_labels[j] != (i as i64) % 3));
        }
    }
}

/// The kernel-backed loss under a plan with every feature (label keys, window,
/// eliminated, attracted, synthetic) equals the dense generalised InfoNCE built from
/// the same plan, in value and in the gradients to queries and keys.
#[test]
fn mined_moco_loss_matches_the_dense_reference() {
    let s = setup(11, 9, 1500, 8);
    let p = plan(
        &s,
        vec![
            PolicyConfig::Fnc(Fnc {
                topk: Some(3),
                threshold: None,
                aggregation: Aggregation::Max,
                cancellation: Cancellation::Attraction,
            }),
            PolicyConfig::Fnc(Fnc {
                topk: Some(2),
                threshold: Some(0.0),
                aggregation: Aggregation::Mean,
                cancellation: Cancellation::Elimination,
            }),
            PolicyConfig::LabelAware(LabelAware {}),
            PolicyConfig::Ring(Ring::new(0.6, 0.1)),
            PolicyConfig::Mochi(Mochi::new(8, 3, 2)),
        ],
    );
    assert!(p.attracted.iter().all(|a| !a.is_empty()) && p.window.is_some() && p.keys.is_some());
    let (b, n, t) = (9usize, 1500usize, 0.2);
    let q = Var::from_tensor(&s.q).unwrap();
    let k = Var::from_tensor(&s.k).unwrap();
    let fast = mined_moco_info_nce(q.as_tensor(), k.as_tensor(), &s.queue, &p, t).unwrap();
    // Dense: columns [key | queue | own synthetic points].
    let (qn, kn) = (
        l2_normalize(q.as_tensor()).unwrap(),
        l2_normalize(k.as_tensor()).unwrap(),
    );
    let syn = p.synthetic.as_ref().unwrap().to_dtype(DType::F64).unwrap();
    let sims_syn = qn
        .unsqueeze(1)
        .unwrap()
        .broadcast_mul(&syn)
        .unwrap()
        .sum(2)
        .unwrap();
    let sims_queue = qn.matmul(&s.queue.t().unwrap()).unwrap();
    let logits = (Tensor::cat(
        &[
            (&qn * &kn).unwrap().sum_keepdim(1).unwrap(),
            sims_queue.clone(),
            sims_syn,
        ],
        1,
    )
    .unwrap()
        / t)
        .unwrap();
    let sq: Vec<Vec<f32>> = sims_queue.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
    let width = 1 + n + 5;
    let (mut w, mut pi) = (vec![0f64; b * width], vec![0f64; b * width]);
    for i in 0..b {
        let positives = 1 + p.attracted[i].len();
        w[i * width] = 1.0;
        pi[i * width] = 1.0 / positives as f64;
        for j in 0..n {
            let attracted = p.attracted[i].contains(&(j as u32));
            if attracted || p.is_negative(i, j, sq[i][j]) {
                w[i * width + 1 + j] = 1.0;
            }
            if attracted {
                pi[i * width + 1 + j] = 1.0 / positives as f64;
            }
        }
        for c in 0..5 {
            w[i * width + 1 + n + c] = 1.0;
        }
    }
    let w = Tensor::from_vec(w, (b, width), &Device::Cpu).unwrap();
    let pi = Tensor::from_vec(pi, (b, width), &Device::Cpu).unwrap();
    let slow = generalized_info_nce(&logits, &pi, Some(&w), None)
        .unwrap()
        .mean_all()
        .unwrap();
    let (f, sl) = (
        fast.to_scalar::<f64>().unwrap(),
        slow.to_scalar::<f64>().unwrap(),
    );
    assert!((f - sl).abs() < 1e-9 * sl.abs().max(1.0), "{f} vs {sl}");
    let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
    for v in [&q, &k] {
        let a = values(gf.get(v.as_tensor()).unwrap());
        let e = values(gs.get(v.as_tensor()).unwrap());
        let scale = e.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
        let err = a
            .iter()
            .zip(&e)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale;
        assert!(err < 1e-9, "gradient error {err}");
    }
}

/// MoCHi's queue points are unit, detached mixes; in-batch-only policies are refused
/// by name; diagnostics see no same-label negative under label-aware.
#[test]
fn mochi_refusals_and_diagnostics_on_the_queue() {
    let s = setup(5, 4, 120, 6);
    let p = plan(&s, vec![PolicyConfig::Mochi(Mochi::new(6, 4, 2))]);
    let syn = p.synthetic.as_ref().unwrap();
    assert_eq!(syn.dims(), &[4, 6, 6]);
    assert!(!syn.track_op());
    let norms: Vec<f32> = syn
        .sqr()
        .unwrap()
        .sum(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
    for policy in [
        PolicyConfig::Supervised(Supervised {}),
        PolicyConfig::Hcl(Hcl::new(1.0)),
        PolicyConfig::NearestNeighbour(NearestNeighbour { support_size: 8 }),
    ] {
        let name = policy.name();
        let pipe = Pipeline::new(vec![policy]).unwrap();
        let e = pipe.check_queue().unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("queue"), "{e}");
        assert!(
            pipe.plan_queue(&s.batch, &mut ChaCha8Rng::seed_from_u64(0))
                .is_err()
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut d = Diagnostics::default();
    d.add_queue(&s.batch, &plan(&s, vec![]), &mut rng).unwrap();
    let plain = d.summary().unwrap();
    assert!(plain.neg_false_fraction > 0.1, "{plain:?}");
    let mut d = Diagnostics::default();
    d.add_queue(
        &s.batch,
        &plan(&s, vec![PolicyConfig::LabelAware(LabelAware {})]),
        &mut rng,
    )
    .unwrap();
    assert_eq!(d.summary().unwrap().neg_false_fraction, 0.0);
}
