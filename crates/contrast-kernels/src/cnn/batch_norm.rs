//! Fused batch normalisation (+ optional ReLU) over the last dimension, forward and
//! backward, as a candle custom op.
//!
//! For `x` `[M, C]` (any leading shape flattened), per channel `c`:
//! `y = act(gamma_c * (x - mu_c) / sqrt(var_c + eps) + beta_c)` with `act` the
//! identity or ReLU. In training mode `mu` and `var` (biased) are the batch statistics
//! and the gradient flows through them:
//!
//! ```text
//! g    = dy * [y > 0]          (ReLU mask, when fused)
//! dbeta  = sum g,  dgamma = sum g * xhat
//! dx   = gamma * invstd / M * (M g - dbeta - xhat * dgamma)     (training)
//! dx   = gamma * invstd * g                                      (running statistics)
//! ```
//!
//! Each pass is one or two sweeps over memory, parallel over row blocks. The batch
//! statistics computed by the forward pass are kept for the backward pass and for the
//! caller's running-statistics update, so no sweep is repeated.

use crate::cnn::generic;
use crate::cpu::storage::with_triple;
use crate::cpu::wide::wide_kernel;
use crate::float::Float;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Rows per parallel block.
const BLOCK_ROWS: usize = 4096;

/// Parameter gradients (as f64) that a backward op leaves for its caller.
pub(crate) type SharedGrads = Arc<Mutex<Option<(Vec<f64>, Vec<f64>)>>>;

/// Per-channel statistics used to normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    /// Biased variance.
    pub var: Vec<f64>,
}

/// A sum over the processes of a data-parallel run whose gradient is summed the
/// same way: what synchronised BatchNorm needs from the run (the trainer's world
/// implements it; this crate knows no transport).
pub trait CrossProcessSum: Send + Sync + std::fmt::Debug {
    /// The sum over processes of `x` (the same shape on each), differentiable: the
    /// gradient reaching each process's `x` is the sum over processes of the
    /// gradients of the result.
    fn sum(&self, x: &Tensor) -> Result<Tensor>;
    /// Number of processes; each holds an equal share of the batch.
    fn processes(&self) -> usize;
}

/// Where the normalisation statistics come from.
#[derive(Debug, Clone)]
pub enum BatchNormMode {
    /// Batch statistics (training); the gradient flows through them.
    Batch,
    /// Statistics of the global batch of a data-parallel run, every process's rows
    /// together (synchronised BatchNorm); the gradient flows through them across
    /// processes. Always computed by the candle composition
    /// ([`generic::batch_norm`]), whatever the op set.
    Synced(Arc<dyn CrossProcessSum>),
    /// Given statistics (evaluation, or frozen BatchNorm).
    Fixed(ChannelStats),
}

impl BatchNormMode {
    /// The statistics to normalise `x` `[M, C]` with: its own (batch mode) or the
    /// given ones.
    pub(crate) fn stats_of<T: Float>(&self, x: &[T], c: usize) -> ChannelStats {
        match self {
            BatchNormMode::Batch => channel_stats(x, c),
            BatchNormMode::Fixed(s) => s.clone(),
            BatchNormMode::Synced(_) => unreachable!("synchronised statistics run in generic"),
        }
    }

    /// Checks that fixed statistics cover `c` channels; `op` names the caller.
    pub(crate) fn check_channels(&self, c: usize, op: &str) -> Result<()> {
        if let BatchNormMode::Fixed(s) = self
            && (s.mean.len() != c || s.var.len() != c)
        {
            bail!(
                "{op}: fixed statistics have {} means and {} variances for {c} channels",
                s.mean.len(),
                s.var.len()
            );
        }
        Ok(())
    }
}

/// Sums `f(block, accumulator)` over `blocks` into a `width`-long f64 vector.
///
/// The blocks are split into one contiguous group per thread, each group is summed in
/// order, and the group results are added in order, so the result does not depend on
/// rayon's scheduling (only on the thread count).
fn reduce_blocks<F>(width: usize, blocks: usize, f: F) -> Vec<f64>
where
    F: Fn(usize, &mut [f64]) + Sync,
{
    crate::cpu::parallel::ordered_sum(width, blocks, |range, acc| range.for_each(|b| f(b, acc)))
}

