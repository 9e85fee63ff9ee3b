//! A whole-dataset memory bank (InstDisc / NPID): one normalised vector per training
//! example, updated by index with momentum, with labels for diagnostics and mining.

use crate::error::{Result, invalid};
use candle_core::{DType, Device, Tensor};
use contrast_kernels::{TopK, l2_normalize, topk_similarity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// The bank.
#[derive(Debug, Clone)]
pub struct MemoryBank {
    vectors: Tensor,
    labels: Vec<i64>,
    momentum: f64,
}

impl MemoryBank {
    /// `size` entries of width `dim`, seeded random unit vectors; `momentum` in
    /// `[0, 1)` is the weight of the old value in an update (InvP: 0.5, NPID: 0.5).
    pub fn new(size: usize, dim: usize, momentum: f64, seed: u64, device: &Device) -> Result<Self> {
        if size == 0 || dim == 0 {
            return Err(invalid(
                "size",
                format!("size ({size}) and dim ({dim}) must be >= 1"),
            ));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(invalid("momentum", format!("{momentum} is outside [0, 1)")));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let init: Vec<f32> = (0..size * dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        Ok(Self {
            vectors: l2_normalize(&Tensor::from_vec(init, (size, dim), device)?)?,
            labels: vec![-1; size],
            momentum,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the bank has no entry.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The vectors `[N, D]`.
    pub fn vectors(&self) -> &Tensor {
        &self.vectors
    }

    /// Label of each entry (`-1` when unknown).
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    fn check_indices(&self, indices: &[u32]) -> Result<()> {
        match indices.iter().find(|&&i| i as usize >= self.len()) {
            Some(i) => Err(invalid(
                "indices",
                format!("entry {i} does not exist (bank has {})", self.len()),
            )),
            None => Ok(()),
        }
    }

    /// `v_i <- normalize(m v_i + (1 - m) normalize(x_i))` for each row of `x` `[B, D]`
    /// (detached) at `indices`, recording `labels` when given. Duplicate indices apply
    /// in order (the last wins).
    pub fn update(&mut self, indices: &[u32], x: &Tensor, labels: Option<&[i64]>) -> Result<()> {
        self.check_indices(indices)?;
        let (b, d) = x
            .dims2()
            .map_err(|_| invalid("x", format!("expected [B, D], got {:?}", x.dims())))?;
        if b != indices.len() || d != self.vectors.dim(1)? {
            return Err(invalid(
                "x",
                format!(
                    "[{b}, {d}] does not fit {} indices into a [{}, {}] bank",
                    indices.len(),
                    self.len(),
                    self.vectors.dim(1)?
                ),
            ));
        }
        if labels.is_some_and(|l| l.len() != b) {
            return Err(invalid("labels", format!("expected {b} labels")));
        }
        let idx = Tensor::from_slice(indices, b, x.device())?;
        let old = self.vectors.index_select(&idx, 0)?;
        let new = l2_normalize(&x.detach().to_dtype(self.vectors.dtype())?)?;
        let mixed = l2_normalize(&((old * self.momentum)? + (new * (1.0 - self.momentum))?)?)?;
        let rows: Vec<Tensor> = (0..b)
            .map(|r| mixed.narrow(0, r, 1))
            .collect::<candle_core::Result<_>>()?;
        for (r, &i) in indices.iter().enumerate() {
            self.vectors.slice_set(&rows[r], 0, i as usize)?;
            if let Some(l) = labels {
                self.labels[i as usize] = l[r];
            }
        }
        Ok(())
    }

    /// `count` distinct random entries, none of them in `exclude`.
    pub fn sample<R: Rng>(&self, count: usize, exclude: &[u32], rng: &mut R) -> Result<Vec<u32>> {
        let available = self.len()
            - exclude
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
                .min(self.len());
        if count > available {
            return Err(invalid(
                "count",
                format!("{count} samples requested, {available} entries available"),
            ));
        }
        let excluded: std::collections::HashSet<u32> = exclude.iter().copied().collect();
        let mut out = std::collections::BTreeSet::new();
        let mut order = Vec::with_capacity(count);
        while order.len() < count {
            let i = rng.random_range(0..self.len() as u32);
            if !excluded.contains(&i) && out.insert(i) {
                order.push(i);
            }
        }
        Ok(order)
    }

    /// The `k` entries most similar to each query `[Q, D]` (cosine), through the
    /// kernels' blocked top-k.
    pub fn nearest(&self, queries: &Tensor, k: usize) -> Result<TopK> {
        Ok(topk_similarity(&l2_normalize(queries)?, &self.vectors, k)?)
    }

    /// The bank as named tensors, for checkpoints.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut m = HashMap::new();
        m.insert("vectors".into(), self.vectors.copy()?);
        m.insert(
            "labels".into(),
            Tensor::from_slice(&self.labels, self.len(), self.vectors.device())?,
        );
        Ok(m)
    }

    /// Restores a bank saved with [`MemoryBank::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let v = state
            .get("vectors")
            .ok_or_else(|| invalid("state", "missing `vectors`"))?;
        let l = state
            .get("labels")
            .ok_or_else(|| invalid("state", "missing `labels`"))?;
        if v.dims() != self.vectors.dims() || l.elem_count() != self.len() {
            return Err(invalid(
                "state",
                format!(
                    "bank {:?} differs from the saved {:?}",
                    self.vectors.dims(),
                    v.dims()
                ),
            ));
        }
        self.vectors = v.to_dtype(self.vectors.dtype())?.contiguous()?;
        self.labels = l.to_dtype(DType::I64)?.to_vec1()?;
        Ok(())
    }
}
