//! MoCo's InfoNCE: a query against its key and a queue of negatives.

use crate::error::{Result, check_matrix, check_same_shape, check_temperature, invalid};
use crate::generalized::{generalized_info_nce, one_hot};
use candle_core::Tensor;
use contrast_kernels::{Candidates, Positive, l2_normalize, streaming_info_nce};
use serde::{Deserialize, Serialize};

/// Parameters of [`moco_info_nce`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MocoConfig {
    /// Temperature (MoCo v1: 0.07, v2: 0.2).
    pub temperature: f64,
}

impl Default for MocoConfig {
    fn default() -> Self {
        Self { temperature: 0.2 }
    }
}

/// Checks a queue `[K, D]` against embeddings of width `d`.
pub(crate) fn check_queue(queue: &Tensor, d: usize) -> Result<usize> {
    let (k, dq) = check_matrix("queue", queue)?;
    if dq != d {
        return Err(invalid(
            "queue",
            format!("rows have dimension {dq}, embeddings have {d}"),
        ));
    }
    Ok(k)
}

/// `[q.k | q.queue] / t` for normalised `q`, `k` `[B, D]` and the queue `[K, D]`:
/// `[B, 1 + K]`, the positive in column 0. The queue is used as given (already
/// normalised) and gets no gradient.
pub(crate) fn query_logits(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let pos = (q * k)?.sum_keepdim(1)?;
    let neg = q.matmul(&queue.detach().t()?)?;
    Ok((Tensor::cat(&[pos, neg], 1)? / temperature)?)
}

/// MoCo InfoNCE: queries `q` and keys `k` `[B, D]` (raw; normalised inside), queue
/// `[K, D]` of normalised keys (constant).
///
/// Logits `[q.k_i, q.queue] / t`, target column 0. Reduction: mean over the `B`
/// queries (one-way). The gradient to `k` flows through the positive logit only;
/// MoCo's momentum encoder detaches `k` entirely.
///
/// This streams over the queue ([`contrast_kernels::streaming_info_nce`]: the kernel on
/// CPU f32/f64, tensor ops elsewhere);
/// [`moco_info_nce_reference`] is the dense composition.
pub fn moco_info_nce(q: &Tensor, k: &Tensor, queue: &Tensor, temperature: f64) -> Result<Tensor> {
    moco_info_nce_keyed(q, k, queue, temperature, None)
}

/// MoCo InfoNCE with a label-aware queue: queue entries whose key equals the
/// query's (`keys = (query_keys [B], queue_keys [K])`, e.g. labels or pseudo-labels;
/// negative keys never match) are not used as negatives
/// (pytorch-metric-learning's `CrossBatchMemory` use case).
pub fn moco_info_nce_keyed(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    temperature: f64,
    keys: Option<(Vec<i64>, Vec<i64>)>,
) -> Result<Tensor> {
    let (b, d) = check_same_shape("q", q, "k", k)?;
    let kq = check_queue(queue, d)?;
    check_temperature("temperature", temperature)?;
    if let Some((rk, ck)) = &keys
        && (rk.len() != b || ck.len() != kq)
    {
        return Err(invalid(
            "keys",
            format!("expected {b} query keys and {kq} queue keys"),
        ));
    }
    let (qn, kn) = (l2_normalize(q)?, l2_normalize(k)?);
    let extra = ((&qn * &kn)?.sum(1)? / temperature)?;
    let spec = Candidates {
        positive: Positive::Extra,
        exclude_self: false,
        keys,
        ..Default::default()
    };
    let queue = queue.detach().to_dtype(qn.dtype())?;
    Ok(streaming_info_nce(&qn, &queue, &extra, spec, temperature)?)
}

/// MoCo InfoNCE as a dense composition (the reference; any device).
pub fn moco_info_nce_reference(
    q: &Tensor,
    k: &Tensor,
    queue: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let (b, d) = check_same_shape("q", q, "k", k)?;
    check_queue(queue, d)?;
    check_temperature("temperature", temperature)?;
    let l = query_logits(&l2_normalize(q)?, &l2_normalize(k)?, queue, temperature)?;
    let targets = one_hot(&vec![0; b], l.dim(1)?, l.dtype(), l.device())?;
    Ok(generalized_info_nce(&l, &targets, None, None)?.mean_all()?)
}
