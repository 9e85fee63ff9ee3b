//! The hot paths of Contrast, as candle custom ops with CPU kernels.
//!
//! - [`l2_normalize`]: row normalisation with PyTorch's `F.normalize` semantics.
//! - [`topk_similarity`]: blocked top-k similarity search, used by kNN evaluation,
//!   nearest-neighbour mining and memory lookups.
//! - [`conv2d_nhwc`]: channels-last convolution with GEMM-based forward and backward
//!   passes (the encoders' convolutions).
//! - [`conv_block`]: convolution, BatchNorm, an optional residual, ReLU and pooling
//!   fused into one op.
//! - [`batch_norm`]: fused batch normalisation (+ ReLU) with its backward pass.
//! - [`max_pool2`]: 2x2 max pooling with its backward pass.
//! - [`add_relu`]: the residual join `relu(a + b)` as one op.
//! - [`residual_block`]: a whole ResNet basic block as one op, its inner activation
//!   recomputed in the backward pass instead of kept by the graph.
//! - [`streaming_info_nce`]: InfoNCE forward and backward over candidate tiles with
//!   an online log-sum-exp, never forming the `[B, N]` logits.
//! - [`tiled_info_nce`]: the same streaming loss from candle tensor ops, for devices
//!   and dtypes without the custom kernel (Metal; f16 and bf16).
//! - `cuda` (feature `cuda`): the streaming InfoNCE op's CUDA kernels, compiled at
//!   run time by NVRTC (docs/gpu.md).
//! - [`mask_tile`]: every candidate rule applied to one tile of dot products, for the
//!   tensor-op path (CPU, and Metal through the `metal` module with the feature
//!   `metal`).
//! - [`gemm`]: a checked wrapper over the `gemm` crate, shared by the kernels.
//!
//! Every kernel has a plain candle composition beside it that serves as its reference
//! in tests and as the path on devices without a kernel.

pub mod batch_norm;
pub mod conv2d;
pub mod conv_block;
#[cfg(feature = "cuda")]
pub mod cuda;
mod direct_conv;
pub mod fast_exp;
pub mod gemm;
pub mod info_nce;
#[cfg(any(feature = "cuda", feature = "metal"))]
mod mask_arrays;
pub mod mask_tile;
#[cfg(feature = "metal")]
pub mod metal;
pub mod normalize;
pub mod parallel;
pub mod pool;
pub mod residual;
pub mod residual_block;
mod storage;
pub mod tiled;
pub mod topk;
mod wide;

pub use batch_norm::{
    BatchNormMode, BatchNormOutput, ChannelStats, batch_norm, batch_norm_reference,
};
pub use conv_block::{BlockSpec, conv_block};
pub use conv2d::{ConvGeometry, conv2d_nhwc, conv2d_nhwc_reference};
pub use info_nce::{Candidates, Positive, streaming_info_nce};
pub use normalize::{NORM_EPS, l2_normalize};
pub use pool::{max_pool2, max_pool2_reference};
pub use residual::add_relu;
pub use residual_block::{ConvBn, ResidualBlockOutput, residual_block};
pub use tiled::tiled_info_nce;
pub use topk::{QUERY_BLOCK, TopK, topk_similarity};
