//! Blocked similarity search: the `k` most similar bank rows for every query.
//!
//! On the CPU, blocks of queries stream the bank in cache-sized tiles and keep a
//! running top-`k` per query behind a threshold, so no `[Q, N]` similarity matrix
//! exists and the selection is about one comparison per similarity. On a device,
//! blocks of queries form their `block x N` similarities and reduce them there
//! ([`select_on_device`]), so a GPU never copies a `block x N` similarity matrix to
//! the host, only the `block x k` result.

use crate::cpu::gemm::{Element, MatRef, matmul};
use crate::cpu::storage::contiguous;
use candle_core::{CpuStorage, D, DType, Result, Storage, Tensor};
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

/// Queries per block on a device: bounds the similarity buffer to `QUERY_BLOCK x N`
/// floats.
pub const QUERY_BLOCK: usize = 256;

/// Queries per task on the CPU: each task streams the whole bank once, tile by tile.
const HOST_QUERIES: usize = 128;
/// Bank rows per tile on the CPU: a `HOST_QUERIES x HOST_TILE` f32 tile is 512 KiB,
/// which stays in a core's L2 cache between the product and the scan.
const HOST_TILE: usize = 1024;

/// Top-`k` dot-product similarities of `queries` `[Q, D]` against `bank` `[N, D]`
/// (cosine when both are normalised). Ties break towards the lower index.
///
/// On the CPU each block of queries streams the bank in tiles: one product per tile,
/// then a scan that keeps, per query, the candidates above a running threshold (the
/// `k`-th best so far) and prunes them to `k` whenever `2k` have gathered, so the
/// selection costs about one comparison per similarity. On other devices each block
/// of queries forms its `[QUERY_BLOCK, N]` similarities and selects on the device
/// ([`select_on_device`]), so only the `[block, k]` result crosses to the host.
pub fn topk_similarity(queries: &Tensor, bank: &Tensor, k: usize) -> Result<TopK> {
    let (q, d) = queries.dims2()?;
    let (n, d2) = bank.dims2()?;
    if d != d2 {
        candle_core::bail!("topk_similarity: queries have dimension {d}, bank rows {d2}");
    }
    if k == 0 || k > n {
        candle_core::bail!("topk_similarity: k = {k} must be in 1..={n} (bank size)");
    }
    let queries = queries.to_dtype(DType::F32)?;
    let bank = bank.to_dtype(DType::F32)?;
    if queries.device().is_cpu() {
        // Read both in place: a large evaluation bank is not copied.
        let (queries, bank) = (queries.contiguous()?, bank.contiguous()?);
        let (qs, ql) = queries.storage_and_layout();
        let (bs, bl) = bank.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(qv)), Storage::Cpu(CpuStorage::F32(bv))) = (&*qs, &*bs)
        else {
            candle_core::bail!("topk_similarity: expected f32 CPU tensors");
        };
        let qv = contiguous(qv, ql, "topk_similarity: queries")?;
        let bv = contiguous(bv, bl, "topk_similarity: bank")?;
        return Ok(host_topk(qv, bv, q, n, d, k));
    }
    let bank_t = bank.t()?.contiguous()?;
    let mut values = Vec::with_capacity(q * k);
    let mut indices = Vec::with_capacity(q * k);
    for start in (0..q).step_by(QUERY_BLOCK) {
        let len = QUERY_BLOCK.min(q - start);
        let sims = queries.narrow(0, start, len)?.matmul(&bank_t)?;
        let (v, i) = select_on_device(&sims, k)?;
        values.extend(v.flatten_all()?.to_vec1::<f32>()?);
        indices.extend(i.flatten_all()?.to_vec1::<u32>()?);
    }
    Ok(TopK { values, indices, k })
}

/// One query's best candidates so far: `(similarity, bank index)`, at most `2k`, and
/// the threshold a new candidate must beat (the `k`-th best once `k` are known).
struct Running {
    kept: Vec<(f32, u32)>,
    threshold: f32,
}

