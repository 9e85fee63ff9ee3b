//! Data-parallel training over processes: the world of ranks and the collective
//! operations between them.
//!
//! A run of N ranks trains one model on a global batch of `data.batch_size` images:
//! each rank augments and encodes its own `batch_size / N` of them, and
//! [`World::gather_rows`] puts every rank's embeddings together, in rank order, so
//! that the loss sees the same global candidates (and the same global mining plan) as
//! one process with the whole batch would.
//!
//! **Why the gradients are right by construction.** Every rank computes the *same*
//! loss `L`: the loss of the global batch, a function of all ranks' rows. The other
//! ranks' rows enter it as constants, so one rank's backward pass yields exactly
//! `dL/d(own rows)` (every term of `L`, whichever rank's anchor it belongs to) and,
//! through its own encoder pass, that rank's share of `dL/dθ`. The shares add up:
//! [`World::sum_gradients`] all-reduces them with a plain sum, and no factor of the
//! world size appears anywhere. (Other libraries' recurring bugs are the two ways
//! the usual design, a per-rank loss averaged by the framework, goes wrong: a
//! gather without a backward, or gradients averaged when they should be summed.)
//! Parameters used after the gather (SimLAP's gate network and logit scale) are
//! counted once, on rank 0 ([`World::after_gather`]).
//!
//! The price is that each rank evaluates the whole `[N*b, N*b]` loss; the encoder,
//! which dominates the step, is split N ways. docs/distributed.md has the measured
//! costs.
//!
//! Engines: [`Collective`] is implemented by the single process (world size 1, the
//! default: the same code path, no communication), by MPI (feature `mpi`, host
//! buffers) and by NCCL on CUDA devices (feature `nccl`, bootstrapped over MPI).

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod ring;

pub use ring::{check_ring, ring_nt_xent};

use crate::optim::Param;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use contrast_kernels::CrossProcessSum;
use std::sync::Arc;

/// The collective operations a data-parallel run needs. Every rank calls them in the
/// same order with tensors of the same shape and dtype (f32, f64, u32 or i64).
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn size(&self) -> usize;
    /// The engine's name (`single`, `mpi`, `nccl`).
    fn engine(&self) -> &'static str;
    /// Every rank's `x` `[b, ...]` concatenated in rank order along dimension 0:
    /// `[size * b, ...]`. Not differentiable (see [`World::gather_rows`]).
    fn all_gather(&self, x: &Tensor) -> Result<Tensor>;
    /// The elementwise sum of every rank's `x`, the same bits on every rank.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// Rank `root`'s `x` on every rank.
    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Sends `x` to the next rank (`rank + 1`, wrapping) and returns what the
    /// previous rank sent: one step of a ring. The same shape on every rank.
    fn shift(&self, x: &Tensor) -> Result<Tensor>;
}

/// One process alone: world size 1, every collective the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn broadcast(&self, x: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn shift(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// The ranks of this run, shared by the trainer, the methods and the loader.
#[derive(Debug, Clone)]
pub struct World(Arc<dyn Collective>);

impl Default for World {
    fn default() -> Self {
        Self::single()
    }
}

/// Environment variables a launcher (Open MPI's `mpirun`, MPICH's Hydra, Slurm's
/// `srun` with PMI or PMIx) sets to the world size.
const SIZE_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_SIZE",
    "SLURM_NTASKS",
];

