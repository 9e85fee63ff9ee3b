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
use candle_core::{D, DType, Tensor, Var};
use contrast_kernels::l2_normalize;
use rayon::prelude::*;
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
    /// Each anchor's background, the instance term's denominator: `M` bank entries
    /// with their cosine to the anchor, in column order (for the diagnostics).
    pub background: Vec<Vec<(u32, f32)>>,
    /// Each anchor's hard positives, the invariance term's numerator (duplicates
    /// kept).
    pub positives: Vec<Vec<u32>>,
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

/// What one anchor reads from the bank, from its row of similarities.
struct RowSets {
    /// The `M` most similar entries, in column order (the order they are summed in).
    background: Vec<u32>,
    /// The first entries of the background, most similar first.
    nearest: Vec<u32>,
    /// The anchor's propagated neighbour list.
    propagated: Vec<u32>,
    /// The `P` hardest (or easiest) of the propagated list, duplicates kept.
    hard: Vec<u32>,
}

/// Ranks one anchor's `row` `[Nb]` of similarities: its background of `m` entries, its
/// `nearest_count` nearest and its hard positives among the propagated `list`.
/// `order` is a reusable buffer.
fn row_sets(
    row: &[f32],
    list: Vec<u32>,
    m: usize,
    nearest_count: usize,
    cfg: &InvPConfig,
    order: &mut Vec<u32>,
) -> RowSets {
    let harder = |x: &u32, y: &u32| hardest_first(&(*x, row[*x as usize]), &(*y, row[*y as usize]));
    // The background: select the M most similar, then order only those.
    order.clear();
    order.extend(0..row.len() as u32);
    if m < row.len() {
        order.select_nth_unstable_by(m - 1, harder);
    }
    let mut background = order[..m].to_vec();
    let count = nearest_count.min(m);
    if count < m {
        background.select_nth_unstable_by(count - 1, harder);
    }
    let mut nearest = background[..count].to_vec();
    nearest.sort_by(harder);
    background.sort_unstable();
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
    let hard = picks.iter().take(cfg.n_pos).map(|&p| list[p]).collect();
    RowSets {
        background,
        nearest,
        propagated: list,
        hard,
    }
}

/// InvP loss for online features `z` `[B, D]` (raw) of bank rows `indices` `[B]`,
/// with the bank `[Nb, D]` (normalised, constant) and its stored neighbour lists
/// `neighbors` `[Nb, k]`. `ramp` is the warm-up weight `omega(t)` of the invariance
/// term. Reduction: mean over `B`. As in the official code, `1e-7` is added inside
/// both logarithms.
///
/// The gradient reaches `z` only, by one `[B, Nb] x [Nb, D]` product after the
/// forward one: the similarities are computed without a graph, the loss on the
/// `B x (1 + M + P)` logits it reads (gathered, not masked out of `[B, Nb]`), and
/// the returned loss carries their gradient to `z` through a surrogate term whose
/// value is 0. `instance` and `invariance` are detached (for reporting).
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
    let zn = l2_normalize(z)?;
    // Without a graph: the bank is constant, and candle's matmul backward would also
    // compute its `[Nb, D]` gradient, a third `B x Nb x D` product per step.
    let sims = (zn.detach().matmul(&bank.detach().t()?)? / cfg.temperature)?;
    let sims_host: Vec<f32> = sims.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let m = cfg.n_background;
    // One more than the stored list length, so that the anchor itself can be skipped.
    let nearest_count = neighbors.first().map_or(0, |n| n.len()) + 1;
    // Rows are independent: ranked in parallel, each in its own column buffer.
    let rows: Vec<RowSets> = (0..b)
        .into_par_iter()
        .map_init(Vec::new, |order, i| {
            let row = &sims_host[i * nb..(i + 1) * nb];
            let list = propagate(
                &neighbors[indices[i] as usize],
                neighbors,
                cfg.diffusion_layer,
            );
            row_sets(row, list, m, nearest_count, cfg, order)
        })
        .collect();
    let mut background = Vec::with_capacity(b * m);
    let mut background_cosines = Vec::with_capacity(b);
    let mut propagated = Vec::with_capacity(b);
    let mut nearest = Vec::with_capacity(b);
    let mut hard_rows = Vec::with_capacity(b);
    let t = cfg.temperature as f32;
    for (i, sets) in rows.into_iter().enumerate() {
        let row = &sims_host[i * nb..(i + 1) * nb];
        background_cosines.push(
            sets.background
                .iter()
                .map(|&j| (j, row[j as usize] * t))
                .collect(),
        );
        background.extend_from_slice(&sets.background);
        propagated.push(sets.propagated);
        nearest.push(sets.nearest);
        hard_rows.push(sets.hard);
    }
    // Rows with fewer hard positives than the longest are padded with a weight of 0.
    let p = hard_rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut hard = Vec::with_capacity(b * p);
    let mut hard_weight = Vec::with_capacity(b * p);
    for (row, &own) in hard_rows.iter().zip(indices) {
        hard.extend(row.iter().copied().chain(std::iter::repeat(own)).take(p));
        hard_weight.extend((0..p).map(|k| (k < row.len()) as u8 as f32));
    }
    let device = z.device();
    // Every logit the loss reads, `[B, 1 + M + P]`: own entry, background, hard
    // positives. The loss is computed on them as a leaf, and its gradient reaches `zn`
    // through one product `dL/dsims . bank / t` `[B, Nb] x [Nb, D]`.
    let width = 1 + m + p;
    let mut columns = Vec::with_capacity(b * width);
    for (i, &own) in indices.iter().enumerate() {
        columns.push(own);
        columns.extend_from_slice(&background[i * m..(i + 1) * m]);
        columns.extend_from_slice(&hard[i * p..(i + 1) * p]);
    }
    let columns = Tensor::from_vec(columns, (b, width), device)?;
    let logits = Var::from_tensor(&sims.gather(&columns, D::Minus1)?)?;
    let e = logits.exp()?;
    let self_sim = e.narrow(1, 0, 1)?.squeeze(D::Minus1)?;
    let bg_sum = e.narrow(1, 1, m)?.sum(D::Minus1)?;
    let instance = ((&self_sim / &bg_sum)? + 1e-7)?.log()?.neg()?.mean_all()?;
    let inv_den = if cfg.exclusive {
        (&bg_sum - &self_sim)?
    } else {
        bg_sum
    };
    let hard_weight = Tensor::from_vec(hard_weight, (b, p), device)?.to_dtype(sims.dtype())?;
    let hard_sum = (e.narrow(1, 1 + m, p)? * hard_weight)?.sum(D::Minus1)?;
    let invariance = ((hard_sum / inv_den)? + 1e-7)?.log()?.neg()?.mean_all()?;
    let value = (&instance + (&invariance * (cfg.lam_inv * ramp))?)?;
    let grads = value.backward()?;
    let d_logits = grads
        .get(&logits)
        .expect("the loss reads every gathered logit")
        .detach();
    let d_sims = sims
        .zeros_like()?
        .scatter_add(&columns, &d_logits, D::Minus1)?;
    let d_zn = (d_sims.matmul(&bank.detach())? / cfg.temperature)?;
    // `<zn, dL/dzn>` minus its own value: 0, with the gradient `dL/dzn`.
    let surrogate = (&zn * d_zn)?.sum_all()?;
    let loss = ((&surrogate - surrogate.detach())? + value.detach())?;
    let (instance, invariance) = (instance.detach(), invariance.detach());
    Ok(InvPOutput {
        loss,
        instance,
        invariance,
        propagated,
        nearest,
        background: background_cosines,
        positives: hard_rows,
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
