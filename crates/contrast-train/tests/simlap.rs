//! SimLAP as the reference trains it: the logit scale is a model parameter started at
//! `ln(1 / T)` that the optimiser moves, and a fixed scale stays out of the model.

mod common;

use common::{tiny_config, write_synthetic_mnist};
use contrast_losses::{LossConfig, PairMode, SimLapConfig};
use contrast_train::{RunOptions, Trainer};

fn simlap_trainer(learnable: bool, data: &std::path::Path, out: &std::path::Path) -> Trainer {
    let mut cfg = tiny_config(1);
    cfg.loss = LossConfig::Simlap(SimLapConfig {
        temperature: 0.2,
        learnable_scale: learnable,
        pairs: PairMode::Arbitrary,
        ..SimLapConfig::default()
    });
    let opts = RunOptions {
        out_dir: out.to_path_buf(),
        data_dir: Some(data.to_path_buf()),
        ..Default::default()
    };
    Trainer::new(&cfg, &opts).unwrap()
}

#[test]
fn the_learnable_scale_starts_at_one_over_t_and_trains() {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 256, 64);
    let out = tempfile::tempdir().unwrap();
    let mut t = simlap_trainer(true, data.path(), out.path());
    let scale = |t: &Trainer| -> f32 {
        let s = t.model().filter.as_ref().unwrap().log_scale().unwrap();
        s.to_vec1::<f32>().unwrap()[0]
    };
    let start = scale(&t);
    assert!((start - (1f32 / 0.2).ln()).abs() < 1e-6, "{start}");
    assert!(
        t.model()
            .params()
            .iter()
            .any(|p| p.name == "filter.log_scale"),
        "the scale is a trained parameter"
    );
    t.epoch(0).unwrap();
    assert_ne!(scale(&t), start, "the optimiser moved the scale");

    let fixed_out = tempfile::tempdir().unwrap();
    let fixed = simlap_trainer(false, data.path(), fixed_out.path());
    assert!(fixed.model().filter.as_ref().unwrap().log_scale().is_none());
}
