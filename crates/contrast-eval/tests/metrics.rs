//! kNN, retrieval and clustering metrics against independent brute-force computations
//! on small cases (1e-6 and tighter).

use candle_core::{Device, Tensor};
use contrast_eval::{clustering, nmi_ami, retrieval};
use std::collections::HashMap;

fn draws(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// Precision@1, R-precision, MAP@R in f64 by sorting every row.
fn brute_retrieval(x: &[Vec<f64>], y: &[u32]) -> (f64, f64, f64) {
    let unit: Vec<Vec<f64>> = x
        .iter()
        .map(|v| {
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter().map(|a| a / n).collect()
        })
        .collect();
    let (mut p1, mut rp, mut map, mut q) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..x.len() {
        let r = y
            .iter()
            .enumerate()
            .filter(|&(j, &c)| j != i && c == y[i])
            .count();
        if r == 0 {
            continue;
        }
        let mut others: Vec<(f64, usize)> = (0..x.len())
            .filter(|&j| j != i)
            .map(|j| (unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum(), j))
            .collect();
        others.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let rel: Vec<bool> = others[..r].iter().map(|&(_, j)| y[j] == y[i]).collect();
        p1 += rel[0] as u8 as f64;
        rp += rel.iter().filter(|&&b| b).count() as f64 / r as f64;
        let (mut hits, mut ap) = (0.0, 0.0);
        for (k, &b) in rel.iter().enumerate() {
            if b {
                hits += 1.0;
                ap += hits / (k + 1) as f64;
            }
        }
        map += ap / r as f64;
        q += 1.0;
    }
    (p1 / q, rp / q, map / q)
}

#[test]
fn retrieval_matches_a_brute_force_ranking() {
    let (n, d) = (45, 6);
    let v = draws(7, n * d);
    // Four classes pulled towards their own axis, and one singleton class.
    let y: Vec<u32> = (0..n)
        .map(|i| if i == n - 1 { 4 } else { (i % 4) as u32 })
        .collect();
    let x: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            (0..d)
                .map(|k| v[i * d + k] + if k == y[i] as usize { 0.8 } else { 0.0 })
                .collect()
        })
        .collect();
    let t = Tensor::from_vec(
        x.iter().flatten().map(|&a| a as f32).collect::<Vec<_>>(),
        (n, d),
        &Device::Cpu,
    )
    .unwrap();
    let got = retrieval(&t, &y, 5).unwrap();
    let (p1, rp, map) = brute_retrieval(&x, &y);
    assert_eq!(got.queries, n - 1, "the singleton has nothing to retrieve");
    assert!((got.precision_at_1 - p1).abs() < 1e-6, "{got:?} vs {p1}");
    assert!((got.r_precision - rp).abs() < 1e-6, "{got:?} vs {rp}");
    assert!((got.map_at_r - map).abs() < 1e-6, "{got:?} vs {map}");
    assert!(map <= rp + 1e-12 && rp > 0.3, "{got:?}");
}

/// Mutual information of two labelings (natural log), from the joint counts.
fn mi(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len() as f64;
    let mut joint: HashMap<(u32, u32), f64> = HashMap::new();
    let mut ca: HashMap<u32, f64> = HashMap::new();
    let mut cb: HashMap<u32, f64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *joint.entry((x, y)).or_default() += 1.0;
        *ca.entry(x).or_default() += 1.0;
        *cb.entry(y).or_default() += 1.0;
    }
    joint
        .iter()
        .map(|(&(x, y), &c)| c / n * (n * c / (ca[&x] * cb[&y])).ln())
        .sum()
}

fn entropy(a: &[u32]) -> f64 {
    let n = a.len() as f64;
    let mut c: HashMap<u32, f64> = HashMap::new();
    for &x in a {
        *c.entry(x).or_default() += 1.0;
    }
    c.values().map(|&k| -k / n * (k / n).ln()).sum()
}

/// Every permutation of `v` (Heap's algorithm).
fn permutations(v: &mut Vec<u32>, k: usize, out: &mut Vec<Vec<u32>>) {
    if k == 1 {
        out.push(v.clone());
        return;
    }
    for i in 0..k {
        permutations(v, k - 1, out);
        let j = if k.is_multiple_of(2) { i } else { 0 };
        v.swap(j, k - 1);
    }
}

#[test]
fn ami_matches_the_expectation_over_every_permutation() {
    let a = vec![0u32, 0, 0, 1, 1, 2, 2];
    let b = vec![1u32, 1, 0, 0, 0, 2, 1];
    let mut perms = Vec::new();
    permutations(&mut b.clone(), b.len(), &mut perms);
    assert_eq!(perms.len(), 5040);
    let emi = perms.iter().map(|p| mi(&a, p)).sum::<f64>() / perms.len() as f64;
    let mean_h = 0.5 * (entropy(&a) + entropy(&b));
    let (nmi, ami) = nmi_ami(&a, &b);
    assert!((nmi - mi(&a, &b) / mean_h).abs() < 1e-12, "{nmi}");
    let want = (mi(&a, &b) - emi) / (mean_h - emi);
    assert!((ami - want).abs() < 1e-9, "{ami} vs {want}");
    // Identical labelings score 1, whatever the names.
    let (n1, a1) = nmi_ami(&a, &[5, 5, 5, 7, 7, 9, 9]);
    assert!(
        (n1 - 1.0).abs() < 1e-12 && (a1 - 1.0).abs() < 1e-9,
        "{n1} {a1}"
    );
}

