//! End to end on real data: two epochs of SimCLR on 10,000 Fashion-MNIST images (156
//! steps) must lift held-out kNN accuracy clearly above the untrained encoder's.
//!
//! It uses a 3-stage ConvNet with global average pooling and an MLP head: the
//! default network's random features (its flattened 7x7 map) are already strong on
//! this small protocol, and early in training kNN first dips below
//! them, so a short run of the default would not show learning reliably.
//!
//! Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`, or
//! `cargo xtask data fetch fashion-mnist`); `.ci/run` installs it.

use contrast_data::DatasetId;
use contrast_train::{Config, RunOptions, run};
use std::path::PathBuf;

#[test]
fn training_on_a_real_subset_beats_the_untrained_encoder() {
    let dir = DatasetId::FashionMnist
        .resolve(None)
        .unwrap_or_else(|e| panic!("{e}"));
    let preset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/simclr-fmnist.toml");
    let overrides: Vec<String> = [
        "model.encoder={kind=\"convnet\", channels=[32, 64, 128]}",
        "model.head={hidden=512, out=128}",
        "data.train_subset=10000",
        "data.test_subset=2000",
        "train.epochs=2",
        "data.batch_size=128",
        "schedule.warmup_epochs=0",
        "eval.monitor_bank=10000",
        "eval.probe.epochs=3",
        // The protocol this test was sized on (the default now reads k = 10, whose
        // gain over the untrained encoder is smaller on this short run).
        "eval.knn={k=200, temperature=0.1}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cfg = Config::load(&preset, &overrides).unwrap();
    // The untrained and the trained encoder are both measured on the test split.
    cfg.data.validation = None;
    let out = tempfile::tempdir().unwrap();
    let summary = run(
        &cfg,
        &RunOptions {
            out_dir: out.path().to_path_buf(),
            data_dir: Some(dir),
            resume: false,
            progress: false,
            ..Default::default()
        },
    )
    .unwrap();
    let untrained = summary.untrained_knn_top1.unwrap();
    let knn = summary.knn_top1.unwrap();
    println!("untrained kNN {untrained:.4} -> trained {knn:.4}");
    assert!(
        knn > untrained + 0.02,
        "kNN {knn} did not rise clearly above the untrained encoder's {untrained}"
    );
    assert!(
        summary.data_wait_fraction < 0.2,
        "data wait {}",
        summary.data_wait_fraction
    );
}
