//! Memory for contrastive learning: where negatives come from cheaply.
//!
//! - [`KeyQueue`]: MoCo's FIFO queue of keys, with instance ids and labels per entry,
//!   any capacity, masked enqueueing, and checkpoint state.
//! - [`MemoryBank`]: one vector per training example (InstDisc, InvP), momentum
//!   updates by index, random and nearest-neighbour sampling.
//!
//! Keys and ids travel together so that mining can tell a queue entry's instance and
//! class (false-negative handling) without a dense `B x K` mask.

pub mod bank;
pub mod error;
pub mod queue;

pub use bank::MemoryBank;
pub use error::{MemoryError, Result};
pub use queue::{EMPTY, KeyQueue};
