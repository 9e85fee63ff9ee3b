//! The hot paths of Contrast, as candle custom ops with CPU kernels, in two families
//! over shared CPU helpers.
//!
//! [`similarity`]: embeddings compared with embeddings, the path every loss, memory
//! bank and evaluation goes through.
//!
//! - [`l2_normalize`]: row normalisation with PyTorch's `F.normalize` semantics.
//! - [`topk_similarity`]: blocked top-k similarity search, used by kNN evaluation,
//!   nearest-neighbour mining and memory lookups.
//! - [`streaming_info_nce`]: InfoNCE forward and backward over candidate tiles with
//!   an online log-sum-exp, never forming the `[B, N]` logits; CUDA kernels with the
//!   feature `cuda` (`similarity::cuda`, compiled at run time by NVRTC, docs/gpu.md).
//! - [`tiled_info_nce`]: the same streaming loss from candle tensor ops, for devices
//!   and dtypes without the custom kernel (Metal, with its mask kernel behind the
//!   feature `metal`; f16 and bf16).
//!
//! [`cnn`]: the encoders' channels-last convolutional layers.
//!
//! - [`conv2d_nhwc`]: convolution with GEMM-based forward and backward passes (a
//!   direct AVX2 kernel for small patches).
//! - [`batch_norm`](fn@batch_norm): fused batch normalisation (+ ReLU) with its
//!   backward pass.
//! - [`max_pool2`]: 2x2 max pooling with its backward pass.
//! - [`add_relu`]: the residual join `relu(a + b)` as one op.
//! - [`conv_block`](fn@conv_block): convolution, BatchNorm, an optional residual, ReLU
//!   and pooling fused into one op.
//! - [`residual_block`](fn@residual_block): a whole ResNet basic block as one op, its
//!   inner activation recomputed in the backward pass instead of kept by the graph.
//!
//! Shared by both (private): `cpu::gemm`, a checked wrapper over the `gemm` crate;
//! `cpu::parallel`, parallel sums in a fixed order; `cpu::wide`, run-time AVX2
//! dispatch of the elementwise passes; `cpu::storage`, the f32/f64 dispatch of a
//! custom op's CPU operands; and `float`, the kernels' element types.
//!
//! Every kernel has a plain candle composition beside it that serves as its reference
//! in tests and as the path on devices without a kernel. The ops are re-exported here;
//! the modules of each family hold the rest.
//!
//! # Example
//!
//! MoCo's InfoNCE streamed over a queue: the kernel never forms the `[B, K]` logits,
//! yet equals the dense log-sum-exp, and its gradient reaches the queries.
//!
//! ```
//! use candle_core::{D, Device, Tensor, Var};
//! use contrast_kernels::{Candidates, Positive, l2_normalize, streaming_info_nce};
//!
//! let dev = Device::Cpu;
//! let t = 0.2;
//! let q = Var::randn(0f32, 1.0, (4, 8), &dev)?; // queries [B, D]
//! let qn = l2_normalize(q.as_tensor())?;
//! let keys = l2_normalize(&Tensor::randn(0f32, 1.0, (4, 8), &dev)?)?; // positives [B, D]
//! let queue = l2_normalize(&Tensor::randn(0f32, 1.0, (64, 8), &dev)?)?; // negatives [K, D]
//! let extra = ((&qn * &keys)?.sum(1)? / t)?; // positive logits [B]
//! let spec = Candidates { positive: Positive::Extra, ..Candidates::default() };
//! let loss = streaming_info_nce(&qn, &queue, &extra, spec, t)?;
//!
//! // Dense check: mean over queries of logsumexp([e_i, q_i . queue / t]) - e_i.
//! let logits = Tensor::cat(&[extra.unsqueeze(1)?, (qn.matmul(&queue.t()?)? / t)?], 1)?;
//! let max = logits.max_keepdim(D::Minus1)?;
//! let lse = (logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + max)?;
//! let dense = (lse.squeeze(1)? - &extra)?.mean_all()?.to_scalar::<f32>()?;
//! assert!((loss.to_scalar::<f32>()? - dense).abs() < 1e-5);
//! assert_eq!(loss.backward()?.get(&q).expect("query gradient").dims(), &[4, 8]);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod cnn;
mod cpu;
mod float;
pub mod similarity;

pub use cnn::{
    BatchNormMode, BatchNormOutput, BlockSpec, ChannelStats, ConvBn, ConvGeometry, CrossProcessSum,
    OpSet, ResidualBlockOutput, add_relu, batch_norm, conv_block, conv2d_nhwc, max_pool2,
    residual_block,
};
pub use cpu::simd_level;
pub use similarity::{
    Candidates, NORM_EPS, Positive, QUERY_BLOCK, TopK, l2_normalize, paired_info_nce,
    streaming_info_nce, tiled_info_nce, topk_similarity,
};
