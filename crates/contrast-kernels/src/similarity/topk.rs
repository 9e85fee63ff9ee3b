//! Blocked similarity search: the `k` most similar bank rows for every query.
//!
//! Queries are processed in blocks so that at most `block x N` similarities exist at
//! once; each block's similarities come from one matrix product and its rows are
//! reduced to their top `k` in parallel.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// The `k` nearest bank rows of each query, most similar first.
#[derive(Debug, Clone)]
pub struct TopK {
    /// Similarities `[Q, k]`, descending per row.
    pub values: Vec<f32>,
    /// Bank row indices `[Q, k]`, aligned with `values`.
    pub indices: Vec<u32>,
    pub k: usize,
}

impl TopK {
    /// Row `q` as `(similarity, index)` pairs.
    pub fn row(&self, q: usize) -> impl Iterator<Item = (f32, u32)> + '_ {
        let r = q * self.k..(q + 1) * self.k;
        self.values[r.clone()]
            .iter()
            .copied()
            .zip(self.indices[r].iter().copied())
    }
}

/// Queries per block: bounds the similarity buffer to `QUERY_BLOCK x N` floats.
pub const QUERY_BLOCK: usize = 256;

/// Top-`k` dot-product similarities of `queries` `[Q, D]` against `bank` `[N, D]`
/// (cosine when both are normalised). Ties break towards the lower index.
pub fn topk_similarity(queries: &Tensor, bank: &Tensor, k: usize) -> Result<TopK> {
    let (q, d) = queries.dims2()?;
    let (n, d2) = bank.dims2()?;
    if d != d2 {
        candle_core::bail!("topk_similarity: queries have dimension {d}, bank rows {d2}");
    }
    if k == 0 || k > n {
        candle_core::bail!("topk_similarity: k = {k} must be in 1..={n} (bank size)");
    }
    let bank_t = bank.to_dtype(DType::F32)?.t()?.contiguous()?;
    let queries = queries.to_dtype(DType::F32)?;
    let mut values = Vec::with_capacity(q * k);
    let mut indices = Vec::with_capacity(q * k);
    for start in (0..q).step_by(QUERY_BLOCK) {
        let len = QUERY_BLOCK.min(q - start);
        let sims = queries.narrow(0, start, len)?.matmul(&bank_t)?;
        let sims: Vec<f32> = sims.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        let rows: Vec<(Vec<f32>, Vec<u32>)> = sims
            .par_chunks(n)
            .map(|row| {
                let mut idx: Vec<u32> = (0..n as u32).collect();
                let cmp =
                    |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                if k < n {
                    idx.select_nth_unstable_by(k - 1, cmp);
                    idx.truncate(k);
                }
                idx.sort_unstable_by(cmp);
                (idx.iter().map(|&i| row[i as usize]).collect(), idx)
            })
            .collect();
        for (v, i) in rows {
            values.extend(v);
            indices.extend(i);
        }
    }
    Ok(TopK { values, indices, k })
}
