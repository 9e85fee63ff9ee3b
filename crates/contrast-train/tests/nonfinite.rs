//! Numerical faults: a NaN injected into the weights stops the run before the
//! optimiser moves (naming the epoch, the step and the tensor), or, with
//! `train.on_nonfinite = "rollback"`, sends it back to the last checkpoint with half the
//! learning rate; a non-finite gradient behind a finite loss is caught too.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{tiny_config, write_synthetic_mnist};
use contrast_train::config::{OnNonFinite, OptimConfig};
use contrast_train::optim::{Optimizer, Param};
use contrast_train::{RunOptions, Trainer};

/// Every trainable variable's values are finite.
fn all_finite(trainer: &Trainer) -> bool {
    trainer.model().params().iter().all(|p| {
        let sum: f32 = p.var.as_tensor().sum_all().unwrap().to_scalar().unwrap();
        sum.is_finite()
    })
}

/// Overwrites the first trainable variable with NaN, as a fault in an earlier step
/// would leave it.
fn poison(trainer: &Trainer) {
    let params = trainer.model().params();
    let var = &params[0].var;
    let nan = Tensor::full(f32::NAN, var.shape(), var.device()).unwrap();
    var.set(&nan).unwrap();
}

fn trainer(policy: OnNonFinite, data: &std::path::Path, out: &std::path::Path) -> Trainer {
    let mut cfg = tiny_config(3);
    cfg.train.on_nonfinite = policy;
    let opts = RunOptions {
        out_dir: out.to_path_buf(),
        data_dir: Some(data.to_path_buf()),
        resume: false,
        progress: false,
        ..Default::default()
    };
    Trainer::new(&cfg, &opts).unwrap()
}

#[test]
fn a_nan_stops_the_run_and_leaves_the_checkpoint_intact() {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 256, 64);
    let out = tempfile::tempdir().unwrap();
    let mut t = trainer(OnNonFinite::Stop, data.path(), out.path());
    t.epoch(0).unwrap();
    let steps_before = t.optimizer_steps();
    poison(&t);
    let err = format!("{:#}", t.epoch(1).unwrap_err());
    assert!(
        err.contains("non-finite loss") && err.contains("epoch 2 step 0"),
        "{err}"
    );
    assert_eq!(t.optimizer_steps(), steps_before, "the optimiser moved");
    // The checkpoint of epoch 1 is intact: a resumed run starts from finite weights.
    let mut cfg = tiny_config(3);
    cfg.train.on_nonfinite = OnNonFinite::Stop;
    let resumed = Trainer::new(
        &cfg,
        &RunOptions {
            out_dir: out.path().to_path_buf(),
            data_dir: Some(data.path().to_path_buf()),
            resume: true,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(resumed.state().epoch, 1);
    assert!(all_finite(&resumed));
}

#[test]
fn a_nan_rolls_back_to_the_checkpoint_with_half_the_learning_rate() {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 256, 64);
    let (out_a, out_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The reference: the same run without the fault.
    let mut clean = trainer(OnNonFinite::Rollback, data.path(), out_a.path());
    clean.epoch(0).unwrap();
    let clean_record = clean.epoch(1).unwrap();

    let mut t = trainer(OnNonFinite::Rollback, data.path(), out_b.path());
    t.epoch(0).unwrap();
    poison(&t);
    let record = t.epoch(1).unwrap();
    assert!(record.loss.is_finite() && all_finite(&t));
    assert_eq!(t.state().rollbacks, 1);
    assert_eq!(t.state().lr_scale, 0.5);
    assert_eq!(t.state().epoch, 2);
    // The epoch ran again from the checkpoint at half the scheduled learning rate.
    assert!((record.lr - 0.5 * clean_record.lr).abs() < 1e-12 * clean_record.lr.abs().max(1.0));
    assert_eq!(record.step, clean_record.step);
}

#[test]
fn a_fault_before_any_checkpoint_restarts_from_the_initial_weights() {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 256, 64);
    let out = tempfile::tempdir().unwrap();
    let mut t = trainer(OnNonFinite::Rollback, data.path(), out.path());
    poison(&t);
    let record = t.epoch(0).unwrap();
    assert!(record.loss.is_finite() && all_finite(&t));
    assert_eq!((t.state().rollbacks, t.state().lr_scale), (1, 0.5));
}

#[test]
fn a_nonfinite_gradient_behind_a_finite_loss_is_named() {
    // sqrt at 0: the value is 0, its derivative infinite.
    let w = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let opt = Optimizer::new(
        OptimConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        },
        vec![Param::new("head.scale", w.clone())],
    );
    let loss = w.as_tensor().sqrt().unwrap().sum_all().unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let grads = loss.backward().unwrap();
    assert_eq!(opt.first_nonfinite(&grads).unwrap(), Some("head.scale"));
    let fine = (w.as_tensor() * 2.0).unwrap().sum_all().unwrap();
    assert_eq!(
        opt.first_nonfinite(&fine.backward().unwrap()).unwrap(),
        None
    );
}
