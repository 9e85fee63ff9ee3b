//! Mining over a memory queue (MoCo): the same policies, expressed for the streaming
//! kernel instead of a dense plan.
//!
//! A queue has tens of thousands of entries, so no `[B, K]` plan exists. Policies
//! read each query's similarities to the queue one block of queries at a time
//! (`ROW_BLOCK x K` floats) and leave, per query, what the kernel derives its mask
//! from: a similarity window (top-k, Ring, semi-hard), sorted lists of removed
//! (eliminated) and extra-positive (attracted) entries, and label keys (label-aware);
//! MoCHi's points stay per query, `[B, S]` logits beside the stream.

use crate::error::{Result, invalid};
use candle_core::{DType, Tensor};
use contrast_kernels::{Candidates, Positive, l2_normalize, streaming_info_nce};
use contrast_losses::weighted_logsumexp;

/// Queries per similarity block.
const ROW_BLOCK: usize = 32;

/// One MoCo step's queries against the queue.
#[derive(Debug, Clone)]
pub struct QueueBatch {
    /// Queries `[B, D]`, unit rows, detached.
    pub queries: Tensor,
    /// Each query's positive key `[B, D]`, unit rows, detached: with the query and
    /// the support views, the image's support set.
    pub keys: Tensor,
    /// Support views `[B, D]` each (unit rows, detached): more views of each query's
    /// image, embedded by the momentum encoder, that only help identify false
    /// negatives (FNC's support set). Empty unless given by [`QueueBatch::with_support`].
    pub support: Vec<Tensor>,
    /// Queue entries `[K, D]`, unit rows.
    pub queue: Tensor,
    pub query_ids: Vec<i64>,
    /// Read only by `label_aware` and by diagnostics.
    pub query_labels: Option<Vec<i64>>,
    /// Per entry; `-1` for entries never written.
    pub queue_ids: Vec<i64>,
    pub queue_labels: Vec<i64>,
}

impl QueueBatch {
    /// Normalises and detaches `queries` and `keys`; `queue` is used as stored.
    pub fn new(
        queries: &Tensor,
        keys: &Tensor,
        queue: &Tensor,
        query_ids: Vec<i64>,
        query_labels: Option<Vec<i64>>,
        queue_ids: Vec<i64>,
        queue_labels: Vec<i64>,
    ) -> Result<Self> {
        let (b, d) = queries.dims2()?;
        let (k, d2) = queue.dims2()?;
        if keys.dims() != [b, d] || d2 != d {
            return Err(invalid(
                "keys",
                format!(
                    "queries {:?}, keys {:?} and queue {:?} disagree",
                    queries.dims(),
                    keys.dims(),
                    queue.dims()
                ),
            ));
        }
        if query_ids.len() != b
            || query_labels.as_ref().is_some_and(|l| l.len() != b)
            || queue_ids.len() != k
            || queue_labels.len() != k
        {
            return Err(invalid(
                "query_ids",
                format!("expected {b} query ids/labels and {k} queue ids/labels"),
            ));
        }
        Ok(Self {
            queries: l2_normalize(&queries.detach())?.to_dtype(DType::F32)?,
            keys: l2_normalize(&keys.detach())?.to_dtype(DType::F32)?,
            support: Vec::new(),
            queue: queue.detach().to_dtype(DType::F32)?,
            query_ids,
            query_labels,
            queue_ids,
            queue_labels,
        })
    }

    /// Adds support views (each `[B, D]`, rows aligned with the queries), normalised
    /// and detached.
    pub fn with_support(mut self, views: &[Tensor]) -> Result<Self> {
        let dims = self.keys.dims().to_vec();
        for (s, v) in views.iter().enumerate() {
            if v.dims() != dims.as_slice() {
                return Err(invalid(
                    "support",
                    format!("support view {s} is {:?}, the keys {dims:?}", v.dims()),
                ));
            }
            self.support
                .push(l2_normalize(&v.detach())?.to_dtype(DType::F32)?);
        }
        Ok(self)
    }

    /// Number of queries.
    pub fn len(&self) -> usize {
        self.query_ids.len()
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.query_ids.is_empty()
    }

    /// Number of queue entries.
    pub fn entries(&self) -> usize {
        self.queue_ids.len()
    }

