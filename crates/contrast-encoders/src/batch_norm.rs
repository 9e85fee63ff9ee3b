//! Batch normalisation over the last (channel) dimension, in training and eval mode.
//!
//! candle-nn's `BatchNorm` normalises dimension 1 (channels first). Contrast's
//! encoders are channels last, so this one normalises the last dimension of any
//! `[..., C]` tensor. In training mode it uses the batch statistics and updates the
//! running statistics (momentum 0.1, unbiased variance, as PyTorch); in eval mode it
//! uses the running statistics.

use crate::params::{ParamBuilder, ParamInit};
use candle_core::{Result, Tensor, Var};

/// Name fragment that marks a variable as a running statistic, not a parameter.
pub const RUNNING_STAT: &str = "running_";

/// Batch normalisation over the last dimension with learnable scale and shift.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    channels: usize,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// Creates `weight` (ones), `bias` (zeros), `running_mean` and `running_var` under `vb`.
    pub fn new(channels: usize, vb: ParamBuilder) -> Result<Self> {
        let weight = vb.get(channels, "weight", ParamInit::Const(1.0))?;
        let bias = vb.get(channels, "bias", ParamInit::Const(0.0))?;
        let running_mean = vb.get(channels, "running_mean", ParamInit::Const(0.0))?;
        let running_var = vb.get(channels, "running_var", ParamInit::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            channels,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Running mean `[C]`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// Running (unbiased) variance `[C]`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Normalises `x` `[..., C]`. With `train`, batch statistics are used and the
    /// running statistics move towards them.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let c = *dims.last().unwrap_or(&0);
        if c != self.channels {
            candle_core::bail!(
                "BatchNorm over {} channels got input of shape {dims:?}",
                self.channels
            );
        }
        let flat = x.reshape(((), c))?;
        let (mean, var) = if train {
            let n = flat.dim(0)?;
            if n < 2 {
                candle_core::bail!(
                    "BatchNorm in training mode needs at least 2 values per channel, got {n}"
                );
            }
            let mean = flat.mean(0)?;
            let centered = flat.broadcast_sub(&mean)?;
            let var = centered.sqr()?.mean(0)?;
            let m = self.momentum;
            let unbiased = (var.detach() * (n as f64 / (n as f64 - 1.0)))?;
            let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
            let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
            self.running_mean
                .set(&rm.to_dtype(self.running_mean.dtype())?)?;
            self.running_var
                .set(&rv.to_dtype(self.running_var.dtype())?)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().detach(),
                self.running_var.as_tensor().detach(),
            )
        };
        let inv_std = (var + self.eps)?.sqrt()?.recip()?;
        let scale = (inv_std * &self.weight)?;
        let shift = (&self.bias - (mean * &scale)?)?;
        flat.broadcast_mul(&scale)?
            .broadcast_add(&shift)?
            .reshape(dims)
    }
}
