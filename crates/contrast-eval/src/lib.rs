//! Evaluation of learned representations, usable on any features (including raw
//! pixels):
//!
//! - [`knn`]: weighted kNN classification (InstDisc weights `exp(s / t)`);
//! - [`linear_probe`]: logistic regression on frozen, standardised features;
//! - [`plot`]: SVG line plots of training curves.

pub mod error;
pub mod knn;
pub mod linear_probe;
pub mod plot;

pub use error::{EvalError, Result};
pub use knn::{KnnConfig, KnnPrediction, accuracy, knn_accuracy, knn_predict};
pub use linear_probe::{ProbeConfig, ProbeReport, linear_probe};
pub use plot::{Series, line_plot};
