//! Invariance Propagation, InvP (Wang et al., 2020): positives discovered by walking
//! the k-nearest-neighbour graph of a memory bank, hard positives and a background of
//! nearest bank entries.
//!
//! Not through [`crate::generalized_info_nce`]: the official code scores ratios of
//! plain sums, `-log(p / sum + 1e-7)`, with the `1e-7` inside the log, and subtracts the
//! anchor's own similarity from the background unconditionally. Neither is a
//! log-sum-exp over weighted candidates, and the golden values follow the code, so the
//! loss keeps that form.

use crate::error::{Result, check_matrix, check_temperature, invalid};
use crate::sampling::hardest_first;
use candle_core::{D, DType, Tensor};
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};

/// Parameters of [`invariance_propagation`] (WangFeng18/InvariancePropagation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvPConfig {
    pub temperature: f64,
    /// Background size `M`: the bank entries most similar to the anchor.
    pub n_background: usize,
    /// Propagation depth `l` (1 = direct neighbours only).
    pub diffusion_layer: usize,
    /// Hard positives kept, `P`.
    pub n_pos: usize,
    /// Weight of the invariance term.
    pub lam_inv: f64,
    /// Remove the anchor's own entry from the invariance denominator.
    #[serde(default = "yes")]
    pub exclusive: bool,
    /// Keep the least similar propagated positives (else the most similar).
    #[serde(default = "yes")]
    pub hard_pos: bool,
}

fn yes() -> bool {
    true
}

impl Default for InvPConfig {
    fn default() -> Self {
        Self {
            temperature: 0.07,
            n_background: 4096,
            diffusion_layer: 3,
            n_pos: 50,
            lam_inv: 0.6,
            exclusive: true,
            hard_pos: true,
        }
    }
}

/// The loss and its parts.
#[derive(Debug, Clone)]
pub struct InvPOutput {
    /// `L_ins + lam_inv * ramp * L_inv`.
    pub loss: Tensor,
    pub instance: Tensor,
    pub invariance: Tensor,
    /// Propagated neighbour lists `[B, k + k^2 + ... + k^l]`.
    pub propagated: Vec<Vec<u32>>,
    /// Each anchor's `nearest` most similar bank entries, most similar first (for
    /// refreshing the stored neighbour lists).
    pub nearest: Vec<Vec<u32>>,
}

/// Expands each anchor's neighbour list layer by layer: every discovered node appends
/// its own `k` stored neighbours, for `layers` layers in all (duplicates kept, as the
/// official code).
pub fn propagate(start: &[u32], neighbors: &[Vec<u32>], layers: usize) -> Vec<u32> {
    let mut list = start.to_vec();
    let (mut begin, mut end) = (0, list.len());
    for _ in 1..layers {
        for p in begin..end {
            let node = list[p] as usize;
            list.extend_from_slice(&neighbors[node]);
        }
        begin = end;
        end = list.len();
    }
    list
}

