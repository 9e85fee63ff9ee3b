//! Momentum (EMA) copies of a network: MoCo's key encoder, BYOL's target.
//!
//! The copy has the same variable names as the online network. Every variable, the
//! BatchNorm running statistics included, moves as `t <- m t + (1 - m) s`; the copy
//! never receives gradients (its tensors are only read through `detach`).

use candle_core::{Result, bail};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

/// The momentum `m` over training: constant, or rising from `base` to 1 along a half
/// cosine (BYOL, MoCo v3): `m(t) = 1 - (1 - base) (cos(pi t / T) + 1) / 2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MomentumSchedule {
    /// Momentum at the start, in `[0, 1]` (MoCo: 0.999; small datasets: 0.99).
    pub base: f64,
    #[serde(default)]
    pub cosine: bool,
}

impl Default for MomentumSchedule {
    fn default() -> Self {
        Self {
            base: 0.99,
            cosine: false,
        }
    }
}

impl MomentumSchedule {
    /// Momentum at `step` of `total`.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        if !self.cosine {
            return self.base;
        }
        let p = (step as f64 / total.max(1) as f64).min(1.0);
        1.0 - (1.0 - self.base) * ((std::f64::consts::PI * p).cos() + 1.0) / 2.0
    }

    /// Checks `base` lies in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.base) {
            bail!("base = {} is outside [0, 1]", self.base);
        }
        Ok(())
    }
}

fn pairs(target: &VarMap, source: &VarMap) -> Result<Vec<(candle_core::Var, candle_core::Tensor)>> {
    let t = target.data().lock().expect("varmap lock");
    let s = source.data().lock().expect("varmap lock");
    if t.len() != s.len() {
        bail!(
            "momentum copy has {} variables, the online network {}",
            t.len(),
            s.len()
        );
    }
    t.iter()
        .map(|(name, var)| match s.get(name) {
            Some(src) if src.dims() == var.dims() => Ok((var.clone(), src.as_tensor().detach())),
            Some(src) => bail!(
                "variable {name}: shapes {:?} and {:?} differ",
                var.dims(),
                src.dims()
            ),
            None => bail!("variable {name} is missing from the online network"),
        })
        .collect()
}

/// Sets every variable of `target` to `source`'s value.
pub fn copy_vars(target: &VarMap, source: &VarMap) -> Result<()> {
    for (var, src) in pairs(target, source)? {
        var.set(&src)?;
    }
    Ok(())
}

/// `target <- m target + (1 - m) source`, variable by variable.
pub fn ema_update(target: &VarMap, source: &VarMap, m: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&m) {
        bail!("EMA momentum {m} is outside [0, 1]");
    }
    for (var, src) in pairs(target, source)? {
        let mixed = ((var.as_tensor().detach() * m)? + (src * (1.0 - m))?)?;
        var.set(&mixed)?;
    }
    Ok(())
}