    /// Calls `f(i, sims_q, sims_support)` for every query `i` with its similarities
    /// to the whole queue and, when `with_support`, those of its support set (its key,
    /// then each support view), computed one block of queries at a time.
    pub fn for_each_row(
        &self,
        with_support: bool,
        mut f: impl FnMut(usize, &[f32], &[&[f32]]) -> Result<()>,
    ) -> Result<()> {
        let (b, k) = (self.len(), self.entries());
        let qt = self.queue.t()?;
        let block = |x: &Tensor, i0: usize, rows: usize| -> Result<Vec<f32>> {
            Ok(x.narrow(0, i0, rows)?
                .matmul(&qt)?
                .flatten_all()?
                .to_vec1()?)
        };
        let support: Vec<&Tensor> = if with_support {
            std::iter::once(&self.keys).chain(&self.support).collect()
        } else {
            Vec::new()
        };
        for i0 in (0..b).step_by(ROW_BLOCK) {
            let rows = ROW_BLOCK.min(b - i0);
            let sq = block(&self.queries, i0, rows)?;
            let ss = support
                .iter()
                .map(|x| block(x, i0, rows))
                .collect::<Result<Vec<_>>>()?;
            for r in 0..rows {
                let row: Vec<&[f32]> = ss.iter().map(|s| &s[r * k..(r + 1) * k]).collect();
                f(i0 + r, &sq[r * k..(r + 1) * k], &row)?;
            }
        }
        Ok(())
    }

    /// Cosine of each query with its key.
    pub fn positive_sims(&self) -> Result<Vec<f32>> {
        Ok((&self.queries * &self.keys)?.sum(1)?.to_vec1()?)
    }
}

/// What mining decided for a queue step, in the kernel's terms.
#[derive(Debug, Clone)]
pub struct QueuePlan {
    /// Label keys `(query, entry)`: equal keys are not negatives (label-aware).
    pub keys: Option<(Vec<i64>, Vec<i64>)>,
    /// Per query, the similarity band a negative must lie in.
    pub window: Option<Vec<(f32, f32)>>,
    /// Per query, sorted entries removed (eliminated false negatives).
    pub excluded: Vec<Vec<u32>>,
    /// Per query, sorted entries made positives (attracted false negatives).
    pub attracted: Vec<Vec<u32>>,
    /// Synthetic negatives per query `[B, S, D]` (unit rows, detached; MoCHi).
    pub synthetic: Option<Tensor>,
    /// Entries a policy identified as false negatives, per query (diagnostics).
    pub identified: Option<Vec<Vec<u32>>>,
}

impl QueuePlan {
    /// Every entry a negative, the key the positive.
    pub fn new(queries: usize) -> Self {
        Self {
            keys: None,
            window: None,
            excluded: vec![Vec::new(); queries],
            attracted: vec![Vec::new(); queries],
            synthetic: None,
            identified: None,
        }
    }

    /// Whether entry `j` at similarity `sim` is a kept negative of query `i` (the
    /// kernel's rule, without the synthetic columns).
    pub fn is_negative(&self, i: usize, j: usize, sim: f32) -> bool {
        if self.attracted[i].binary_search(&(j as u32)).is_ok()
            || self.excluded[i].binary_search(&(j as u32)).is_ok()
        {
            return false;
        }
        if let Some((qk, ek)) = &self.keys
            && qk[i] >= 0
            && qk[i] == ek[j]
        {
            return false;
        }
        self.window
            .as_ref()
            .is_none_or(|w| sim >= w[i].0 && sim <= w[i].1)
    }

    /// Narrows query `i`'s window to `[lo, hi]`.
    pub(crate) fn narrow_window(&mut self, i: usize, b: usize, lo: f32, hi: f32) {
        let w = self
            .window
            .get_or_insert_with(|| vec![(f32::NEG_INFINITY, f32::INFINITY); b]);
        w[i] = (w[i].0.max(lo), w[i].1.min(hi));
    }
}

