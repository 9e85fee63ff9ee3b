//! SimLAP and LooC against direct f64 implementations of their formulas, plus the
//! gate penalty and the pair sampler.

use candle_core::{Device, Tensor, Var};
use contrast_losses::{GatePenalty, PairMode, gate_penalty, looc, partner_classes, simlap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn mat(seed: u64, r: usize, c: usize) -> Vec<Vec<f64>> {
    let mut s = seed | 1;
    (0..r)
        .map(|_| {
            (0..c)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
                })
                .collect()
        })
        .collect()
}

fn t(m: &[Vec<f64>]) -> Tensor {
    Tensor::from_vec(
        m.iter().flatten().copied().collect::<Vec<_>>(),
        (m.len(), m[0].len()),
        &Device::Cpu,
    )
    .unwrap()
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn simlap_matches_its_formula() {
    let (b, d) = (6, 5);
    let (z1, z2) = (mat(1, b, d), mat(2, b, d));
    let gates: Vec<Vec<f64>> = mat(3, b, d)
        .iter()
        .map(|r| r.iter().map(|x| 0.5 + 0.45 * x).collect())
        .collect();
    let y = [0u32, 1, 2, 0, 1, 2];
    let y2 = [1u32, 2, 0, 2, 0, 1];
    let temp = 0.2;
    let got = simlap(
        &t(&z1),
        &t(&z2),
        &Tensor::new(&y, &Device::Cpu).unwrap(),
        &Tensor::new(&y2, &Device::Cpu).unwrap(),
        &t(&gates),
        temp,
    )
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    let (mut sum, mut count) = (0.0, 0.0);
    for i in 0..b {
        let a = unit(&z1[i]);
        let gated: Vec<f64> = (0..d).map(|k| a[k] * gates[i][k] * gates[i][k]).collect();
        let l: Vec<f64> = (0..b).map(|j| dot(&gated, &unit(&z2[j])) / temp).collect();
        let neg: f64 = (0..b)
            .filter(|&k| y[k] != y[i] && y[k] != y2[i])
            .map(|k| l[k].exp())
            .sum();
        for j in (0..b).filter(|&j| y[j] == y2[i]) {
            sum += (l[j].exp() + neg).ln() - l[j];
            count += 1.0;
        }
    }
    assert!(
        (got - sum / count).abs() < 1e-12,
        "{got} vs {}",
        sum / count
    );
}

#[test]
fn simlap_gradients_reach_embeddings_and_gates() {
    let (b, d) = (4, 3);
    let z1 = Var::from_tensor(&t(&mat(4, b, d))).unwrap();
    let g = Var::from_tensor(&t(&mat(5, b, d)).affine(0.3, 0.5).unwrap()).unwrap();
    // Three classes, so that every anchor has negatives outside its class pair.
    let y = Tensor::new(&[0u32, 1, 2, 0], &Device::Cpu).unwrap();
    let loss = simlap(
        z1.as_tensor(),
        &t(&mat(6, b, d)),
        &y,
        &Tensor::new(&[1u32, 2, 0, 2], &Device::Cpu).unwrap(),
        g.as_tensor(),
        0.1,
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    for v in [&z1, &g] {
        let n: f64 = grads
            .get(v.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(n > 0.0);
    }
    // No anchor has a positive when every partner class is absent from the batch.
    let e = simlap(
        z1.as_tensor(),
        z1.as_tensor(),
        &y,
        &Tensor::new(&[5u32; 4], &Device::Cpu).unwrap(),
        g.as_tensor(),
        0.1,
    );
    assert!(e.unwrap_err().to_string().contains("labels"));
}

#[test]
fn gate_penalties_are_zero_at_binary_gates_and_peak_at_half() {
    let at = |v: f64, kind| {
        gate_penalty(&Tensor::new(&[[v, v]], &Device::Cpu).unwrap(), kind)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for kind in [GatePenalty::Entropy, GatePenalty::Variance] {
        assert!(at(0.0, kind) < 1e-4 && at(1.0, kind) < 1e-4);
        assert!(at(0.5, kind) > at(0.2, kind) && at(0.2, kind) > at(0.05, kind));
    }
    assert!((at(0.5, GatePenalty::Entropy) - 2f64.ln()).abs() < 1e-9);
    assert!((at(0.5, GatePenalty::Variance) - 0.25).abs() < 1e-12);
}

#[test]
fn partner_sampling_respects_the_mode() {
    let labels: Vec<u32> = (0..200).map(|i| i % 10).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let distinct = partner_classes(&labels, 10, PairMode::Distinct, &mut rng).unwrap();
    assert!(distinct.iter().zip(&labels).all(|(p, y)| p != y && *p < 10));
    assert_eq!(
        partner_classes(&labels, 10, PairMode::Identical, &mut rng).unwrap(),
        labels
    );
    let arbitrary = partner_classes(&labels, 10, PairMode::Arbitrary, &mut rng).unwrap();
    assert!(arbitrary.iter().all(|p| labels.contains(p)));
    assert!(partner_classes(&labels, 1, PairMode::Distinct, &mut rng).is_err());
}

#[test]
fn looc_matches_its_formula() {
    let (b, d, k, spaces) = (3, 4, 5, 3);
    let q: Vec<Vec<Vec<f64>>> = (0..spaces).map(|h| mat(10 + h as u64, b, d)).collect();
    let keys: Vec<Vec<Vec<Vec<f64>>>> = (0..spaces)
        .map(|h| {
            (0..spaces)
                .map(|j| mat(20 + (h * 7 + j) as u64, b, d))
                .collect()
        })
        .collect();
    let negs: Vec<Vec<Vec<f64>>> = (0..spaces)
        .map(|h| mat(40 + h as u64, k, d).iter().map(|r| unit(r)).collect())
        .collect();
    let temp = 0.3;
    let got = looc(
        &q.iter().map(|m| t(m)).collect::<Vec<_>>(),
        &keys
            .iter()
            .map(|row| row.iter().map(|m| t(m)).collect())
            .collect::<Vec<_>>(),
        &negs.iter().map(|m| t(m)).collect::<Vec<_>>(),
        temp,
    )
    .unwrap()
    .to_scalar::<f64>()
    .unwrap();
    let mut total = 0.0;
    for h in 0..spaces {
        let mut acc = 0.0;
        for i in 0..b {
            let qi = unit(&q[h][i]);
            let e = |j: usize| (dot(&qi, &unit(&keys[h][j][i])) / temp).exp();
            let negative: f64 = negs[h].iter().map(|n| (dot(&qi, n) / temp).exp()).sum();
            let den = if h == 0 {
                e(0) + negative
            } else {
                (0..spaces).map(e).sum::<f64>() + negative
            };
            acc += -(e(h) / den).ln();
        }
        total += acc / b as f64;
    }
    let want = total / spaces as f64;
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let e = looc(&[t(&q[0])], &[vec![t(&q[0])]], &[t(&negs[0])], temp)
        .unwrap_err()
        .to_string();
    assert!(e.contains("queries"), "{e}");
}

/// The learnable scale: at `ln(1 / T)` it is the fixed-temperature loss, and its
/// gradient matches a central finite difference of the loss in f64.
#[test]
fn simlap_learnable_scale_matches_the_temperature_and_its_finite_difference() {
    use contrast_losses::simlap_learnable;
    let (b, d) = (6, 5);
    let dev = Device::Cpu;
    let z1 = t(&mat(21, b, d));
    let z2 = t(&mat(22, b, d));
    let g = t(&mat(23, b, d)).affine(0.3, 0.5).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2], &dev).unwrap();
    let y2 = Tensor::new(&[1u32, 2, 0, 2, 0, 1], &dev).unwrap();
    let temperature = 0.2f64;
    let at = |s: f64| {
        let s = Tensor::new(&[s], &dev).unwrap();
        simlap_learnable(&z1, &z2, &y, &y2, &g, &s)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let s0 = (1.0 / temperature).ln();
    let fixed: f64 = simlap(&z1, &z2, &y, &y2, &g, temperature)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((at(s0) - fixed).abs() < 1e-12, "{} vs {fixed}", at(s0));
    let var = Var::new(&[s0], &dev).unwrap();
    let loss = simlap_learnable(&z1, &z2, &y, &y2, &g, var.as_tensor()).unwrap();
    let grad: Vec<f64> = loss
        .backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-5;
    let numeric = (at(s0 + h) - at(s0 - h)) / (2.0 * h);
    assert!(
        (grad[0] - numeric).abs() < 1e-7 * numeric.abs().max(1.0),
        "analytic {} vs numeric {numeric}",
        grad[0]
    );
    assert!(grad[0].abs() > 1e-6, "the scale must get a gradient");
    let bad = Tensor::new(&[1.0f64, 2.0], &dev).unwrap();
    let e = simlap_learnable(&z1, &z2, &y, &y2, &g, &bad).unwrap_err();
    assert!(e.to_string().contains("log_scale"), "{e}");
}

/// Arbitrary partners are the batch's own labels permuted (the reference's
/// `y1[randperm(B)]`): the class counts are kept, and the order changes.
#[test]
fn arbitrary_partners_permute_the_batch_labels() {
    let labels: Vec<u32> = (0..64).map(|i| (i * 7 % 5) as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let p = partner_classes(&labels, 5, PairMode::Arbitrary, &mut rng).unwrap();
    let (mut a, mut b) = (labels.clone(), p.clone());
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    assert_ne!(p, labels);
}
