//! How well k-means clusters of an embedding recover its classes: NMI and AMI
//! (arithmetic-mean normalisation, scikit-learn's default).
//!
//! `NMI = MI / mean(H(U), H(V))`; `AMI = (MI - E[MI]) / (mean(H(U), H(V)) - E[MI])`
//! with `E[MI]` the mutual information expected between two random labelings of the
//! same cluster sizes (the hypergeometric model of Vinh, Epps & Bailey 2010).

use crate::error::{Result, check_labelled, invalid};
use candle_core::{DType, Tensor};
use contrast_kernels::l2_normalize;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Cluster agreement of one embedding with its labels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Clustering {
    pub nmi: f64,
    pub ami: f64,
    /// Clusters asked of k-means (the number of classes).
    pub clusters: usize,
}

/// k-means with `k` clusters (k-means++ seeding from `seed`, Lloyd iterations until
/// no assignment changes, at most 100) of the L2-normalised rows of `features`,
/// scored against `labels` by NMI and AMI.
pub fn clustering(
    features: &Tensor,
    labels: &[u32],
    num_classes: usize,
    seed: u64,
) -> Result<Clustering> {
    check_labelled("features", features, labels, num_classes)?;
    let assign = kmeans(features, num_classes, seed)?;
    let (nmi, ami) = nmi_ami(labels, &assign);
    Ok(Clustering {
        nmi,
        ami,
        clusters: num_classes,
    })
}

/// Cluster index of every row of `features` `[N, D]` (L2-normalised first).
pub fn kmeans(features: &Tensor, k: usize, seed: u64) -> Result<Vec<u32>> {
    let z: Vec<Vec<f32>> = l2_normalize(&features.to_dtype(DType::F32)?)?.to_vec2()?;
    let n = z.len();
    if k == 0 || k > n {
        return Err(invalid("k", format!("{k} clusters for {n} rows")));
    }
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // k-means++: each next centre drawn with probability proportional to D^2.
    let mut centres = vec![z[rng.random_range(0..n)].clone()];
    let mut d2: Vec<f64> = z.iter().map(|x| dist(x, &centres[0])).collect();
    while centres.len() < k {
        let total: f64 = d2.iter().sum();
        let next = if total > 0.0 {
            let mut u = rng.random::<f64>() * total;
            d2.iter()
                .position(|&d| {
                    u -= d;
                    u <= 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.random_range(0..n)
        };
        centres.push(z[next].clone());
        for (d, x) in d2.iter_mut().zip(&z) {
            *d = d.min(dist(x, centres.last().expect("a centre")));
        }
    }
    let mut assign = vec![u32::MAX; n];
    for _ in 0..100 {
        let mut changed = false;
        for (a, x) in assign.iter_mut().zip(&z) {
            let best = (0..k)
                .min_by(|&i, &j| dist(x, &centres[i]).total_cmp(&dist(x, &centres[j])))
                .expect("k >= 1") as u32;
            changed |= *a != best;
            *a = best;
        }
        if !changed {
            break;
        }
        let dim = z[0].len();
        let mut sums = vec![vec![0f64; dim]; k];
        let mut counts = vec![0usize; k];
        for (&a, x) in assign.iter().zip(&z) {
            counts[a as usize] += 1;
            for (s, v) in sums[a as usize].iter_mut().zip(x) {
                *s += *v as f64;
            }
        }
        for c in 0..k {
            // An emptied cluster keeps its centre.
            if counts[c] > 0 {
                centres[c] = sums[c]
                    .iter()
                    .map(|s| (s / counts[c] as f64) as f32)
                    .collect();
            }
        }
    }
    Ok(assign)
}

/// `ln Gamma(x)` for `x > 0` (Lanczos, g = 7, 9 terms; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |a, (i, g)| a + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// NMI and AMI of two labelings of the same rows (natural logarithms; 1 for two
/// identical labelings, including a single-cluster pair).
pub fn nmi_ami(a: &[u32], b: &[u32]) -> (f64, f64) {
    let n = a.len();
    let index = |v: &[u32]| {
        let mut ids: Vec<u32> = v.to_vec();
        ids.sort_unstable();
        ids.dedup();
        v.iter()
            .map(|x| ids.binary_search(x).expect("present"))
            .collect::<Vec<_>>()
    };
    let (ia, ib) = (index(a), index(b));
    let (ra, rb) = (
        ia.iter().max().map_or(0, |m| m + 1),
        ib.iter().max().map_or(0, |m| m + 1),
    );
    let mut table = vec![vec![0usize; rb]; ra];
    for (&x, &y) in ia.iter().zip(&ib) {
        table[x][y] += 1;
    }
    let rows: Vec<usize> = table.iter().map(|r| r.iter().sum()).collect();
    let cols: Vec<usize> = (0..rb).map(|j| table.iter().map(|r| r[j]).sum()).collect();
    let nf = n as f64;
    let entropy = |c: &[usize]| -> f64 {
        c.iter()
            .filter(|&&x| x > 0)
            .map(|&x| {
                let p = x as f64 / nf;
                -p * p.ln()
            })
            .sum()
    };
    let (ha, hb) = (entropy(&rows), entropy(&cols));
    let mut mi = 0f64;
    for (i, row) in table.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0 {
                let v = nij as f64;
                mi += v / nf * (nf * v / (rows[i] as f64 * cols[j] as f64)).ln();
            }
        }
    }
    // Expected MI under the permutation model.
    let lf = |x: usize| ln_gamma(x as f64 + 1.0);
    let mut emi = 0f64;
    for &ai in &rows {
        for &bj in &cols {
            let lo = (ai + bj).saturating_sub(n).max(1);
            for nij in lo..=ai.min(bj) {
                let v = nij as f64;
                let term = v / nf * (nf * v / (ai as f64 * bj as f64)).ln();
                let log_p = lf(ai) + lf(bj) + lf(n - ai) + lf(n - bj)
                    - lf(n)
                    - lf(nij)
                    - lf(ai - nij)
                    - lf(bj - nij)
                    - lf(n - ai - bj + nij);
                emi += term * log_p.exp();
            }
        }
    }
    let mean_h = 0.5 * (ha + hb);
    if ha == 0.0 && hb == 0.0 {
        return (1.0, 1.0);
    }
    let nmi = if mean_h > 0.0 { mi / mean_h } else { 0.0 };
    let denom = mean_h - emi;
    let ami = if denom.abs() < 1e-15 {
        if (mi - emi).abs() < 1e-15 { 1.0 } else { 0.0 }
    } else {
        (mi - emi) / denom
    };
    (nmi, ami)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut f = 1f64;
        for k in 1..20 {
            f *= k as f64;
            assert!((ln_gamma(k as f64 + 1.0) - f.ln()).abs() < 1e-10 * f.ln().max(1.0));
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }
}