wide_kernel! {
/// Adds the per-channel sums and sums of squares of `rows` `[M, C]` to `sum` and `sq`.
fn add_moments<T: Float>(sum: &mut [f64], sq: &mut [f64], rows: &[T], c: usize) {
    let (sum, sq) = (&mut sum[..c], &mut sq[..c]);
    for row in rows.chunks_exact(c) {
        let row = &row[..c];
        for j in 0..c {
            let v = row[j].to_f64();
            sum[j] += v;
            sq[j] += v * v;
        }
    }
}
}

/// Batch mean and biased variance of `x` `[M, C]`, in one sweep with f64
/// accumulators.
pub(crate) fn channel_stats<T: Float>(x: &[T], c: usize) -> ChannelStats {
    channel_stats_with(x.len() / c, c, |rows, add| {
        add(&x[rows.start * c..rows.end * c])
    })
}

/// [`channel_stats`] of an `[M, C]` matrix that `rows_of(range, add)` hands over
/// piece by piece: it calls `add` on consecutive pieces that together are the rows
/// `range`, in order (stored rows, or rows a fused kernel computes as it goes). The
/// rows are cut into one contiguous range per thread and each range is summed in
/// row order, so the result is the same however the pieces are cut.
pub(crate) fn channel_stats_with<T, F>(rows: usize, c: usize, rows_of: F) -> ChannelStats
where
    T: Float,
    F: Fn(std::ops::Range<usize>, &mut dyn FnMut(&[T])) + Sync,
{
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let sums = crate::cpu::parallel::ordered_sum(2 * c, blocks, |range, acc| {
        let (sum, sq) = acc.split_at_mut(c);
        let rows = range.start * BLOCK_ROWS..(range.end * BLOCK_ROWS).min(rows);
        rows_of(rows, &mut |piece| add_moments(sum, sq, piece, c));
    });
    let m = rows.max(1) as f64;
    let mean: Vec<f64> = sums[..c].iter().map(|s| s / m).collect();
    let var = sums[c..]
        .iter()
        .zip(&mean)
        .map(|(q, mu)| (q / m - mu * mu).max(0.0))
        .collect();
    ChannelStats { mean, var }
}

fn inv_std(stats: &ChannelStats, eps: f64) -> Vec<f64> {
    stats.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

wide_kernel! {
/// `out = x * a + b` per channel, then ReLU if asked, over rows `[M, C]`.
fn affine_rows<T: Float>(out: &mut [T], x: &[T], a: &[T], b: &[T], relu: bool) {
    let c = a.len();
    let b = &b[..c];
    for (or, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let (or, xr) = (&mut or[..c], &xr[..c]);
        for j in 0..c {
            let y = xr[j] * a[j] + b[j];
            or[j] = if relu && y < T::ZERO { T::ZERO } else { y };
        }
    }
}
}

/// `out = x * a + b` per channel, then ReLU if asked, over `[M, C]` in parallel.
fn affine<T: Float>(out: &mut [T], x: &[T], a: &[T], b: &[T], relu: bool) {
    let c = a.len();
    out.par_chunks_mut(BLOCK_ROWS * c)
        .zip(x.par_chunks(BLOCK_ROWS * c))
        .for_each(|(ob, xb)| affine_rows(ob, xb, a, b, relu));
}

fn to_t<T: Float>(v: impl Iterator<Item = f64>) -> Vec<T> {
    v.map(T::from_f64).collect()
}

/// The per-channel `(scale, shift)` of the normalisation, `y = x * scale + shift`;
/// every path that evaluates the normalised output uses these same values.
pub(crate) fn scale_shift<T: Float>(
    gamma: &[f64],
    beta: &[f64],
    stats: &ChannelStats,
    eps: f64,
) -> (Vec<T>, Vec<T>) {
    let inv = inv_std(stats, eps);
    let scale: Vec<f64> = gamma.iter().zip(&inv).map(|(g, i)| g * i).collect();
    let shift = to_t((0..gamma.len()).map(|j| beta[j] - stats.mean[j] * scale[j]));
    (to_t(scale.into_iter()), shift)
}

pub(crate) fn forward<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    stats: &ChannelStats,
    eps: f64,
    relu: bool,
) -> Vec<T> {
    let to64 = |v: &[T]| v.iter().map(|t| t.to_f64()).collect::<Vec<f64>>();
    let (scale, shift) = scale_shift(&to64(gamma), &to64(beta), stats, eps);
    let mut y = vec![T::ZERO; x.len()];
    affine(&mut y, x, &scale, &shift, relu);
    y
}

