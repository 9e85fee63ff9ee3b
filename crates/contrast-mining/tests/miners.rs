//! Label miners, semi-hard selection and MoCHi geometry against brute-force dense
//! references written from the definitions.

use candle_core::DType;
use contrast_mining::policy::{BatchEasyHard, BatchHard, Mochi, MultiSimilarity, SemiHard};
use contrast_mining::{MiningBatch, MiningPlan, Pipeline, PolicyConfig};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::{ids, labels, views};

fn plan(batch: &MiningBatch, policies: Vec<PolicyConfig>) -> MiningPlan {
    Pipeline::new(policies)
        .unwrap()
        .plan(batch, &mut ChaCha8Rng::seed_from_u64(7))
        .unwrap()
}

/// Candidates with weight > 0, sorted.
fn kept(plan: &MiningPlan, i: usize) -> Vec<usize> {
    (0..plan.candidates)
        .filter(|&c| plan.row(i)[c] > 0.0)
        .collect()
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Batch-hard and batch-easy-hard keep exactly one positive (the least or most
    /// similar same-label candidate) and one negative (the most similar other label).
    #[test]
    fn triplet_miners_match_brute_force(seed in any::<u64>(), b in 3usize..10, classes in 2i64..4) {
        let (z1, z2) = views(seed, b, 5);
        let l = labels(b, classes);
        let batch = MiningBatch::in_batch(&[z1, z2], &ids(b), Some(&l)).unwrap();
        let n = 2 * b;
        for (policy, easiest) in [(PolicyConfig::BatchHard(BatchHard {}), false), (PolicyConfig::BatchEasyHard(BatchEasyHard {}), true)] {
            let p = plan(&batch, vec![policy]);
            for i in 0..n {
                let s = batch.sim_row(i);
                let mut same: Vec<usize> = (0..n).filter(|&c| c != i && l[c % b] == l[i % b]).collect();
                same.sort_by(|&x, &y| s[x].total_cmp(&s[y]));
                let pos = if easiest { *same.last().unwrap() } else { same[0] };
                let neg = (0..n).filter(|&c| l[c % b] != l[i % b]).max_by(|&x, &y| s[x].total_cmp(&s[y]));
                prop_assert_eq!(&p.positives[i], &vec![(pos as u32, 1.0)]);
                let mut want: Vec<usize> = neg.into_iter().chain([pos]).collect();
                want.sort();
                prop_assert_eq!(kept(&p, i), want);
            }
        }
    }

    /// Multi-similarity: the kept pairs are exactly those of the two conditions.
    #[test]
    fn multi_similarity_matches_brute_force(seed in any::<u64>(), b in 3usize..10, eps in 0.0f64..0.5) {
        let (z1, z2) = views(seed, b, 5);
        let l = labels(b, 3);
        let batch = MiningBatch::in_batch(&[z1, z2], &ids(b), Some(&l)).unwrap();
        let p = plan(&batch, vec![PolicyConfig::MultiSimilarity(MultiSimilarity { epsilon: eps })]);
        let n = 2 * b;
        for i in 0..n {
            let s = batch.sim_row(i);
            let same: Vec<usize> = (0..n).filter(|&c| c != i && l[c % b] == l[i % b]).collect();
            let diff: Vec<usize> = (0..n).filter(|&c| l[c % b] != l[i % b]).collect();
            let min_pos = same.iter().map(|&c| s[c]).fold(f32::INFINITY, f32::min);
            let max_neg = diff.iter().map(|&c| s[c]).fold(f32::NEG_INFINITY, f32::max);
            let hard_pos: Vec<usize> = same.iter().copied().filter(|&c| s[c] < max_neg + eps as f32).collect();
            let hard_neg: Vec<usize> = diff.iter().copied().filter(|&c| s[c] > min_pos - eps as f32).collect();
            // With no hard positive the instance positives stay.
            let pos: Vec<usize> = if hard_pos.is_empty() { vec![(i + b) % n] } else { hard_pos };
            let got: Vec<usize> = p.positives[i].iter().map(|(c, _)| *c as usize).collect();
            prop_assert_eq!(&got, &pos);
            let mut want: Vec<usize> = hard_neg.into_iter().chain(pos.iter().copied().filter(|c| same.contains(c) || *c == (i + b) % n)).collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(kept(&p, i), want);
        }
    }

    /// Semi-hard keeps exactly the negatives inside `(s_pos - margin, s_pos)`, or all
    /// of them when that band is empty.
    #[test]
    fn semi_hard_keeps_the_band(seed in any::<u64>(), b in 3usize..10, margin in 0.05f64..1.0) {
        let (z1, z2) = views(seed, b, 5);
        let batch = MiningBatch::in_batch(&[z1, z2], &ids(b), None).unwrap();
        let p = plan(&batch, vec![PolicyConfig::SemiHard(SemiHard { margin })]);
        let n = 2 * b;
        for i in 0..n {
            let s = batch.sim_row(i);
            let partner = (i + b) % n;
            let negs: Vec<usize> = (0..n).filter(|&c| c != i && c != partner).collect();
            let band: Vec<usize> = negs.iter().copied().filter(|&c| s[c] > s[partner] - margin as f32 && s[c] < s[partner]).collect();
            let want = if band.is_empty() { negs } else { band };
            prop_assert_eq!(p.kept_negatives(i), want);
        }
    }

    /// Every MoCHi point is the normalised mix of two of the anchor's hardest
    /// negatives (weights >= 0), or of the anchor and one of them with the anchor's
    /// weight below the negative's.
    #[test]
    fn mochi_points_are_the_documented_mixes(seed in any::<u64>(), b in 4usize..8) {
        let (z1, z2) = views(seed, b, 6);
        let batch = MiningBatch::in_batch(&[z1, z2], &ids(b), None).unwrap();
        let (mixes, query_mixes, n_hardest) = (2usize, 2usize, 3usize);
        let p = plan(&batch, vec![PolicyConfig::Mochi(Mochi::new(n_hardest, mixes, query_mixes))]);
        let syn: Vec<f64> = p.synthetic.as_ref().unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let z: Vec<f64> = batch.candidates.flatten_all().unwrap().to_vec1().unwrap();
        let row = |c: usize| &z[c * 6..(c + 1) * 6];
        for i in 0..2 * b {
            let s = batch.sim_row(i);
            let mut negs = p.kept_negatives(i);
            negs.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
            let hard = &negs[..n_hardest];
            for k in 0..mixes + query_mixes {
                let point = &syn[(i * 4 + k) * 6..(i * 4 + k + 1) * 6];
                // Solve point = a x + c y in least squares for each admissible pair.
                let pairs: Vec<(&[f64], &[f64])> = if k < mixes {
                    hard.iter().flat_map(|&x| hard.iter().filter(move |&&y| y != x).map(move |&y| (row(x), row(y)))).collect()
                } else {
                    hard.iter().map(|&y| (row(i), row(y))).collect()
                };
                let fits = pairs.iter().any(|(x, y)| {
                    let (xx, yy, xy) = (dot(x, x), dot(y, y), dot(x, y));
                    let (px, py) = (dot(point, x), dot(point, y));
                    let det = xx * yy - xy * xy;
                    let a = (px * yy - py * xy) / det;
                    let c = (py * xx - px * xy) / det;
                    let resid: f64 = point.iter().zip(x.iter().zip(y.iter())).map(|(p, (u, v))| (p - a * u - c * v).powi(2)).sum();
                    let ordered = if k < mixes { true } else { a <= c + 1e-4 };
                    resid < 1e-8 && a >= -1e-4 && c >= -1e-4 && ordered
                });
                prop_assert!(fits, "anchor {} point {} is not a documented mix", i, k);
            }
        }
    }
}
