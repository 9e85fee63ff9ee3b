//! Linear probe: multinomial logistic regression on frozen features.
//!
//! Features are standardised with the training set's per-dimension mean and standard
//! deviation, then a linear classifier is trained with AdamW on mini-batches under a
//! cosine learning-rate decay, and reported on the test set.

use crate::error::{Result, check_labelled, invalid};
use crate::knn::accuracy;
use candle_core::{D, DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Linear-probe training options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate of AdamW, decayed by a cosine to zero.
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 256,
            lr: 1e-3,
            weight_decay: 1e-4,
            seed: 0,
        }
    }
}

/// Accuracies of a trained probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProbeReport {
    pub train_top1: f64,
    pub test_top1: f64,
}

fn standardize(x: &Tensor, mean: &Tensor, std: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_sub(mean)?.broadcast_div(std)
}

fn log_softmax(logits: &Tensor) -> candle_core::Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

fn predict(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Vec<u32>> {
    x.matmul(w)?
        .broadcast_add(b)?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()
}

/// Trains a linear classifier on `train` features and reports train and test top-1.
pub fn linear_probe(
    train: &Tensor,
    train_labels: &[u32],
    test: &Tensor,
    test_labels: &[u32],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeReport> {
    let n = check_labelled("train", train, train_labels, num_classes)?;
    check_labelled("test", test, test_labels, num_classes)?;
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.lr.is_nan() || cfg.lr <= 0.0 {
        return Err(invalid(
            "probe",
            "epochs, batch_size and lr must be positive",
        ));
    }
    // The probe trains where the features are (the encoder's device).
    let device = train.device().clone();
    let train = train.to_dtype(DType::F32)?;
    let test = test.to_dtype(DType::F32)?.to_device(&device)?;
    let d = train.dim(1)?;
    let mean = train.mean_keepdim(0)?;
    let std = train
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .sqrt()?
        .clamp(1e-6, f64::INFINITY)?;
    let train = standardize(&train, &mean, &std)?;
    let test = standardize(&test, &mean, &std)?;
    let w = Var::zeros((d, num_classes), DType::F32, &device)?;
    let b = Var::zeros(num_classes, DType::F32, &device)?;
    let params = ParamsAdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![w.clone(), b.clone()], params)?;
    let labels = Tensor::from_slice(train_labels, n, &device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = (cfg.epochs * steps_per_epoch) as f64;
    let mut step = 0usize;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &device)?;
            let x = train.index_select(&idx, 0)?;
            let y = labels.index_select(&idx, 0)?;
            let logits = x.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
            let logp = log_softmax(&logits)?;
            let nll = logp.gather(&y.unsqueeze(1)?, 1)?.mean_all()?.neg()?;
            opt.set_learning_rate(
                cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos()),
            );
            opt.backward_step(&nll)?;
            step += 1;
        }
    }
    let train_pred = predict(&train, w.as_tensor(), b.as_tensor())?;
    let test_pred = predict(&test, w.as_tensor(), b.as_tensor())?;
    Ok(ProbeReport {
        train_top1: accuracy(&train_pred, train_labels),
        test_top1: accuracy(&test_pred, test_labels),
    })
}