/// What the backward pass needs besides the tensors.
pub(crate) struct BackwardSpec<'a> {
    pub(crate) gamma: &'a [f64],
    pub(crate) stats: &'a ChannelStats,
    pub(crate) eps: f64,
    pub(crate) relu: bool,
    /// Whether the statistics were the batch's (the gradient flows through them).
    pub(crate) batch_stats: bool,
}

/// The per-channel coefficients of the BatchNorm backward pass, from the sums of
/// `g` and `g * x` over the `rows` values of each channel (`g` the gradient reaching
/// the normalised output, after ReLU's mask): `dx = k g + c1 x + c0`.
pub(crate) struct BackwardCoefficients<T> {
    pub(crate) k: Vec<T>,
    pub(crate) c1: Vec<T>,
    pub(crate) c0: Vec<T>,
    pub(crate) dgamma: Vec<T>,
    pub(crate) dbeta: Vec<T>,
}

/// With `k = gamma * invstd`, training mode gives `c1 = -k invstd dgamma / M` and
/// `c0 = -k dbeta / M - c1 mean`; with fixed statistics `dx = k g`.
pub(crate) fn coefficients<T: Float>(
    sum_g: &[f64],
    sum_gx: &[f64],
    rows: usize,
    spec: &BackwardSpec<'_>,
) -> BackwardCoefficients<T> {
    let c = spec.gamma.len();
    let inv = inv_std(spec.stats, spec.eps);
    let mean = &spec.stats.mean;
    // sum g * xhat = invstd * (sum g x - mean sum g)
    let dgamma: Vec<f64> = (0..c)
        .map(|j| inv[j] * (sum_gx[j] - mean[j] * sum_g[j]))
        .collect();
    let k: Vec<f64> = (0..c).map(|j| spec.gamma[j] * inv[j]).collect();
    let m = rows.max(1) as f64;
    let (c1, c0): (Vec<f64>, Vec<f64>) = if spec.batch_stats {
        (0..c)
            .map(|j| {
                let c1 = -k[j] * inv[j] * dgamma[j] / m;
                (c1, -k[j] * sum_g[j] / m - c1 * mean[j])
            })
            .unzip()
    } else {
        (vec![0.0; c], vec![0.0; c])
    };
    BackwardCoefficients {
        k: to_t(k.into_iter()),
        c1: to_t(c1.into_iter()),
        c0: to_t(c0.into_iter()),
        dgamma: to_t(dgamma.into_iter()),
        dbeta: to_t(sum_g.iter().copied()),
    }
}

wide_kernel! {
/// Adds `sum g` and `sum g * x` per channel over rows `[M, C]` of `x`, the output
/// `y` and its gradient `dy` (`g = dy * [y > 0]` under ReLU).
fn add_grad_sums<T: Float>(
    sg: &mut [f64],
    sgx: &mut [f64],
    xyd: (&[T], &[T], &[T]),
    c: usize,
    relu: bool,
) {
    let (x, y, dy) = xyd;
    let (sg, sgx) = (&mut sg[..c], &mut sgx[..c]);
    for ((xr, yr), dr) in x.chunks_exact(c).zip(y.chunks_exact(c)).zip(dy.chunks_exact(c)) {
        let (xr, yr, dr) = (&xr[..c], &yr[..c], &dr[..c]);
        for j in 0..c {
            let g = if relu && yr[j] <= T::ZERO {
                0.0
            } else {
                dr[j].to_f64()
            };
            sg[j] += g;
            sgx[j] += g * xr[j].to_f64();
        }
    }
}
}

