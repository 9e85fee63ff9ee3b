//! Datasets, augmentation and loading for Contrast.
//!
//! - Readers for MNIST-layout IDX files (raw or gzip) and CIFAR-10/100 binaries, with
//!   errors that name the file and what was wrong ([`idx`], [`cifar`]).
//! - Dataset names, directory resolution and provisioning ([`catalog`], [`fetch`]).
//! - Augmentation ops on grayscale and RGB images ([`augment`]) and configurable view
//!   recipes ([`recipe`]).
//! - A seeded, deterministic loader that augments in parallel ahead of the model
//!   ([`loader`]).
//!
//! Images are kept channels last (`[N, H, W, C]`), the layout Contrast's encoders use.
//! The crate does not depend on candle: batches are plain `f32` buffers.

pub mod augment;
pub mod catalog;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod idx;
pub mod loader;
mod read;
pub mod recipe;

pub use catalog::DatasetId;
pub use dataset::{Dataset, ImageShape, Split};
pub use error::{DataError, Result};
pub use loader::{Batch, EpochStream, LoaderConfig, Normalization, ViewLoader};
pub use recipe::ViewRecipe;
