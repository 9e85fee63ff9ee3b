//! The candle op set trains like the fused one: one epoch of the default preset on
//! 2,000 Fashion-MNIST images with `model.ops = "candle"` (the path a GPU runs) and
//! with `"fused"`, step by step on the same batches.
//!
//! The two sets compute the same function in a different order of f32 sums, so their
//! losses drift apart slowly through the weights; the check is that every step's
//! loss stays within 1e-3 relative.
//!
//! Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`, or
//! `cargo xtask data fetch fashion-mnist`); `.ci/run` installs it.

mod common;

use contrast_data::DatasetId;
use contrast_train::{Config, Precision, RunOptions, Trainer};
use std::path::PathBuf;

fn trainer(ops: &str, data: &std::path::Path, out: &std::path::Path) -> Trainer {
    let preset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/simclr-fmnist.toml");
    let overrides: Vec<String> = [
        "data.train_subset=2000".to_string(),
        "data.test_subset=500".to_string(),
        "data.validation=500".to_string(),
        "train.epochs=1".to_string(),
        "eval.baselines=false".to_string(),
        "train.device=\"cpu\"".to_string(),
        format!("model.ops=\"{ops}\""),
    ]
    .to_vec();
    let cfg = Config::load(&preset, &overrides).unwrap();
    Trainer::new(
        &cfg,
        &RunOptions {
            out_dir: out.to_path_buf(),
            data_dir: Some(data.to_path_buf()),
            resume: false,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn candle_ops_track_the_fused_ops_at_every_step() {
    let data = DatasetId::FashionMnist
        .resolve(None)
        .unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut fused = trainer("fused", &data, a.path());
    let mut candle = trainer("candle", &data, b.path());
    assert_eq!(fused.model().ops().name(), "fused");
    assert_eq!(candle.model().ops().name(), "candle");
    let mut worst = 0f64;
    let mut steps = 0;
    for batch in fused.batches(0).unwrap() {
        let (lf, _) = fused.step(&batch).unwrap();
        let (lc, _) = candle.step(&batch).unwrap();
        let rel = (lf - lc).abs() / lf.abs();
        println!("step {steps}: fused {lf:.6} candle {lc:.6} rel {rel:.2e}");
        assert!(
            rel < 1e-3,
            "step {steps}: fused loss {lf}, candle loss {lc}"
        );
        worst = worst.max(rel);
        steps += 1;
    }
    assert_eq!(steps, 2000 / 256);
    println!("worst relative difference over {steps} steps: {worst:.2e}");
}

/// `train.precision = "bf16"`: the encoders compute in bf16 (the candle op set) and
/// the loss stays f32, so the losses follow the f32 run's to bf16's ~3 digits. On the
/// synthetic bars dataset, one epoch stepped on the same batches as an f32 run.
#[test]
fn bf16_training_follows_the_f32_run() {
    let data = tempfile::tempdir().unwrap();
    common::write_synthetic_mnist(data.path(), 256, 64);
    let run = |precision: Precision, out: &std::path::Path| {
        let mut cfg = common::tiny_config(1);
        cfg.train.precision = precision;
        Trainer::new(
            &cfg,
            &RunOptions {
                out_dir: out.to_path_buf(),
                data_dir: Some(data.path().join("mnist")),
                resume: false,
                progress: false,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut full = run(Precision::F32, a.path());
    let mut half = run(Precision::Bf16, b.path());
    assert_eq!(half.model().ops().name(), "candle");
    let mut steps = 0;
    for batch in full.batches(0).unwrap() {
        let (lf, _) = full.step(&batch).unwrap();
        let (lh, _) = half.step(&batch).unwrap();
        let rel = (lf - lh).abs() / lf.abs();
        println!("step {steps}: f32 {lf:.5} bf16 {lh:.5} rel {rel:.1e}");
        assert!(
            lh.is_finite() && rel < 2e-2,
            "step {steps}: f32 {lf}, bf16 {lh}"
        );
        steps += 1;
    }
    assert_eq!(steps, 256 / 32);
    let (full, half) = (full.finish().unwrap(), half.finish().unwrap());
    assert_eq!(
        (full.precision.as_str(), half.precision.as_str()),
        ("f32", "bf16")
    );
    let (k32, k16) = (full.knn_top1.unwrap(), half.knn_top1.unwrap());
    assert!((k32 - k16).abs() < 0.1, "kNN: f32 {k32}, bf16 {k16}");
}
