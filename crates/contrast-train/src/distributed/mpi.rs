//! The MPI engine (feature `mpi`): collectives over host buffers through the `mpi`
//! crate (Open MPI, MPICH or any MPI-3 library). Tensors on another device are
//! copied to the host and back.

use super::Collective;
use candle_core::{DType, Device, Result, Tensor};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::Communicator;
use std::sync::Mutex;

/// `MPI_COMM_WORLD` of an MPI-launched process. MPI is initialised with
/// `MPI_THREAD_SERIALIZED` and every call holds `lock`, so the collectives may come
/// from any thread (candle runs a backward pass on the caller's thread, but the
/// trainer does not promise which).
pub struct MpiWorld {
    universe: Universe,
    rank: usize,
    size: usize,
    lock: Mutex<()>,
}

impl std::fmt::Debug for MpiWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiWorld")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl MpiWorld {
    /// Initialises MPI (once per process; a second call fails).
    pub fn init() -> std::result::Result<Self, String> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or("MPI was already initialised in this process")?;
        if threading < mpi::Threading::Serialized {
            return Err(format!(
                "the MPI library offers thread level {threading:?}; the trainer needs Serialized"
            ));
        }
        let world = universe.world();
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            universe,
            lock: Mutex::new(()),
        })
    }

    /// Runs `f` on the world communicator, one call at a time.
    fn with<T>(&self, f: impl FnOnce(&mpi::topology::SimpleCommunicator) -> T) -> T {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        f(&self.universe.world())
    }
}

/// Runs `$body` with `$v` bound to `x`'s values as a host `Vec` of the matching Rust
/// type; `$t` names that type.
macro_rules! host_values {
    ($x:expr, |$v:ident : $t:ident| $body:expr) => {{
        let x = $x.to_device(&Device::Cpu)?.flatten_all()?;
        match x.dtype() {
            DType::F32 => {
                type $t = f32;
                let $v = x.to_vec1::<f32>()?;
                $body
            }
            DType::F64 => {
                type $t = f64;
                let $v = x.to_vec1::<f64>()?;
                $body
            }
            DType::U32 => {
                type $t = u32;
                let $v = x.to_vec1::<u32>()?;
                $body
            }
            DType::I64 => {
                type $t = i64;
                let $v = x.to_vec1::<i64>()?;
                $body
            }
            d => candle_core::bail!("MPI collectives take f32, f64, u32 or i64 tensors, not {d:?}"),
        }
    }};
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn engine(&self) -> &'static str {
        "mpi"
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.is_empty() {
            candle_core::bail!("all_gather needs a tensor of rank 1 or more");
        }
        dims[0] *= self.size;
        let out = host_values!(x, |v: T| {
            let mut out: Vec<T> = vec![T::default(); v.len() * self.size];
            self.with(|w| w.all_gather_into(&v[..], &mut out[..]));
            Tensor::from_vec(out, dims, &Device::Cpu)?
        });
        out.to_device(x.device())
    }

    /// A reduction to rank 0 followed by a broadcast, so that every rank holds the
    /// same bits whatever algorithm the library picks for the sum.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let out = host_values!(x, |v: T| {
            let mut out: Vec<T> = vec![T::default(); v.len()];
            self.with(|w| {
                let root = w.process_at_rank(0);
                if self.rank == 0 {
                    root.reduce_into_root(&v[..], &mut out[..], SystemOperation::sum());
                } else {
                    root.reduce_into(&v[..], SystemOperation::sum());
                }
                root.broadcast_into(&mut out[..]);
            });
            Tensor::from_vec(out, x.shape(), &Device::Cpu)?
        });
        out.to_device(x.device())
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        let out = host_values!(x, |v: T| {
            let mut v: Vec<T> = v;
            self.with(|w| w.process_at_rank(root as i32).broadcast_into(&mut v[..]));
            Tensor::from_vec(v, x.shape(), &Device::Cpu)?
        });
        out.to_device(x.device())
    }

    fn barrier(&self) -> Result<()> {
        self.with(|w| w.barrier());
        Ok(())
    }

    fn shift(&self, x: &Tensor) -> Result<Tensor> {
        let (next, prev) = (
            ((self.rank + 1) % self.size) as i32,
            ((self.rank + self.size - 1) % self.size) as i32,
        );
        let out = host_values!(x, |v: T| {
            let mut out: Vec<T> = vec![T::default(); v.len()];
            self.with(|w| {
                mpi::point_to_point::send_receive_into(
                    &v[..],
                    &w.process_at_rank(next),
                    &mut out[..],
                    &w.process_at_rank(prev),
                )
            });
            Tensor::from_vec(out, x.shape(), &Device::Cpu)?
        });
        out.to_device(x.device())
    }
}
