//! Streaming InfoNCE: the loss and its gradients without the `[B, N]` logit matrix.
//!
//! For anchors `A` `[B, D]` and candidates `C` `[N, D]` (both normalised by the
//! caller), logits `l_ij = a_i . c_j / t` over the candidates an anchor keeps, plus an
//! optional per-anchor extra logit `e_i` (MoCo's `q . k`):
//!
//! ```text
//! L = mean_i [ log( exp(e_i) + sum_{j kept} exp(l_ij) ) - l_i,pos ]
//! ```
//!
//! where the positive is either the extra logit or one candidate column. Kept
//! candidates are all but those removed by the [`Candidates`] spec: the anchor itself
//! (when anchors and candidates are one set, as in SimCLR) and candidates sharing the
//! anchor's key (same label or pseudo-label: false-negative elimination). Masks are
//! derived from these per-row and per-column keys inside the kernel.
//!
//! Pass 1 walks candidate tiles per block of anchor rows with an online log-sum-exp
//! (running max and sum) and, in the same sweep, accumulates `sum_j p_ij c_j` rescaled
//! as the max moves, which yields the anchors' gradient without a second sweep. When
//! the candidates need a gradient (SimCLR), pass 2 walks anchor tiles per block of
//! candidate columns with the now known log-sum-exps. Memory is `O((B + N) D + tile)`
//! per thread.

use crate::cpu::gemm::{MatRef, matmul};
use crate::cpu::storage::{contiguous, with_triple};
use crate::float::Float;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Anchor rows per block (the parallel unit of pass 1) lie in this range: as large as
/// keeps every thread busy, since each block streams all candidates once.
const ROW_BLOCK: (usize, usize) = (16, 128);
/// Candidate columns per tile.
const TILE: usize = 1024;

/// Where each anchor's positive is.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Positive {
    /// The extra logit `e_i` (MoCo's key); no candidate is positive.
    #[default]
    Extra,
    /// Candidate column `pos[i]`; the extra logit is ignored.
    Column(Vec<u32>),
}

/// Which candidates each anchor keeps. A positive column is always kept.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Candidates {
    pub positive: Positive,
    /// Anchors and candidates are the same rows: remove column `i` for anchor `i`.
    pub exclude_self: bool,
    /// Remove candidate `j` for anchor `i` when `row_keys[i] == col_keys[j]` (and `j`
    /// is not the positive): same-label negatives are dropped. Keys `< 0` never match.
    pub keys: Option<(Vec<i64>, Vec<i64>)>,
    /// Per anchor, the similarity band `[lo, hi]` (the dot product, cosine for unit
    /// rows) a candidate must lie in to stay: top-k, Ring and semi-hard selection
    /// expressed as thresholds.
    pub window: Option<Vec<(f32, f32)>>,
    /// Per anchor, sorted candidate columns to remove (identified false negatives).
    pub excluded: Option<Vec<Vec<u32>>>,
    /// Per anchor, sorted candidate columns kept whatever the rules above say (extra
    /// positives, such as attracted false negatives, stay in the denominator).
    pub always_kept: Option<Vec<Vec<u32>>>,
}

impl Candidates {
    /// Whether candidate `j`, at dot product `dot`, is removed for anchor `i` whose
    /// positive column is `pos`.
    #[inline]
    pub(crate) fn removed(&self, i: usize, j: usize, pos: Option<usize>, dot: f64) -> bool {
        if Some(j) == pos {
            return false;
        }
        if self
            .always_kept
            .as_ref()
            .is_some_and(|k| k[i].binary_search(&(j as u32)).is_ok())
        {
            return false;
        }
        if self.exclude_self && i == j {
            return true;
        }
        if let Some((rk, ck)) = &self.keys
            && rk[i] >= 0
            && rk[i] == ck[j]
        {
            return true;
        }
        if let Some(w) = &self.window
            && !(dot >= w[i].0 as f64 && dot <= w[i].1 as f64)
        {
            return true;
        }
        self.excluded
            .as_ref()
            .is_some_and(|e| e[i].binary_search(&(j as u32)).is_ok())
    }

