//! Streaming InfoNCE from tensor ops only: the backend-neutral path.
//!
//! The same loss as [`crate::streaming_info_nce`], for devices without our custom
//! kernel (CUDA through candle's cuBLAS matmuls, Metal): candidate tiles of `TILE`
//! columns are visited with an online log-sum-exp, with no gradient recorded, which
//! yields the loss and its gradients to the anchors, the extra logits and (in a second
//! sweep, when they track gradients) the candidates. Autograd then receives those
//! gradients through a surrogate `sum(x * g) - sum(x.detach() * g)` per input, whose
//! value is zero and whose gradient is `g`. Memory is `O((B + N) D + B * TILE)`; the
//! `[B, N]` logits never exist.
//!
//! Masks: the positive (extra logit or one column), `exclude_self` and label `keys`.
//! Windows and lists are kernel-only and are rejected here.

use crate::info_nce::{Candidates, Positive};
use candle_core::{D, Result, Tensor, bail};

/// Candidate columns per tile.
pub const TILE: usize = 4096;

/// Which candidates of a tile each anchor removes, as a `[B, cols]` u8 mask
/// (1 = removed), or `None` when none is.
fn tile_mask(
    spec: &Candidates,
    b: usize,
    j0: usize,
    cols: usize,
    a: &Tensor,
) -> Result<Option<Tensor>> {
    let dev = a.device();
    let mut mask: Option<Tensor> = None;
    let mut or = |m: Tensor| -> Result<()> {
        mask = Some(match mask.take() {
            Some(prev) => prev.maximum(&m)?,
            None => m,
        });
        Ok(())
    };
    let rows = Tensor::arange(0u32, b as u32, dev)?.unsqueeze(1)?;
    let cols_idx = Tensor::arange(j0 as u32, (j0 + cols) as u32, dev)?.unsqueeze(0)?;
    if spec.exclude_self && j0 < b {
        or(rows.broadcast_eq(&cols_idx)?)?;
    }
    if let Some((rk, ck)) = &spec.keys {
        // Keys < 0 never match: map them to distinct sentinels on each side.
        let row_keys: Vec<i64> = rk.iter().map(|&k| if k < 0 { -1 } else { k }).collect();
        let col_keys: Vec<i64> = ck[j0..j0 + cols]
            .iter()
            .map(|&k| if k < 0 { -2 } else { k })
            .collect();
        let same = Tensor::from_vec(row_keys, (b, 1), dev)?.broadcast_eq(&Tensor::from_vec(
            col_keys,
            (1, cols),
            dev,
        )?)?;
        let same = match &spec.positive {
            // The positive column stays.
            Positive::Column(p) => {
                let pos = Tensor::from_slice(p, (b, 1), dev)?;
                same.minimum(&pos.broadcast_ne(&cols_idx)?)?
            }
            Positive::Extra => same,
        };
        or(same)?;
    }
    Ok(mask)
}