wide_kernel! {
/// Overwrites rows `[M, C]` of `x` with `dx = k g + c1 x + c0`.
fn grad_rows<T: Float>(x: &mut [T], yd: (&[T], &[T]), co: &BackwardCoefficients<T>, relu: bool) {
    let (y, dy) = yd;
    let c = co.k.len();
    let (k, c1, c0) = (&co.k[..c], &co.c1[..c], &co.c0[..c]);
    for (xr, (yr, dr)) in x
        .chunks_exact_mut(c)
        .zip(y.chunks_exact(c).zip(dy.chunks_exact(c)))
    {
        let (xr, yr, dr) = (&mut xr[..c], &yr[..c], &dr[..c]);
        for j in 0..c {
            let g = if relu && yr[j] <= T::ZERO { T::ZERO } else { dr[j] };
            xr[j] = k[j] * g + c1[j] * xr[j] + c0[j];
        }
    }
}
}

/// Gradients `(dx, dgamma, dbeta)` with `g = dy * [y > 0]` (ReLU) (see
/// [`coefficients`]).
///
/// `x` is consumed: its buffer becomes `dx`, so the backward pass needs no second
/// full-size buffer.
pub(crate) fn backward<T: Float>(
    mut x: Vec<T>,
    y: &[T],
    dy: &[T],
    spec: &BackwardSpec<'_>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = spec.gamma.len();
    let rows = x.len() / c;
    let blocks = rows.div_ceil(BLOCK_ROWS);
    let relu = spec.relu;
    // One sweep: sum g and sum g * x per channel.
    let sums = reduce_blocks(2 * c, blocks, |b, acc| {
        let range = b * BLOCK_ROWS * c..((b + 1) * BLOCK_ROWS * c).min(x.len());
        let (sg, sgx) = acc.split_at_mut(c);
        let block = (&x[range.clone()], &y[range.clone()], &dy[range]);
        add_grad_sums(sg, sgx, block, c, relu);
    });
    let co = coefficients::<T>(&sums[..c], &sums[c..], rows, spec);
    x.par_chunks_mut(BLOCK_ROWS * c)
        .zip(
            y.par_chunks(BLOCK_ROWS * c)
                .zip(dy.par_chunks(BLOCK_ROWS * c)),
        )
        .for_each(|(xb, yd)| grad_rows(xb, yd, &co, relu));
    (x, co.dgamma, co.dbeta)
}

/// The forward op `(x, gamma, beta) -> y`; remembers the statistics it used.
struct BatchNormOp {
    eps: f64,
    relu: bool,
    mode: BatchNormMode,
    used: Arc<Mutex<Option<ChannelStats>>>,
}

