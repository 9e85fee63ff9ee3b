//! Evaluation of learned representations, usable on any features (including raw
//! pixels):
//!
//! - [`knn`]: weighted kNN classification (InstDisc weights `exp(s / t)`);
//! - [`linear_probe()`]: logistic regression on frozen, standardised features;
//! - [`embedding`]: label-free diagnostics (uniformity, effective rank);
//! - [`retrieval()`]: precision@1, R-precision and MAP@R;
//! - [`clustering()`]: NMI and AMI of k-means clusters;
//! - [`similarity_histogram()`]: same- and different-class cosine histograms;
//! - [`tsne`]: 2-D t-SNE maps of an embedding;
//! - [`plot`]: line plots and class-coloured maps, as SVG and PNG.
//!
//! # Example
//!
//! Weighted kNN on a few labelled 2-d points:
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use contrast_eval::{KnnConfig, knn_accuracy, knn_predict};
//!
//! let dev = Device::Cpu;
//! // A bank [N, D]: class 0 near the x axis, class 1 near the y axis.
//! let bank = Tensor::new(
//!     &[[1f32, 0.1], [0.9, -0.1], [1.0, 0.0], [0.1, 1.0], [-0.1, 0.8], [0.0, 1.0]],
//!     &dev,
//! )?;
//! let bank_labels = [0, 0, 0, 1, 1, 1];
//! // Queries [Q, D]: clearly class 0, clearly class 1, and one on the diagonal (label 1)
//! // whose 3 nearest bank points (cosine) are two of class 0 and one of class 1.
//! let test = Tensor::new(&[[2f32, 0.3], [0.2, 3.0], [1.0, 0.9]], &dev)?;
//! let test_labels = [0, 1, 1];
//! let cfg = KnnConfig { k: 3, temperature: 0.1 };
//!
//! let pred = knn_predict(&test, &bank, &bank_labels, 2, &cfg)?;
//! assert_eq!(pred.predictions, [0, 1, 0]);
//! let top1 = knn_accuracy(&bank, &bank_labels, &test, &test_labels, 2, &cfg)?;
//! assert!((top1 - 2.0 / 3.0).abs() < 1e-12);
//! # Ok::<(), contrast_eval::EvalError>(())
//! ```

pub mod clustering;
pub mod embedding;
pub mod error;
pub mod histogram;
pub mod knn;
pub mod linear_probe;
pub mod plot;
pub mod retrieval;
pub mod tsne;

pub use clustering::{Clustering, clustering, kmeans, nmi_ami};
pub use embedding::{effective_rank, pca_2d, singular_values, uniformity};
pub use error::{EvalError, Result};
pub use histogram::{SimilarityHistogram, similarity_histogram};
pub use knn::{KnnConfig, KnnPoint, KnnPrediction, accuracy, knn_accuracy, knn_predict, knn_sweep};
pub use linear_probe::{ProbeConfig, ProbeReport, linear_probe};
pub use plot::{Interval, Series, interval_plot, line_plot, palette, plot_files, scatter_plot};
pub use retrieval::{Retrieval, retrieval};
pub use tsne::{TSNE_MIN_ROWS, TsneConfig, tsne_2d};