/// Streaming InfoNCE, mean over anchors, from tensor ops (see the module docs).
/// Inputs as [`crate::streaming_info_nce`]: normalised `anchors` `[B, D]` and
/// `candidates` `[N, D]`, `extra` `[B]` logits already divided by `t`.
pub fn tiled_info_nce(
    anchors: &Tensor,
    candidates: &Tensor,
    extra: &Tensor,
    spec: &Candidates,
    temperature: f64,
) -> Result<Tensor> {
    let (b, d) = anchors.dims2()?;
    let (n, d2) = candidates.dims2()?;
    if d != d2 || extra.dims() != [b] {
        bail!(
            "tiled_info_nce: anchors [{b}, {d}], candidates [{n}, {d2}] and extra {:?} disagree",
            extra.dims()
        );
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("tiled_info_nce: temperature {temperature} must be > 0");
    }
    if spec.window.is_some() || spec.excluded.is_some() || spec.always_kept.is_some() {
        bail!("tiled_info_nce: windows and lists need the CPU kernel");
    }
    if let Positive::Column(p) = &spec.positive
        && (p.len() != b || p.iter().any(|&j| j as usize >= n))
    {
        bail!("tiled_info_nce: positive columns must be {b} indices below {n}");
    }
    if spec
        .keys
        .as_ref()
        .is_some_and(|(rk, ck)| rk.len() != b || ck.len() != n)
    {
        bail!("tiled_info_nce: keys must be [{b}] for rows and [{n}] for columns");
    }
    let dev = anchors.device();
    let (a, c, e) = (anchors.detach(), candidates.detach(), extra.detach());
    let dtype = a.dtype();
    let inv_t = 1.0 / temperature;
    let neg_inf = Tensor::full(f64::NEG_INFINITY, (), dev)?.to_dtype(dtype)?;
    // Logits of one tile, removed candidates at -inf.
    let tile_logits = |j0: usize, cols: usize| -> Result<Tensor> {
        let l = (a.matmul(&c.narrow(0, j0, cols)?.t()?)? * inv_t)?;
        match tile_mask(spec, b, j0, cols, &a)? {
            Some(m) => m.where_cond(&neg_inf.broadcast_as((b, cols))?, &l),
            None => Ok(l),
        }
    };
    // Pass 1: running max m, sum s and probability-weighted candidate sum acc.
    let (mut m, mut s) = match spec.positive {
        Positive::Extra => (e.clone(), Tensor::ones(b, dtype, dev)?),
        Positive::Column(_) => (
            Tensor::full(f64::NEG_INFINITY, b, dev)?.to_dtype(dtype)?,
            Tensor::zeros(b, dtype, dev)?,
        ),
    };
    let mut acc = Tensor::zeros((b, d), dtype, dev)?;
    for j0 in (0..n).step_by(TILE) {
        let cols = TILE.min(n - j0);
        let l = tile_logits(j0, cols)?;
        let new_m = m.maximum(&l.max(D::Minus1)?)?;
        // Rows with nothing kept so far keep a zero rescale instead of exp(nan).
        let finite = new_m.gt(f64::NEG_INFINITY)?;
        let safe_m = finite.where_cond(&new_m, &Tensor::zeros_like(&new_m)?)?;
        let rescale = (&m - &safe_m)?.exp()?;
        let w = l.broadcast_sub(&safe_m.unsqueeze(1)?)?.exp()?;
        s = ((s * &rescale)? + w.sum(D::Minus1)?)?;
        acc = (acc.broadcast_mul(&rescale.unsqueeze(1)?)? + w.matmul(&c.narrow(0, j0, cols)?)?)?;
        m = new_m;
    }
    let lse = (&m + s.log()?)?;
    let (pos_logit, pos_vec) = match &spec.positive {
        Positive::Extra => (e.clone(), None),
        Positive::Column(p) => {
            let idx = Tensor::from_slice(p, b, dev)?;
            let cp = c.index_select(&idx, 0)?;
            (((&a * &cp)?.sum(1)? * inv_t)?, Some(cp))
        }
    };
    let scale = 1.0 / b as f64;
    let loss_value = ((&lse - &pos_logit)?.sum_all()? * scale)?;
    let mut g_a = acc.broadcast_div(&s.unsqueeze(1)?)?;
    if let Some(cp) = &pos_vec {
        g_a = (g_a - cp)?;
    }
    let g_a = (g_a * (inv_t * scale))?;
    let mut loss = (loss_value + surrogate(anchors, &g_a)?)?;
    if spec.positive == Positive::Extra && extra.track_op() {
        let g_e = (((&e - &lse)?.exp()? - 1.0)? * scale)?;
        loss = (loss + surrogate(extra, &g_e)?)?;
    }
    if candidates.track_op() {
        // Pass 2: dc_j = sum_i (p_ij - [j = pos_i]) a_i / (t B), tile by tile.
        let mut tiles = Vec::with_capacity(n.div_ceil(TILE));
        for j0 in (0..n).step_by(TILE) {
            let cols = TILE.min(n - j0);
            let mut p = tile_logits(j0, cols)?
                .broadcast_sub(&lse.unsqueeze(1)?)?
                .exp()?;
            if let Positive::Column(pos) = &spec.positive {
                let pos = Tensor::from_slice(pos, (b, 1), dev)?;
                let cols_idx = Tensor::arange(j0 as u32, (j0 + cols) as u32, dev)?.unsqueeze(0)?;
                p = (p - pos.broadcast_eq(&cols_idx)?.to_dtype(dtype)?)?;
            }
            tiles.push((p.t()?.matmul(&a)? * (inv_t * scale))?);
        }
        loss = (loss + surrogate(candidates, &Tensor::cat(&tiles, 0)?)?)?;
    }
    Ok(loss)
}

/// `sum(x * g) - sum(x.detach() * g)` with `g` detached: zero, with gradient `g`.
fn surrogate(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let g = g.detach().to_dtype(x.dtype())?;
    (x * &g)?.sum_all()? - (x.detach() * &g)?.sum_all()?
}
