//! Seeded parameter creation.
//!
//! candle's CPU random number generator cannot be seeded, so layers create their
//! parameters through [`ParamBuilder`], which draws each parameter's initial values
//! from a generator seeded by the model seed and the parameter's full path. The same
//! seed therefore gives the same network, whatever order layers are built in.
//!
//! The builder also carries the [`OpSet`] the layers it builds run their CNN ops
//! with, so a whole model takes one op set from one place.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use contrast_kernels::{CrossProcessSum, OpSet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::sync::Arc;

/// Initial distribution of a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamInit {
    Const(f64),
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Uniform in `[-bound, bound]`.
    Uniform(f64),
}

/// Creates named parameters in a [`VarMap`] with seeded initial values, and hands
/// the layers it builds their [`OpSet`].
#[derive(Clone)]
pub struct ParamBuilder<'a> {
    vb: VarBuilder<'a>,
    seed: u64,
    ops: OpSet,
    /// Synchronised BatchNorm across the processes of a data-parallel run.
    sync: Option<Arc<dyn CrossProcessSum>>,
}

impl std::fmt::Debug for ParamBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamBuilder")
            .field("prefix", &self.vb.prefix())
            .field("seed", &self.seed)
            .field("ops", &self.ops)
            .field("sync_bn", &self.sync.is_some())
            .finish_non_exhaustive()
    }
}

/// FNV-1a over the path, mixed with the seed.
fn path_seed(seed: u64, path: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in path.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl<'a> ParamBuilder<'a> {
    /// Parameters stored in `varmap`, on `device`, of `dtype`, seeded by `seed`; the
    /// layers run the op set that is fastest on `device` ([`OpSet::for_device`]).
    pub fn new(varmap: &VarMap, dtype: DType, device: &Device, seed: u64) -> Self {
        Self {
            vb: VarBuilder::from_varmap(varmap, dtype, device),
            seed,
            ops: OpSet::for_device(device),
            sync: None,
        }
    }

    /// The same builder, its BatchNorm layers normalising with the statistics of
    /// the global batch, summed over the processes by `sum` (synchronised
    /// BatchNorm).
    pub fn with_sync_bn(mut self, sum: Arc<dyn CrossProcessSum>) -> Self {
        self.sync = Some(sum);
        self
    }

    /// The cross-process sum of synchronised BatchNorm, if it is on.
    pub fn sync_bn(&self) -> Option<Arc<dyn CrossProcessSum>> {
        self.sync.clone()
    }

    /// The same builder, its layers running `ops`.
    pub fn with_ops(mut self, ops: OpSet) -> Self {
        self.ops = ops;
        self
    }

    /// The op set the layers built here run.
    pub fn ops(&self) -> OpSet {
        self.ops
    }

    /// A builder whose parameter names are prefixed by `name.`.
    pub fn pp(&self, name: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(name),
            seed: self.seed,
            ops: self.ops,
            sync: self.sync.clone(),
        }
    }

    /// Creates (or returns the existing) parameter `name` of `shape`, setting its
    /// values from `init` when it is created.
    pub fn get(&self, shape: impl Into<Shape>, name: &str, init: ParamInit) -> Result<Tensor> {
        let shape: Shape = shape.into();
        let path = if self.vb.prefix().is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.vb.prefix())
        };
        let existed = self.vb.contains_tensor(name);
        let t = self
            .vb
            .get_with_hints(shape.clone(), name, Init::Const(0.0))?;
        if existed {
            return Ok(t);
        }
        let n = shape.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(path_seed(self.seed, &path));
        let values: Vec<f64> = match init {
            ParamInit::Const(c) => vec![c; n],
            ParamInit::Normal(std) => (0..n)
                .map(|_| std * rng.sample::<f64, _>(StandardNormal))
                .collect(),
            ParamInit::Uniform(b) => (0..n).map(|_| rng.random_range(-b..=b)).collect(),
        };
        let init = Tensor::from_vec(values, shape, t.device())?.to_dtype(t.dtype())?;
        Var::from_tensor(&t)?.set(&init)?;
        Ok(t)
    }
}
