//! The streaming InfoNCE op on CUDA (feature `cuda`).
//!
//! The same two passes as the CPU kernel ([`super::info_nce`]): candidate tiles of the
//! `[B, N]` logits are formed one at a time by cuBLAS into a `[B, tile]` buffer, and
//! our kernels (`info_nce.cu`) mask, scale and fold them into a running log-sum-exp per
//! anchor; `acc += W C_tile` (cuBLAS) accumulates the anchors' gradient in the same
//! sweep. The candidates' gradient (pass 2) recomputes each tile and multiplies its
//! weights into `G^T A`. Memory is `O((B + N) D + B * tile)` with the tile bounded by
//! [`TILE_ELEMENTS`]; the full logits never exist.
//!
//! The kernels are compiled at run time by NVRTC (once per process, then loaded once
//! per device) rather than by nvcc at build time: the PTX then matches the driver of
//! the machine that runs it, and building this crate needs no CUDA compiler. (candle's
//! own `cuda` feature still builds its kernels with nvcc.) Every mask rule of
//! [`Candidates`] is evaluated inside the kernels from per-row and per-column keys,
//! windows and sorted column lists uploaded once per call.

use crate::similarity::info_nce::{Candidates, Positive};
use crate::similarity::mask_arrays::{ColumnLists, MaskArrays};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, bail};
use std::sync::{Arc, OnceLock};

/// Upper bound on the elements of the `[B, tile]` logit buffer (16 MiB in f32).
pub(crate) const TILE_ELEMENTS: usize = 1 << 22;
/// Threads per block; `info_nce.cu` assumes this value (`THREADS`).
const THREADS: u32 = 256;
const SOURCE: &str = include_str!("info_nce.cu");
const MODULE: &str = "contrast_info_nce";

/// The PTX of `info_nce.cu`, compiled by NVRTC on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("info_nce: NVRTC failed on info_nce.cu: {e}")))
}

/// Float types the kernels are instantiated for.
pub(crate) trait CudaFloat:
    DeviceRepr + ValidAsZeroBits + CudaDType + Copy + 'static
{
    /// Kernel name suffix.
    const SUFFIX: &'static str;
    fn from_f64(x: f64) -> Self;
}

impl CudaFloat for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl CudaFloat for f64 {
    const SUFFIX: &'static str = "f64";
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// What pass 1 leaves for the backward pass, on the device.
pub(crate) struct Saved {
    /// Per anchor log-sum-exp `[B]`.
    pub lse: CudaStorage,
    /// Gradient of the mean loss to the anchors `[B, D]`.
    pub d_anchors: CudaStorage,
    /// Gradient of the mean loss to the extra logits `[B]`.
    pub d_extra: CudaStorage,
    /// The call's masks, uploaded once and reused by the candidates' pass.
    masks: DeviceMasks,
}

/// The mask inputs of one call on the device ([`MaskArrays`] uploaded).
struct DeviceMasks {
    rules: u32,
    positive: CudaSlice<i32>,
    row_keys: CudaSlice<i64>,
    col_keys: CudaSlice<i64>,
    window: CudaSlice<f32>,
    excluded: (CudaSlice<u32>, CudaSlice<u32>),
    kept: (CudaSlice<u32>, CudaSlice<u32>),
}

impl DeviceMasks {
    fn new(spec: &Candidates, dev: &CudaDevice) -> Result<Self> {
        let m = MaskArrays::new(spec);
        let list = |l: &ColumnLists| -> Result<(CudaSlice<u32>, CudaSlice<u32>)> {
            Ok((dev.clone_htod(&l.offsets)?, dev.clone_htod(&l.cols)?))
        };
        Ok(Self {
            rules: m.rules,
            positive: dev.clone_htod(&m.positive)?,
            row_keys: dev.clone_htod(&m.row_keys)?,
            col_keys: dev.clone_htod(&m.col_keys)?,
            window: dev.clone_htod(&m.window)?,
            excluded: list(&m.excluded)?,
            kept: list(&m.kept)?,
        })
    }

