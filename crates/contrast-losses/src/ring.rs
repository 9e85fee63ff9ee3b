//! Conditional negative sampling, Ring (Wu et al., 2021): only negatives in a band of
//! ranks around the query count.

use crate::error::{Result, check_same_shape, check_temperature, invalid};
use crate::generalized::{generalized_info_nce, one_hot};
use crate::moco::{check_queue, query_logits};
use crate::views::dense;
use candle_core::{DType, Tensor};
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};

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

/// The rank band `[inner_idx, outer_size)` for a queue of `k` entries.
pub fn ring_band(k: usize, outer: f64, inner: f64) -> Result<(usize, usize)> {
    if !(outer > 0.0 && outer <= 1.0) {
        return Err(invalid("outer", format!("{outer} is outside (0, 1]")));
    }
    if !(0.0..1.0).contains(&inner) {
        return Err(invalid("inner", format!("{inner} is outside [0, 1)")));
    }
    let outer_size = (outer * k as f64).floor() as usize;
    let inner_idx = (inner * outer_size as f64).floor() as usize;
    if inner_idx >= outer_size {
        return Err(invalid(
            "outer",
            format!("the band [{inner_idx}, {outer_size}) of a {k}-entry queue is empty"),
        ));
    }
    Ok((inner_idx, outer_size))
}

/// Per row of `sims` `[B, K]`: 1 for the entries whose rank (descending) lies in
/// `[lo, hi)`, else 0.
pub fn band_mask(sims: &[f32], k: usize, lo: usize, hi: usize) -> Vec<f32> {
    let mut mask = vec![0f32; sims.len()];
    for (row, out) in sims.chunks(k).zip(mask.chunks_mut(k)) {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &j in &order[lo..hi] {
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
    let (lo, hi) = ring_band(kq, cfg.outer, cfg.inner)?;
    let l = query_logits(&l2_normalize(q)?, &l2_normalize(k)?, queue, cfg.temperature)?;
    let sims: Vec<f32> = l
        .narrow(1, 1, kq)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let band = band_mask(&sims, kq, lo, hi);
    let weights = dense(b, kq + 1, l.dtype(), l.device(), |i, j| {
        if j == 0 { 1.0 } else { band[i * kq + j - 1] }
    })?;
    let targets = one_hot(&vec![0; b], kq + 1, l.dtype(), l.device())?;
    Ok(generalized_info_nce(&l, &targets, Some(&weights), None)?.mean_all()?)
}
