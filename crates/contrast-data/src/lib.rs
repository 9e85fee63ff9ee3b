//! Datasets, augmentation and loading for Contrast.
//!
//! - Readers for MNIST-layout IDX files (raw or gzip) and CIFAR-10/100 binaries, with
//!   errors that name the file and what was wrong ([`idx`], [`cifar`]); image folders
//!   of PNG and JPEG files, labelled by sub-folder or manifest or unlabeled, decoded
//!   once into a memory-mapped cache ([`folder`]).
//! - Held-out validation and test splits by count, fraction or folder ([`holdout`]).
//! - Dataset names, directory resolution and provisioning ([`catalog`], [`fetch`]).
//! - Augmentation ops on grayscale and RGB images ([`augment`]) and configurable view
//!   recipes ([`recipe`]).
//! - A seeded, deterministic loader that augments in parallel ahead of the model
//!   ([`loader`]).
//!
//! Images are kept channels last (`[N, H, W, C]`), the layout Contrast's encoders use.
//! The crate does not depend on candle: batches are plain `f32` buffers.
//!
//! # Example
//!
//! Two augmented views of a small in-memory dataset, batch by batch:
//!
//! ```
//! use contrast_data::{Dataset, ImageShape, LoaderConfig, Normalization, ViewLoader, ViewRecipe};
//! use std::sync::Arc;
//!
//! // Eight 8x8 grayscale images of two classes, channels last.
//! let shape = ImageShape { height: 8, width: 8, channels: 1 };
//! let images: Vec<u8> = (0..8 * 64).map(|k| ((k * 37) % 256) as u8).collect();
//! let data = Dataset::new("toy", images, vec![0, 1, 0, 1, 0, 1, 0, 1], shape, 2)?;
//! let norm = Normalization::from_dataset(&data);
//! let recipe = ViewRecipe::simclr_small_grayscale();
//! let config = LoaderConfig { batch_size: 4, drop_last: true, shuffle: true, seed: 7, prefetch: 2 };
//! let loader = ViewLoader::new(Arc::new(data), vec![recipe.clone(), recipe], norm, config)?;
//! assert_eq!(loader.steps_per_epoch(), 2);
//!
//! let order = loader.order(0);
//! let batch = loader.batch(0, 0, &order);
//! // One `[B, H, W, C]` f32 buffer per view; dataset indices serve as instance ids.
//! assert_eq!(batch.views.len(), 2);
//! assert_eq!(batch.views[0].len(), 4 * shape.numel());
//! assert_eq!(batch.indices, &order[..4]);
//! // The views are augmented independently of each other...
//! assert_ne!(batch.views[0], batch.views[1]);
//! // ...and deterministically: (seed, epoch, view, index) fixes every augmentation, so
//! // the background stream yields the very same batches.
//! let streamed: Vec<_> = loader.stream(0, 0).collect();
//! assert_eq!(streamed.len(), 2);
//! assert_eq!(streamed[0].views, batch.views);
//! # Ok::<(), contrast_data::DataError>(())
//! ```

pub mod augment;
pub mod catalog;
pub mod cifar;
pub mod contrastive_crop;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod folder;
pub mod holdout;
pub mod idx;
pub mod loader;
mod read;
pub mod recipe;
pub mod seeds;

pub use catalog::{DatasetChoice, DatasetId};
pub use contrastive_crop::{ContrastiveCropConfig, Region, Regions};
pub use dataset::{Dataset, ImageShape, Pixels, Split};
pub use error::{DataError, Result};
pub use folder::{FolderOptions, OnError};
pub use holdout::{Holdout, HoldoutPart, carve};
pub use loader::{Batch, EpochStream, LoaderConfig, Normalization, ViewLoader};
pub use recipe::ViewRecipe;
pub use seeds::{Stream, stream_rng, stream_seed};
