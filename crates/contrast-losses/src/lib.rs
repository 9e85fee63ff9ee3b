//! Contrastive losses as plain functions over candle tensors.
//!
//! Every loss is a special case of one generalised InfoNCE ([`generalized`]): positive
//! targets per anchor, weights per candidate and an optional debiasing correction.
//! Each function L2-normalises its embeddings (cosine similarity), validates its
//! arguments and returns an error naming the bad one, and documents its reduction and
//! symmetry. [`LossConfig`] selects a loss by name from a config.
//!
//! | loss | module | positives | candidate weights |
//! |---|---|---|---|
//! | NT-Xent (SimCLR) | [`nt_xent()`] | other view | all but self |
//! | MoCo InfoNCE | [`moco`] | key | key + queue |
//! | SupCon | [`supcon()`] | same label | all but self |
//! | DCL / DCLW | [`decoupled()`] | other view (weighted) | all but self and positive |
//! | debiased, HCL | [`debiased()`] | other view | corrected, importance-weighted |
//! | Ring | [`ring()`] | key | key + queue rank band |
//! | FNC | [`fnc()`] | other views + false negatives | all but self (or FNs removed) |
//! | InvP | [`invariance_propagation()`] | propagated kNN | background set |
//! | ASCL | [`ascl()`] | soft targets over the queue | key + queue |
//! | SimLAP | [`simlap()`] | partner class, gated subspace | outside the class pair |
//! | LooC | [`looc()`] | per-space key | negatives (+ other keys) |
//! | alignment / uniformity | [`align_uniform`] | metrics | |
//!
//! # Example
//!
//! NT-Xent on two views, its gradient, and a value known in closed form:
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use contrast_losses::{nt_xent, nt_xent_reference};
//!
//! let dev = Device::Cpu;
//! // Two views [B, D] of B = 8 samples; the loss normalises the rows itself.
//! let z1 = Var::randn(0f32, 1.0, (8, 16), &dev)?;
//! let z2 = Tensor::randn(0f32, 1.0, (8, 16), &dev)?;
//! let loss = nt_xent(z1.as_tensor(), &z2, 0.5)?; // scalar, mean over the 2B anchors
//! let value = loss.to_scalar::<f32>()?;
//! assert!(value.is_finite() && value > 0.0);
//! // The streaming kernel agrees with the dense composition of candle ops.
//! let dense = nt_xent_reference(z1.as_tensor(), &z2, 0.5)?.to_scalar::<f32>()?;
//! assert!((value - dense).abs() < 1e-5);
//! // Gradients reach the embeddings.
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&z1).expect("a gradient for z1").dims(), &[8, 16]);
//!
//! // When all 2B embeddings coincide, the positive scores like each of the 2B - 1
//! // candidates, so the loss is ln(2B - 1) at any temperature.
//! let same = Tensor::ones((8, 16), DType::F32, &dev)?;
//! let flat = nt_xent(&same, &same, 0.1)?.to_scalar::<f32>()?;
//! assert!((flat - 15f32.ln()).abs() < 1e-5);
//! # Ok::<(), contrast_losses::LossError>(())
//! ```

pub mod align_uniform;
pub mod ascl;
pub mod config;
pub mod debiased;
pub mod decoupled;
pub mod error;
pub mod fnc;
pub mod generalized;
pub mod invariance_propagation;
pub mod looc;
pub mod moco;
pub mod nt_xent;
pub mod ring;
pub mod sampling;
pub mod simlap;
pub mod supcon;
pub mod views;

pub use align_uniform::{alignment, uniformity};
pub use ascl::{AsclConfig, AsclTargets, ascl};
pub use config::{LossConfig, LossInputs};
pub use debiased::{
    DebiasedConfig, HclConfig, debiased, hcl, hcl_floored, hcl_queue, hcl_queue_floored,
};
pub use decoupled::{DecoupledConfig, DecoupledWeightedConfig, decoupled, decoupled_weighted};
pub use error::{LossError, Result};
pub use fnc::{FalseNegatives, FncConfig, fnc};
pub use generalized::{Debias, debias_floored, generalized_info_nce, one_hot, weighted_logsumexp};
pub use invariance_propagation::{
    InvPConfig, InvPOutput, invariance_propagation, ramp, refreshed_neighbours,
};
pub use looc::{LoocConfig, looc};
pub use moco::{MocoConfig, moco_info_nce, moco_info_nce_keyed, moco_info_nce_reference};
pub use nt_xent::{NtXentConfig, nt_xent, nt_xent_positive_share, nt_xent_reference};
pub use ring::{RingConfig, ring};
pub use sampling::{
    Aggregation, Cancellation, FalseNegativeRule, check_ring, hardest_first, hardness_weights,
    ring_band,
};
pub use simlap::{
    GatePenalty, PairMode, SimLapConfig, gate_penalty, partner_classes, simlap, simlap_learnable,
};
pub use supcon::{SupConConfig, supcon};
