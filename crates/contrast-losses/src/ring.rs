//! Conditional negative sampling, Ring (Wu et al., 2021): only negatives in a band of
//! ranks around the query count.

use crate::error::{Result, check_same_shape, check_temperature, invalid};
use crate::generalized::{generalized_info_nce, one_hot};
use crate::moco::{check_queue, query_logits};
use crate::sampling::{check_ring, hardest_first, ring_band};
use crate::views::dense;
use candle_core::{DType, Tensor};
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Parameters of [`ring`]: the band keeps queue ranks `[inner_idx, outer_size)` of
/// the similarities sorted in decreasing order, where `outer_size = floor(outer * K)`
/// and `inner_idx = floor(inner * outer_size)` (mhw32/contrastive-ring-public,
/// `dynamic_inner`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingConfig {
    pub temperature: f64,
    /// Fraction of the queue in the outer ring, `(0, 1]`.
    pub outer: f64,
    /// Fraction of the outer ring dropped as too close, `[0, 1)`.
    pub inner: f64,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.07,
            outer: 0.1,
            inner: 0.1,
        }
    }
}

/// Per row of `sims` `[B, K]`: 1 for the entries whose rank (most similar first, ties
/// towards the lower index) lies in `band`, else 0.
pub fn band_mask(sims: &[f32], k: usize, band: Range<usize>) -> Vec<f32> {
    let mut mask = vec![0f32; sims.len()];
    for (row, out) in sims.chunks(k).zip(mask.chunks_mut(k)) {
        let mut order: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        order.sort_by(hardest_first);
        for &(j, _) in &order[band.clone()] {
            out[j] = 1.0;
        }
    }
    mask
}

/// Ring loss: queries `q`, keys `k` `[B, D]` (raw), queue `[K, D]` (normalised,
/// constant). The partition is `logsumexp([q.k, band of q.queue] / t)`. Reduction:
/// mean over `B` (one-way).
pub fn ring(q: &Tensor, k: &Tensor, queue: &Tensor, cfg: &RingConfig) -> Result<Tensor> {
    let (b, d) = check_same_shape("q", q, "k", k)?;
    let kq = check_queue(queue, d)?;
    check_temperature("temperature", cfg.temperature)?;
    check_ring(cfg.outer, cfg.inner)?;
    let band = ring_band(kq, cfg.outer, cfg.inner);
    if band.is_empty() {
        return Err(invalid(
            "outer",
            format!(
                "the band {band:?} of a {kq}-entry queue is empty: raise outer or the queue size"
            ),
        ));
    }
    let l = query_logits(&l2_normalize(q)?, &l2_normalize(k)?, queue, cfg.temperature)?;
    let sims: Vec<f32> = l
        .narrow(1, 1, kq)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let band = band_mask(&sims, kq, band);
    let weights = dense(b, kq + 1, l.dtype(), l.device(), |i, j| {
        if j == 0 { 1.0 } else { band[i * kq + j - 1] }
    })?;
    let targets = one_hot(&vec![0; b], kq + 1, l.dtype(), l.device())?;
    Ok(generalized_info_nce(&l, &targets, Some(&weights), None)?.mean_all()?)
}