    /// Whether any per-element rule beyond `exclude_self` applies.
    fn masks_elements(&self) -> bool {
        self.keys.is_some()
            || self.window.is_some()
            || self.excluded.is_some()
            || self.always_kept.is_some()
    }

    /// Scales a tile row of dot products (columns `j0..`) of anchor `i` by `1 / t` and
    /// sets removed candidates to `-inf`.
    fn scale_and_mask<T: Float>(&self, row: &mut [T], i: usize, j0: usize, inv_t: f64) {
        let inv = T::from_f64(inv_t);
        let removed = T::from_f64(f64::NEG_INFINITY);
        if self.masks_elements() {
            let pos = self.positive_of(i);
            for (k, v) in row.iter_mut().enumerate() {
                *v = if self.removed(i, j0 + k, pos, v.to_f64()) {
                    removed
                } else {
                    *v * inv
                };
            }
            return;
        }
        row.iter_mut().for_each(|v| *v = *v * inv);
        if self.exclude_self && (j0..j0 + row.len()).contains(&i) {
            row[i - j0] = removed;
        }
    }

    pub(crate) fn positive_of(&self, i: usize) -> Option<usize> {
        match &self.positive {
            Positive::Extra => None,
            Positive::Column(p) => Some(p[i] as usize),
        }
    }

    /// Checks the spec against `b` anchors and `n` candidates; errors name `op`.
    pub(crate) fn check(&self, b: usize, n: usize, op: &str) -> Result<()> {
        if let Positive::Column(p) = &self.positive {
            if p.len() != b || p.iter().any(|&j| j as usize >= n) {
                bail!("{op}: positive columns must be {b} indices below {n}");
            }
            if self.exclude_self && p.iter().enumerate().any(|(i, &j)| i == j as usize) {
                bail!(
                    "{op}: an anchor's positive is the anchor itself, which exclude_self removes"
                );
            }
        }
        if self.exclude_self && n < b {
            bail!("{op}: exclude_self needs the anchors to be the first {b} candidates, got {n}");
        }
        if let Some((rk, ck)) = &self.keys
            && (rk.len() != b || ck.len() != n)
        {
            bail!("{op}: keys must be [{b}] for rows and [{n}] for columns");
        }
        if self.window.as_ref().is_some_and(|w| w.len() != b) {
            bail!("{op}: window must have one band per anchor ({b})");
        }
        let bad_lists = |l: &Option<Vec<Vec<u32>>>| {
            l.as_ref().is_some_and(|e| {
                e.len() != b
                    || e.iter().any(|r| {
                        r.windows(2).any(|p| p[0] >= p[1])
                            || r.last().is_some_and(|&j| j as usize >= n)
                    })
            })
        };
        if bad_lists(&self.excluded) || bad_lists(&self.always_kept) {
            bail!(
                "{op}: excluded and always_kept must be {b} sorted, distinct lists of columns below {n}"
            );
        }
        Ok(())
    }
}

/// Results of pass 1 kept for the backward pass.
struct Pass1<T> {
    /// Per anchor `log(sum)` of its kept candidates and extra logit.
    lse: Vec<f64>,
    /// Gradient of the mean loss to the anchors `[B, D]`.
    d_anchors: Vec<T>,
    /// Gradient of the mean loss to the extra logits `[B]`.
    d_extra: Vec<T>,
}

/// One row block's share of pass 1.
struct BlockResult<T> {
    loss: f64,
    lse: Vec<f64>,
    d_anchors: Vec<T>,
    d_extra: Vec<T>,
}

/// Rows per block for `n` rows: `n / threads`, within [`ROW_BLOCK`].
fn row_block(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1))
        .clamp(ROW_BLOCK.0, ROW_BLOCK.1)
}