/// InvP loss for online features `z` `[B, D]` (raw) of bank rows `indices` `[B]`,
/// with the bank `[Nb, D]` (normalised, constant) and its stored neighbour lists
/// `neighbors` `[Nb, k]`. `ramp` is the warm-up weight `omega(t)` of the invariance
/// term. Reduction: mean over `B`. As in the official code, `1e-7` is added inside
/// both logarithms.
pub fn invariance_propagation(
    z: &Tensor,
    indices: &[u32],
    bank: &Tensor,
    neighbors: &[Vec<u32>],
    ramp: f64,
    cfg: &InvPConfig,
) -> Result<InvPOutput> {
    let (b, d) = check_matrix("z", z)?;
    let (nb, db) = check_matrix("bank", bank)?;
    check_temperature("temperature", cfg.temperature)?;
    if db != d {
        return Err(invalid(
            "bank",
            format!("rows have dimension {db}, z has {d}"),
        ));
    }
    if indices.len() != b {
        return Err(invalid(
            "indices",
            format!("{} indices for {b} anchors", indices.len()),
        ));
    }
    if let Some(i) = indices.iter().find(|&&i| i as usize >= nb) {
        return Err(invalid(
            "indices",
            format!("bank row {i} does not exist (bank has {nb})"),
        ));
    }
    if neighbors.len() != nb || neighbors.iter().flatten().any(|&j| j as usize >= nb) {
        return Err(invalid(
            "neighbors",
            format!("expected {nb} lists of bank rows"),
        ));
    }
    if cfg.n_background == 0 || cfg.n_background > nb || cfg.n_pos == 0 || cfg.diffusion_layer == 0
    {
        return Err(invalid(
            "n_background",
            format!("n_background in 1..={nb}, n_pos and diffusion_layer >= 1 are required"),
        ));
    }
    let sims = (l2_normalize(z)?.matmul(&bank.detach().t()?)? / cfg.temperature)?;
    let e = sims.exp()?;
    let sims_host: Vec<f32> = sims
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let mut background = vec![0f32; b * nb];
    let mut hard = vec![0f32; b * nb];
    let mut own = vec![0f32; b * nb];
    let mut propagated = Vec::with_capacity(b);
    let mut nearest = Vec::with_capacity(b);
    // One more than the stored list length, so that the anchor itself can be skipped.
    let nearest_count = neighbors.first().map_or(0, |n| n.len()) + 1;
    for i in 0..b {
        let row = &sims_host[i * nb..(i + 1) * nb];
        // The background: select the M largest, then order only those.
        let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        if cfg.n_background < nb {
            ranked.select_nth_unstable_by(cfg.n_background - 1, hardest_first);
            ranked.truncate(cfg.n_background);
        }
        ranked.sort_by(hardest_first);
        let order: Vec<usize> = ranked.into_iter().map(|(j, _)| j).collect();
        for &j in &order {
            background[i * nb + j] = 1.0;
        }
        nearest.push(
            order
                .iter()
                .take(nearest_count)
                .map(|&j| j as u32)
                .collect(),
        );
        own[i * nb + indices[i] as usize] = 1.0;
        let start = &neighbors[indices[i] as usize];
        let list = propagate(start, neighbors, cfg.diffusion_layer);
        let mut picks: Vec<usize> = (0..list.len()).collect();
        picks.sort_by(|&x, &y| {
            let (sx, sy) = (row[list[x] as usize], row[list[y] as usize]);
            if cfg.hard_pos {
                sx.total_cmp(&sy)
            } else {
                sy.total_cmp(&sx)
            }
            .then(x.cmp(&y))
        });
        for &p in picks.iter().take(cfg.n_pos) {
            // Duplicated neighbours count as often as they occur.
            hard[i * nb + list[p] as usize] += 1.0;
        }
        propagated.push(list);
    }
    let as_tensor = |v: Vec<f32>| -> Result<Tensor> {
        Ok(Tensor::from_vec(v, (b, nb), z.device())?.to_dtype(e.dtype())?)
    };
    let (background, hard, own) = (as_tensor(background)?, as_tensor(hard)?, as_tensor(own)?);
    let self_sim = (&e * &own)?.sum(D::Minus1)?;
    let bg_sum = (&e * &background)?.sum(D::Minus1)?;
    let instance = ((&self_sim / &bg_sum)? + 1e-7)?.log()?.neg()?.mean_all()?;
    let inv_den = if cfg.exclusive {
        (&bg_sum - &self_sim)?
    } else {
        bg_sum
    };
    let hard_sum = (&e * &hard)?.sum(D::Minus1)?;
    let invariance = ((hard_sum / inv_den)? + 1e-7)?.log()?.neg()?.mean_all()?;
    let loss = (&instance + (&invariance * (cfg.lam_inv * ramp))?)?;
    Ok(InvPOutput {
        loss,
        instance,
        invariance,
        propagated,
        nearest,
    })
}

/// The warm-up weight `omega(t)` of the invariance term at `epoch` (0-based) with the
/// switch at `end` epochs: binary (`1[epoch > end]`, the official default) or Gaussian
/// (`exp(-5 (1 - epoch / end)^2)` before `end`, then 1).
pub fn ramp(epoch: usize, end: usize, gaussian: bool) -> f64 {
    if gaussian {
        let m = (1.0 - epoch as f64 / end.max(1) as f64).max(0.0);
        (-5.0 * m * m).exp()
    } else {
        (epoch > end) as u8 as f64
    }
}

/// Refreshes a bank entry's stored neighbours from its `nearest` list (most similar
/// first, one longer than the stored list): the entry itself is replaced by the next
/// candidate, as the official `update_nn`.
pub fn refreshed_neighbours(entry: u32, nearest: &[u32]) -> Vec<u32> {
    let k = nearest.len().saturating_sub(1);
    let backup = nearest.get(k).copied().unwrap_or(entry);
    nearest[..k]
        .iter()
        .map(|&j| if j == entry { backup } else { j })
        .collect()
}
