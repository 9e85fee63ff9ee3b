//! Memory for contrastive learning: where negatives come from cheaply.
//!
//! - [`KeyQueue`]: MoCo's FIFO queue of keys, with instance ids and labels per entry,
//!   any capacity, masked enqueueing, and checkpoint state.
//! - [`MemoryBank`]: one vector per training example (InstDisc, InvP), momentum
//!   updates by index, random and nearest-neighbour sampling.
//!
//! Keys and ids travel together so that mining can tell a queue entry's instance and
//! class (false-negative handling) without a dense `B x K` mask.
//!
//! # Example
//!
//! A MoCo queue: enqueue keys `[B, D]` with their ids and labels, read them back:
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use contrast_memory::{EMPTY, KeyQueue};
//!
//! let dev = Device::Cpu;
//! // Room for 4 keys of width 3; unwritten entries hold random unit vectors and id -1.
//! let mut queue = KeyQueue::new(4, 3, 0, &dev)?;
//! assert_eq!(queue.ids(), &[EMPTY; 4]);
//!
//! let keys = Tensor::new(&[[3f32, 0., 0.], [0., 2., 0.], [0., 0., 1.]], &dev)?;
//! assert_eq!(queue.enqueue(&keys, &[10, 11, 12], &[0, 1, 2], None)?, 3);
//! // Two more keys: the second wraps around and overwrites the oldest entry.
//! let more = Tensor::new(&[[1f32, 1., 0.], [0., 1., 1.]], &dev)?;
//! queue.enqueue(&more, &[13, 14], &[0, 1], None)?;
//! assert_eq!(queue.ids(), &[14, 11, 12, 13]);
//! assert_eq!(queue.labels(), &[1, 1, 2, 0]);
//! assert_eq!((queue.filled(), queue.ptr()), (4, 1));
//!
//! // Keys are stored L2-normalised (`[K, D]`, no gradient)...
//! let stored = queue.keys().to_vec2::<f32>()?;
//! assert_eq!(stored[1], [0.0, 1.0, 0.0]);
//! // ...and looked up by cosine similarity: [0, 5, 0] is nearest to entry 1 (id 11).
//! let top = queue.nearest(&Tensor::new(&[[0f32, 5., 0.]], &dev)?, 2)?;
//! assert_eq!(top.indices[0], 1);
//! assert!((top.values[0] - 1.0).abs() < 1e-6);
//! # Ok::<(), contrast_memory::MemoryError>(())
//! ```

pub mod bank;
pub mod error;
pub mod queue;

pub use bank::MemoryBank;
pub use error::{MemoryError, Result};
pub use queue::{EMPTY, KeyQueue};