struct Shapes {
    b: usize,
    n: usize,
    d: usize,
}

/// Pass 1: loss, log-sum-exps, and the anchor and extra-logit gradients.
fn pass1<T: Float>(
    a: &[T],
    c: &[T],
    extra: &[T],
    s: &Shapes,
    spec: &Candidates,
    t: f64,
) -> (f64, Pass1<T>) {
    let inv_t = 1.0 / t;
    let scale = 1.0 / s.b as f64;
    let row_block = row_block(s.b);
    let blocks: Vec<BlockResult<T>> = (0..s.b.div_ceil(row_block))
        .into_par_iter()
        .map(|blk| {
            let r0 = blk * row_block;
            let rows = row_block.min(s.b - r0);
            let a_blk = &a[r0 * s.d..(r0 + rows) * s.d];
            let mut m = vec![f64::NEG_INFINITY; rows];
            let mut sum = vec![0f64; rows];
            let mut pos_logit = vec![0f64; rows];
            let mut acc = vec![T::ZERO; rows * s.d];
            let mut logits = vec![T::ZERO; rows * TILE];
            let mut weights = vec![T::ZERO; rows * TILE];
            // The extra logit starts the running sums.
            for r in 0..rows {
                let i = r0 + r;
                if spec.positive == Positive::Extra {
                    m[r] = extra[i].to_f64();
                    sum[r] = 1.0;
                    pos_logit[r] = m[r];
                }
            }
            for j0 in (0..s.n).step_by(TILE) {
                let cols = TILE.min(s.n - j0);
                let c_tile = MatRef::row_major(&c[j0 * s.d..(j0 + cols) * s.d], cols, s.d);
                matmul(
                    &mut logits[..rows * cols],
                    MatRef::row_major(a_blk, rows, s.d),
                    c_tile.t(),
                    false,
                    1,
                );
                for r in 0..rows {
                    let i = r0 + r;
                    let pos = spec.positive_of(i);
                    let row = &mut logits[r * cols..(r + 1) * cols];
                    spec.scale_and_mask(row, i, j0, inv_t);
                    if let Some(p) = pos
                        && (j0..j0 + cols).contains(&p)
                    {
                        pos_logit[r] = row[p - j0].to_f64();
                    }
                    let tile_max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.to_f64()));
                    let new_m = m[r].max(tile_max);
                    let w = &mut weights[r * cols..(r + 1) * cols];
                    if new_m == f64::NEG_INFINITY {
                        w.fill(T::ZERO);
                        continue;
                    }
                    let rescale = (m[r] - new_m).exp();
                    if rescale != 1.0 {
                        sum[r] *= rescale;
                        let rs = T::from_f64(rescale);
                        acc[r * s.d..(r + 1) * s.d]
                            .iter_mut()
                            .for_each(|x| *x = *x * rs);
                    }
                    m[r] = new_m;
                    let shift = T::from_f64(new_m);
                    w.iter_mut()
                        .zip(row.iter())
                        .for_each(|(w, v)| *w = *v - shift);
                    T::exp_inplace(w);
                    sum[r] += w.iter().map(|x| x.to_f64()).sum::<f64>();
                }
                // acc += W C_tile
                matmul(
                    &mut acc,
                    MatRef::row_major(&weights[..rows * cols], rows, cols),
                    c_tile,
                    true,
                    1,
                );
            }
            let mut loss = 0f64;
            let mut lse = vec![0f64; rows];
            let mut d_extra = vec![T::ZERO; rows];
            let mut grad = vec![T::ZERO; rows * s.d];
            for r in 0..rows {
                let i = r0 + r;
                lse[r] = m[r] + sum[r].ln();
                loss += lse[r] - pos_logit[r];
                // dL_i/da_i = (sum_j p_ij c_j - c_pos) / t, with p = exp(l - lse).
                let norm = 1.0 / sum[r];
                let pos_vec = spec.positive_of(i).map(|p| &c[p * s.d..(p + 1) * s.d]);
                for k in 0..s.d {
                    let mut g = acc[r * s.d + k].to_f64() * norm;
                    if let Some(pv) = pos_vec {
                        g -= pv[k].to_f64();
                    }
                    grad[r * s.d + k] = T::from_f64(g * inv_t * scale);
                }
                if spec.positive == Positive::Extra {
                    let p_extra = (extra[i].to_f64() - lse[r]).exp();
                    d_extra[r] = T::from_f64((p_extra - 1.0) * scale);
                }
            }
            BlockResult {
                loss,
                lse,
                d_anchors: grad,
                d_extra,
            }
        })
        .collect();
    let mut total = 0f64;
    let mut out = Pass1 {
        lse: Vec::with_capacity(s.b),
        d_anchors: Vec::with_capacity(s.b * s.d),
        d_extra: Vec::with_capacity(s.b),
    };
    for blk in blocks {
        total += blk.loss;
        out.lse.extend(blk.lse);
        out.d_anchors.extend(blk.d_anchors);
        out.d_extra.extend(blk.d_extra);
    }
    (total * scale, out)
}

