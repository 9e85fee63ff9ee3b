//! Feature extraction and the evaluation protocol (kNN monitor, final kNN and linear
//! probe, raw-pixel baselines).

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use contrast_data::{Dataset, Normalization};
use contrast_encoders::{Encoder, Identity, InputShape};
use contrast_eval::{KnnConfig, ProbeConfig, ProbeReport, knn_accuracy, linear_probe};

/// The input shape of a dataset's images.
pub fn input_shape(d: &Dataset) -> InputShape {
    InputShape {
        height: d.shape.height,
        width: d.shape.width,
        channels: d.shape.channels,
    }
}

/// The labels of a reference and a query set, or an error naming the one without.
fn labels_of<'a>(reference: &'a Dataset, query: &'a Dataset) -> Result<(&'a [u32], &'a [u32])> {
    match (reference.labels(), query.labels()) {
        (Some(r), Some(q)) => Ok((r, q)),
        _ => anyhow::bail!(
            "`{}` has no class labels: kNN and the linear probe need them",
            reference.name
        ),
    }
}

/// Evaluation settings shared by every measurement of a run.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// The training set's per-channel statistics, applied to every image.
    pub norm: Normalization,
    pub knn: KnnConfig,
    pub probe: ProbeConfig,
    /// Images per forward pass.
    pub batch: usize,
    pub device: Device,
}

impl Evaluator {
    /// Representations `[N, D]` of every image of `data`, in eval mode (no
    /// augmentation).
    pub fn features(&self, encoder: &dyn Encoder, data: &Dataset) -> Result<Tensor> {
        let s = data.shape;
        let mut parts = Vec::new();
        for start in (0..data.len()).step_by(self.batch.max(1)) {
            let end = (start + self.batch).min(data.len());
            let x = Tensor::from_vec(
                data.normalized_f32(start..end, &self.norm.mean, &self.norm.std),
                (end - start, s.height, s.width, s.channels),
                &self.device,
            )?;
            parts.push(encoder.forward_t(&x, false)?.detach());
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn knn_on(
        &self,
        bank: &Tensor,
        bank_data: &Dataset,
        test: &Tensor,
        test_data: &Dataset,
    ) -> Result<f64> {
        let knn = KnnConfig {
            k: self.knn.k.min(bank_data.len()),
            ..self.knn.clone()
        };
        let (bank_labels, test_labels) = labels_of(bank_data, test_data)?;
        knn_accuracy(
            bank,
            bank_labels,
            test,
            test_labels,
            bank_data.num_classes,
            &knn,
        )
        .context("kNN evaluation")
    }

    /// Weighted-kNN top-1 of `test` against the `bank` images.
    pub fn knn(&self, encoder: &dyn Encoder, bank: &Dataset, test: &Dataset) -> Result<f64> {
        let fb = self.features(encoder, bank)?;
        let ft = self.features(encoder, test)?;
        self.knn_on(&fb, bank, &ft, test)
    }

    /// kNN top-1 and linear probe on the given train and test sets.
    pub fn full(
        &self,
        encoder: &dyn Encoder,
        train: &Dataset,
        test: &Dataset,
    ) -> Result<(f64, ProbeReport)> {
        let ftr = self.features(encoder, train)?;
        let fte = self.features(encoder, test)?;
        self.scores(&ftr, train, &fte, test)
    }

    /// kNN top-1 and linear probe on features already extracted (`[N, D]` for
    /// `train`, `[M, D]` for `test`).
    pub fn scores(
        &self,
        ftr: &Tensor,
        train: &Dataset,
        fte: &Tensor,
        test: &Dataset,
    ) -> Result<(f64, ProbeReport)> {
        let top1 = self.knn_on(ftr, train, fte, test)?;
        let (train_labels, test_labels) = labels_of(train, test)?;
        let report = linear_probe(
            ftr,
            train_labels,
            fte,
            test_labels,
            train.num_classes,
            &self.probe,
        )
        .context("linear probe")?;
        Ok((top1, report))
    }

    /// The raw-pixel baseline: the same kNN and probe on normalised pixels.
    pub fn pixels(&self, train: &Dataset, test: &Dataset) -> Result<(f64, ProbeReport)> {
        self.full(&Identity::new(input_shape(train)), train, test)
    }
}