/// MoCo's InfoNCE under a [`QueuePlan`]: queries `q` and keys `k` `[B, D]` (raw;
/// normalised here), the queue `[K, D]` (unit rows, no gradient), temperature `t`.
///
/// The streaming kernel masks the queue per the plan; each query's synthetic
/// negatives are folded into its extra logit (a log-sum-exp over `[B, S]`, so no
/// query streams another's points). Attracted entries join the positives:
/// `L_i = lse_i - mean_{p in {k_i} + A_i} l_ip`, which is the kernel's
/// `lse_i - l_ik` plus `l_ik - mean_p l_ip`, computed over the `sum |A_i|` gathered
/// entries. Reduction: mean over queries. CPU f32/f64.
pub fn mined_moco_info_nce(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    plan: &QueuePlan,
    temperature: f64,
) -> Result<Tensor> {
    let (b, _) = q.dims2()?;
    if plan.excluded.len() != b || plan.attracted.len() != b {
        return Err(invalid(
            "plan",
            format!("plan has {} rows for {b} queries", plan.excluded.len()),
        ));
    }
    let (qn, kn) = (l2_normalize(q)?, l2_normalize(k)?);
    let extra = ((&qn * &kn)?.sum(1)? / temperature)?;
    let candidates = queue.detach().to_dtype(qn.dtype())?;
    // Synthetic negatives join through the extra logit: with e' = log(exp(e) +
    // sum_s exp(l_is)), the kernel's `lse - e'` plus `e' - e` is `lse - e` over the
    // queue and the query's own points, and autograd splits the gradient exactly.
    let (kernel_extra, shift) = match &plan.synthetic {
        Some(syn) => {
            let syn = syn.to_dtype(qn.dtype())?.detach();
            let l = (qn.unsqueeze(1)?.broadcast_mul(&syn)?.sum(2)? / temperature)?;
            let all = Tensor::cat(&[&extra.unsqueeze(1)?, &l], 1)?;
            let merged = weighted_logsumexp(&all, None)?;
            let shift = (&merged - &extra)?.mean_all()?;
            (merged, Some(shift))
        }
        None => (extra.clone(), None),
    };
    let lists = |l: &Vec<Vec<u32>>| {
        if l.iter().all(|r| r.is_empty()) {
            None
        } else {
            Some(l.clone())
        }
    };
    let spec = Candidates {
        positive: Positive::Extra,
        exclude_self: false,
        keys: plan.keys.clone(),
        window: plan.window.clone(),
        excluded: lists(&plan.excluded),
        always_kept: lists(&plan.attracted),
    };
    let mut loss = streaming_info_nce(&qn, &candidates, &kernel_extra, spec, temperature)?;
    if let Some(shift) = shift {
        loss = (loss + shift)?;
    }
    let pairs: Vec<(u32, u32)> = plan
        .attracted
        .iter()
        .enumerate()
        .flat_map(|(i, a)| a.iter().map(move |&j| (i as u32, j)))
        .collect();
    if pairs.is_empty() {
        return Ok(loss);
    }
    // Attraction: + (1/B) sum_i [ m_i / (1 + m_i) e_i - sum_{j in A_i} l_ij / (1 + m_i) ].
    let dev = q.device();
    let share: Vec<f64> = plan
        .attracted
        .iter()
        .map(|a| 1.0 / (1.0 + a.len() as f64))
        .collect();
    let coef_e: Vec<f64> = plan
        .attracted
        .iter()
        .zip(&share)
        .map(|(a, s)| a.len() as f64 * s)
        .collect();
    let coef_l: Vec<f64> = pairs.iter().map(|(i, _)| share[*i as usize]).collect();
    let rows = Tensor::from_vec(
        pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
        pairs.len(),
        dev,
    )?;
    let cols = Tensor::from_vec(
        pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
        pairs.len(),
        dev,
    )?;
    let l = ((qn.index_select(&rows, 0)?
        * queue
            .detach()
            .to_dtype(qn.dtype())?
            .index_select(&cols, 0)?)?
    .sum(1)?
        / temperature)?;
    let coef_e = Tensor::from_vec(coef_e, b, dev)?.to_dtype(qn.dtype())?;
    let coef_l = Tensor::from_vec(coef_l, pairs.len(), dev)?.to_dtype(qn.dtype())?;
    let correction = (((extra * coef_e)?.sum_all()? - (l * coef_l)?.sum_all()?)? / b as f64)?;
    Ok((loss + correction)?)
}
