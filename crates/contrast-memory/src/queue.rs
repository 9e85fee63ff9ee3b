//! A FIFO queue of normalised keys (MoCo), with a key per entry: instance id and
//! label (or pseudo-label / cluster id).
//!
//! Any capacity works; the batch size need not divide it, and a batch that reaches
//! the end wraps around to the start. Keys enter without gradient, after the loss.
//! Entries not yet written hold random unit vectors with id and label `-1`, as MoCo
//! initialises its queue.

use crate::error::{Result, invalid};
use candle_core::{DType, Device, Tensor};
use contrast_kernels::{TopK, l2_normalize, topk_similarity};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;

/// Id or label of an entry that holds no real sample yet.
pub const EMPTY: i64 = -1;

/// The queue.
#[derive(Debug, Clone)]
pub struct KeyQueue {
    keys: Tensor,
    ids: Vec<i64>,
    labels: Vec<i64>,
    ptr: usize,
    /// Entries written since creation (saturates at the capacity).
    filled: usize,
}

impl KeyQueue {
    /// A queue of `capacity` keys of width `dim`, initialised with seeded random unit
    /// vectors.
    pub fn new(capacity: usize, dim: usize, seed: u64, device: &Device) -> Result<Self> {
        if capacity == 0 || dim == 0 {
            return Err(invalid(
                "capacity",
                format!("capacity ({capacity}) and dim ({dim}) must be >= 1"),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let init: Vec<f32> = (0..capacity * dim)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let keys = l2_normalize(&Tensor::from_vec(init, (capacity, dim), device)?)?;
        Ok(Self {
            keys,
            ids: vec![EMPTY; capacity],
            labels: vec![EMPTY; capacity],
            ptr: 0,
            filled: 0,
        })
    }

    /// Number of entries.
    pub fn capacity(&self) -> usize {
        self.ids.len()
    }

    /// Key width.
    pub fn dim(&self) -> usize {
        self.keys.dim(1).unwrap_or(0)
    }

    /// Entries written so far (at most the capacity).
    pub fn filled(&self) -> usize {
        self.filled
    }

    /// The next write position.
    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// The keys `[K, D]` (unit rows, no gradient).
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }

    /// Instance id of each entry (`-1` when empty).
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Label, pseudo-label or cluster id of each entry (`-1` when unknown).
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// Bytes held by the keys and their ids and labels.
    pub fn bytes(&self) -> usize {
        self.capacity() * (self.dim() * self.keys.dtype().size_in_bytes() + 16)
    }

    /// Appends `keys` `[B, D]` (normalised here, detached) with their ids and labels,
    /// overwriting the oldest entries. With `mask`, only rows where it is `true` are
    /// enqueued (pytorch-metric-learning's `enqueue_mask`). Returns how many entered.
    pub fn enqueue(
        &mut self,
        keys: &Tensor,
        ids: &[i64],
        labels: &[i64],
        mask: Option<&[bool]>,
    ) -> Result<usize> {
        let (b, d) = keys
            .dims2()
            .map_err(|_| invalid("keys", format!("expected [B, D], got {:?}", keys.dims())))?;
        if d != self.dim() {
            return Err(invalid(
                "keys",
                format!("width {d} differs from the queue's {}", self.dim()),
            ));
        }
        if ids.len() != b || labels.len() != b {
            return Err(invalid(
                "ids",
                format!("{} ids and {} labels for {b} keys", ids.len(), labels.len()),
            ));
        }
        if mask.is_some_and(|m| m.len() != b) {
            return Err(invalid(
                "mask",
                format!("{} entries for {b} keys", mask.map_or(0, |m| m.len())),
            ));
        }
        let rows: Vec<usize> = (0..b).filter(|&i| mask.is_none_or(|m| m[i])).collect();
        if rows.is_empty() {
            return Ok(0);
        }
        // Only the newest `capacity` rows survive one enqueue; the pointer moves past
        // the overwritten ones, so the state equals enqueueing row by row.
        let skipped = rows.len().saturating_sub(self.capacity());
        self.ptr = (self.ptr + skipped) % self.capacity();
        let total = rows.len();
        let rows = &rows[skipped..];
        let index = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            keys.device(),
        )?;
        let new = l2_normalize(&keys.detach().index_select(&index, 0)?)?
            .to_dtype(self.keys.dtype())?
            .contiguous()?;
        let mut written = 0;
        while written < rows.len() {
            let n = (rows.len() - written).min(self.capacity() - self.ptr);
            self.keys
                .slice_set(&new.narrow(0, written, n)?, 0, self.ptr)?;
            for (k, &r) in rows[written..written + n].iter().enumerate() {
                self.ids[self.ptr + k] = ids[r];
                self.labels[self.ptr + k] = labels[r];
            }
            written += n;
            self.ptr = (self.ptr + n) % self.capacity();
        }
        self.filled = (self.filled + total).min(self.capacity());
        Ok(total)
    }

    /// The `k` entries most similar to each query `[Q, D]` (cosine), through the
    /// kernels' blocked top-k. Entries never written (random initial keys) are
    /// included only once the queue has wrapped.
    pub fn nearest(&self, queries: &Tensor, k: usize) -> Result<TopK> {
        let live = if self.filled < self.capacity() {
            self.keys.narrow(0, 0, self.filled)?
        } else {
            self.keys.clone()
        };
        if self.filled == 0 {
            return Err(invalid("queue", "no entry has been written yet"));
        }
        Ok(topk_similarity(&l2_normalize(queries)?, &live, k)?)
    }

    /// The queue as named tensors, for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let dev = self.keys.device();
        let mut m = HashMap::new();
        m.insert("keys".into(), self.keys.copy()?);
        m.insert(
            "ids".into(),
            Tensor::from_slice(&self.ids, self.ids.len(), dev)?,
        );
        m.insert(
            "labels".into(),
            Tensor::from_slice(&self.labels, self.labels.len(), dev)?,
        );
        m.insert(
            "cursor".into(),
            Tensor::from_slice(&[self.ptr as i64, self.filled as i64], 2, dev)?,
        );
        Ok(m)
    }

    /// Restores a queue saved with [`KeyQueue::state`]; shapes must match this queue.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &'static str| {
            state
                .get(k)
                .ok_or_else(|| invalid("state", format!("missing `{k}`")))
        };
        let keys = get("keys")?;
        if keys.dims() != self.keys.dims() {
            return Err(invalid(
                "state",
                format!(
                    "keys {:?} differ from the queue's {:?}",
                    keys.dims(),
                    self.keys.dims()
                ),
            ));
        }
        let ids: Vec<i64> = get("ids")?.to_dtype(DType::I64)?.to_vec1()?;
        let labels: Vec<i64> = get("labels")?.to_dtype(DType::I64)?.to_vec1()?;
        let cursor: Vec<i64> = get("cursor")?.to_dtype(DType::I64)?.to_vec1()?;
        if ids.len() != self.capacity() || labels.len() != self.capacity() || cursor.len() != 2 {
            return Err(invalid(
                "state",
                "ids, labels or cursor have the wrong length",
            ));
        }
        if cursor[0] < 0 || cursor[0] as usize >= self.capacity() {
            return Err(invalid(
                "state",
                format!("write position {} outside the queue", cursor[0]),
            ));
        }
        self.keys = keys
            .to_dtype(self.keys.dtype())?
            .to_device(self.keys.device())?
            .contiguous()?;
        self.ids = ids;
        self.labels = labels;
        self.ptr = cursor[0] as usize;
        self.filled = (cursor[1].max(0) as usize).min(self.capacity());
        Ok(())
    }
}
