//! Shared plumbing of the multi-view losses: validation, normalisation, similarity
//! logits and the usual masks.

use crate::error::{Result, check_matrix, invalid};
use candle_core::{DType, Device, Tensor};
use contrast_kernels::l2_normalize;

/// Checks `V >= 2` views of identical shape `[B, D]`; returns `(V, B, D)`.
pub fn check_views(views: &[Tensor]) -> Result<(usize, usize, usize)> {
    if views.len() < 2 {
        return Err(invalid(
            "views",
            format!("at least 2 views are required, got {}", views.len()),
        ));
    }
    let (b, d) = check_matrix("views", &views[0])?;
    for (i, v) in views.iter().enumerate().skip(1) {
        if v.dims() != views[0].dims() {
            return Err(invalid(
                "views",
                format!(
                    "view {i} has shape {:?}, view 0 has {:?}",
                    v.dims(),
                    views[0].dims()
                ),
            ));
        }
    }
    Ok((views.len(), b, d))
}

/// The views stacked view-major and L2-normalised: `[V * B, D]`, row `v * B + i`.
pub fn stack_normalized(views: &[Tensor]) -> Result<Tensor> {
    Ok(l2_normalize(&Tensor::cat(views, 0)?)?)
}

/// Scaled cosine logits `a b^T / t` of already normalised rows.
pub fn logits(a: &Tensor, b: &Tensor, temperature: f64) -> Result<Tensor> {
    Ok((a.matmul(&b.t()?)? / temperature)?)
}

/// `[n, n]` weights: 1 everywhere but the diagonal (the anchor itself).
pub fn not_self(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    Ok((Tensor::ones((n, n), dtype, device)? - Tensor::eye(n, dtype, device)?)?)
}

/// Reads class labels `[B]` (any integer dtype) as `u32`, checking the length.
pub fn labels_vec(labels: &Tensor, b: usize) -> Result<Vec<u32>> {
    if labels.dims() != [b] {
        return Err(invalid(
            "labels",
            format!(
                "expected [{b}] (one per image), got shape {:?}",
                labels.dims()
            ),
        ));
    }
    Ok(labels.to_dtype(DType::U32)?.to_vec1::<u32>()?)
}

/// A dense `[rows, cols]` tensor from a row-major closure.
pub fn dense(
    rows: usize,
    cols: usize,
    dtype: DType,
    device: &Device,
    f: impl Fn(usize, usize) -> f32,
) -> Result<Tensor> {
    let data: Vec<f32> = (0..rows * cols).map(|k| f(k / cols, k % cols)).collect();
    Ok(Tensor::from_vec(data, (rows, cols), device)?.to_dtype(dtype)?)
}
