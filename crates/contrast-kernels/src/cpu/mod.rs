//! CPU helpers shared by both families.
//!
//! - `gemm`: a checked wrapper over the `gemm` crate (the same GEMM candle uses on
//!   the CPU), and the `Element` trait of the kernels' types with its per-thread
//!   scratch buffers.
//! - `parallel`: deterministic parallel sums (`ordered_sum`), whose result does not
//!   depend on scheduling.
//! - `wide`: run-time choice of AVX2 + FMA for the elementwise passes
//!   (`wide_kernel!`), bit for bit equal to the baseline build, and the widest level
//!   the kernels dispatch to (`simd_level`, which run records name).
//! - `storage`: the contiguous slices of a custom op's CPU operands, with the f32/f64
//!   dispatch of two (`with_pair`) or three (`with_triple`) operands.

pub(crate) mod gemm;
pub(crate) mod parallel;
pub(crate) mod storage;
pub(crate) mod wide;

pub use wide::simd_level;