/// Best first: higher similarity, then lower index.
fn best_first(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Running {
    fn new(k: usize) -> Self {
        Self {
            kept: Vec::with_capacity(2 * k + 1),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// Keeps the best `k` and raises the threshold to the `k`-th. A later candidate
    /// equal to it has a higher index, so it would rank below: only values strictly
    /// above the threshold can enter.
    fn prune(&mut self, k: usize) {
        if self.kept.len() >= k {
            self.kept.select_nth_unstable_by(k - 1, best_first);
            self.kept.truncate(k);
            self.threshold = self.kept.iter().fold(f32::INFINITY, |m, &(v, _)| m.min(v));
        }
    }

    /// Offers the similarities `row` of bank rows `j0..`.
    fn scan(&mut self, row: &[f32], j0: usize, k: usize) {
        const LANES: usize = 16;
        let mut chunks = row.chunks_exact(LANES);
        let mut base = j0;
        for chunk in &mut chunks {
            // Branch-free test of the whole chunk first: after the first tiles almost
            // no chunk holds a candidate.
            let t = self.threshold;
            let mut hit = false;
            for &v in chunk {
                hit |= v > t;
            }
            if hit {
                self.offer(chunk, base, k);
            }
            base += LANES;
        }
        self.offer(chunks.remainder(), base, k);
    }

    fn offer(&mut self, values: &[f32], j0: usize, k: usize) {
        for (o, &v) in values.iter().enumerate() {
            if v > self.threshold {
                self.kept.push((v, (j0 + o) as u32));
                if self.kept.len() >= 2 * k {
                    self.prune(k);
                }
            }
        }
    }

    /// The best `k`, best first.
    fn finish(mut self, k: usize) -> Vec<(f32, u32)> {
        self.prune(k);
        self.kept.sort_unstable_by(best_first);
        self.kept
    }
}

/// The CPU selection: blocks of [`HOST_QUERIES`] queries in parallel, each streaming
/// the bank in tiles of [`HOST_TILE`] rows.
fn host_topk(queries: &[f32], bank: &[f32], q: usize, n: usize, d: usize, k: usize) -> TopK {
    let blocks: Vec<Vec<(f32, u32)>> = (0..q.div_ceil(HOST_QUERIES))
        .into_par_iter()
        .map(|blk| {
            let r0 = blk * HOST_QUERIES;
            let rows = HOST_QUERIES.min(q - r0);
            let a = MatRef::row_major(&queries[r0 * d..(r0 + rows) * d], rows, d);
            let mut running: Vec<Running> = (0..rows).map(|_| Running::new(k)).collect();
            f32::with_scratch(rows * HOST_TILE, |tile| {
                for j0 in (0..n).step_by(HOST_TILE) {
                    let cols = HOST_TILE.min(n - j0);
                    let b = MatRef::row_major(&bank[j0 * d..(j0 + cols) * d], cols, d);
                    matmul(&mut tile[..rows * cols], a, b.t(), false, 1);
                    for (r, run) in running.iter_mut().enumerate() {
                        run.scan(&tile[r * cols..(r + 1) * cols], j0, k);
                    }
                }
            });
            running.into_iter().flat_map(|r| r.finish(k)).collect()
        })
        .collect();
    let (values, indices) = blocks.into_iter().flatten().unzip();
    TopK { values, indices, k }
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

    /// The host selection equals a full sort by (similarity descending, index
    /// ascending) with many ties, across several bank tiles and query blocks, for
    /// `k` from 1 to the whole bank.
    #[test]
    fn host_selection_equals_a_full_sort_with_ties() {
        let d = 3;
        for (q, n, k) in [
            (5, 40, 1),
            (5, 40, 40),
            (HOST_QUERIES + 3, 2 * HOST_TILE + 17, 7),
            (9, 3 * HOST_TILE, 200),
        ] {
            // Coarse values: many exact ties in every row.
            let qv: Vec<f32> = (0..q * d).map(|i| ((i * 7919) % 5) as f32 - 2.0).collect();
            let bv: Vec<f32> = (0..n * d)
                .map(|i| ((i * 104_729) % 3) as f32 - 1.0)
                .collect();
            let got = host_topk(&qv, &bv, q, n, d, k);
            for r in 0..q {
                let mut all: Vec<(f32, u32)> = (0..n)
                    .map(|j| {
                        let s = (0..d).map(|c| qv[r * d + c] * bv[j * d + c]).sum::<f32>();
                        (s, j as u32)
                    })
                    .collect();
                all.sort_by(best_first);
                let want: Vec<(f32, u32)> = all[..k].to_vec();
                let have: Vec<(f32, u32)> = got.row(r).collect();
                assert_eq!(have, want, "q {q} n {n} k {k} row {r}");
            }
        }
    }
}
