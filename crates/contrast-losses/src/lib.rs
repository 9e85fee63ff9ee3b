//! Contrastive losses as plain functions over candle tensors.
//!
//! Every loss is a special case of one generalised InfoNCE ([`generalized`]): positive
//! targets per anchor and weights per candidate. Each function L2-normalises its
//! embeddings (cosine similarity), validates its arguments and returns an error naming
//! the bad one, and documents its reduction and symmetry. [`LossConfig`] selects a loss
//! by name from a config.

pub mod config;
pub mod error;
pub mod generalized;
pub mod nt_xent;

pub use config::{LossConfig, LossInputs};
pub use error::{LossError, Result};
pub use generalized::{generalized_info_nce, one_hot, weighted_logsumexp};
pub use nt_xent::{NtXentConfig, nt_xent};
