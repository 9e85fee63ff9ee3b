//! Batch normalisation over the last (channel) dimension, in training and eval mode.
//!
//! candle-nn's `BatchNorm` normalises dimension 1 (channels first). Contrast's
//! encoders are channels last, so this one normalises the last dimension of any
//! `[..., C]` tensor. In training mode it uses the batch statistics and updates the
//! running statistics (momentum 0.1, unbiased variance, as PyTorch); in eval mode it
//! uses the running statistics.

use crate::params::{ParamBuilder, ParamInit};
use candle_core::{DType, Result, Tensor, Var};
use contrast_kernels::{BatchNormMode, ChannelStats, CrossProcessSum, OpSet};
use std::sync::Arc;

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
    ops: OpSet,
    /// Synchronised statistics across a data-parallel run's processes.
    sync: Option<Arc<dyn CrossProcessSum>>,
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
            ops: vb.ops(),
            sync: vb.sync_bn(),
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
        self.forward_act(x, train, false)
    }

    /// As [`BatchNorm::forward_t`], followed by a ReLU when `relu` is set (fused into
    /// the same pass on the CPU).
    pub fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if x.dims().last() != Some(&self.channels) {
            candle_core::bail!(
                "BatchNorm over {} channels got input of shape {:?}",
                self.channels,
                x.dims()
            );
        }
        let out = self.ops.batch_norm(
            x,
            &self.weight.to_dtype(x.dtype())?,
            &self.bias.to_dtype(x.dtype())?,
            self.mode(train)?,
            self.eps,
            relu,
        )?;
        if train {
            self.update_running(&out.stats, x.elem_count() / self.channels)?;
        }
        Ok(out.y)
    }

    /// The statistics to normalise with: the batch's in training (the global
    /// batch's with synchronised BatchNorm), the running ones otherwise.
    pub fn mode(&self, train: bool) -> Result<BatchNormMode> {
        Ok(if train {
            match &self.sync {
                Some(sum) => BatchNormMode::Synced(sum.clone()),
                None => BatchNormMode::Batch,
            }
        } else {
            BatchNormMode::Fixed(ChannelStats {
                mean: self
                    .running_mean
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
                var: self
                    .running_var
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
            })
        })
    }

    /// Moves the running statistics towards batch statistics computed over `n`
    /// values per channel on this process (momentum 0.1; the variance made unbiased,
    /// as PyTorch, over every process's values when synchronised).
    pub fn update_running(&self, batch: &ChannelStats, n: usize) -> Result<()> {
        let m = self.momentum;
        let n = (n * self.sync.as_ref().map_or(1, |s| s.processes())) as f64;
        let update = |running: &Var, values: &[f64], correction: f64| -> Result<()> {
            let old: Vec<f64> = running.as_tensor().to_dtype(DType::F64)?.to_vec1()?;
            let new: Vec<f64> = old
                .iter()
                .zip(values)
                .map(|(o, b)| (1.0 - m) * o + m * b * correction)
                .collect();
            running.set(
                &Tensor::from_vec(new, self.channels, running.device())?
                    .to_dtype(running.dtype())?,
            )
        };
        update(&self.running_mean, &batch.mean, 1.0)?;
        update(
            &self.running_var,
            &batch.var,
            if n > 1.0 { n / (n - 1.0) } else { 1.0 },
        )
    }

    /// Scale `[C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Shift `[C]`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// BatchNorm epsilon.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}
