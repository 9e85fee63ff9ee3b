//! Identities between losses, numerical stability, and argument errors.

use candle_core::{DType, Device, Tensor, Var};
use contrast_losses::{
    Cancellation, FncConfig, InvPConfig, LossError, debiased, decoupled, fnc, generalized_info_nce,
    hcl, hcl_floored, hcl_queue_floored, invariance_propagation, nt_xent, nt_xent_positive_share,
    one_hot, supcon,
};
use contrast_testing::{scalar, uniform_tensor};
use proptest::prelude::*;

/// Inputs uniform over `[-1, 1)` from a seed: a deterministic generator, so that
/// proptest shrinks over seeds.
fn uniform(seed: u64, shape: (usize, usize)) -> Tensor {
    uniform_tensor(seed, shape, -1.0, 1.0)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// InvP's gradient is carried to `z` by a surrogate term (the loss is computed on
    /// gathered logits outside the graph), so it is checked against central finite
    /// differences of the loss in f64, scaled by 3 to check that the surrogate
    /// composes with the ops after it. The background and the hard positives are
    /// piecewise constant in `z`; a step of 1e-6 does not cross their boundaries.
    #[test]
    fn invariance_propagation_gradient_matches_finite_differences(seed in any::<u64>(), exclusive in any::<bool>(), hard_pos in any::<bool>(), n_pos in 1usize..8) {
        let (b, d, nb) = (4, 5, 24);
        let bank = contrast_kernels::l2_normalize(&uniform(seed ^ 7, (nb, d))).unwrap();
        let neighbors: Vec<Vec<u32>> = (0..nb as u32).map(|i| vec![(i * 5 + 1) % 24, (i * 7 + 3) % 24]).collect();
        let indices = [3u32, 8, 8, 20];
        let cfg = InvPConfig { temperature: 0.3, n_background: 9, diffusion_layer: 2, n_pos, lam_inv: 0.6, exclusive, hard_pos };
        let x = uniform(seed, (b, d));
        let at = |z: &Tensor| invariance_propagation(z, &indices, &bank, &neighbors, 1.0, &cfg).unwrap().loss;
        let var = Var::from_tensor(&x).unwrap();
        let grad: Vec<f64> = (at(var.as_tensor()) * 3.0).unwrap().backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for k in 0..base.len() {
            let shifted = |delta: f64| {
                let mut v = base.clone();
                v[k] += delta;
                3.0 * scalar(&at(&Tensor::from_vec(v, (b, d), &Device::Cpu).unwrap()))
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
            prop_assert!((grad[k] - numeric).abs() < 1e-6 * numeric.abs().max(1.0), "entry {k}: analytic {} vs numeric {numeric}", grad[k]);
        }
        prop_assert!(grad.iter().any(|g| g.abs() > 1e-6), "z must get a gradient");
    }

    #[test]
    fn debiased_with_zero_prior_is_nt_xent(seed in any::<u64>(), b in 2usize..9, d in 2usize..9, t in 0.05f64..1.0) {
        let (z1, z2) = (uniform(seed, (b, d)), uniform(seed ^ 1, (b, d)));
        prop_assert!(close(scalar(&debiased(&z1, &z2, t, 0.0).unwrap()), scalar(&nt_xent(&z1, &z2, t).unwrap())));
    }

    #[test]
    fn hcl_with_zero_beta_is_debiased(seed in any::<u64>(), b in 2usize..9, t in 0.05f64..1.0, tp in 0.0f64..0.5) {
        let (z1, z2) = (uniform(seed, (b, 6)), uniform(seed ^ 2, (b, 6)));
        prop_assert!(close(scalar(&hcl(&z1, &z2, t, tp, 0.0).unwrap()), scalar(&debiased(&z1, &z2, t, tp).unwrap())));
    }

    #[test]
    fn floored_anchors_agree_with_a_count_by_hand(seed in any::<u64>(), b in 2usize..9, d in 2usize..9, t in 0.1f64..1.0, tp in 0.0f64..0.6, beta in 0.0f64..2.0, near in 0.0f64..1.0) {
        // `near` pulls the second view onto the first: high positive similarities put
        // some anchors' corrected sums under the floor, and others not.
        let (z1, z2) = (uniform(seed, (b, d)), uniform(seed ^ 4, (b, d)));
        let z2 = ((&z1 * near).unwrap() + (&z2 * (1.0 - near)).unwrap()).unwrap();
        let (got, anchors) = hcl_floored(&z1, &z2, t, tp, beta).unwrap();
        prop_assert_eq!(anchors, 2 * b);
        let (surely, possibly) = floored_by_hand(&z1, &z2, t, tp, beta);
        prop_assert!((surely..=possibly).contains(&got), "{} not in [{}, {}]", got, surely, possibly);
        // Without a prior the corrected sum is the plain one, at least N e^(-1/t).
        prop_assert_eq!(hcl_floored(&z1, &z2, t, 0.0, beta).unwrap().0, 0);
    }

    #[test]
    fn supcon_with_distinct_labels_is_nt_xent(seed in any::<u64>(), b in 2usize..9, t in 0.05f64..1.0) {
        let (z1, z2) = (uniform(seed, (b, 5)), uniform(seed ^ 3, (b, 5)));
        let labels = Tensor::new((0..b as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        let s = supcon(&[z1.clone(), z2.clone()], &labels, t, t).unwrap();
        prop_assert!(close(scalar(&s), scalar(&nt_xent(&z1, &z2, t).unwrap())));
    }

    #[test]
    fn fnc_without_false_negatives_is_twice_nt_xent(seed in any::<u64>(), b in 2usize..8, t in 0.05f64..1.0, elim in any::<bool>()) {
        let (z1, z2) = (uniform(seed, (b, 5)), uniform(seed ^ 4, (b, 5)));
        let cfg = FncConfig {
            temperature: t,
            topk: Some(3),
            threshold: Some(2.0),
            cancellation: if elim { Cancellation::Elimination } else { Cancellation::Attraction },
            ..FncConfig::default()
        };
        let (loss, fns) = fnc(&[z1.clone(), z2.clone()], &cfg).unwrap();
        prop_assert_eq!(fns.count(), 0);
        prop_assert!(close(scalar(&loss), 2.0 * scalar(&nt_xent(&z1, &z2, t).unwrap())));
    }

    #[test]
    fn unit_weights_and_one_hot_targets_give_info_nce(seed in any::<u64>(), b in 1usize..6, n in 2usize..9) {
        let logits = (uniform(seed, (b, n)) * 5.0).unwrap();
        let pos: Vec<usize> = (0..b).map(|i| (i * 7 + seed as usize) % n).collect();
        let targets = one_hot(&pos, n, DType::F64, &Device::Cpu).unwrap();
        let ones = Tensor::ones((b, n), DType::F64, &Device::Cpu).unwrap();
        let got: Vec<f64> = generalized_info_nce(&logits, &targets, Some(&ones), None).unwrap().to_vec1().unwrap();
        let rows: Vec<Vec<f64>> = logits.to_vec2().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            prop_assert!(close(got[i], lse - row[pos[i]]));
        }
    }

    #[test]
    fn removed_candidates_do_not_matter(seed in any::<u64>(), n in 3usize..9) {
        // A zero weight removes a candidate exactly, whatever its logit.
        let logits = uniform(seed, (1, n));
        let targets = one_hot(&[0], n, DType::F64, &Device::Cpu).unwrap();
        let w: Vec<f64> = (0..n).map(|j| if j == n - 1 { 0.0 } else { 1.0 }).collect();
        let w = Tensor::from_vec(w, (1, n), &Device::Cpu).unwrap();
        let bumped = logits.broadcast_add(&Tensor::from_vec((0..n).map(|j| if j == n - 1 { 1e3 } else { 0.0 }).collect::<Vec<f64>>(), (1, n), &Device::Cpu).unwrap()).unwrap();
        let a = scalar(&generalized_info_nce(&logits, &targets, Some(&w), None).unwrap().sum_all().unwrap());
        let b = scalar(&generalized_info_nce(&bumped, &targets, Some(&w), None).unwrap().sum_all().unwrap());
        prop_assert!(close(a, b));
    }
}

/// Loss and gradient at temperature 0.05 on nearly identical embeddings: finite, and
/// the gradient equals central differences.
/// The rows of `z1` then `z2`, L2-normalised in f64.
fn unit_rows(z1: &Tensor, z2: &Tensor) -> Vec<Vec<f64>> {
    let rows: Vec<Vec<f64>> = Tensor::cat(&[z1, z2], 0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2()
        .unwrap();
    rows.iter()
        .map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f64>().sqrt();
            r.iter().map(|x| x / n).collect()
        })
        .collect()
}

/// The anchors of two-view HCL whose corrected negative sum is at or under the floor,
/// counted in f64 from the raw views with the formula itself: per anchor `i` with
/// positive `p` and the `N = 2B - 2` others as negatives, `l = cos / t`, weights
/// `w = e^(beta l) / mean e^(beta l)`, corrected `(sum w e^l - tau+ N e^(l_p)) / (1 -
/// tau+)` against `N e^(-1/t)`. Returns the count with a relative margin of 1e-6 each
/// way (surely under, possibly under), so that rounding cannot make the test flaky.
fn floored_by_hand(z1: &Tensor, z2: &Tensor, t: f64, tau_plus: f64, beta: f64) -> (usize, usize) {
    let unit = unit_rows(z1, z2);
    let (n2, b) = (unit.len(), unit.len() / 2);
    let l = |i: usize, j: usize| {
        unit[i]
            .iter()
            .zip(&unit[j])
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / t
    };
    let (mut surely, mut possibly) = (0, 0);
    for i in 0..n2 {
        let p = (i + b) % n2;
        let neg: Vec<usize> = (0..n2).filter(|&j| j != i && j != p).collect();
        let n = neg.len() as f64;
        let mean_imp = neg.iter().map(|&j| (beta * l(i, j)).exp()).sum::<f64>() / n;
        let sum: f64 = neg
            .iter()
            .map(|&j| (beta * l(i, j)).exp() / mean_imp * l(i, j).exp())
            .sum();
        let corrected = (sum - tau_plus * n * l(i, p).exp()) / (1.0 - tau_plus);
        let floor = n * (-1.0 / t).exp();
        surely += (corrected <= floor - 1e-6 * floor.abs().max(sum)) as usize;
        possibly += (corrected <= floor + 1e-6 * floor.abs().max(sum)) as usize;
    }
    (surely, possibly)
}

/// The positive's softmax share of every anchor of two views, summed, computed in
/// f64 with plain loops: `e^(l_i+) / sum_{j != i} e^(l_ij)`, `l = cos / t`.
fn positive_share_by_hand(z1: &Tensor, z2: &Tensor, t: f64) -> f64 {
    let unit = unit_rows(z1, z2);
    let (n2, b) = (unit.len(), unit.len() / 2);
    let e = |i: usize, j: usize| {
        (unit[i]
            .iter()
            .zip(&unit[j])
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / t)
            .exp()
    };
    (0..n2)
        .map(|i| e(i, (i + b) % n2) / (0..n2).filter(|&j| j != i).map(|j| e(i, j)).sum::<f64>())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The share matches the loops in f32 and f64 inputs, lies in (0, 1] per anchor,
    /// and bounds NT-Xent from below (Jensen: the mean of `-ln p` is at least
    /// `-ln` of the mean `p`).
    #[test]
    fn positive_share_matches_the_formula(seed in any::<u64>(), b in 1usize..9, d in 2usize..7, t in prop_oneof![Just(0.05), Just(0.2), Just(0.5)]) {
        let z1 = uniform(seed, (b, d));
        let z2 = uniform(seed.wrapping_add(1), (b, d));
        for dtype in [DType::F32, DType::F64] {
            let (a, c) = (z1.to_dtype(dtype).unwrap(), z2.to_dtype(dtype).unwrap());
            let (sum, anchors) = nt_xent_positive_share(&a, &c, t).unwrap();
            prop_assert_eq!(anchors, 2 * b);
            // The share is computed in f64 whatever the inputs' precision.
            let want = positive_share_by_hand(&a, &c, t);
            prop_assert!((sum - want).abs() <= 1e-9 * want.max(1.0), "{:?}: {} vs {}", dtype, sum, want);
        }
        let mean = positive_share_by_hand(&z1, &z2, t) / (2 * b) as f64;
        prop_assert!(mean > 0.0 && mean <= 1.0 + 1e-12);
        let loss = scalar(&nt_xent(&z1.to_dtype(DType::F64).unwrap(), &z2.to_dtype(DType::F64).unwrap(), t).unwrap());
        prop_assert!(-mean.ln() <= loss + 1e-9, "{} > {}", -mean.ln(), loss);
    }
}

#[test]
fn positive_share_in_closed_form() {
    // Each image's two views on its own axis, the others orthogonal: every anchor's
    // positive has e^(1/t) against 2B - 2 negatives of e^0.
    let z = Tensor::eye(4, DType::F64, &Device::Cpu).unwrap();
    let (sum, anchors) = nt_xent_positive_share(&z, &z, 0.5).unwrap();
    let p = 2f64.exp() / (2f64.exp() + 6.0);
    assert_eq!(anchors, 8);
    assert!((sum / 8.0 - p).abs() < 1e-12, "{sum}");
    // Collapse: every candidate alike, so the positive is one of 2B - 1.
    let ones = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
    let (sum, _) = nt_xent_positive_share(&ones, &ones, 0.1).unwrap();
    assert!((sum / 8.0 - 1.0 / 7.0).abs() < 1e-12, "{sum}");
    // One image: its positive is each anchor's only candidate.
    let one = uniform(3, (1, 5));
    assert_eq!(
        nt_xent_positive_share(&one, &uniform(4, (1, 5)), 0.2)
            .unwrap()
            .0,
        2.0
    );
    // Bad arguments are named.
    let err = nt_xent_positive_share(&z, &ones, 0.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("z2"), "{err}");
}

#[test]
fn floor_holds_exactly_where_the_prior_outweighs_the_negatives() {
    // Four images, each view the same axis (positive cosine 1), every other image
    // orthogonal (cosine 0). At t = 0.5 each anchor's corrected sum is
    // N (1 - tau+ e^2) / (1 - tau+) against the floor N e^-2: under it for tau+ = 0.3
    // (1 - 2.2 < 0), over it for tau+ = 0.1 (0.29 > 0.135).
    let z = Tensor::eye(4, DType::F64, &Device::Cpu).unwrap();
    assert_eq!(hcl_floored(&z, &z, 0.5, 0.3, 0.0).unwrap(), (8, 8));
    assert_eq!(hcl_floored(&z, &z, 0.5, 0.1, 0.0).unwrap(), (0, 8));
    assert_eq!(hcl_floored(&z, &z, 0.5, 0.3, 1.0).unwrap(), (8, 8));
    // The queue form: four queries and keys on the first four axes, a queue of eight
    // entries on the other four, so the same sums with N = 8.
    let q = Tensor::eye(8, DType::F64, &Device::Cpu)
        .unwrap()
        .narrow(0, 0, 4)
        .unwrap();
    let back = Tensor::eye(8, DType::F64, &Device::Cpu)
        .unwrap()
        .narrow(0, 4, 4)
        .unwrap();
    let queue = Tensor::cat(&[&back, &back], 0).unwrap();
    assert_eq!(
        hcl_queue_floored(&q, &q, &queue, 0.5, 0.3, 0.0).unwrap(),
        (4, 4)
    );
    assert_eq!(
        hcl_queue_floored(&q, &q, &queue, 0.5, 0.1, 0.0).unwrap(),
        (0, 4)
    );
    // Collapse: every embedding the same, so the negatives are as close as the
    // positive and the corrected sum is N e^(1/t), far over the floor.
    let ones = Tensor::ones((4, 3), DType::F64, &Device::Cpu).unwrap();
    assert_eq!(hcl_floored(&ones, &ones, 0.5, 0.5, 1.0).unwrap(), (0, 8));
}

#[test]
fn stable_at_low_temperature_with_near_duplicates() {
    let base = uniform(9, (1, 8));
    let z1 = (base.broadcast_as((6, 8)).unwrap() + (uniform(10, (6, 8)) * 1e-3).unwrap()).unwrap();
    let z2 = (base.broadcast_as((6, 8)).unwrap() + (uniform(11, (6, 8)) * 1e-3).unwrap()).unwrap();
    let labels = Tensor::new(&[0u32, 1, 0, 1, 2, 2], &Device::Cpu).unwrap();
    type LossFn = Box<dyn Fn(&Tensor, &Tensor) -> Tensor>;
    let losses: Vec<(&str, LossFn)> = vec![
        ("nt_xent", Box::new(|a, b| nt_xent(a, b, 0.05).unwrap())),
        (
            "debiased",
            Box::new(|a, b| debiased(a, b, 0.05, 0.1).unwrap()),
        ),
        ("hcl", Box::new(|a, b| hcl(a, b, 0.05, 0.1, 1.0).unwrap())),
        ("decoupled", Box::new(|a, b| decoupled(a, b, 0.05).unwrap())),
        (
            "supcon",
            Box::new(move |a, b| supcon(&[a.clone(), b.clone()], &labels, 0.05, 0.05).unwrap()),
        ),
    ];
    for (name, f) in losses {
        for dtype in [DType::F32, DType::F64] {
            let v = Var::from_tensor(&z1.to_dtype(dtype).unwrap()).unwrap();
            let other = z2.to_dtype(dtype).unwrap();
            let loss = f(v.as_tensor(), &other);
            let value = scalar(&loss);
            assert!(value.is_finite(), "{name} {dtype:?}: loss {value}");
            let g: Vec<f64> = loss
                .backward()
                .unwrap()
                .get(v.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name} {dtype:?}: non-finite gradient"
            );
            if dtype == DType::F64 {
                let base: Vec<f64> = z1.flatten_all().unwrap().to_vec1().unwrap();
                let h = 1e-7;
                for idx in [0, 13, 47] {
                    let at = |delta: f64| {
                        let mut p = base.clone();
                        p[idx] += delta;
                        scalar(&f(&Tensor::from_vec(p, (6, 8), &Device::Cpu).unwrap(), &z2))
                    };
                    let fd = (at(h) - at(-h)) / (2.0 * h);
                    let scale = g.iter().fold(1e-6f64, |m, x| m.max(x.abs()));
                    assert!(
                        (fd - g[idx]).abs() / scale < 1e-4,
                        "{name}: grad[{idx}] {} vs finite difference {fd}",
                        g[idx]
                    );
                }
            }
        }
    }
}

