//! The similarity hot path of Contrast.
//!
//! - [`l2_normalize`]: row normalisation with PyTorch's `F.normalize` semantics.
//! - [`topk_similarity`]: blocked top-k similarity search, used by kNN evaluation,
//!   nearest-neighbour mining and memory lookups.
//!
//! The streaming generalised InfoNCE (forward and backward over candidate tiles, with
//! CPU, CUDA and Metal kernels behind candle custom ops) is the next addition; the
//! plain candle composition in `contrast-losses` is its reference.

pub mod normalize;
pub mod topk;

pub use normalize::{NORM_EPS, l2_normalize};
pub use topk::{QUERY_BLOCK, TopK, topk_similarity};
