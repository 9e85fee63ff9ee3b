//! Retrieval metrics on a labelled embedding, as pytorch-metric-learning's
//! `AccuracyCalculator` defines them with the queries as their own reference set
//! (each query's own row excluded), on cosine similarity.
//!
//! For query `i` with `R_i` other rows of its class, ranked by similarity:
//! - precision@1: whether the nearest other row shares the class;
//! - R-precision: the share of the class among the `R_i` nearest;
//! - MAP@R: `(1 / R_i) sum_{k <= R_i} P(k) rel(k)`, the precision at each rank `k`
//!   that holds a same-class row, averaged over the first `R_i` ranks.
//!
//! Each is a mean over queries. Queries whose class has no other row (`R_i = 0`) have
//! nothing to retrieve and are left out of all three.

use crate::error::{Result, check_labelled, invalid};
use candle_core::{DType, Tensor};
use contrast_kernels::{l2_normalize, topk_similarity};

/// Retrieval metrics of one embedding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Retrieval {
    pub precision_at_1: f64,
    pub r_precision: f64,
    pub map_at_r: f64,
    /// Queries that counted (their class has another row).
    pub queries: usize,
}

/// Precision@1, R-precision and MAP@R of `features` `[N, D]` with `labels`.
pub fn retrieval(features: &Tensor, labels: &[u32], num_classes: usize) -> Result<Retrieval> {
    let n = check_labelled("features", features, labels, num_classes)?;
    let mut counts = vec![0usize; num_classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    let max_r = counts.iter().max().copied().unwrap_or(0).saturating_sub(1);
    if max_r == 0 {
        return Err(invalid(
            "labels",
            "no class has two rows: nothing to retrieve",
        ));
    }
    let z = l2_normalize(&features.to_dtype(DType::F32)?)?;
    // The R nearest others: one more than the largest R, then the query's own row out.
    let top = topk_similarity(&z, &z, (max_r + 1).min(n))?;
    let (mut p1, mut rp, mut map, mut queries) = (0f64, 0f64, 0f64, 0usize);
    for (i, &y) in labels.iter().enumerate() {
        let r = counts[y as usize] - 1;
        if r == 0 {
            continue;
        }
        let ranked: Vec<bool> = top
            .row(i)
            .filter(|&(_, j)| j as usize != i)
            .take(r)
            .map(|(_, j)| labels[j as usize] == y)
            .collect();
        let (mut hits, mut ap) = (0usize, 0f64);
        for (k, &rel) in ranked.iter().enumerate() {
            if rel {
                hits += 1;
                ap += hits as f64 / (k + 1) as f64;
            }
        }
        p1 += ranked.first().copied().unwrap_or(false) as u8 as f64;
        rp += hits as f64 / r as f64;
        map += ap / r as f64;
        queries += 1;
    }
    let q = queries as f64;
    Ok(Retrieval {
        precision_at_1: p1 / q,
        r_precision: rp / q,
        map_at_r: map / q,
        queries,
    })
}
