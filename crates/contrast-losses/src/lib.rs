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
//! | NT-Xent (SimCLR) | [`nt_xent`] | other view | all but self |
//! | MoCo InfoNCE | [`moco`] | key | key + queue |
//! | SupCon | [`supcon`] | same label | all but self |
//! | DCL / DCLW | [`decoupled`] | other view (weighted) | all but self and positive |
//! | debiased, HCL | [`debiased`] | other view | corrected, importance-weighted |
//! | Ring | [`ring`] | key | key + queue rank band |
//! | FNC | [`fnc`] | other views + false negatives | all but self (or FNs removed) |
//! | InvP | [`invariance_propagation`] | propagated kNN | background set |
//! | ASCL | [`ascl`] | soft targets over the queue | key + queue |
//! | SimLAP | [`simlap`] | partner class, gated subspace | outside the class pair |
//! | LooC | [`looc`] | per-space key | negatives (+ other keys) |
//! | alignment / uniformity | [`align_uniform`] | metrics | |

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
pub use debiased::{DebiasedConfig, HclConfig, debiased, hcl, hcl_queue};
pub use decoupled::{DecoupledConfig, DecoupledWeightedConfig, decoupled, decoupled_weighted};
pub use error::{LossError, Result};
pub use fnc::{FalseNegatives, FncConfig, fnc};
pub use generalized::{Debias, generalized_info_nce, one_hot, weighted_logsumexp};
pub use invariance_propagation::{
    InvPConfig, InvPOutput, invariance_propagation, ramp, refreshed_neighbours,
};
pub use looc::looc;
pub use moco::{MocoConfig, moco_info_nce, moco_info_nce_keyed, moco_info_nce_reference};
pub use nt_xent::{NtXentConfig, nt_xent, nt_xent_reference};
pub use ring::{RingConfig, ring};
pub use sampling::{
    Aggregation, Cancellation, FalseNegativeRule, hardest_first, hardness_weights, ring_band,
};
pub use simlap::{GatePenalty, PairMode, SimLapConfig, gate_penalty, partner_classes, simlap};
pub use supcon::{SupConConfig, supcon};
