//! Loss selection by name, as used in TOML configs (`[loss] name = "hcl"`).

use crate::error::{Result, check_temperature, invalid};
use crate::{
    AsclConfig, DebiasedConfig, DecoupledConfig, DecoupledWeightedConfig, FncConfig, HclConfig,
    InvPConfig, LoocConfig, MocoConfig, NtXentConfig, RingConfig, SimLapConfig, SupConConfig,
};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What a loss may read: the projections of each view and optional side information.
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// Projections per view, each `[B, D]`, rows aligned across views. For the
    /// queue-based losses view 0 is the query and view 1 the key.
    pub views: &'a [Tensor],
    /// Class labels `[B]`, where the method uses them.
    pub labels: Option<&'a Tensor>,
    /// Normalised negatives from a memory queue `[K, D]`, where the method uses them.
    pub queue: Option<&'a Tensor>,
    /// SimLAP: the partner class of each anchor `[B]`.
    pub partners: Option<&'a Tensor>,
    /// SimLAP: the gates of each anchor's class pair `[B, D]`.
    pub gates: Option<&'a Tensor>,
    /// SimLAP: the learnable log logit scale `[1]` (with `learnable_scale`).
    pub log_scale: Option<&'a Tensor>,
}

impl<'a> LossInputs<'a> {
    /// Inputs with only the views.
    pub fn views(views: &'a [Tensor]) -> Self {
        Self {
            views,
            labels: None,
            queue: None,
            partners: None,
            gates: None,
            log_scale: None,
        }
    }
}

/// A loss and its parameters, tagged by `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum LossConfig {
    NtXent(NtXentConfig),
    MocoInfoNce(MocoConfig),
    Supcon(SupConConfig),
    Decoupled(DecoupledConfig),
    DecoupledWeighted(DecoupledWeightedConfig),
    Debiased(DebiasedConfig),
    Hcl(HclConfig),
    Ring(RingConfig),
    Fnc(FncConfig),
    Ascl(AsclConfig),
    Simlap(SimLapConfig),
    /// LooC; needs the MoCo method with leave-one-out families (`method.families`).
    Looc(LoocConfig),
    /// Invariance Propagation; needs the memory-bank method (`[method] name = "bank"`).
    InvariancePropagation(InvPConfig),
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig::NtXent(NtXentConfig::default())
    }
}

fn two<'a>(name: &str, views: &'a [Tensor]) -> Result<(&'a Tensor, &'a Tensor)> {
    match views {
        [a, b] => Ok((a, b)),
        _ => Err(invalid(
            "views",
            format!("{name} needs exactly 2 views, got {}", views.len()),
        )),
    }
}

fn need<'a>(name: &str, what: &'static str, t: Option<&'a Tensor>) -> Result<&'a Tensor> {
    t.ok_or_else(|| {
        invalid(
            what,
            format!("{name} needs `{what}`, which this method does not provide"),
        )
    })
}