/// Pass 2: the gradient of the mean loss to the candidates `[N, D]`:
/// `dc_j = sum_i (p_ij - [j = pos_i]) a_i / (t B)`.
fn pass2<T: Float>(a: &[T], c: &[T], s: &Shapes, spec: &Candidates, t: f64, lse: &[f64]) -> Vec<T> {
    let inv_t = 1.0 / t;
    let scale = 1.0 / s.b as f64;
    let col_block = row_block(s.n);
    let mut dc = vec![T::ZERO; s.n * s.d];
    dc.par_chunks_mut(col_block * s.d)
        .enumerate()
        .for_each(|(blk, out)| {
            let j0 = blk * col_block;
            let cols = out.len() / s.d;
            let c_blk = MatRef::row_major(&c[j0 * s.d..(j0 + cols) * s.d], cols, s.d);
            let mut logits = vec![T::ZERO; TILE * cols];
            for i0 in (0..s.b).step_by(TILE) {
                let rows = TILE.min(s.b - i0);
                let a_tile = MatRef::row_major(&a[i0 * s.d..(i0 + rows) * s.d], rows, s.d);
                // logits^T block: [cols, rows]
                matmul(&mut logits[..cols * rows], c_blk, a_tile.t(), false, 1);
                let (inv, g_scale) = (T::from_f64(inv_t), T::from_f64(inv_t * scale));
                for (q, row) in logits[..cols * rows].chunks_mut(rows).enumerate() {
                    let j = j0 + q;
                    for (r, v) in row.iter_mut().enumerate() {
                        let i = i0 + r;
                        *v = if spec.removed(i, j, spec.positive_of(i), v.to_f64()) {
                            T::from_f64(f64::NEG_INFINITY)
                        } else {
                            *v * inv - T::from_f64(lse[i])
                        };
                    }
                    T::exp_inplace(row);
                    for (r, v) in row.iter_mut().enumerate() {
                        if spec.positive_of(i0 + r) == Some(j) {
                            *v = *v - T::ONE;
                        }
                        *v = *v * g_scale;
                    }
                }
                matmul(
                    out,
                    MatRef::row_major(&logits[..cols * rows], cols, rows),
                    a_tile,
                    true,
                    1,
                );
            }
        });
    dc
}

