//! Adaptive soft contrastive learning, ASCL (Feng & Patras, 2022): soft targets over
//! the queue from the key's own neighbourhood, weighted by its confidence.

use crate::error::{Result, check_same_shape, check_temperature, invalid};
use crate::generalized::generalized_info_nce;
use crate::generalized::weighted_logsumexp;
use crate::moco::{check_queue, query_logits};
use candle_core::{D, Tensor};
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};

/// How the soft targets over the queue are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsclTargets {
    /// `min(nn * c * p_j, 1)` for the key-to-queue softmax `p` and confidence `c`.
    Ascl,
    /// The `nn` nearest queue entries, each with weight `c`.
    Ahcl,
    /// The `nn` nearest queue entries, each with weight 1.
    Hard,
}

/// Parameters of [`ascl`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsclConfig {
    /// Temperature of the loss logits (`T1`).
    pub temperature: f64,
    /// Temperature of the key-to-queue distribution (`T2`).
    pub target_temperature: f64,
    /// Neighbour count `K_nn`.
    pub nn_num: usize,
    #[serde(default = "default_targets")]
    pub targets: AsclTargets,
}

fn default_targets() -> AsclTargets {
    AsclTargets::Ascl
}

impl Default for AsclConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            target_temperature: 0.05,
            nn_num: 1,
            targets: AsclTargets::Ascl,
        }
    }
}

/// The normalised targets `[B, 1 + K]` (column 0: the key), computed without gradient
/// from the normalised key `k` and the queue.
pub fn ascl_targets(k: &Tensor, queue: &Tensor, cfg: &AsclConfig) -> Result<Tensor> {
    let kq = queue.dim(0)?;
    let l = (k.detach().matmul(&queue.detach().t()?)? / cfg.target_temperature)?;
    let log_p = l.broadcast_sub(&weighted_logsumexp(&l, None)?.unsqueeze(D::Minus1)?)?;
    let p = log_p.exp()?;
    let entropy = (&p * &log_p)?.sum_keepdim(D::Minus1)?.neg()?;
    let c = (1.0 - (entropy / (kq as f64).ln())?)?;
    let nearest = || -> Result<Tensor> {
        let top = l.arg_sort_last_dim(false)?.narrow(1, 0, cfg.nn_num)?;
        let ones = top.ones_like()?.to_dtype(l.dtype())?;
        Ok(l.zeros_like()?.scatter_add(&top.contiguous()?, &ones, 1)?)
    };
    let soft = match cfg.targets {
        AsclTargets::Ascl => (p.broadcast_mul(&c)? * cfg.nn_num as f64)?.clamp(0.0, 1.0)?,
        AsclTargets::Ahcl => nearest()?.broadcast_mul(&c)?,
        AsclTargets::Hard => nearest()?,
    };
    let y = Tensor::cat(&[soft.ones_like()?.narrow(1, 0, 1)?, soft], 1)?;
    Ok(y.broadcast_div(&y.sum_keepdim(D::Minus1)?)?.detach())
}

/// ASCL (MoCo form): queries `q`, keys `k` `[B, D]` (raw), queue `[K, D]`
/// (normalised, constant). Loss `-sum_j y_j log softmax([q.k, q.queue] / T1)_j`
/// with the detached soft targets `y` of [`ascl_targets`]. Reduction: mean over `B`.
pub fn ascl(q: &Tensor, k: &Tensor, queue: &Tensor, cfg: &AsclConfig) -> Result<(Tensor, Tensor)> {
    let (_, d) = check_same_shape("q", q, "k", k)?;
    let kq = check_queue(queue, d)?;
    check_temperature("temperature", cfg.temperature)?;
    check_temperature("target_temperature", cfg.target_temperature)?;
    if cfg.nn_num == 0 || cfg.nn_num > kq {
        return Err(invalid(
            "nn_num",
            format!("{} must be in 1..={kq}", cfg.nn_num),
        ));
    }
    let (qn, kn) = (l2_normalize(q)?, l2_normalize(k)?);
    let targets = ascl_targets(&kn, queue, cfg)?;
    let l = query_logits(&qn, &kn, queue, cfg.temperature)?;
    Ok((
        generalized_info_nce(&l, &targets, None, None)?.mean_all()?,
        targets,
    ))
}
