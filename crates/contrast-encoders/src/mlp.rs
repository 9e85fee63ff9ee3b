//! A multi-layer perceptron encoder on flattened images.

use crate::batch_norm::BatchNorm;
use crate::linear::Linear;
use crate::params::ParamBuilder;
use crate::{Encoder, InputShape};
use candle_core::{Result, Tensor};

/// Flattens `[B, H, W, C]` and applies `Linear -> BatchNorm -> ReLU` per hidden width.
/// The representation is the last hidden layer's output.
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<(Linear, BatchNorm)>,
    out_dim: usize,
}

impl Mlp {
    /// Builds layers of the given `widths` (at least one) on `input`.
    pub fn new(input: InputShape, widths: &[usize], vb: ParamBuilder) -> Result<Self> {
        if widths.is_empty() {
            candle_core::bail!("mlp encoder: `hidden` needs at least one width");
        }
        let mut layers = Vec::with_capacity(widths.len());
        let mut prev = input.numel();
        for (i, &w) in widths.iter().enumerate() {
            let vb = vb.pp(format!("layer{i}"));
            layers.push((
                Linear::new(prev, w, false, vb.pp("fc"))?,
                BatchNorm::new(w, vb.pp("bn"))?,
            ));
            prev = w;
        }
        Ok(Self {
            layers,
            out_dim: prev,
        })
    }
}

impl Encoder for Mlp {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.flatten_from(1)?;
        for (fc, bn) in &self.layers {
            h = bn.forward_act(&fc.forward(&h)?, train, true)?;
        }
        Ok(h)
    }

    fn out_dim(&self) -> usize {
        self.out_dim
    }
}