/// The gradients pass 1 saved (anchors, extra logits) as tensors, and the candidates'
/// gradient from pass 2 when the candidates track gradients.
fn saved_grads<T: Float + candle_core::WithDType>(
    p: &Pass1<T>,
    a: &Tensor,
    c: &Tensor,
    s: &Shapes,
    spec: &Candidates,
    t: f64,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let dev = a.device();
    let dc = if c.track_op() {
        // The op's inputs are contiguous CPU storages: read them in place.
        let (a_st, a_l) = a.storage_and_layout();
        let (c_st, c_l) = c.storage_and_layout();
        let (Storage::Cpu(a_st), Storage::Cpu(c_st)) = (&*a_st, &*c_st) else {
            bail!("info_nce: CPU backward needs CPU anchors and candidates");
        };
        let dtype_err = || candle_core::Error::Msg("info_nce: backward dtype mismatch".into());
        let av = contiguous(
            T::slice_of(a_st).ok_or_else(dtype_err)?,
            a_l,
            "info_nce: anchors",
        )?;
        let cv = contiguous(
            T::slice_of(c_st).ok_or_else(dtype_err)?,
            c_l,
            "info_nce: candidates",
        )?;
        Some(Tensor::from_vec(
            pass2(av, cv, s, spec, t, &p.lse),
            (s.n, s.d),
            dev,
        )?)
    } else {
        None
    };
    Ok((
        Tensor::from_slice(&p.d_anchors, (s.b, s.d), dev)?,
        Tensor::from_slice(&p.d_extra, s.b, dev)?,
        dc,
    ))
}

/// [`saved_grads`] for the CUDA op: the device gradients of pass 1 as tensors, and
/// pass 2 on the device when the candidates track gradients.
#[cfg(feature = "cuda")]
fn cuda_saved_grads(
    p: &crate::similarity::cuda::Saved,
    a: &Tensor,
    c: &Tensor,
    s: &Shapes,
    t: f64,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    use candle_core::op::BackpropOp;
    let tensor = |st: candle_core::CudaStorage, shape: Shape| {
        Tensor::from_storage(Storage::Cuda(st), shape, BackpropOp::none(), false)
    };
    let [da, de] = crate::similarity::cuda::clone_saved(p, s.b, s.d)?;
    let dc = if c.track_op() {
        let (a_st, a_l) = a.storage_and_layout();
        let (c_st, c_l) = c.storage_and_layout();
        let (Storage::Cuda(a_st), Storage::Cuda(c_st)) = (&*a_st, &*c_st) else {
            bail!("info_nce: CUDA backward needs CUDA anchors and candidates");
        };
        let dc = match a.dtype() {
            DType::F32 => {
                crate::similarity::cuda::candidate_grad::<f32>((a_st, a_l), (c_st, c_l), p, t)?
            }
            DType::F64 => {
                crate::similarity::cuda::candidate_grad::<f64>((a_st, a_l), (c_st, c_l), p, t)?
            }
            other => bail!("info_nce: expected f32 or f64 inputs, got {other:?}"),
        };
        Some(tensor(dc, Shape::from((s.n, s.d))))
    } else {
        None
    };
    Ok((
        tensor(da, Shape::from((s.b, s.d))),
        tensor(de, Shape::from(s.b)),
        dc,
    ))
}

enum Saved {
    F32(Pass1<f32>),
    F64(Pass1<f64>),
    #[cfg(feature = "cuda")]
    Cuda(Box<crate::similarity::cuda::Saved>),
}

struct InfoNceOp {
    spec: Arc<Candidates>,
    temperature: f64,
    saved: Arc<Mutex<Option<Saved>>>,
}