#[test]
fn kmeans_recovers_separated_classes() {
    let (n, d) = (60, 4);
    let v = draws(11, n * d);
    let y: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    let mut x = Vec::with_capacity(n * d);
    for i in 0..n {
        for k in 0..d {
            let pull = if k == y[i] as usize { 1.0 } else { 0.0 };
            x.push((0.05 * v[i * d + k] + pull) as f32);
        }
    }
    let t = Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap();
    let c = clustering(&t, &y, 3, 0).unwrap();
    assert!(
        (c.nmi - 1.0).abs() < 1e-9 && (c.ami - 1.0).abs() < 1e-9,
        "{c:?}"
    );
}

#[test]
fn the_sweep_agrees_with_single_knn_runs() {
    use contrast_eval::{KnnConfig, knn_predict, knn_sweep};
    let (n, q, d) = (80, 30, 5);
    let v = draws(21, (n + q) * d);
    let labels: Vec<u32> = (0..n + q).map(|i| (i % 3) as u32).collect();
    let x: Vec<f32> = (0..(n + q) * d)
        .map(|k| {
            (v[k]
                + if k % d == labels[k / d] as usize {
                    0.7
                } else {
                    0.0
                }) as f32
        })
        .collect();
    let all = Tensor::from_vec(x, (n + q, d), &Device::Cpu).unwrap();
    let (bank, queries) = (all.narrow(0, 0, n).unwrap(), all.narrow(0, n, q).unwrap());
    let (bl, ql) = (&labels[..n], &labels[n..]);
    let sweep = knn_sweep(&queries, ql, &bank, bl, 3, &[1, 5, 20, 500], &[0.07, 0.5]).unwrap();
    assert_eq!(sweep.len(), 6, "k = 500 exceeds the bank and is left out");
    for p in sweep {
        let cfg = KnnConfig {
            k: p.k,
            temperature: p.temperature,
        };
        let single = knn_predict(&queries, &bank, bl, 3, &cfg).unwrap();
        assert_eq!(p.top1, contrast_eval::accuracy(&single.predictions, ql));
        assert_eq!(
            p.top5, 1.0,
            "3 classes: the true one is always in the top 5"
        );
    }
}

#[test]
fn histograms_count_every_pair_and_measure_overlap() {
    use contrast_eval::similarity_histogram;
    // Two tight, orthogonal classes: positives near 1, negatives near 0.
    let x = Tensor::new(
        &[
            [1f32, 0.0],
            [0.99, 0.01],
            [1.0, 0.02],
            [0.0, 1.0],
            [0.01, 1.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let y = [0u32, 0, 0, 1, 1];
    let h = similarity_histogram(&x, &y, 2, 20).unwrap();
    assert_eq!((h.positive_pairs, h.negative_pairs), (4, 6));
    assert!((h.positive.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(h.overlap, 0.0);
    assert!(h.positive_mean > 0.99 && h.negative_mean < 0.03, "{h:?}");
    // One class spread like the other: overlap 1.
    let same = similarity_histogram(&x, &[0, 1, 0, 1, 0], 2, 1).unwrap();
    assert_eq!(same.overlap, 1.0);
}

/// Weighted kNN top-1 in f64 by sorting every query's cosine similarities: the k most
/// similar bank rows vote `exp(s / t)` for their class; ties of the vote go to the
/// lower class.
fn brute_knn(
    bank: &[Vec<f64>],
    bl: &[u32],
    queries: &[Vec<f64>],
    ql: &[u32],
    k: usize,
    t: f64,
) -> f64 {
    let unit = |v: &Vec<f64>| {
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.iter().map(|a| a / n).collect::<Vec<f64>>()
    };
    let bank: Vec<Vec<f64>> = bank.iter().map(unit).collect();
    let mut right = 0;
    for (q, &label) in queries.iter().zip(ql) {
        let q = unit(q);
        let mut sims: Vec<(f64, usize)> = bank
            .iter()
            .enumerate()
            .map(|(j, b)| (q.iter().zip(b).map(|(x, y)| x * y).sum(), j))
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut votes = [0f64; 3];
        for &(s, j) in &sims[..k] {
            votes[bl[j] as usize] += (s / t).exp();
        }
        let best = (0..3).fold(0, |b, c| if votes[c] > votes[b] { c } else { b });
        right += usize::from(best as u32 == label);
    }
    right as f64 / queries.len() as f64
}

#[test]
fn knn_matches_a_brute_force_vote() {
    use contrast_eval::{KnnConfig, knn_accuracy};
    let (n, q, d) = (120, 60, 6);
    let v = draws(33, (n + q) * d);
    let labels: Vec<u32> = (0..n + q).map(|i| (i * 7 % 3) as u32).collect();
    // Classes pull weakly along one axis each, so the vote is often close.
    let rows: Vec<Vec<f64>> = (0..n + q)
        .map(|i| {
            (0..d)
                .map(|k| v[i * d + k] + if k == labels[i] as usize { 0.4 } else { 0.0 })
                .collect()
        })
        .collect();
    let flat: Vec<f32> = rows.iter().flatten().map(|&a| a as f32).collect();
    let all = Tensor::from_vec(flat, (n + q, d), &Device::Cpu).unwrap();
    let (bank, queries) = (all.narrow(0, 0, n).unwrap(), all.narrow(0, n, q).unwrap());
    let (bl, ql) = (&labels[..n], &labels[n..]);
    for (k, t) in [(1, 0.1), (5, 0.07), (10, 0.1), (50, 0.5)] {
        let got =
            knn_accuracy(&bank, bl, &queries, ql, 3, &KnnConfig { k, temperature: t }).unwrap();
        let want = brute_knn(&rows[..n], bl, &rows[n..], ql, k, t);
        assert!((got - want).abs() < 1e-6, "k {k} t {t}: {got} vs {want}");
        assert!(want > 0.34 && want < 1.0, "a case that can fail: {want}");
    }
}
