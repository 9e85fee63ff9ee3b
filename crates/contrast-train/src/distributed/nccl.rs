//! The NCCL engine (feature `nccl`): collectives between the GPUs of CUDA ranks,
//! device buffer to device buffer on the device's stream. MPI starts it (rank 0's
//! NCCL id is broadcast over MPI) and carries what lives on the host (the interrupt
//! flag, parameter fingerprints).

use super::Collective;
use super::mpi::MpiWorld;
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// An NCCL communicator.
struct SharedComm(Comm);

// SAFETY: an NCCL communicator may be used from any thread provided that calls on it
// do not overlap; `NcclWorld` only reaches it through a mutex.
unsafe impl Send for SharedComm {}

/// One rank per GPU: NCCL for device tensors, MPI for host ones.
pub struct NcclWorld {
    mpi: Arc<MpiWorld>,
    comm: Mutex<SharedComm>,
    device: CudaDevice,
}

impl std::fmt::Debug for NcclWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclWorld")
            .field("rank", &self.mpi.rank())
            .field("size", &self.mpi.size())
            .finish_non_exhaustive()
    }
}

impl NcclWorld {
    /// Joins the NCCL clique of the MPI world on `device` (a CUDA device).
    pub fn new(mpi: Arc<MpiWorld>, device: &Device) -> anyhow::Result<Self> {
        let Device::Cuda(cuda) = device else {
            anyhow::bail!("the NCCL engine needs a CUDA device, got {device:?}");
        };
        // Rank 0 creates the id; it travels to the others as 32 u32 words.
        let id = if mpi.rank() == 0 {
            Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?
        } else {
            Id::uninit([0; 128])
        };
        let words: Vec<u32> = id
            .internal()
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
            .collect();
        let words = mpi
            .broadcast(&Tensor::from_vec(words, 32, &Device::Cpu)?, 0)?
            .to_vec1::<u32>()?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (i, w) in words.iter().enumerate() {
            for (j, b) in w.to_le_bytes().iter().enumerate() {
                internal[4 * i + j] = *b as std::ffi::c_char;
            }
        }
        let comm = Comm::from_rank(
            cuda.cuda_stream(),
            mpi.rank(),
            mpi.size(),
            Id::uninit(internal),
        )
        .map_err(|e| anyhow::anyhow!("ncclCommInitRank: {e:?}"))?;
        Ok(Self {
            mpi,
            comm: Mutex::new(SharedComm(comm)),
            device: cuda.clone(),
        })
    }

    /// Applies `kind` to `x` on the GPU (host tensors go through MPI).
    fn run(&self, x: &Tensor, kind: Kind) -> Result<Tensor> {
        if !x.device().is_cuda() {
            return match kind {
                Kind::Gather => self.mpi.all_gather(x),
                Kind::Sum => self.mpi.all_reduce_sum(x),
                Kind::Broadcast(root) => self.mpi.broadcast(x, root),
            };
        }
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        x.contiguous()?.apply_op1_no_bwd(&NcclOp {
            comm: &comm.0,
            kind,
            size: self.mpi.size(),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Gather,
    Sum,
    Broadcast(usize),
}

/// One NCCL collective as a candle op (the way to make a tensor of a new CUDA
/// buffer).
struct NcclOp<'a> {
    comm: &'a Comm,
    kind: Kind,
    size: usize,
}

// SAFETY: the op lives for one call made under `NcclWorld`'s mutex.
unsafe impl Send for NcclOp<'_> {}
// SAFETY: as above; candle only reads the op during that call.
unsafe impl Sync for NcclOp<'_> {}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL collectives take CUDA tensors")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL collectives need a contiguous tensor");
        };
        let mut dims = l.dims().to_vec();
        if matches!(self.kind, Kind::Gather) {
            dims[0] *= self.size;
        }
        let len = (end - start)
            * if matches!(self.kind, Kind::Gather) {
                self.size
            } else {
                1
            };
        let err = |e| candle_core::Error::Msg(format!("NCCL: {e:?}"));
        macro_rules! collective {
            ($t:ty) => {{
                let src = s.as_cuda_slice::<$t>()?.slice(start..end);
                let mut dst = s.device.alloc_zeros::<$t>(len)?;
                match self.kind {
                    Kind::Gather => self.comm.all_gather(&src, &mut dst).map_err(err)?,
                    Kind::Sum => self
                        .comm
                        .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                        .map_err(err)?,
                    Kind::Broadcast(root) => self
                        .comm
                        .broadcast(Some(&src), &mut dst, root as i32)
                        .map_err(err)?,
                };
                CudaStorage::wrap_cuda_slice(dst, s.device.clone())
            }};
        }
        let out = match s.dtype() {
            DType::F32 => collective!(f32),
            DType::F64 => collective!(f64),
            DType::U32 => collective!(u32),
            DType::I64 => collective!(i64),
            d => candle_core::bail!("NCCL collectives take f32, f64, u32 or i64, not {d:?}"),
        };
        Ok((out, Shape::from(dims)))
    }
}

impl Collective for NcclWorld {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn engine(&self) -> &'static str {
        "nccl"
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Kind::Gather)
    }

    /// NCCL's ring all-reduce leaves the same bits on every rank.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, Kind::Sum)
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        self.run(x, Kind::Broadcast(root))
    }

    fn barrier(&self) -> Result<()> {
        self.device.synchronize()?;
        self.mpi.barrier()
    }

    /// Through the host (MPI): the ring loss is not yet a device path.
    fn shift(&self, x: &Tensor) -> Result<Tensor> {
        self.mpi
            .shift(&x.to_device(&Device::Cpu)?)?
            .to_device(x.device())
    }
}