impl LossConfig {
    /// The loss's name as written in configs.
    pub fn name(&self) -> &'static str {
        match self {
            LossConfig::NtXent(_) => "nt_xent",
            LossConfig::MocoInfoNce(_) => "moco_info_nce",
            LossConfig::Supcon(_) => "supcon",
            LossConfig::Decoupled(_) => "decoupled",
            LossConfig::DecoupledWeighted(_) => "decoupled_weighted",
            LossConfig::Debiased(_) => "debiased",
            LossConfig::Hcl(_) => "hcl",
            LossConfig::Ring(_) => "ring",
            LossConfig::Fnc(_) => "fnc",
            LossConfig::Ascl(_) => "ascl",
            LossConfig::Simlap(_) => "simlap",
            LossConfig::Looc(_) => "looc",
            LossConfig::InvariancePropagation(_) => "invariance_propagation",
        }
    }

    /// Whether the loss reads negatives from a memory queue.
    pub fn needs_queue(&self) -> bool {
        matches!(
            self,
            LossConfig::MocoInfoNce(_)
                | LossConfig::Ring(_)
                | LossConfig::Ascl(_)
                | LossConfig::Looc(_)
        )
    }

    /// Whether the loss can take its negatives from a queue (query, key, queue).
    pub fn accepts_queue(&self) -> bool {
        self.needs_queue() || matches!(self, LossConfig::Debiased(_) | LossConfig::Hcl(_))
    }

    /// Whether the loss contrasts each anchor with every other instance of the batch,
    /// uniformly or reweighted, so that the same-class share of those negatives
    /// describes what it trains on (SupCon and the label-paired losses read labels
    /// instead; the queue and bank losses take negatives elsewhere).
    pub fn contrasts_every_instance(&self) -> bool {
        matches!(
            self,
            LossConfig::NtXent(_)
                | LossConfig::Decoupled(_)
                | LossConfig::DecoupledWeighted(_)
                | LossConfig::Debiased(_)
                | LossConfig::Hcl(_)
        )
    }

    /// Whether the loss reads class labels.
    pub fn needs_labels(&self) -> bool {
        matches!(self, LossConfig::Supcon(_) | LossConfig::Simlap(_))
    }

    /// Validates the parameters without computing anything.
    pub fn validate(&self) -> Result<()> {
        let t = |v: f64| check_temperature("loss.temperature", v);
        match self {
            LossConfig::NtXent(c) => t(c.temperature),
            LossConfig::MocoInfoNce(c) => t(c.temperature),
            LossConfig::Looc(c) => t(c.temperature),
            LossConfig::Supcon(c) => {
                t(c.temperature)?;
                c.base_temperature
                    .map_or(Ok(()), |b| check_temperature("loss.base_temperature", b))
            }
            LossConfig::Decoupled(c) => t(c.temperature),
            LossConfig::DecoupledWeighted(c) => {
                t(c.temperature)?;
                check_temperature("loss.sigma", c.sigma)
            }
            LossConfig::Debiased(c) => {
                t(c.temperature)?;
                crate::debiased::check_tau_plus(c.tau_plus)
            }
            LossConfig::Hcl(c) => {
                t(c.temperature)?;
                crate::debiased::check_tau_plus(c.tau_plus)?;
                if !(c.beta >= 0.0 && c.beta.is_finite()) {
                    return Err(invalid(
                        "loss.beta",
                        format!("{} must be a finite number >= 0", c.beta),
                    ));
                }
                Ok(())
            }
            LossConfig::Ring(c) => {
                t(c.temperature)?;
                crate::sampling::check_ring(c.outer, c.inner)
            }
            LossConfig::Fnc(c) => {
                t(c.temperature)?;
                if c.topk.is_none() && c.threshold.is_none() {
                    return Err(invalid("loss.topk", "set topk, threshold or both"));
                }
                Ok(())
            }
            LossConfig::Ascl(c) => {
                t(c.temperature)?;
                check_temperature("loss.target_temperature", c.target_temperature)
            }
            LossConfig::InvariancePropagation(c) => {
                t(c.temperature)?;
                if c.n_background == 0 || c.n_pos == 0 || c.diffusion_layer == 0 || c.lam_inv < 0.0
                {
                    return Err(invalid(
                        "loss.n_background",
                        "n_background, n_pos and diffusion_layer must be >= 1 and lam_inv >= 0",
                    ));
                }
                Ok(())
            }
            LossConfig::Simlap(c) => {
                t(c.temperature)?;
                if !(c.penalty_weight >= 0.0 && c.penalty_weight.is_finite()) {
                    return Err(invalid(
                        "loss.penalty_weight",
                        format!("{} must be >= 0", c.penalty_weight),
                    ));
                }
                Ok(())
            }
        }
    }

    /// For the debiased losses (debiased, HCL), how many anchors of these inputs have
    /// their corrected negative term at its floor, where the loss stops repelling
    /// their negatives ([`crate::debias_floored`]), and out of how many anchors; `None`
    /// for every other loss. A diagnostic: the inputs are read, not trained.
    pub fn debias_floored(&self, inputs: LossInputs<'_>) -> Result<Option<(usize, usize)>> {
        let (t, tau_plus, beta) = match self {
            LossConfig::Debiased(c) => (c.temperature, c.tau_plus, 0.0),
            LossConfig::Hcl(c) => (c.temperature, c.tau_plus, c.beta),
            _ => return Ok(None),
        };
        let (a, b) = two(self.name(), inputs.views)?;
        Ok(Some(match inputs.queue {
            Some(queue) => crate::hcl_queue_floored(a, b, queue, t, tau_plus, beta)?,
            None => crate::hcl_floored(a, b, t, tau_plus, beta)?,
        }))
    }

    /// For the losses that contrast two views in the batch against every other
    /// instance at one temperature (NT-Xent, DCL, DCLW, debiased, HCL), the share
    /// NT-Xent's softmax at that temperature gives each anchor's positive
    /// ([`crate::nt_xent_positive_share`]: summed over anchors, and their count);
    /// `None` for every other loss and with a queue. A diagnostic: the inputs are
    /// read, not trained.
    pub fn positive_share(&self, inputs: LossInputs<'_>) -> Result<Option<(f64, usize)>> {
        let t = match self {
            LossConfig::NtXent(c) => c.temperature,
            LossConfig::Decoupled(c) => c.temperature,
            LossConfig::DecoupledWeighted(c) => c.temperature,
            LossConfig::Debiased(c) => c.temperature,
            LossConfig::Hcl(c) => c.temperature,
            _ => return Ok(None),
        };
        if inputs.queue.is_some() {
            return Ok(None);
        }
        let (a, b) = two(self.name(), inputs.views)?;
        Ok(Some(crate::nt_xent_positive_share(a, b, t)?))
    }

    /// Computes the scalar loss.
    pub fn compute(&self, inputs: LossInputs<'_>) -> Result<Tensor> {
        let name = self.name();
        let v = inputs.views;
        match self {
            LossConfig::NtXent(c) => {
                let (a, b) = two(name, v)?;
                crate::nt_xent(a, b, c.temperature)
            }
            LossConfig::MocoInfoNce(c) => {
                let (a, b) = two(name, v)?;
                crate::moco_info_nce(a, b, need(name, "queue", inputs.queue)?, c.temperature)
            }
            LossConfig::Supcon(c) => crate::supcon(
                v,
                need(name, "labels", inputs.labels)?,
                c.temperature,
                c.base_temperature.unwrap_or(c.temperature),
            ),
            LossConfig::Decoupled(c) => {
                let (a, b) = two(name, v)?;
                crate::decoupled(a, b, c.temperature)
            }
            LossConfig::DecoupledWeighted(c) => {
                let (a, b) = two(name, v)?;
                crate::decoupled_weighted(a, b, c.temperature, c.sigma)
            }
            LossConfig::Debiased(c) => {
                let (a, b) = two(name, v)?;
                match inputs.queue {
                    Some(queue) => crate::hcl_queue(a, b, queue, c.temperature, c.tau_plus, 0.0),
                    None => crate::debiased(a, b, c.temperature, c.tau_plus),
                }
            }
            LossConfig::Hcl(c) => {
                let (a, b) = two(name, v)?;
                match inputs.queue {
                    Some(queue) => crate::hcl_queue(a, b, queue, c.temperature, c.tau_plus, c.beta),
                    None => crate::hcl(a, b, c.temperature, c.tau_plus, c.beta),
                }
            }
            LossConfig::Ring(c) => {
                let (a, b) = two(name, v)?;
                crate::ring(a, b, need(name, "queue", inputs.queue)?, c)
            }
            LossConfig::Fnc(c) => Ok(crate::fnc(v, c)?.0),
            LossConfig::Ascl(c) => {
                let (a, b) = two(name, v)?;
                Ok(crate::ascl(a, b, need(name, "queue", inputs.queue)?, c)?.0)
            }
            LossConfig::InvariancePropagation(_) => Err(invalid(
                "method",
                "invariance_propagation reads a memory bank: use it with [method] name = \"bank\"",
            )),
            LossConfig::Looc(_) => Err(invalid(
                "method",
                "looc compares a query with one key per augmentation family in n + 1 spaces: use it with [method] name = \"moco\" and method.families",
            )),
            LossConfig::Simlap(c) => {
                let (a, b) = two(name, v)?;
                let gates = need(name, "gates", inputs.gates)?;
                let labels = need(name, "labels", inputs.labels)?;
                let partners = need(name, "partners", inputs.partners)?;
                let loss = if c.learnable_scale {
                    let s = need(name, "log_scale", inputs.log_scale)?;
                    crate::simlap::simlap_learnable(a, b, labels, partners, gates, s)?
                } else {
                    crate::simlap(a, b, labels, partners, gates, c.temperature)?
                };
                if c.penalty_weight > 0.0 {
                    Ok((loss + (crate::gate_penalty(gates, c.penalty)? * c.penalty_weight))?)
                } else {
                    Ok(loss)
                }
            }
        }
    }
}