    /// Pushes the `MASK_PARAMS` arguments, in the kernels' order.
    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        b.arg(&self.rules);
        b.arg(&self.positive);
        b.arg(&self.row_keys);
        b.arg(&self.col_keys);
        b.arg(&self.window);
        b.arg(&self.excluded.0);
        b.arg(&self.excluded.1);
        b.arg(&self.kept.0);
        b.arg(&self.kept.1);
    }
}

/// One block per anchor row.
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Candidate columns per tile for `b` anchors: at most [`TILE_ELEMENTS`] logits, a
/// multiple of 32, at least 32.
fn tile_cols(b: usize, n: usize) -> usize {
    ((TILE_ELEMENTS / b.max(1)) / 32 * 32).clamp(32, n.max(32))
}

/// `c = alpha * op(a) op(b) + beta * c` in cuBLAS's column-major convention.
fn gemm<T: CudaFloat>(
    dev: &CudaDevice,
    (transa, transb): (bool, bool),
    (m, n, k): (usize, usize, usize),
    a: (&CudaSlice<T>, usize, usize),
    b: (&CudaSlice<T>, usize, usize),
    c: (&mut CudaSlice<T>, usize, usize),
    beta: f64,
) -> Result<()>
where
    CudaBlas: Gemm<T>,
{
    let op = |t: bool| {
        if t {
            sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cfg = GemmConfig {
        transa: op(transa),
        transb: op(transb),
        m: m as i32,
        n: n as i32,
        k: k as i32,
        alpha: T::from_f64(1.0),
        lda: a.2 as i32,
        ldb: b.2 as i32,
        beta: T::from_f64(beta),
        ldc: c.2 as i32,
    };
    let (a_view, b_view) = (a.0.slice(a.1..), b.0.slice(b.1..));
    let mut c_view = c.0.slice_mut(c.1..);
    // SAFETY: the views cover the matrices the dimensions and leading dimensions name
    // (checked by the callers' shapes).
    unsafe { dev.cublas_handle().gemm(cfg, &a_view, &b_view, &mut c_view) }.w()
}

/// One of `info_nce.cu`'s kernels, loaded for a device's stream.
struct Kernel {
    stream: Arc<CudaStream>,
    func: CudaFunction,
}

impl Kernel {
    /// Kernel `{name}_{T::SUFFIX}`.
    fn load<T: CudaFloat>(dev: &CudaDevice, name: &str) -> Result<Self>
    where
        CudaBlas: Gemm<T>,
    {
        let f = dev.get_or_load_custom_func(&format!("{name}_{}", T::SUFFIX), MODULE, ptx()?)?;
        Ok(Self {
            stream: dev.cuda_stream(),
            func: f.into_cuda_function(),
        })
    }

    fn args(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// The slice of `storage` and the start offset of `layout` (which must be contiguous).
fn input<'a, T: CudaFloat>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<(&'a CudaSlice<T>, usize)>
where
    CudaBlas: Gemm<T>,
{
    match layout.contiguous_offsets() {
        Some((start, _)) => Ok((storage.as_cuda_slice::<T>()?, start)),
        None => bail!("info_nce: {what} must be contiguous"),
    }
}

/// Anchors `[B, D]` and candidates `[N, D]` on one device, as slices and offsets.
struct Operands<'a, T> {
    dev: &'a CudaDevice,
    b: usize,
    n: usize,
    d: usize,
    a: (&'a CudaSlice<T>, usize),
    c: (&'a CudaSlice<T>, usize),
}

impl<'a, T: CudaFloat> Operands<'a, T>
where
    CudaBlas: Gemm<T>,
{
    fn new(
        (sa, la): (&'a CudaStorage, &Layout),
        (sc, lc): (&'a CudaStorage, &Layout),
    ) -> Result<Self> {
        Ok(Self {
            dev: sa.device(),
            b: la.dims()[0],
            n: lc.dims()[0],
            d: la.dims()[1],
            a: input::<T>(sa, la, "anchors")?,
            c: input::<T>(sc, lc, "candidates")?,
        })
    }

    /// `L [B, cols] = A . C[j0 .. j0 + cols]^T` into `tile`.
    fn tile_logits(&self, tile: &mut CudaSlice<T>, j0: usize, cols: usize) -> Result<()> {
        let (b, d) = (self.b, self.d);
        // Column-major: L^T [cols, B] = C_tile [cols, D] . A^T [D, B].
        gemm(
            self.dev,
            (true, false),
            (cols, b, d),
            (self.c.0, self.c.1 + j0 * d, d),
            (self.a.0, self.a.1, d),
            (tile, 0, cols),
            0.0,
        )
    }
}

/// Pass 1 on the device: the mean loss (a scalar) and the saved gradients.
pub(crate) fn forward<T: CudaFloat>(
    (sa, la): (&CudaStorage, &Layout),
    (sc, lc): (&CudaStorage, &Layout),
    (se, le): (&CudaStorage, &Layout),
    spec: &Candidates,
    temperature: f64,
) -> Result<(CudaStorage, Saved)>
where
    CudaBlas: Gemm<T>,
{
    let ops = Operands::<T>::new((sa, la), (sc, lc))?;
    let (dev, b, n, d, c) = (ops.dev, ops.b, ops.n, ops.d, ops.c);
    let (e, e_off) = input::<T>(se, le, "extra")?;
    let extra = e.slice(e_off..e_off + b);
    let masks = DeviceMasks::new(spec, dev)?;
    let (inv_t, scale) = (T::from_f64(1.0 / temperature), T::from_f64(1.0 / b as f64));
    let column_positive = matches!(spec.positive, Positive::Column(_));

    let mut m = dev.alloc_zeros::<T>(b)?;
    let mut s = dev.alloc_zeros::<T>(b)?;
    let mut pos_logit = dev.alloc_zeros::<T>(b)?;
    let mut rescale = dev.alloc_zeros::<T>(b)?;
    let mut acc = dev.alloc_zeros::<T>(b * d)?;
    let tc = tile_cols(b, n);
    let mut tile = dev.alloc_zeros::<T>(b * tc.min(n))?;

    let tile_update = Kernel::load::<T>(dev, "tile_update")?;
    let scale_rows = Kernel::load::<T>(dev, "scale_rows")?;
    let k = Kernel::load::<T>(dev, "init_state")?;
    let mut l = k.args();
    let (b_i32, d_i32) = (b as i32, d as i32);
    let extra_positive = i32::from(!column_positive);
    l.arg(&extra).arg(&mut m).arg(&mut s).arg(&mut pos_logit);
    l.arg(&b_i32).arg(&extra_positive);
    // SAFETY: every array holds `b` elements.
    unsafe { l.launch(LaunchConfig::for_num_elems(b as u32)) }.w()?;

    for j0 in (0..n).step_by(tc) {
        let cols = tc.min(n - j0);
        ops.tile_logits(&mut tile, j0, cols)?;
        let mut l = tile_update.args();
        let (cols_i32, j0_i32) = (cols as i32, j0 as i32);
        l.arg(&mut tile).arg(&cols_i32).arg(&j0_i32).arg(&inv_t);
        l.arg(&mut m)
            .arg(&mut s)
            .arg(&mut pos_logit)
            .arg(&mut rescale);
        masks.push(&mut l);
        // SAFETY: the tile holds `b * cols` logits; the state arrays `b` values.
        unsafe { l.launch(per_row(b)) }.w()?;

        let mut l = scale_rows.args();
        l.arg(&mut acc).arg(&rescale).arg(&b_i32).arg(&d_i32);
        // SAFETY: `acc` is [b, d], `rescale` [b].
        unsafe { l.launch(LaunchConfig::for_num_elems((b * d) as u32)) }.w()?;

        // Column-major: acc^T [D, B] += C_tile^T [D, cols] . W^T [cols, B].
        gemm(
            dev,
            (false, false),
            (d, b, cols),
            (c.0, c.1 + j0 * d, d),
            (&tile, 0, cols),
            (&mut acc, 0, d),
            1.0,
        )?;
    }

    let mut lse = dev.alloc_zeros::<T>(b)?;
    let mut loss_rows = dev.alloc_zeros::<T>(b)?;
    let mut d_anchors = dev.alloc_zeros::<T>(b * d)?;
    let mut d_extra = dev.alloc_zeros::<T>(b)?;
    let k = Kernel::load::<T>(dev, "finish")?;
    let mut l = k.args();
    let cands = c.0.slice(c.1..);
    let column_positive = i32::from(column_positive);
    l.arg(&acc)
        .arg(&m)
        .arg(&s)
        .arg(&pos_logit)
        .arg(&extra)
        .arg(&cands);
    l.arg(&masks.positive).arg(&column_positive).arg(&d_i32);
    l.arg(&inv_t).arg(&scale);
    l.arg(&mut lse)
        .arg(&mut loss_rows)
        .arg(&mut d_anchors)
        .arg(&mut d_extra);
    // SAFETY: shapes as allocated above; positive columns were checked below `n`.
    unsafe { l.launch(per_row(b)) }.w()?;

    let mut loss = dev.alloc_zeros::<T>(1)?;
    let k = Kernel::load::<T>(dev, "sum_scaled")?;
    let mut l = k.args();
    l.arg(&loss_rows).arg(&b_i32).arg(&scale).arg(&mut loss);
    // SAFETY: one block sums `b` values into one.
    unsafe { l.launch(per_row(1)) }.w()?;

    let wrap = |x: CudaSlice<T>| CudaStorage::wrap_cuda_slice(x, dev.clone());
    Ok((
        wrap(loss),
        Saved {
            lse: wrap(lse),
            d_anchors: wrap(d_anchors),
            d_extra: wrap(d_extra),
            masks,
        },
    ))
}

/// Pass 2 on the device: the gradient of the mean loss to the candidates `[N, D]`,
/// `dc_j = sum_i (p_ij - [j = pos_i]) a_i / (t B)`, from pass 1's log-sum-exps and masks.
pub(crate) fn candidate_grad<T: CudaFloat>(
    anchors: (&CudaStorage, &Layout),
    candidates: (&CudaStorage, &Layout),
    saved: &Saved,
    temperature: f64,
) -> Result<CudaStorage>
where
    CudaBlas: Gemm<T>,
{
    let ops = Operands::<T>::new(anchors, candidates)?;
    let (dev, b, n, d) = (ops.dev, ops.b, ops.n, ops.d);
    let lse = saved.lse.as_cuda_slice::<T>()?;
    let inv_t = T::from_f64(1.0 / temperature);
    let g_scale = T::from_f64(1.0 / (temperature * b as f64));
    let tc = tile_cols(b, n);
    let mut tile = dev.alloc_zeros::<T>(b * tc.min(n))?;
    let mut dc = dev.alloc_zeros::<T>(n * d)?;
    let weights = Kernel::load::<T>(dev, "candidate_weights")?;
    for j0 in (0..n).step_by(tc) {
        let cols = tc.min(n - j0);
        ops.tile_logits(&mut tile, j0, cols)?;
        let mut l = weights.args();
        let (cols_i32, j0_i32) = (cols as i32, j0 as i32);
        l.arg(&mut tile)
            .arg(&cols_i32)
            .arg(&j0_i32)
            .arg(&inv_t)
            .arg(&g_scale);
        l.arg(lse);
        saved.masks.push(&mut l);
        // SAFETY: the tile holds `b * cols` values, `lse` `b`.
        unsafe { l.launch(per_row(b)) }.w()?;
        // Column-major: dC_tile^T [D, cols] = A^T [D, B] . G [B, cols].
        gemm(
            dev,
            (false, true),
            (d, cols, b),
            (ops.a.0, ops.a.1, d),
            (&tile, 0, cols),
            (&mut dc, j0 * d, d),
            0.0,
        )?;
    }
    Ok(CudaStorage::wrap_cuda_slice(dc, dev.clone()))
}

/// The saved anchor and extra-logit gradients as storages for tensors (copies, so that
/// a second backward pass over the same graph still finds them).
pub(crate) fn clone_saved(saved: &Saved, b: usize, d: usize) -> Result<[CudaStorage; 2]> {
    Ok([
        saved.d_anchors.try_clone(&Layout::contiguous((b, d)))?,
        saved.d_extra.try_clone(&Layout::contiguous(b))?,
    ])
}