/// The world size a launcher announced in the environment, if any.
pub fn launched_size() -> Option<usize> {
    SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The rank on this host (one GPU per local rank), as the launcher set it.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

impl World {
    /// The single process (world size 1).
    pub fn single() -> Self {
        Self(Arc::new(SingleProcess))
    }

    /// A world over any [`Collective`].
    pub fn new(collective: Arc<dyn Collective>) -> Self {
        Self(collective)
    }

    /// The world this process was started in: MPI when a launcher started it with
    /// more than one rank (feature `mpi`; an error naming the feature otherwise),
    /// and with `cuda` the NCCL engine on the rank's GPU (feature `nccl`), else the
    /// single process. MPI is initialised here, once per process, and finalised
    /// when the last clone of the world is dropped.
    pub fn from_env(device: &candle_core::Device) -> anyhow::Result<Self> {
        match launched_size() {
            Some(n) if n > 1 => Self::launched(device),
            _ => Ok(Self::single()),
        }
    }

    #[cfg(feature = "mpi")]
    fn launched(device: &candle_core::Device) -> anyhow::Result<Self> {
        let world = Arc::new(mpi::MpiWorld::init().map_err(anyhow::Error::msg)?);
        if device.is_cuda() {
            #[cfg(feature = "nccl")]
            return Ok(Self(Arc::new(nccl::NcclWorld::new(world, device)?)));
            #[cfg(not(feature = "nccl"))]
            anyhow::bail!(
                "a multi-rank run on `cuda` needs the `nccl` feature (cargo build --features xtask/nccl); MPI alone moves host buffers only"
            );
        }
        Ok(Self(world))
    }

    #[cfg(not(feature = "mpi"))]
    fn launched(_: &candle_core::Device) -> anyhow::Result<Self> {
        anyhow::bail!(
            "started as one of {} ranks, but this binary was built without the `mpi` feature; use `cargo xtask train --world N`, which builds it, or build with `--features xtask/mpi`",
            launched_size().unwrap_or(0)
        )
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.0.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.0.size()
    }

    /// True on rank 0, which writes the run directory and evaluates.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// The engine's name.
    pub fn engine(&self) -> &'static str {
        self.0.engine()
    }

    /// The collectives themselves.
    pub fn collective(&self) -> &dyn Collective {
        self.0.as_ref()
    }

    /// Every rank's rows `x` `[b, D]` in rank order, `[size * b, D]`, with this
    /// rank's block still tracked by autograd and the others constant: a loss of
    /// the result, computed alike on every rank, gives this rank the gradient of its
    /// own rows (see the module documentation).
    pub fn gather_rows(&self, x: &Tensor) -> Result<Tensor> {
        if self.size() == 1 {
            return Ok(x.clone());
        }
        let b = x.dim(0)?;
        let all = self.0.all_gather(&x.detach())?;
        let (r, n) = (self.rank(), self.size());
        let mut parts = Vec::with_capacity(3);
        if r > 0 {
            parts.push(all.narrow(0, 0, r * b)?);
        }
        parts.push(x.clone());
        if r + 1 < n {
            parts.push(all.narrow(0, (r + 1) * b, (n - r - 1) * b)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// A tensor computed identically on every rank from parameters that act after
    /// the gather (SimLAP's gates, a learnable logit scale): tracked on rank 0 and
    /// constant elsewhere, so that the summed gradient counts it once.
    pub fn after_gather(&self, x: &Tensor) -> Tensor {
        if self.is_root() {
            x.clone()
        } else {
            x.detach()
        }
    }

    /// Replaces each parameter's gradient in `grads` by its sum over the ranks, in
    /// one all-reduce of the gradients flattened per dtype. A parameter that has a
    /// gradient on some ranks only (one used after the gather, tracked on rank 0)
    /// counts zero on the others; one without a gradient anywhere stays without.
    pub fn sum_gradients(&self, grads: &mut GradStore, params: &[Param]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let cpu = candle_core::Device::Cpu;
        let here: Vec<u32> = params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()).is_some() as u32)
            .collect();
        let anywhere = self
            .0
            .all_reduce_sum(&Tensor::new(here.as_slice(), &cpu)?)?
            .to_vec1::<u32>()?;
        let held: Vec<(&Param, Tensor)> = params
            .iter()
            .zip(&anywhere)
            .filter(|(_, n)| **n > 0)
            .map(|(p, _)| {
                let g = match grads.get(p.var.as_tensor()) {
                    Some(g) => g.detach(),
                    None => p.var.as_tensor().zeros_like()?,
                };
                Ok((p, g))
            })
            .collect::<Result<_>>()?;
        for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
            let group: Vec<&(&Param, Tensor)> =
                held.iter().filter(|(_, g)| g.dtype() == dtype).collect();
            if group.is_empty() {
                continue;
            }
            let flat = Tensor::cat(
                &group
                    .iter()
                    .map(|(_, g)| g.flatten_all())
                    .collect::<Result<Vec<_>>>()?,
                0,
            )?;
            let summed = self.0.all_reduce_sum(&flat.to_dtype(wide(dtype))?)?;
            let mut at = 0;
            for (p, g) in group {
                let n = g.elem_count();
                let s = summed
                    .narrow(0, at, n)?
                    .reshape(g.shape())?
                    .to_dtype(dtype)?;
                grads.insert(p.var.as_tensor(), s);
                at += n;
            }
        }
        Ok(())
    }

    /// Rank 0's value of `x` on every rank.
    pub fn broadcast(&self, x: &Tensor) -> Result<Tensor> {
        self.0.broadcast(x, 0)
    }

    /// True when any rank passes `true` (an interrupt that reached only some ranks
    /// stops them all at the same step).
    pub fn any(&self, flag: bool) -> Result<bool> {
        if self.size() == 1 {
            return Ok(flag);
        }
        let t = Tensor::new(&[flag as u32], &candle_core::Device::Cpu)?;
        Ok(self.0.all_reduce_sum(&t)?.to_vec1::<u32>()?[0] > 0)
    }

    /// Fails unless every rank holds the same parameters: a check, once an epoch,
    /// that no rank has drifted (each rank's parameters summed in f64, compared
    /// bit for bit).
    pub fn check_in_sync(&self, params: &[Param]) -> anyhow::Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let mut fingerprint = 0f64;
        for p in params {
            let t = p.var.as_tensor().to_dtype(DType::F64)?;
            fingerprint +=
                t.abs()?.sum_all()?.to_scalar::<f64>()? + 0.5 * t.sum_all()?.to_scalar::<f64>()?;
        }
        let all = self
            .0
            .all_gather(&Tensor::new(&[fingerprint], &candle_core::Device::Cpu)?)?
            .to_vec1::<f64>()?;
        if all.iter().any(|f| f.to_bits() != all[0].to_bits()) {
            anyhow::bail!(
                "the ranks' parameters have diverged (fingerprints {all:?}); this is a bug in the data-parallel step"
            );
        }
        Ok(())
    }

    /// Rank 0's `text` on every rank (a run directory named after rank 0's clock,
    /// for one).
    pub fn broadcast_text(&self, text: &str) -> Result<String> {
        if self.size() == 1 {
            return Ok(text.to_string());
        }
        let cpu = candle_core::Device::Cpu;
        let len = self.broadcast(&Tensor::new(&[text.len() as u32], &cpu)?)?;
        let len = len.to_vec1::<u32>()?[0] as usize;
        // The bytes, four to a word (the collectives move numbers).
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(len.next_multiple_of(4).max(4), 0);
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n = words.len();
        let words = self.broadcast(&Tensor::from_vec(words, n, &cpu)?)?;
        let mut out: Vec<u8> = words
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        out.truncate(len);
        String::from_utf8(out).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        self.0.barrier()
    }
}

