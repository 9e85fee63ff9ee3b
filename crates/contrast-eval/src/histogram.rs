//! How far same-class pairs sit from different-class pairs: histograms of the
//! cosine similarity of every pair of rows, split by whether the two share a class,
//! and their overlap (the shared area of the two normalised histograms: 0 when a
//! threshold separates them, 1 when they coincide).

use crate::error::{Result, check_labelled, invalid};
use candle_core::{DType, Tensor};
use contrast_kernels::l2_normalize;

/// Rows whose pairs are histogrammed (the first ones): `O(N^2)` pairs.
pub const HISTOGRAM_ROWS: usize = 4000;

/// Cosine histograms of same-class and different-class pairs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SimilarityHistogram {
    /// Bin edges over `[-1, 1]`, `bins + 1` of them.
    pub edges: Vec<f64>,
    /// Share of the same-class pairs in each bin (sums to 1).
    pub positive: Vec<f64>,
    /// Share of the different-class pairs in each bin (sums to 1).
    pub negative: Vec<f64>,
    /// `sum_b min(positive_b, negative_b)`.
    pub overlap: f64,
    pub positive_mean: f64,
    pub negative_mean: f64,
    pub positive_pairs: usize,
    pub negative_pairs: usize,
}

/// Histograms with `bins` bins of the pairs `i < j` among the first
/// [`HISTOGRAM_ROWS`] rows of `features`.
pub fn similarity_histogram(
    features: &Tensor,
    labels: &[u32],
    num_classes: usize,
    bins: usize,
) -> Result<SimilarityHistogram> {
    let n = check_labelled("features", features, labels, num_classes)?.min(HISTOGRAM_ROWS);
    if bins == 0 {
        return Err(invalid("bins", "must be at least 1"));
    }
    let z = l2_normalize(&features.narrow(0, 0, n)?.to_dtype(DType::F32)?)?;
    let sims: Vec<Vec<f32>> = z.matmul(&z.t()?)?.to_vec2()?;
    let (mut pos, mut neg) = (vec![0usize; bins], vec![0usize; bins]);
    let (mut pos_sum, mut neg_sum) = (0f64, 0f64);
    for (i, row) in sims.iter().enumerate() {
        for (j, &s) in row.iter().enumerate().skip(i + 1) {
            let s = (s as f64).clamp(-1.0, 1.0);
            let b = (((s + 1.0) / 2.0 * bins as f64) as usize).min(bins - 1);
            if labels[i] == labels[j] {
                pos[b] += 1;
                pos_sum += s;
            } else {
                neg[b] += 1;
                neg_sum += s;
            }
        }
    }
    let (np, nn) = (pos.iter().sum::<usize>(), neg.iter().sum::<usize>());
    let share = |c: &[usize], total: usize| -> Vec<f64> {
        c.iter().map(|&x| x as f64 / total.max(1) as f64).collect()
    };
    let (positive, negative) = (share(&pos, np), share(&neg, nn));
    let overlap = positive.iter().zip(&negative).map(|(a, b)| a.min(*b)).sum();
    Ok(SimilarityHistogram {
        edges: (0..=bins)
            .map(|k| -1.0 + 2.0 * k as f64 / bins as f64)
            .collect(),
        positive,
        negative,
        overlap,
        positive_mean: pos_sum / np.max(1) as f64,
        negative_mean: neg_sum / nn.max(1) as f64,
        positive_pairs: np,
        negative_pairs: nn,
    })
}
