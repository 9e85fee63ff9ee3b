//! The CNN ops of the encoders, channels-last (`[B, H, W, C]`), each a candle custom
//! op with forward and backward passes.
//!
//! - [`conv2d_nhwc`] ([`conv2d`]): convolution with GEMM-based forward and backward
//!   passes; small patches take a direct AVX2 kernel (`direct_conv`) instead of
//!   im2col plus GEMM.
//! - [`batch_norm`](fn@batch_norm) ([`mod@batch_norm`]): fused batch normalisation
//!   (+ ReLU) with its backward pass.
//! - [`max_pool2`] ([`pool`]): 2x2 max pooling with its backward pass.
//! - [`add_relu`] ([`residual`]): the residual join `relu(a + b)` as one op.
//! - [`conv_block`](fn@conv_block) ([`mod@conv_block`]): convolution, BatchNorm, an
//!   optional residual, ReLU and pooling fused into one op.
//! - [`residual_block`](fn@residual_block) ([`mod@residual_block`]): a whole ResNet
//!   basic block as one op, its inner activation recomputed in the backward pass
//!   instead of kept by the graph.
//!
//! The fused ops are built from the single ones' kernels, so their results equal the
//! unfused composition. [`generic`] holds every op again in plain candle tensor ops
//! (any device, any float dtype), and [`OpSet`] picks one set for a whole model.

pub mod batch_norm;
pub mod conv2d;
pub mod conv_block;
pub(crate) mod direct_conv;
pub mod generic;
pub mod op_set;
pub mod pool;
pub mod residual;
pub mod residual_block;

pub use batch_norm::{BatchNormMode, BatchNormOutput, ChannelStats, CrossProcessSum, batch_norm};
pub use conv_block::{BlockSpec, conv_block};
pub use conv2d::{ConvGeometry, conv2d_nhwc};
pub use op_set::OpSet;
pub use pool::max_pool2;
pub use residual::add_relu;
pub use residual_block::{ConvBn, ResidualBlockOutput, residual_block};
