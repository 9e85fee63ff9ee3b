//! Stateful policies: online k-means clusters and NNCLR's support queue, with their
//! checkpointed state.

use candle_core::{DType, Device, Tensor, Var};
use contrast_mining::policy::{Cluster, NearestNeighbour};
use contrast_mining::{ClusterMode, MiningBatch, Pipeline, PolicyConfig, mined_info_nce};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{ids, labels, views};

fn cluster(k: usize, mode: ClusterMode) -> PolicyConfig {
    PolicyConfig::Cluster(Cluster {
        k,
        lr: 0.5,
        mode,
        start_below: 1.0,
        same_weight: 0.5,
    })
}

fn centroids(pipe: &Pipeline) -> Vec<f32> {
    let state = pipe.state(&Device::Cpu).unwrap();
    let key = state
        .keys()
        .find(|k| k.ends_with("centroids"))
        .unwrap()
        .clone();
    state[&key].flatten_all().unwrap().to_vec1().unwrap()
}

/// Removal drops exactly the same-cluster negatives under brute-force assignment to
/// the centroids the step started from, restriction keeps exactly them, and the
/// removed ones are reported as identified.
#[test]
fn cluster_modes_follow_brute_force_assignment() {
    for seed in 0..6u64 {
        let (z1, z2) = views(seed, 12, 4);
        let batch =
            MiningBatch::in_batch(&[z1.clone(), z2.clone()], &ids(12), Some(&labels(12, 3)))
                .unwrap();
        let mut remove = Pipeline::new(vec![cluster(3, ClusterMode::RemoveSame)]).unwrap();
        let mut restrict = Pipeline::new(vec![cluster(3, ClusterMode::RestrictToSame)]).unwrap();
        let mut down = Pipeline::new(vec![cluster(3, ClusterMode::DownweightSame)]).unwrap();
        down.plan(&batch, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        let downweighted = down
            .plan(&batch, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        // First step seeds the centroids; the second uses them.
        remove
            .plan(&batch, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        restrict
            .plan(&batch, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        assert_eq!(centroids(&remove), centroids(&restrict));
        let c = centroids(&remove);
        let z: Vec<f32> = batch
            .candidates
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let assign: Vec<usize> = z
            .chunks(4)
            .map(|x| {
                let score = |k: usize| (0..4).map(|j| c[k * 4 + j] * x[j]).sum::<f32>();
                (0..3)
                    .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
                    .unwrap()
            })
            .collect();
        let removed = remove
            .plan(&batch, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let restricted = restrict
            .plan(&batch, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let base = batch.default_plan();
        for i in 0..24 {
            let negs = base.kept_negatives(i);
            let same: Vec<usize> = negs
                .iter()
                .copied()
                .filter(|&n| assign[n] == assign[i])
                .collect();
            let other: Vec<usize> = negs
                .iter()
                .copied()
                .filter(|&n| assign[n] != assign[i])
                .collect();
            assert_eq!(removed.kept_negatives(i), other, "seed {seed} anchor {i}");
            assert_eq!(restricted.kept_negatives(i), same, "seed {seed} anchor {i}");
            let mut found: Vec<usize> = removed.identified.as_ref().unwrap()[i]
                .iter()
                .map(|&c| c as usize)
                .collect();
            found.sort();
            assert_eq!(found, same);
            assert_eq!(removed.positives[i], base.positives[i]);
            for &n in &negs {
                let want = if assign[n] == assign[i] { 0.5 } else { 1.0 };
                assert_eq!(downweighted.row(i)[n], want, "seed {seed} anchor {i}");
            }
        }
        // Centroids stay unit vectors after the update.
        for row in centroids(&remove).chunks(4) {
            assert!((row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

/// Clustering waits until the embeddings have spread below `start_below`.
#[test]
fn cluster_waits_for_its_start_cosine() {
    let (z1, z2) = views(1, 8, 4);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(8), None).unwrap();
    let mut pipe = Pipeline::new(vec![PolicyConfig::Cluster(Cluster {
        k: 2,
        lr: 0.1,
        mode: ClusterMode::RemoveSame,
        start_below: -0.99,
        same_weight: 0.5,
    })])
    .unwrap();
    let plan = pipe
        .plan(&batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    assert!(
        pipe.state(&Device::Cpu)
            .unwrap()
            .values()
            .all(|t| t.elem_count() == 0)
    );
    assert_eq!(plan.weights, batch.default_plan().weights);
}

/// NNCLR: no replacement on the first step; afterwards each anchor becomes its
/// nearest support entry (brute force over the enqueued anchors), detached, so
/// gradients reach only the candidates.
#[test]
fn nearest_neighbour_replaces_anchors_from_the_support() {
    let (a1, a2) = views(3, 6, 5);
    let (b1, b2) = views(4, 6, 5);
    let first = MiningBatch::in_batch(&[a1, a2], &ids(6), Some(&labels(6, 2))).unwrap();
    let second =
        MiningBatch::in_batch(&[b1.clone(), b2.clone()], &ids(6), Some(&labels(6, 2))).unwrap();
    let mut pipe = Pipeline::new(vec![PolicyConfig::NearestNeighbour(NearestNeighbour {
        support_size: 100,
    })])
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(
        pipe.plan(&first, &mut rng)
            .unwrap()
            .anchor_override
            .is_none()
    );
    let plan = pipe.plan(&second, &mut rng).unwrap();
    let got: Vec<f64> = plan
        .anchor_override
        .as_ref()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let support: Vec<f64> = first.anchors.flatten_all().unwrap().to_vec1().unwrap();
    let q: Vec<f64> = second.anchors.flatten_all().unwrap().to_vec1().unwrap();
    for i in 0..12 {
        let score = |j: usize| {
            (0..5)
                .map(|d| q[i * 5 + d] * support[j * 5 + d])
                .sum::<f64>()
        };
        let nn = (0..12)
            .max_by(|&x, &y| score(x).total_cmp(&score(y)))
            .unwrap();
        for d in 0..5 {
            assert!(
                (got[i * 5 + d] - support[nn * 5 + d]).abs() < 1e-6,
                "anchor {i}"
            );
        }
    }
    assert!(
        plan.neighbour_agreement
            .is_some_and(|(a, n)| a <= n && n == 12)
    );
    let z = Var::from_tensor(&Tensor::cat(&[&b1, &b2], 0).unwrap()).unwrap();
    let loss = mined_info_nce(z.as_tensor(), z.as_tensor(), &plan, 0.2).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(z.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(g > 0.0);
    assert!(!plan.anchor_override.unwrap().track_op());
}

/// A pipeline restored from its state plans the next batch exactly as the original.
#[test]
fn pipeline_state_round_trips() {
    let policies = vec![
        cluster(3, ClusterMode::RemoveSame),
        PolicyConfig::NearestNeighbour(NearestNeighbour { support_size: 20 }),
    ];
    let (z1, z2) = views(9, 8, 4);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(8), None).unwrap();
    let mut a = Pipeline::new(policies.clone()).unwrap();
    a.plan(&batch, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    a.plan(&batch, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
    let mut b = Pipeline::new(policies).unwrap();
    b.load_state(&a.state(&Device::Cpu).unwrap()).unwrap();
    let pa = a.plan(&batch, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let pb = b.plan(&batch, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    assert_eq!(pa.weights, pb.weights);
    assert_eq!(pa.identified, pb.identified);
    let diff = (pa.anchor_override.unwrap() - pb.anchor_override.unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
    assert_eq!(centroids(&a), centroids(&b));
}

/// State from a checkpoint of another mining list is an error naming it, never
/// dropped in silence.
#[test]
fn state_no_policy_claims_is_refused() {
    let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let state = std::collections::HashMap::from([("0.cluster.centroids".to_string(), t)]);
    let mut pipeline = Pipeline::new(vec![]).unwrap();
    let e = pipeline.load_state(&state).unwrap_err().to_string();
    assert!(e.contains("0.cluster.centroids"), "{e}");
}
