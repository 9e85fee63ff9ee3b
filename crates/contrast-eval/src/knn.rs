//! Weighted k-nearest-neighbour classification (InstDisc / lightly `knn_predict`).
//!
//! Features are L2-normalised; each query's `k` most similar bank rows vote for their
//! class with weight `exp(s / t)`; the class with the largest total wins. This is the
//! standard online monitor of self-supervised training.

use crate::error::{Result, check_labelled, invalid};
use candle_core::{DType, Tensor};
use contrast_kernels::{TopK, l2_normalize, topk_similarity};
use serde::{Deserialize, Serialize};

/// Neighbourhood size and vote temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnnConfig {
    /// Neighbours per query (200 is the InstDisc / solo-learn default).
    pub k: usize,
    /// Vote temperature `t > 0`; weights are `exp(similarity / t)`.
    pub temperature: f64,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 200,
            temperature: 0.1,
        }
    }
}

/// Class scores and predictions for a set of queries.
#[derive(Debug, Clone)]
pub struct KnnPrediction {
    /// Class scores `[Q, num_classes]`.
    pub scores: Vec<f64>,
    /// Predicted class per query.
    pub predictions: Vec<u32>,
    pub num_classes: usize,
}

/// Scores every class for each query row of `queries` against the labelled `bank`.
pub fn knn_predict(
    queries: &Tensor,
    bank: &Tensor,
    bank_labels: &[u32],
    num_classes: usize,
    cfg: &KnnConfig,
) -> Result<KnnPrediction> {
    let n = check_labelled("bank", bank, bank_labels, num_classes)?;
    if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
        return Err(invalid(
            "temperature",
            format!("{} must be > 0", cfg.temperature),
        ));
    }
    if cfg.k == 0 || cfg.k > n {
        return Err(invalid(
            "k",
            format!("{} must be in 1..={n} (the bank size)", cfg.k),
        ));
    }
    let q = l2_normalize(&queries.to_dtype(DType::F32)?)?;
    let b = l2_normalize(&bank.to_dtype(DType::F32)?)?;
    let top = topk_similarity(&q, &b, cfg.k)?;
    Ok(vote(&top, cfg.k, cfg.temperature, bank_labels, num_classes))
}

/// Class scores from the first `k` neighbours of each row of `top`, each weighted
/// `exp(s / t)`; the prediction is the best class, ties to the lower index.
fn vote(top: &TopK, k: usize, t: f64, bank_labels: &[u32], num_classes: usize) -> KnnPrediction {
    let rows = top.values.len() / top.k.max(1);
    let mut scores = vec![0f64; rows * num_classes];
    let mut predictions = Vec::with_capacity(rows);
    for r in 0..rows {
        let s = &mut scores[r * num_classes..(r + 1) * num_classes];
        for (sim, idx) in top.row(r).take(k) {
            s[bank_labels[idx as usize] as usize] += (sim as f64 / t).exp();
        }
        let best = (0..num_classes)
            .max_by(|&a, &b| s[a].total_cmp(&s[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        predictions.push(best as u32);
    }
    KnnPrediction {
        scores,
        predictions,
        num_classes,
    }
}

/// Top-1 accuracy of weighted kNN on `test` against the `train` bank.
pub fn knn_accuracy(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    test_labels: &[u32],
    num_classes: usize,
    cfg: &KnnConfig,
) -> Result<f64> {
    check_labelled("test", test, test_labels, num_classes)?;
    let pred = knn_predict(test, train, train_labels, num_classes, cfg)?;
    Ok(accuracy(&pred.predictions, test_labels))
}

/// Fraction of predictions equal to the labels.
pub fn accuracy(predictions: &[u32], labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let hits = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    hits as f64 / labels.len() as f64
}

impl KnnPrediction {
    /// The share of queries whose true class is among their `k` best-scored classes
    /// (ties broken towards the lower class index, as the top-1 prediction is).
    pub fn top_k_accuracy(&self, labels: &[u32], k: usize) -> f64 {
        let c = self.num_classes;
        if labels.is_empty() || c == 0 {
            return 0.0;
        }
        let hits = labels
            .iter()
            .enumerate()
            .filter(|&(q, &y)| {
                let s = &self.scores[q * c..(q + 1) * c];
                let better = (0..c)
                    .filter(|&j| s[j] > s[y as usize] || (s[j] == s[y as usize] && j < y as usize))
                    .count();
                better < k
            })
            .count();
        hits as f64 / labels.len() as f64
    }
}

/// One point of a kNN sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnPoint {
    pub k: usize,
    pub temperature: f64,
    pub top1: f64,
    pub top5: f64,
}

/// Weighted kNN top-1 and top-5 of `queries` against `bank` for every `k` in `ks`
/// (those above the bank size are left out) and every temperature, from one
/// similarity pass: the neighbours are found once for the largest `k`.
pub fn knn_sweep(
    queries: &Tensor,
    query_labels: &[u32],
    bank: &Tensor,
    bank_labels: &[u32],
    num_classes: usize,
    ks: &[usize],
    temperatures: &[f64],
) -> Result<Vec<KnnPoint>> {
    let n = check_labelled("bank", bank, bank_labels, num_classes)?;
    check_labelled("queries", queries, query_labels, num_classes)?;
    let ks: Vec<usize> = ks.iter().copied().filter(|&k| k >= 1 && k <= n).collect();
    let Some(&kmax) = ks.iter().max() else {
        return Err(invalid("ks", format!("no k in 1..={n} (the bank size)")));
    };
    if let Some(t) = temperatures.iter().find(|t| !(**t > 0.0 && t.is_finite())) {
        return Err(invalid("temperatures", format!("{t} must be > 0")));
    }
    let q = l2_normalize(&queries.to_dtype(DType::F32)?)?;
    let b = l2_normalize(&bank.to_dtype(DType::F32)?)?;
    let top = topk_similarity(&q, &b, kmax)?;
    let mut out = Vec::new();
    for &t in temperatures {
        for &k in &ks {
            let pred = vote(&top, k, t, bank_labels, num_classes);
            out.push(KnnPoint {
                k,
                temperature: t,
                top1: accuracy(&pred.predictions, query_labels),
                top5: pred.top_k_accuracy(query_labels, 5),
            });
        }
    }
    Ok(out)
}
