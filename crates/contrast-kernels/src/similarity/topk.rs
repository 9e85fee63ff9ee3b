//! Blocked similarity search: the `k` most similar bank rows for every query.
//!
//! Queries are processed in blocks so that at most `block x N` similarities exist at
//! once; each block's similarities come from one matrix product and its rows are
//! reduced to their top `k`: in parallel on the host for a CPU tensor, and on the
//! device otherwise ([`select_on_device`]), so a GPU never copies a `block x N`
//! similarity matrix to the host, only the `block x k` result.

use candle_core::{D, DType, Result, Tensor};
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
        if !sims.device().is_cpu() {
            let (v, i) = select_on_device(&sims, k)?;
            values.extend(v.flatten_all()?.to_vec1::<f32>()?);
            indices.extend(i.flatten_all()?.to_vec1::<u32>()?);
            continue;
        }
        let sims: Vec<f32> = sims.flatten_all()?.to_vec1()?;
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

/// Columns per sort on the device: candle's CUDA argsort sorts a row in one thread
/// block's shared memory (4 bytes per padded column, 48 KiB by default).
const SORT_CHUNK: usize = 2048;

/// The top `k` of every row of `sims` `[R, N]` (f32, any device) as values `[R, k]`
/// (descending) and column indices `[R, k]` (u32), in tensor ops on the device.
///
/// Rows are cut into chunks of `SORT_CHUNK` (2,048) columns (the last padded with `-inf`);
/// each chunk is sorted on the device and keeps its best `k`, and the survivors are
/// reduced the same way until one sort is left. Among equal values the order is
/// the sort's, not necessarily the lower index first as on the host.
pub fn select_on_device(sims: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (rows, n) = sims.dims2()?;
    if k == 0 || k > n {
        candle_core::bail!("select_on_device: k = {k} must be in 1..={n}");
    }
    let chunk = SORT_CHUNK.max(2 * k);
    let device = sims.device();
    let mut values = sims.to_dtype(DType::F32)?;
    let mut index = Tensor::arange(0u32, n as u32, device)?
        .unsqueeze(0)?
        .broadcast_as((rows, n))?
        .contiguous()?;
    while values.dim(1)? > chunk {
        let cols = values.dim(1)?;
        let chunks = cols.div_ceil(chunk);
        let pad = chunks * chunk - cols;
        if pad > 0 {
            let fill = Tensor::full(f32::NEG_INFINITY, (rows, pad), device)?;
            values = Tensor::cat(&[&values, &fill], 1)?;
            index = Tensor::cat(
                &[&index, &Tensor::zeros((rows, pad), DType::U32, device)?],
                1,
            )?;
        }
        let values3 = values.reshape((rows, chunks, chunk))?;
        let best = values3
            .arg_sort_last_dim(false)?
            .narrow(D::Minus1, 0, k)?
            .contiguous()?;
        values = values3
            .gather(&best, D::Minus1)?
            .reshape((rows, chunks * k))?;
        index = index
            .reshape((rows, chunks, chunk))?
            .gather(&best, D::Minus1)?
            .reshape((rows, chunks * k))?;
    }
    let best = values
        .arg_sort_last_dim(false)?
        .narrow(D::Minus1, 0, k)?
        .contiguous()?;
    Ok((
        values.gather(&best, D::Minus1)?,
        index.gather(&best, D::Minus1)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Distinct similarities (a permutation scaled into [-1, 1)), so that the order
    /// is unique and both selections must agree exactly.
    fn distinct(rows: usize, n: usize, seed: u64) -> Tensor {
        let mut v: Vec<f32> = Vec::with_capacity(rows * n);
        for r in 0..rows {
            let mut perm: Vec<u64> = (0..n as u64).collect();
            let mut s = seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for i in (1..n).rev() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                perm.swap(i, (s % (i as u64 + 1)) as usize);
            }
            v.extend(perm.iter().map(|&p| p as f32 / n as f32 * 2.0 - 1.0));
        }
        Tensor::from_vec(v, (rows, n), &Device::Cpu).unwrap()
    }

    /// The device selection (run here on CPU tensors) equals the host selection,
    /// across one chunk, several chunks with a padded last one, and `k = n`.
    #[test]
    fn device_selection_matches_the_host_selection() {
        for (rows, n, k) in [
            (3, 50, 1),
            (3, 50, 50),
            (4, 5000, 7),
            (2, 9000, 200),
            (2, 2 * SORT_CHUNK + 1, 3),
        ] {
            let sims = distinct(rows, n, n as u64 + k as u64);
            let eye = Tensor::eye(n, DType::F32, &Device::Cpu).unwrap();
            // `topk_similarity(sims, I)` selects from the same values on the host.
            let host = topk_similarity(&sims, &eye, k).unwrap();
            let (v, i) = select_on_device(&sims, k).unwrap();
            assert_eq!(
                i.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
                host.indices
            );
            assert_eq!(
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                host.values
            );
        }
        assert!(select_on_device(&distinct(1, 4, 0), 5).is_err());
    }
}
