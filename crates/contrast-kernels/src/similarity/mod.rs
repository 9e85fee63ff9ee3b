//! The similarity hot path: embeddings compared with embeddings.
//!
//! - [`l2_normalize`] ([`normalize`]): row normalisation with PyTorch's `F.normalize`
//!   semantics, the input every other op here expects.
//! - [`topk_similarity`] ([`topk`]): blocked top-k similarity search, used by kNN
//!   evaluation, nearest-neighbour mining and memory lookups.
//! - [`streaming_info_nce`] ([`info_nce`]): InfoNCE forward and backward over
//!   candidate tiles with an online log-sum-exp, never forming the `[B, N]` logits.
//! - [`paired_info_nce`] ([`paired`]): NT-Xent's kernel, one set of rows as anchors
//!   and candidates with paired positives, whose gradient is one product.
//! - [`tiled_info_nce`] ([`tiled`]): the same streaming loss from candle tensor ops,
//!   for devices and dtypes without the custom kernel (Metal; f16 and bf16). Each tile
//!   that needs more than tensor comparisons goes through `mask_tile`, which applies
//!   every candidate rule (CPU, and Metal through `metal`).
//! - `cuda` (feature `cuda`): the streaming InfoNCE op's CUDA kernels, compiled at run
//!   time by NVRTC (docs/gpu.md); `metal` (feature `metal`): the mask kernel in MSL.
//!   Both take the candidate rules as flat arrays (`mask_arrays`).
//! - `fast_exp`: the vectorised f32 exponential of the kernels' log-sum-exps;
//!   `rows`: the other vectorised row passes over logit tiles.

#[cfg(feature = "cuda")]
pub mod cuda;
pub(crate) mod fast_exp;
pub mod info_nce;
#[cfg(any(feature = "cuda", feature = "metal"))]
mod mask_arrays;
pub(crate) mod mask_tile;
#[cfg(feature = "metal")]
pub(crate) mod metal;
pub mod normalize;
pub mod paired;
pub(crate) mod rows;
pub mod tiled;
pub mod topk;

pub use info_nce::{Candidates, Positive, streaming_info_nce};
pub use normalize::{NORM_EPS, l2_normalize};
pub use paired::paired_info_nce;
pub use tiled::tiled_info_nce;
pub use topk::{QUERY_BLOCK, TopK, topk_similarity};
