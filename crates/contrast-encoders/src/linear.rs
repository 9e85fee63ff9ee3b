//! Fully connected layer with PyTorch's default initialisation.

use crate::params::{ParamBuilder, ParamInit};
use candle_core::{Result, Tensor};

/// `y = x W + b` for `x` `[N, in]`, with `W` stored `[in, out]` so that no transpose is
/// needed on the hot path.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Uniform initialisation in `±1/sqrt(in)` for weight and bias (PyTorch's default).
    pub fn new(input: usize, output: usize, bias: bool, vb: ParamBuilder) -> Result<Self> {
        let bound = 1.0 / (input as f64).sqrt();
        let init = ParamInit::Uniform(bound);
        let weight = vb.get((input, output), "weight", init)?;
        let bias = if bias {
            Some(vb.get(output, "bias", init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Maps `[N, in]` to `[N, out]`, in the dtype of `x` (the stored parameters are
    /// cast to it, so a bf16 input multiplies in bf16).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.to_dtype(x.dtype())?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?),
            None => Ok(y),
        }
    }
}
