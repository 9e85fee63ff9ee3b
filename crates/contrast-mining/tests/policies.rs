//! Mining policies against dense references on small inputs, and their invariants.
//! The losses' functions (checked against the golden file) serve as references.

use candle_core::{Device, Tensor, Var};
use contrast_losses::{
    Aggregation, Cancellation, FncConfig, debiased, fnc, hcl, hcl_floored, nt_xent, supcon,
};
use contrast_mining::policy::{Debias, Fnc, Hcl, LabelAware, Mochi, Ring, Supervised, TopK};
use contrast_mining::{
    Diagnostics, MiningBatch, Pipeline, PolicyConfig, mined_debias_floored, mined_info_nce,
};
use contrast_testing::{scalar, sum_abs_diff};
use proptest::prelude::*;

mod common;
use common::{ids, labels, views};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn mined(
    z1: &Tensor,
    z2: &Tensor,
    policies: Vec<PolicyConfig>,
    labels: Option<&[i64]>,
    t: f64,
) -> f64 {
    let b = z1.dim(0).unwrap();
    let batch = MiningBatch::in_batch(&[z1.clone(), z2.clone()], &ids(b), labels).unwrap();
    let plan = Pipeline::new(policies)
        .unwrap()
        .plan(&batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    let z = Tensor::cat(&[z1, z2], 0).unwrap();
    scalar(&mined_info_nce(&z, &z, &plan, t).unwrap())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn no_policy_is_nt_xent(seed in any::<u64>(), b in 2usize..10, t in 0.05f64..1.0) {
        let (z1, z2) = views(seed, b, 6);
        prop_assert!(close(mined(&z1, &z2, vec![], None, t), scalar(&nt_xent(&z1, &z2, t).unwrap())));
    }

    #[test]
    fn hcl_and_debias_policies_are_the_hcl_loss(seed in any::<u64>(), b in 2usize..10, beta in 0.0f64..2.0, tp in 0.0f64..0.3) {
        let (z1, z2) = views(seed, b, 6);
        let got = mined(&z1, &z2, vec![PolicyConfig::Debias(Debias { tau_plus: tp }), PolicyConfig::Hcl(Hcl::new(beta))], None, 0.5);
        prop_assert!(close(got, scalar(&hcl(&z1, &z2, 0.5, tp, beta).unwrap())));
        let got = mined(&z1, &z2, vec![PolicyConfig::Debias(Debias { tau_plus: tp })], None, 0.5);
        prop_assert!(close(got, scalar(&debiased(&z1, &z2, 0.5, tp).unwrap())));
    }

    #[test]
    fn debias_policy_floors_as_the_hcl_loss(seed in any::<u64>(), b in 2usize..10, beta in 0.0f64..2.0, tp in 0.0f64..0.6, near in 0.0f64..1.0) {
        // `near` pulls the second view onto the first, so that high positive
        // similarities put some anchors' corrected sums under the floor.
        let (z1, z2) = views(seed, b, 6);
        let z2 = ((&z1 * near).unwrap() + (&z2 * (1.0 - near)).unwrap()).unwrap();
        let batch = MiningBatch::in_batch(&[z1.clone(), z2.clone()], &ids(b), None).unwrap();
        let z = Tensor::cat(&[&z1, &z2], 0).unwrap();
        let policies = vec![PolicyConfig::Debias(Debias { tau_plus: tp }), PolicyConfig::Hcl(Hcl::new(beta))];
        let plan = Pipeline::new(policies).unwrap().plan(&batch, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let got = mined_debias_floored(&z, &z, &plan, 0.5).unwrap();
        prop_assert_eq!(got, Some(hcl_floored(&z1, &z2, 0.5, tp, beta).unwrap()));
        let plain = Pipeline::new(vec![PolicyConfig::Hcl(Hcl::new(beta))]).unwrap().plan(&batch, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        prop_assert_eq!(mined_debias_floored(&z, &z, &plain, 0.5).unwrap(), None);
    }

    #[test]
    fn supervised_policy_is_supcon(seed in any::<u64>(), b in 2usize..10) {
        let (z1, z2) = views(seed, b, 6);
        let l = labels(b, 3);
        let lt = Tensor::new(l.iter().map(|&x| x as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        let got = mined(&z1, &z2, vec![PolicyConfig::Supervised(Supervised {})], Some(&l), 0.2);
        prop_assert!(close(got, scalar(&supcon(&[z1, z2], &lt, 0.2, 0.2).unwrap())));
    }

    /// In-batch FNC attraction identifies exactly what the golden-checked loss does,
    /// and its loss is half the official scale.
    #[test]
    fn fnc_matches_the_loss_crate(seed in any::<u64>(), b in 3usize..9, topk in 1usize..4, thr in 0.0f64..0.9) {
        let (z1, z2) = views(seed, b, 5);
        let batch = MiningBatch::in_batch(&[z1.clone(), z2.clone()], &ids(b), None).unwrap();
        let policy = PolicyConfig::Fnc(Fnc { topk: Some(topk), threshold: Some(thr), aggregation: Aggregation::Max, cancellation: Cancellation::Attraction });
        let plan = Pipeline::new(vec![policy]).unwrap().plan(&batch, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let cfg = FncConfig { temperature: 0.2, topk: Some(topk), threshold: Some(thr), aggregation: Aggregation::Max, cancellation: Cancellation::Attraction };
        let (loss, fns) = fnc(&[z1.clone(), z2.clone()], &cfg).unwrap();
        let found = plan.identified.as_ref().unwrap();
        for (i, row) in found.iter().enumerate() {
            let want: Vec<u32> = (0..2 * b as u32).filter(|&c| fns.get(i % b, c as usize)).collect();
            let mut got = row.clone();
            got.sort();
            prop_assert_eq!(got, want);
        }
        let z = Tensor::cat(&[&z1, &z2], 0).unwrap();
        prop_assert!(close(2.0 * scalar(&mined_info_nce(&z, &z, &plan, 0.2).unwrap()), scalar(&loss)));
    }

    /// Elimination and label-aware removal never touch a positive; ring keeps exactly
    /// its band; top-k keeps exactly k.
    #[test]
    fn selection_invariants(seed in any::<u64>(), b in 4usize..10, k in 1usize..5, outer in 0.3f64..1.0, inner in 0.0f64..0.6) {
        let (z1, z2) = views(seed, b, 5);
        let l = labels(b, 3);
        let batch = MiningBatch::in_batch(&[z1, z2], &ids(b), Some(&l)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let base = batch.default_plan();
        let negatives = 2 * b - 2;
        for policies in [
            vec![PolicyConfig::Fnc(Fnc { topk: Some(2), threshold: None, aggregation: Aggregation::Mean, cancellation: Cancellation::Elimination })],
            vec![PolicyConfig::LabelAware(LabelAware {})],
        ] {
            let plan = Pipeline::new(policies).unwrap().plan(&batch, &mut rng).unwrap();
            for i in 0..2 * b {
                prop_assert_eq!(&plan.positives[i], &base.positives[i]);
                for &(c, _) in &plan.positives[i] {
                    prop_assert!(plan.row(i)[c as usize] > 0.0);
                }
            }
        }
        let plan = Pipeline::new(vec![PolicyConfig::LabelAware(LabelAware {})]).unwrap().plan(&batch, &mut rng).unwrap();
        for i in 0..2 * b {
            prop_assert!(plan.kept_negatives(i).iter().all(|&c| l[c % b] != l[i % b]));
        }
        let plan = Pipeline::new(vec![PolicyConfig::Ring(Ring::new(outer, inner))]).unwrap().plan(&batch, &mut rng).unwrap();
        let outer_size = (outer * negatives as f64).floor() as usize;
        let inner_idx = (inner * outer_size as f64).floor() as usize;
        for i in 0..2 * b {
            let kept = plan.kept_negatives(i);
            prop_assert_eq!(kept.len(), outer_size - inner_idx.min(outer_size));
            // The kept ones are exactly the ranks in the band.
            let row = batch.sim_row(i);
            let mut ranked = base.kept_negatives(i);
            ranked.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
            let mut band = ranked[inner_idx.min(outer_size)..outer_size].to_vec();
            band.sort();
            prop_assert_eq!(kept, band);
        }
        let plan = Pipeline::new(vec![PolicyConfig::TopK(TopK { k })]).unwrap().plan(&batch, &mut rng).unwrap();
        for i in 0..2 * b {
            prop_assert_eq!(plan.kept_negatives(i).len(), k.min(negatives));
        }
    }

    #[test]
    fn mochi_points_are_unit_detached_and_counted(seed in any::<u64>(), b in 3usize..8, mixes in 0usize..4, q in 1usize..4) {
        let (z1, z2) = views(seed, b, 6);
        let batch = MiningBatch::in_batch(&[z1, z2], &ids(b), None).unwrap();
        let plan = Pipeline::new(vec![PolicyConfig::Mochi(Mochi::new(3, mixes, q))]).unwrap()
            .plan(&batch, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let syn = plan.synthetic.unwrap();
        prop_assert_eq!(syn.dims(), &[2 * b, mixes + q, 6]);
        prop_assert!(!syn.track_op());
        let norms: Vec<f64> = syn.sqr().unwrap().sum(2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        prop_assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
    }
}

#[test]
fn mochi_is_seeded_and_adds_candidates() {
    let (z1, z2) = views(3, 5, 6);
    let batch = MiningBatch::in_batch(&[z1.clone(), z2.clone()], &ids(5), None).unwrap();
    let mut pipe = Pipeline::new(vec![PolicyConfig::Mochi(Mochi::new(4, 2, 2))]).unwrap();
    let a = pipe
        .plan(&batch, &mut ChaCha8Rng::seed_from_u64(9))
        .unwrap();
    let b = pipe
        .plan(&batch, &mut ChaCha8Rng::seed_from_u64(9))
        .unwrap();
    let diff = sum_abs_diff(a.synthetic.as_ref().unwrap(), b.synthetic.as_ref().unwrap());
    assert_eq!(diff, 0.0);
    // More (hard) negatives can only raise the loss.
    let z = Var::from_tensor(&Tensor::cat(&[&z1, &z2], 0).unwrap()).unwrap();
    let with = scalar(&mined_info_nce(z.as_tensor(), z.as_tensor(), &a, 0.2).unwrap());
    assert!(with > scalar(&nt_xent(&z1, &z2, 0.2).unwrap()));
    // Gradients reach the anchors, not the synthetic points.
    let g = mined_info_nce(z.as_tensor(), z.as_tensor(), &a, 0.2)
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(z.as_tensor()).is_some());
}

#[test]
fn policies_run_in_stage_order_and_labels_are_required_when_used() {
    let mut pipe = Pipeline::new(vec![
        PolicyConfig::Mochi(Mochi::new(4, 1, 1)),
        PolicyConfig::Hcl(Hcl::new(1.0)),
        PolicyConfig::TopK(TopK { k: 3 }),
        PolicyConfig::Fnc(Fnc {
            topk: Some(1),
            threshold: None,
            aggregation: Aggregation::Max,
            cancellation: Cancellation::Elimination,
        }),
        PolicyConfig::Supervised(Supervised {}),
    ])
    .unwrap();
    let names: Vec<&str> = pipe.policies().map(|p| p.name()).collect();
    assert_eq!(names, ["supervised", "fnc", "top_k", "hcl", "mochi"]);
    let (z1, z2) = views(1, 4, 5);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(4), None).unwrap();
    let e = pipe
        .plan(&batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels") && e.contains("supervised"), "{e}");
    let e = Pipeline::new(vec![PolicyConfig::Debias(Debias { tau_plus: 1.0 })])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tau_plus"), "{e}");
}

#[test]
fn diagnostics_count_false_negatives_and_identification() {
    // Two images per class: each anchor has 2 same-label, other-image candidates.
    let (z1, z2) = views(5, 4, 5);
    let l = [0i64, 0, 1, 1];
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(4), Some(&l)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let plain = Pipeline::new(vec![])
        .unwrap()
        .plan(&batch, &mut rng)
        .unwrap();
    let mut d = Diagnostics::default();
    d.add(&batch, &plain, &mut rng);
    let s = d.summary().unwrap();
    // Per anchor: 6 negatives, 2 of them same-label.
    assert!((s.neg_false_fraction - 2.0 / 6.0).abs() < 1e-12);
    assert!(s.fn_identified_precision.is_none());
    let oracle = Pipeline::new(vec![PolicyConfig::LabelAware(LabelAware {})])
        .unwrap()
        .plan(&batch, &mut rng)
        .unwrap();
    let mut d = Diagnostics::default();
    d.add(&batch, &oracle, &mut rng);
    assert_eq!(d.summary().unwrap().neg_false_fraction, 0.0);
    let fnc = PolicyConfig::Fnc(Fnc {
        topk: Some(2),
        threshold: None,
        aggregation: Aggregation::Max,
        cancellation: Cancellation::Elimination,
    });
    let plan = Pipeline::new(vec![fnc])
        .unwrap()
        .plan(&batch, &mut rng)
        .unwrap();
    let mut d = Diagnostics::default();
    d.add(&batch, &plan, &mut rng);
    let s = d.summary().unwrap();
    let (p, r) = (
        s.fn_identified_precision.unwrap(),
        s.fn_identified_recall.unwrap(),
    );
    assert!((0.0..=1.0).contains(&p) && (0.0..=1.0).contains(&r));
    // Two identified of two true per anchor: precision equals recall.
    assert!((p - r).abs() < 1e-12);
}

/// Invariance Propagation's step: the background less the anchor's own entry are
/// its negatives, its hard positives other than itself are judged, and entries not
/// yet visited (label -1) are negatives of no class and no judged positive.
#[test]
fn bank_diagnostics_judge_background_and_positives_by_the_bank_labels() {
    let bank_labels = [5, 6, 5, -1, 6];
    let background = vec![
        vec![(0, 0.9), (2, 0.5), (3, 0.1), (4, 0.2)],
        vec![(1, 0.8), (4, 0.4)],
    ];
    let positives = vec![vec![0, 2, 2, 3, 4], vec![1, 1]];
    let mut d = Diagnostics::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    d.add_bank(
        &[0, 1],
        &[5, 6],
        &bank_labels,
        &background,
        &positives,
        &mut rng,
    );
    let s = d.summary().unwrap();
    // Negatives 2, 3, 4 and 4: entries 2 (anchor 0) and 4 (anchor 1) share the class.
    assert!((s.neg_false_fraction - 0.5).abs() < 1e-12, "{s:?}");
    assert!((s.neg_sim_mean - 0.3).abs() < 1e-6, "{s:?}");
    // Judged positives 2, 2 and 4 of anchor 0; anchor 1 has only itself.
    assert!(
        (s.nn_positive_precision.unwrap() - 2.0 / 3.0).abs() < 1e-12,
        "{s:?}"
    );
}

#[test]
fn diagnostics_give_the_floored_and_positive_shares() {
    let (z1, z2) = views(5, 4, 5);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(4), Some(&[0, 0, 1, 1])).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let plan = Pipeline::new(vec![])
        .unwrap()
        .plan(&batch, &mut rng)
        .unwrap();
    let mut d = Diagnostics::default();
    d.add(&batch, &plan, &mut rng);
    assert_eq!(d.summary().unwrap().debias_floor_share, None);
    d.add_debias_floor(3, 8);
    d.add_debias_floor(0, 8);
    assert_eq!(d.summary().unwrap().debias_floor_share, Some(3.0 / 16.0));
    // The positive's softmax share: the mean over every anchor added.
    assert_eq!(d.summary().unwrap().positive_share, None);
    d.add_positive_share(2.0, 8);
    d.add_positive_share(1.0, 4);
    assert_eq!(d.summary().unwrap().positive_share, Some(0.25));
}

#[test]
fn mochi_mixes_only_after_its_warm_up() {
    let (z1, z2) = views(4, 6, 6);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(6), None).unwrap();
    let mochi = Mochi {
        warmup_epochs: 2,
        ..Mochi::new(4, 2, 1)
    };
    let mut pipe = Pipeline::new(vec![PolicyConfig::Mochi(mochi)]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for epoch in 0..4 {
        pipe.set_progress(epoch, 10);
        let plan = pipe.plan(&batch, &mut rng).unwrap();
        assert_eq!(plan.synthetic.is_some(), epoch >= 2, "epoch {epoch}");
    }
}

#[test]
fn ring_anneals_its_outer_band_from_every_negative() {
    let ring = Ring {
        anneal_epochs: 4,
        ..Ring::new(0.25, 0.0)
    };
    let at = |epoch| {
        let mut r = ring.clone();
        contrast_mining::Policy::set_progress(&mut r, epoch, 10);
        r.outer_now()
    };
    assert_eq!(at(0), 1.0);
    assert!((at(2) - 0.625).abs() < 1e-12);
    assert_eq!(at(4), 0.25);
    assert_eq!(at(9), 0.25);
    // The plan keeps every negative at the start and a quarter after the anneal.
    let (z1, z2) = views(5, 9, 6);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(9), None).unwrap();
    let mut pipe = Pipeline::new(vec![PolicyConfig::Ring(ring)]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let negatives = 2 * 9 - 2;
    for (epoch, kept) in [(0, negatives), (4, negatives / 4)] {
        pipe.set_progress(epoch, 10);
        let plan = pipe.plan(&batch, &mut rng).unwrap();
        assert_eq!(plan.kept_negatives(0).len(), kept, "epoch {epoch}");
    }
}

#[test]
fn hcl_anneals_beta_down_to_zero_in_nine_steps() {
    let hcl = Hcl {
        anneal_down: true,
        ..Hcl::new(0.9)
    };
    let (z1, z2) = views(6, 5, 6);
    let batch = MiningBatch::in_batch(&[z1, z2], &ids(5), None).unwrap();
    let mut pipe = Pipeline::new(vec![PolicyConfig::Hcl(hcl)]).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let betas: Vec<f64> = (0..10)
        .map(|epoch| {
            pipe.set_progress(epoch, 10);
            pipe.plan(&batch, &mut rng).unwrap().hardness_beta.unwrap()
        })
        .collect();
    for (e, b) in betas.iter().enumerate() {
        assert!(
            (b - 0.9 * (1.0 - e as f64 / 9.0)).abs() < 1e-12,
            "{betas:?}"
        );
    }
    // Without annealing, beta stays.
    let mut fixed = Pipeline::new(vec![PolicyConfig::Hcl(Hcl::new(0.9))]).unwrap();
    fixed.set_progress(9, 10);
    assert_eq!(
        fixed.plan(&batch, &mut rng).unwrap().hardness_beta,
        Some(0.9)
    );
}