impl BatchNormOp {
    fn stats_for<T: Float>(&self, x: &[T], c: usize) -> ChannelStats {
        let stats = self.mode.stats_of(x, c);
        *self.used.lock().expect("stats lock") = Some(stats.clone());
        stats
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "contrast-batch-norm"
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
        let c = l2.shape().elem_count();
        let out = with_triple(
            "batch_norm",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            ["x", "gamma", "beta"],
            |x, g, b| {
                let stats = self.stats_for(x, c);
                CpuStorage::F32(forward(x, g, b, &stats, self.eps, self.relu))
            },
            |x, g, b| {
                let stats = self.stats_for(x, c);
                CpuStorage::F64(forward(x, g, b, &stats, self.eps, self.relu))
            },
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .used
            .lock()
            .expect("stats lock")
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch_norm: backward before forward".into()))?;
        let op = BatchNormGradOp {
            eps: self.eps,
            relu: self.relu,
            batch_stats: matches!(self.mode, BatchNormMode::Batch),
            stats,
            gamma: gamma.to_dtype(DType::F64)?.to_vec1()?,
            grads: Arc::new(Mutex::new(None)),
        };
        let dx = x.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        let (dg, db) = op
            .grads
            .lock()
            .expect("grad lock")
            .take()
            .expect("filled by the op");
        let as_tensor = |v: Vec<f64>| {
            Tensor::from_vec(v, gamma.elem_count(), gamma.device())?.to_dtype(gamma.dtype())
        };
        Ok((Some(dx), Some(as_tensor(dg)?), Some(as_tensor(db)?)))
    }
}

/// Backward op `(x, y, dy) -> dx`, which also produces `dgamma` and `dbeta`
/// (left in `grads` as f64).
struct BatchNormGradOp {
    eps: f64,
    relu: bool,
    batch_stats: bool,
    stats: ChannelStats,
    gamma: Vec<f64>,
    grads: SharedGrads,
}

impl BatchNormGradOp {
    fn run<T: Float>(&self, x: &[T], y: &[T], dy: &[T]) -> Vec<T> {
        let spec = BackwardSpec {
            gamma: &self.gamma,
            stats: &self.stats,
            eps: self.eps,
            relu: self.relu,
            batch_stats: self.batch_stats,
        };
        let (dx, dg, db) = backward(x.to_vec(), y, dy, &spec);
        let to64 = |v: Vec<T>| v.into_iter().map(|t| t.to_f64()).collect();
        *self.grads.lock().expect("grad lock") = Some((to64(dg), to64(db)));
        dx
    }
}

impl CustomOp3 for BatchNormGradOp {
    fn name(&self) -> &'static str {
        "contrast-batch-norm-grad"
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
        let out = with_triple(
            "batch_norm backward",
            (s1, l1),
            (s2, l2),
            (s3, l3),
            ["x", "y", "dy"],
            |x, y, d| CpuStorage::F32(self.run(x, y, d)),
            |x, y, d| CpuStorage::F64(self.run(x, y, d)),
        )?;
        Ok((out, l1.shape().clone()))
    }
}

/// Output of [`batch_norm`]: the normalised tensor and the statistics it used.
#[derive(Debug)]
pub struct BatchNormOutput {
    pub y: Tensor,
    pub stats: ChannelStats,
}

/// Checks a [`batch_norm`] call: `x` `[..., C]` with gamma and beta of `C` entries,
/// fixed statistics covering `C`, and at least 2 values per channel for batch
/// statistics.
pub(crate) fn check_batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mode: &BatchNormMode,
) -> Result<()> {
    let c = gamma.elem_count();
    if x.dims().last() != Some(&c) || beta.elem_count() != c {
        bail!(
            "batch_norm: input {:?}, gamma [{c}] and beta [{}] disagree on the channel count",
            x.dims(),
            beta.elem_count()
        );
    }
    mode.check_channels(c, "batch_norm")?;
    if matches!(mode, BatchNormMode::Batch) && x.elem_count() / c.max(1) < 2 {
        bail!(
            "batch_norm: batch statistics need at least 2 values per channel, input is {:?}",
            x.dims()
        );
    }
    Ok(())
}

/// Batch-normalises `x` `[..., C]` over every dimension but the last, with scale
/// `gamma` and shift `beta` `[C]`, optionally followed by a ReLU. Differentiable in
/// `x`, `gamma` and `beta`. CPU tensors of f32 or f64 use the fused kernels; other
/// devices use [`generic::batch_norm`].
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mode: BatchNormMode,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    check_batch_norm(x, gamma, beta, &mode)?;
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && gamma.dtype() == x.dtype()
        && beta.dtype() == x.dtype()
        && !matches!(mode, BatchNormMode::Synced(_));
    if !fused {
        return generic::batch_norm(x, gamma, beta, mode, eps, relu);
    }
    let used = Arc::new(Mutex::new(None));
    let op = BatchNormOp {
        eps,
        relu,
        mode,
        used: used.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = used
        .lock()
        .expect("stats lock")
        .clone()
        .expect("filled by the forward pass");
    Ok(BatchNormOutput { y, stats })
}
