//! ContrastiveCrop in the trainer: boxes are located after the warm-up, saved in the
//! checkpoints, used by the next epochs' crops, and restored on resume.

use contrast_data::DatasetId;
use contrast_train::{Config, RunOptions, run};
use std::path::{Path, PathBuf};

fn options(out: &Path, data: &Path, resume: bool) -> RunOptions {
    RunOptions {
        out_dir: out.to_path_buf(),
        data_dir: Some(data.to_path_buf()),
        resume,
        progress: false,
        ..Default::default()
    }
}

/// The boxes `[N, 4]` of a checkpoint's `contrastive_crop.safetensors`.
fn boxes(checkpoint: &Path) -> Vec<[f32; 4]> {
    let t = candle_core::safetensors::load(
        checkpoint.join("contrastive_crop.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let b = &t["boxes"];
    assert_eq!(b.dims()[1], 4);
    b.to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| [r[0], r[1], r[2], r[3]])
        .collect()
}

fn model_bytes(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn boxes_are_located_checkpointed_and_restored() {
    let data = DatasetId::FashionMnist
        .resolve(None)
        .unwrap_or_else(|e| panic!("{e}"));
    let preset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/ccrop-fmnist.toml");
    let set: Vec<String> = [
        "data.train_subset=512",
        "data.test_subset=256",
        "data.validation=256",
        "data.batch_size=64",
        "train.epochs=3",
        "train.keep_checkpoints=3",
        "data.contrastive_crop.warmup_epochs=1",
        "data.contrastive_crop.loc_interval=1",
        "eval.monitor_bank=512",
        "eval.baselines=false",
        "eval.probe.epochs=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = Config::load(&preset, &set).unwrap();

    let full = tempfile::tempdir().unwrap();
    run(&cfg, &options(full.path(), &data, false)).unwrap();
    let ckpt = full.path().join("checkpoints");
    // Epoch 1 is the warm-up; the boxes are located at its end and after epoch 2,
    // not after the last, which keeps epoch 2's.
    let after1 = boxes(&ckpt.join("epoch-0001"));
    let after2 = boxes(&ckpt.join("epoch-0002"));
    assert_eq!(boxes(&ckpt.join("epoch-0003")), after2);
    assert_eq!(after1.len(), 512);
    for b in after1.iter().chain(&after2) {
        assert!(b.iter().all(|v| (0.0..=1.0).contains(v)), "{b:?}");
        assert!(b[0] <= b[2] && b[1] <= b[3], "{b:?}");
    }
    let log = std::fs::read_to_string(full.path().join("run.log")).unwrap();
    assert_eq!(
        log.matches("ContrastiveCrop: located the objects of 512 images")
            .count(),
        2,
        "{log}"
    );

    // Resuming from epoch 2's checkpoint trains epoch 3 on the saved boxes and ends
    // bit for bit where the uninterrupted run did.
    let resume = |replace: Option<[f32; 4]>| {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("checkpoints");
        copy_dir(&ckpt.join("epoch-0002"), &to.join("epoch-0002"));
        std::fs::write(to.join("latest"), "epoch-0002").unwrap();
        if let Some(b) = replace {
            let t =
                candle_core::Tensor::new(vec![b.to_vec(); 512], &candle_core::Device::Cpu).unwrap();
            candle_core::safetensors::save(
                &[("boxes".to_string(), t)].into(),
                to.join("epoch-0002/contrastive_crop.safetensors"),
            )
            .unwrap();
        }
        run(&cfg, &options(dir.path(), &data, true)).unwrap();
        model_bytes(&to.join("epoch-0003"))
    };
    let want = model_bytes(&ckpt.join("epoch-0003"));
    assert!(resume(None) == want, "resumed run differs");
    // With every box moved to the top-left quarter, epoch 3 crops elsewhere and ends
    // with other weights: the checkpoint's boxes do drive the crops.
    assert!(
        resume(Some([0.0, 0.0, 0.25, 0.25])) != want,
        "the boxes made no difference"
    );
}

#[test]
fn contrastive_crop_needs_a_crop_and_a_feature_map() {
    let preset = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/ccrop-fmnist.toml");
    let err = |set: &[&str]| {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Config::load(&preset, &set).unwrap_err())
    };
    let e = err(&[
        "model.encoder={ kind = \"mlp\", hidden = [64] }",
        "model.head.conv=[]",
    ]);
    assert!(
        e.contains("data.contrastive_crop") && e.contains("convnet"),
        "{e}"
    );
    let e = err(&["data.contrastive_crop.alpha=0"]);
    assert!(e.contains("data.contrastive_crop.alpha"), "{e}");
    let e = err(&["data.contrastive_crop.threshold=1.5"]);
    assert!(e.contains("data.contrastive_crop.threshold"), "{e}");
}