fn arg_of(e: LossError) -> &'static str {
    match e {
        LossError::InvalidArgument { arg, .. } => arg,
        other => panic!("expected an argument error, got {other}"),
    }
}

#[test]
fn bad_arguments_are_named_errors() {
    let z = uniform(1, (4, 3));
    let wrong = uniform(2, (5, 3));
    assert_eq!(arg_of(nt_xent(&z, &wrong, 0.5).unwrap_err()), "z2");
    assert_eq!(arg_of(nt_xent(&z, &z, 0.0).unwrap_err()), "temperature");
    assert_eq!(arg_of(nt_xent(&z, &z, -1.0).unwrap_err()), "temperature");
    assert_eq!(arg_of(debiased(&z, &z, 0.5, 1.0).unwrap_err()), "tau_plus");
    assert_eq!(arg_of(debiased(&z, &z, 0.5, -0.1).unwrap_err()), "tau_plus");
    assert_eq!(arg_of(hcl(&z, &z, 0.5, 0.1, -1.0).unwrap_err()), "beta");
    let short = Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap();
    assert_eq!(
        arg_of(supcon(&[z.clone(), z.clone()], &short, 0.1, 0.1).unwrap_err()),
        "labels"
    );
    assert_eq!(
        arg_of(supcon(std::slice::from_ref(&z), &short, 0.1, 0.1).unwrap_err()),
        "views"
    );
    let vector = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
    assert_eq!(arg_of(nt_xent(&vector, &vector, 0.5).unwrap_err()), "z1");
    // An anchor whose only candidates are removed has no denominator.
    let targets = one_hot(&[0], 2, DType::F64, &Device::Cpu).unwrap();
    let zero = Tensor::zeros((1, 2), DType::F64, &Device::Cpu).unwrap();
    assert_eq!(
        arg_of(generalized_info_nce(&targets, &targets, Some(&zero), None).unwrap_err()),
        "weights"
    );
    let e = FncConfig {
        topk: None,
        threshold: None,
        ..FncConfig::default()
    };
    assert_eq!(
        arg_of(fnc(&[z.clone(), z.clone()], &e).unwrap_err()),
        "topk"
    );
}
