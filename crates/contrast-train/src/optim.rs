//! Optimisers with parameter groups and saveable state.
//!
//! candle's SGD has no momentum and its AdamW decays every variable. These follow
//! PyTorch's update rules and exclude biases and normalisation parameters (every
//! parameter of rank 1) from weight decay, as is standard in self-supervised training.

use crate::config::OptimConfig;
use anyhow::{Context, Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// A trainable variable and whether weight decay applies to it.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub decay: bool,
}

impl Param {
    /// A parameter; decay applies to matrices and kernels (rank >= 2) only.
    pub fn new(name: impl Into<String>, var: Var) -> Self {
        let decay = var.rank() >= 2;
        Self {
            name: name.into(),
            var,
            decay,
        }
    }
}

/// SGD with momentum or AdamW over a fixed set of parameters.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimConfig,
    params: Vec<Param>,
    /// Per-parameter state: the momentum buffer (SGD) or first and second moments
    /// (AdamW), keyed `"<name>.<slot>"`.
    state: HashMap<String, Tensor>,
    steps: u64,
}

impl Optimizer {
    /// An optimiser over `params` (no state yet).
    pub fn new(config: OptimConfig, params: Vec<Param>) -> Self {
        Self {
            config,
            params,
            state: HashMap::new(),
            steps: 0,
        }
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters being optimised.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The name of the first parameter whose gradient in `grads` holds a NaN or an
    /// infinity, if any (one reduction per parameter).
    pub fn first_nonfinite(&self, grads: &GradStore) -> Result<Option<&str>> {
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                let total = g.sum_all()?.to_dtype(candle_core::DType::F64)?;
                if !total.to_scalar::<f64>()?.is_finite() {
                    return Ok(Some(&p.name));
                }
            }
        }
        Ok(None)
    }

    /// Applies one update with learning rate `lr`. Parameters without a gradient
    /// are left unchanged.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for p in &self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached: state built from a tracked variable would keep every earlier
            // step's graph alive through the momentum buffers.
            let w = &p.var.as_tensor().detach();
            let g = &g.detach();
            match self.config {
                OptimConfig::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                    ..
                } => {
                    let g = if p.decay && weight_decay > 0.0 {
                        (g + (w * weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let dir = if momentum > 0.0 {
                        let key = format!("{}.momentum", p.name);
                        let buf = match self.state.get(&key) {
                            Some(b) => ((b * momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let dir = if nesterov {
                            (&g + (&buf * momentum)?)?
                        } else {
                            buf.clone()
                        };
                        self.state.insert(key, buf);
                        dir
                    } else {
                        g
                    };
                    p.var.set(&(w - (dir * lr)?)?)?;
                }
                OptimConfig::Adamw {
                    betas: [b1, b2],
                    eps,
                    weight_decay,
                    ..
                } => {
                    let (km, kv) = (
                        format!("{}.exp_avg", p.name),
                        format!("{}.exp_avg_sq", p.name),
                    );
                    let m = match self.state.get(&km) {
                        Some(m) => ((m * b1)? + (g * (1.0 - b1))?)?,
                        None => (g * (1.0 - b1))?,
                    };
                    let v = match self.state.get(&kv) {
                        Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        None => (g.sqr()? * (1.0 - b2))?,
                    };
                    let m_hat = (&m / (1.0 - b1.powi(t)))?;
                    let v_hat = (&v / (1.0 - b2.powi(t)))?;
                    let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
                    let decayed = if p.decay && weight_decay > 0.0 {
                        (w * (1.0 - lr * weight_decay))?
                    } else {
                        w.clone()
                    };
                    p.var.set(&(decayed - (update * lr)?)?)?;
                    self.state.insert(km, m);
                    self.state.insert(kv, v);
                }
            }
        }
        Ok(())
    }

    /// The state to checkpoint: buffers by name, plus the step count.
    pub fn state(&self) -> (HashMap<String, Tensor>, u64) {
        (self.state.clone(), self.steps)
    }

    /// Restores state saved by [`Optimizer::state`]. Every buffer must belong to a
    /// known parameter and match its shape.
    pub fn load_state(&mut self, state: HashMap<String, Tensor>, steps: u64) -> Result<()> {
        let shapes: HashMap<&str, &[usize]> = self
            .params
            .iter()
            .map(|p| (p.name.as_str(), p.var.dims()))
            .collect();
        for (k, v) in &state {
            let (name, _) = k
                .rsplit_once('.')
                .with_context(|| format!("optimizer state key `{k}`"))?;
            match shapes.get(name) {
                Some(s) if *s == v.dims() => {}
                Some(s) => bail!(
                    "optimizer state `{k}` has shape {:?}, parameter has {s:?}",
                    v.dims()
                ),
                None => bail!("optimizer state `{k}` names no parameter of this model"),
            }
        }
        self.state = state;
        self.steps = steps;
        Ok(())
    }
}
