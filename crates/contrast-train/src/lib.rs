//! Training for Contrast: configuration, model assembly, optimisers and schedules,
//! the training loop with evaluation, checkpoints and reports.
//!
//! [`trainer::run`] executes a [`Config`] through a [`Trainer`] (set-up, resume,
//! epochs of steps, final evaluation); `cargo xtask train` is a thin CLI over it.
//!
//! # Example
//!
//! A whole run on a tiny MNIST-layout dataset written on the spot: one epoch, a
//! checkpoint, `metrics.jsonl` and `summary.json`.
//!
//! ```
//! use contrast_data::idx::encode_idx;
//! use contrast_train::{Config, RunOptions, Trainer};
//!
//! // 40 train and 20 test 8x8 images in two classes: a bright top or bottom half.
//! let data = tempfile::tempdir()?;
//! let dir = data.path().join("mnist");
//! std::fs::create_dir_all(&dir)?;
//! for (prefix, n) in [("train", 40), ("t10k", 20)] {
//!     let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
//!     let images: Vec<u8> = labels
//!         .iter()
//!         .flat_map(|&l| (0..64).map(move |p| if (p < 32) == (l == 0) { 200 } else { 10 }))
//!         .collect();
//!     std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), encode_idx(&[n, 8, 8], &images))?;
//!     std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), encode_idx(&[n], &labels))?;
//! }
//! let cfg = Config::from_toml(
//!     r#"
//! name = "doc"
//! [data]
//! dataset = "mnist"
//! batch_size = 8
//! augment = { hflip = 0.5 }
//! [model]
//! encoder = { kind = "mlp", hidden = [16] }
//! head = { hidden = 16, out = 8 }
//! [loss]
//! name = "nt_xent"
//! temperature = 0.5
//! [optim]
//! name = "sgd"
//! lr = 0.05
//! [train]
//! epochs = 1
//! [eval]
//! knn = { k = 5, temperature = 0.1 }
//! probe = { epochs = 2, batch_size = 16, lr = 0.01, weight_decay = 0.0, seed = 0 }
//! baselines = false
//! "#,
//!     "doc.toml",
//!     &[],
//! )?;
//! let out = tempfile::tempdir()?;
//! let opts = RunOptions {
//!     out_dir: out.path().to_path_buf(),
//!     data_dir: Some(data.path().to_path_buf()),
//!     resume: false,
//!     progress: false,
//!     ..Default::default()
//! };
//! let mut trainer = Trainer::new(&cfg, &opts)?;
//! let record = trainer.epoch(0)?; // five steps of 8 pairs, then the kNN monitor
//! assert!(record.loss.is_finite());
//! let summary = trainer.finish()?;
//! assert_eq!(summary.epochs, 1);
//! assert!(summary.knn_top1.is_some_and(|k| (0.0..=1.0).contains(&k)));
//! assert!(out.path().join("checkpoints/latest").exists());
//! assert!(out.path().join("summary.json").exists());
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod checkpoint;
pub mod config;
pub mod contention;
pub mod data;
pub mod device;
pub mod distributed;
pub mod evaluate;
pub mod log;
pub mod method;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod provenance;
pub mod report;
pub mod run_dir;
pub mod schedule;
pub mod trainer;

pub use config::Config;
pub use device::{DeviceChoice, OpsChoice, Precision};
pub use distributed::World;
pub use metrics::{EpochRecord, Summary};
pub use trainer::{RunOptions, Trainer, run};