/// The sum over ranks as a differentiable op: the gradient of the sum is summed
/// over the ranks the same way (synchronised BatchNorm's statistics).
#[derive(Debug)]
struct AllReduceSum(World);

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "all-reduce-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("all-reduce-sum needs a contiguous tensor");
        };
        let cpu = candle_core::Device::Cpu;
        let x = match s {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.shape(), &cpu)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.shape(), &cpu)?,
            _ => candle_core::bail!("all-reduce-sum takes f32 or f64 tensors"),
        };
        let sum = self.0.collective().all_reduce_sum(&x)?.flatten_all()?;
        let out = match sum.dtype() {
            DType::F32 => CpuStorage::F32(sum.to_vec1()?),
            _ => CpuStorage::F64(sum.to_vec1()?),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.0.collective().all_reduce_sum(grad)?))
    }
}

impl CrossProcessSum for World {
    fn sum(&self, x: &Tensor) -> Result<Tensor> {
        if self.size() == 1 {
            return Ok(x.clone());
        }
        if !x.device().is_cpu() {
            candle_core::bail!(
                "synchronised BatchNorm (model.sync_bn) runs on CPU ranks; on GPUs each rank normalises its own rows for now"
            );
        }
        x.contiguous()?.apply_op1(AllReduceSum(self.clone()))
    }

    fn processes(&self) -> usize {
        self.size()
    }
}

/// The dtype gradients are summed in: half-precision gradients are summed in f32.
fn wide(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_process_is_a_world_of_one() {
        let w = World::single();
        assert_eq!((w.rank(), w.size(), w.is_root()), (0, 1, true));
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            w.gather_rows(&x).unwrap().to_vec2::<f32>().unwrap(),
            x.to_vec2::<f32>().unwrap()
        );
        assert!(w.any(true).unwrap() && !w.any(false).unwrap());
    }

    /// A world of `n` ranks in one process, for checking the gather's gradient: the
    /// collectives read every rank's tensor from a shared table filled beforehand.
    #[derive(Debug)]
    struct Table {
        rank: usize,
        rows: Vec<Tensor>,
    }

    impl Collective for Table {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.rows.len()
        }
        fn engine(&self) -> &'static str {
            "table"
        }
        fn all_gather(&self, _: &Tensor) -> Result<Tensor> {
            Tensor::cat(&self.rows, 0)
        }
        fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
            Ok(x.clone())
        }
        fn broadcast(&self, x: &Tensor, _: usize) -> Result<Tensor> {
            Ok(x.clone())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn shift(&self, x: &Tensor) -> Result<Tensor> {
            Ok(x.clone())
        }
    }

    /// The per-rank gradients of a loss of the gathered rows add up to the
    /// gradient of the same loss over the whole batch in one process.
    #[test]
    fn gathered_gradients_add_up_to_the_whole_batch_gradient() {
        let dev = candle_core::Device::Cpu;
        let whole =
            Tensor::new(&[[0.3f64, -1.0], [2.0, 0.5], [-0.7, 0.1], [1.2, 1.9]], &dev).unwrap();
        let loss = |z: &Tensor| {
            // A loss that couples every row with every other: log-sum-exp of the
            // Gram matrix.
            z.matmul(&z.t().unwrap())
                .unwrap()
                .exp()
                .unwrap()
                .sum_all()
                .unwrap()
                .log()
                .unwrap()
        };
        let var = candle_core::Var::from_tensor(&whole).unwrap();
        let reference = loss(var.as_tensor())
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let rows: Vec<Tensor> = (0..2).map(|r| whole.narrow(0, 2 * r, 2).unwrap()).collect();
        for rank in 0..2 {
            let world = World::new(Arc::new(Table {
                rank,
                rows: rows.clone(),
            }));
            let own = candle_core::Var::from_tensor(&rows[rank]).unwrap();
            let grads = loss(&world.gather_rows(own.as_tensor()).unwrap())
                .backward()
                .unwrap();
            let g = grads
                .get(own.as_tensor())
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            for (i, row) in g.iter().enumerate() {
                for (a, b) in row.iter().zip(&reference[2 * rank + i]) {
                    assert!((a - b).abs() < 1e-12, "rank {rank} row {i}: {a} vs {b}");
                }
            }
        }
    }
}
