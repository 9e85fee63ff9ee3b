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
//! Masks: the positive (extra logit or one column), `exclude_self` and label `keys`
//! come from tensor comparisons; when a spec has windows or column lists, each tile goes
//! through `MaskTile` instead, which applies every rule (CPU and Metal).

use crate::similarity::info_nce::{Candidates, Positive};
use crate::similarity::mask_tile::{MaskCache, MaskTile};
use candle_core::{D, Result, Tensor, bail};

/// Candidate columns per tile.
pub(crate) const TILE: usize = 4096;

/// Per-row and per-column index tensors the tile masks are built from, made once per
/// call and narrowed per tile.
struct MaskKeys {
    /// Row indices `[B, 1]` and column indices `[1, N]` (u32).
    rows: Tensor,
    cols: Tensor,
    /// Positive column per row `[B, 1]`, when the positive is a column.
    positive: Option<Tensor>,
    /// Label keys `[B, 1]` and `[1, N]`; negative keys map to distinct sentinels so
    /// that they never match.
    keys: Option<(Tensor, Tensor)>,
}

impl MaskKeys {
    fn new(spec: &Candidates, b: usize, n: usize, dev: &candle_core::Device) -> Result<Self> {
        let positive = match &spec.positive {
            Positive::Column(p) => Some(Tensor::from_slice(p, (b, 1), dev)?),
            Positive::Extra => None,
        };
        let keys = match &spec.keys {
            Some((rk, ck)) => {
                let rk: Vec<i64> = rk.iter().map(|&k| if k < 0 { -1 } else { k }).collect();
                let ck: Vec<i64> = ck.iter().map(|&k| if k < 0 { -2 } else { k }).collect();
                Some((
                    Tensor::from_vec(rk, (b, 1), dev)?,
                    Tensor::from_vec(ck, (1, n), dev)?,
                ))
            }
            None => None,
        };
        Ok(Self {
            rows: Tensor::arange(0u32, b as u32, dev)?.unsqueeze(1)?,
            cols: Tensor::arange(0u32, n as u32, dev)?.unsqueeze(0)?,
            positive,
            keys,
        })
    }

    /// Whether each row's positive is each column of the tile `[B, cols]` (u8).
    fn is_positive(&self, j0: usize, cols: usize) -> Result<Option<Tensor>> {
        match &self.positive {
            Some(p) => Ok(Some(p.broadcast_eq(&self.cols.narrow(1, j0, cols)?)?)),
            None => Ok(None),
        }
    }

    /// Which candidates of the tile `j0..j0 + cols` each anchor removes, `[B, cols]` u8
    /// (1 = removed), or `None` when none is.
    fn removed(&self, spec: &Candidates, j0: usize, cols: usize) -> Result<Option<Tensor>> {
        let b = self.rows.dim(0)?;
        let tile_cols = self.cols.narrow(1, j0, cols)?;
        let mut mask: Option<Tensor> = None;
        if spec.exclude_self && j0 < b {
            mask = Some(self.rows.broadcast_eq(&tile_cols)?);
        }
        if let Some((rk, ck)) = &self.keys {
            let mut same = rk.broadcast_eq(&ck.narrow(1, j0, cols)?)?;
            // The positive column stays.
            if let Some(p) = &self.positive {
                same = same.minimum(&p.broadcast_ne(&tile_cols)?)?;
            }
            mask = Some(match mask {
                Some(m) => m.maximum(&same)?,
                None => same,
            });
        }
        Ok(mask)
    }
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
    spec.check(b, n, "tiled_info_nce")?;
    let dev = anchors.device();
    let (a, c, e) = (anchors.detach(), candidates.detach(), extra.detach());
    let dtype = a.dtype();
    let inv_t = 1.0 / temperature;
    let neg_inf = Tensor::full(f64::NEG_INFINITY, (), dev)?.to_dtype(dtype)?;
    let masks = MaskKeys::new(spec, b, n, dev)?;
    let per_element =
        spec.window.is_some() || spec.excluded.is_some() || spec.always_kept.is_some();
    let cache = MaskCache::default();
    // Logits of one tile, removed candidates at -inf.
    let tile_logits = |j0: usize, cols: usize| -> Result<Tensor> {
        let dots = a.matmul(&c.narrow(0, j0, cols)?.t()?)?;
        if per_element {
            return dots.apply_op1_no_bwd(&MaskTile {
                spec,
                j0,
                inv_t,
                cache: &cache,
            });
        }
        let l = (dots * inv_t)?;
        match masks.removed(spec, j0, cols)? {
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
            if let Some(is_pos) = masks.is_positive(j0, cols)? {
                p = (p - is_pos.to_dtype(dtype)?)?;
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