impl CustomOp3 for InfoNceOp {
    fn name(&self) -> &'static str {
        "contrast-streaming-info-nce"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, d) = (l1.dims()[0], l1.dims()[1]);
        let s = Shapes {
            b,
            n: l2.dims()[0],
            d,
        };
        let (loss, saved) = with_triple(
            "info_nce",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            ["anchors", "candidates", "extra"],
            |a, c, e| {
                let (l, p) = pass1(a, c, e, &s, &self.spec, self.temperature);
                (CpuStorage::F32(vec![l as f32]), Saved::F32(p))
            },
            |a, c, e| {
                let (l, p) = pass1(a, c, e, &s, &self.spec, self.temperature);
                (CpuStorage::F64(vec![l]), Saved::F64(p))
            },
        )?;
        *self.saved.lock().expect("saved lock") = Some(saved);
        Ok((loss, Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let inputs = ((s1, l1), (s2, l2), (s3, l3));
        let (spec, t) = (&self.spec, self.temperature);
        let (loss, saved) = match s1.dtype() {
            DType::F32 => {
                crate::similarity::cuda::forward::<f32>(inputs.0, inputs.1, inputs.2, spec, t)?
            }
            DType::F64 => {
                crate::similarity::cuda::forward::<f64>(inputs.0, inputs.1, inputs.2, spec, t)?
            }
            other => bail!("info_nce: expected f32 or f64 inputs, got {other:?}"),
        };
        *self.saved.lock().expect("saved lock") = Some(Saved::Cuda(Box::new(saved)));
        Ok((loss, Shape::from(())))
    }

    fn bwd(
        &self,
        a: &Tensor,
        c: &Tensor,
        e: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().expect("saved lock");
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (b, d) = a.dims2()?;
        let s = Shapes { b, n: c.dim(0)?, d };
        let (spec, t) = (&self.spec, self.temperature);
        let (da, de, dc) = match saved.as_ref() {
            Some(Saved::F32(p)) => saved_grads(p, a, c, &s, spec, t)?,
            Some(Saved::F64(p)) => saved_grads(p, a, c, &s, spec, t)?,
            #[cfg(feature = "cuda")]
            Some(Saved::Cuda(p)) => cuda_saved_grads(p, a, c, &s, t)?,
            None => bail!("info_nce: backward before forward"),
        };
        let dc = match dc {
            Some(t) => Some((t * g)?),
            None => None,
        };
        let de = if self.spec.positive == Positive::Extra {
            Some((de * g)?)
        } else {
            None
        };
        Ok((Some((da * g)?), dc, de.or(Some(e.zeros_like()?))))
    }
}

/// Streaming InfoNCE, mean over anchors (see the module documentation).
///
/// `anchors` `[B, D]` and `candidates` `[N, D]` must already be normalised (and share
/// a dtype); `extra` `[B]` are the extra logits (already divided by `t`), used when
/// the positive is [`Positive::Extra`]. Gradients reach the anchors and the extra
/// logits, and the candidates when they track gradients (SimCLR's in-batch
/// candidates do; a detached queue does not, and its pass is skipped). f32 or f64
/// tensors on the CPU, and on CUDA with the `cuda` feature (`similarity::cuda`), run the
/// custom kernels with every mask rule; other devices and dtypes run the same streaming
/// algorithm from tensor ops ([`super::tiled::tiled_info_nce`]), which supports the
/// positive, `exclude_self` and `keys` masks.
pub fn streaming_info_nce(
    anchors: &Tensor,
    candidates: &Tensor,
    extra: &Tensor,
    spec: Candidates,
    temperature: f64,
) -> Result<Tensor> {
    let (b, d) = anchors.dims2()?;
    let (n, d2) = candidates.dims2()?;
    if d != d2 {
        bail!("info_nce: anchors have dimension {d}, candidates {d2}");
    }
    if extra.dims() != [b] {
        bail!(
            "info_nce: extra logits must be [{b}], got {:?}",
            extra.dims()
        );
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("info_nce: temperature {temperature} must be > 0");
    }
    spec.check(b, n, "info_nce")?;
    let has_kernel =
        anchors.device().is_cpu() || (cfg!(feature = "cuda") && anchors.device().is_cuda());
    if !has_kernel || !matches!(anchors.dtype(), DType::F32 | DType::F64) {
        return crate::similarity::tiled::tiled_info_nce(
            anchors,
            candidates,
            extra,
            &spec,
            temperature,
        );
    }
    let op = InfoNceOp {
        spec: Arc::new(spec),
        temperature,
        saved: Arc::new(Mutex::new(None)),
    };
    anchors
        .contiguous()?
        .apply_op3(&candidates.contiguous()?, &extra.contiguous()?, op)
}
