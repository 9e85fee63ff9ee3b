//! Checkpoints: a resumed run ends exactly where an uninterrupted one does, files
//! are written atomically, and a run directory is never silently overwritten.

mod common;

use common::{tiny_config, write_synthetic_mnist};
use contrast_mining::policy::{Cluster, Fnc, Mochi, NearestNeighbour};
use contrast_train::metrics::deterministic_metrics;
use contrast_train::{RunOptions, run};
use std::path::Path;

fn opts(out: &Path, data: &Path, resume: bool) -> RunOptions {
    RunOptions {
        out_dir: out.to_path_buf(),
        data_dir: Some(data.to_path_buf()),
        resume,
        progress: false,
        ..Default::default()
    }
}

/// Copies the files of a run directory (one level of sub-directories deep).
fn copy_run(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn resumed_run_matches_uninterrupted_run() {
    check_resume(tiny_config(2));
}

/// The tiny config as MoCo: a 100-entry queue, momentum 0.9 (cosine-scheduled or
/// not), Shuffle-BN over 2 groups.
fn tiny_moco(cosine: bool) -> contrast_train::Config {
    let mut cfg = tiny_config(2);
    cfg.method = contrast_train::config::MethodConfig::Moco {
        queue_size: 100,
        momentum: contrast_encoders::MomentumSchedule { base: 0.9, cosine },
        shuffle_splits: 2,
        families: Vec::new(),
    };
    cfg.loss =
        contrast_losses::LossConfig::MocoInfoNce(contrast_losses::MocoConfig { temperature: 0.2 });
    cfg
}

/// LooC keeps one queue per embedding space and the extra heads (in the model and
/// the key encoder); all must come back exactly, and LooC++ evaluates on them.
#[test]
fn resumed_looc_run_matches_uninterrupted_run() {
    use contrast_data::recipe::Family;
    let mut cfg = tiny_moco(false);
    cfg.method = contrast_train::config::MethodConfig::Moco {
        queue_size: 100,
        momentum: contrast_encoders::MomentumSchedule {
            base: 0.9,
            cosine: false,
        },
        shuffle_splits: 2,
        families: vec![Family::Flip, Family::Rotation],
    };
    cfg.data.augment.rotation = 0.5;
    cfg.data.views = 4;
    cfg.loss = contrast_losses::LossConfig::Looc(contrast_losses::LoocConfig { temperature: 0.2 });
    cfg.eval.representation = contrast_train::config::RepresentationChoice::Spaces;
    cfg.validate().unwrap();
    check_resume(cfg);
}

/// NT-Xent on more than two views (each an anchor, its image's other views its
/// positives) trains through the planned loss, and resumes exactly.
#[test]
fn resumed_multi_view_run_matches_uninterrupted_run() {
    let mut cfg = tiny_config(2);
    cfg.data.views = 4;
    cfg.validate().unwrap();
    check_resume(cfg);
}

/// MoCo keeps a key encoder and a queue; both must come back exactly.
#[test]
fn resumed_moco_run_matches_uninterrupted_run() {
    let cfg = tiny_moco(true);
    cfg.validate().unwrap();
    check_resume(cfg);
}

/// Stateful mining policies keep k-means centroids and NNCLR's support queue; both
/// must come back exactly (their diagnostics in `metrics.jsonl` included).
#[test]
fn resumed_mining_run_matches_uninterrupted_run() {
    let mut cfg = tiny_config(2);
    cfg.mining = vec![
        contrast_mining::PolicyConfig::Cluster(Cluster {
            k: 4,
            lr: 0.2,
            mode: contrast_mining::ClusterMode::RemoveSame,
            start_below: 1.0,
            same_weight: 0.5,
        }),
        contrast_mining::PolicyConfig::NearestNeighbour(NearestNeighbour { support_size: 50 }),
    ];
    cfg.validate().unwrap();
    check_resume(cfg);
}

/// MoCo with FNC attraction and MoCHi on the queue resumes exactly.
#[test]
fn resumed_moco_mining_run_matches_uninterrupted_run() {
    let mut cfg = tiny_moco(false);
    cfg.mining = vec![
        contrast_mining::PolicyConfig::Fnc(Fnc {
            topk: Some(3),
            threshold: None,
            aggregation: contrast_losses::Aggregation::Max,
            cancellation: contrast_losses::Cancellation::Attraction,
        }),
        contrast_mining::PolicyConfig::Mochi(Mochi::new(8, 4, 2)),
    ];
    cfg.validate().unwrap();
    check_resume(cfg);
}

/// The memory-bank method keeps a bank and neighbour lists; both must come back
/// exactly (the invariance term is on in the second epoch), its diagnostics too: the
/// background's same-class share every epoch, the hard positives' precision once the
/// neighbour lists have been refreshed (the second epoch).
#[test]
fn resumed_bank_run_matches_uninterrupted_run() {
    let mut cfg = tiny_config(2);
    cfg.method = contrast_train::config::MethodConfig::Bank {
        momentum: 0.5,
        neighbours: 3,
        ramp_epochs: 0,
        gaussian_ramp: false,
    };
    cfg.loss = contrast_losses::LossConfig::InvariancePropagation(contrast_losses::InvPConfig {
        temperature: 0.2,
        n_background: 64,
        diffusion_layer: 2,
        n_pos: 5,
        lam_inv: 0.6,
        exclusive: true,
        hard_pos: true,
    });
    cfg.validate().unwrap();
    let metrics = check_resume(cfg);
    let epochs: Vec<&str> = metrics.lines().collect();
    assert!(
        epochs.iter().all(|e| e.contains("\"neg_false_fraction\"")),
        "{metrics}"
    );
    assert!(
        !epochs[0].contains("nn_positive_precision")
            && epochs[1].contains("\"nn_positive_precision\""),
        "{metrics}"
    );
}

/// Trains `cfg` for its 2 epochs straight and interrupted after the first, checks
/// that both end alike, and returns the straight run's `metrics.jsonl`.
fn check_resume(cfg: contrast_train::Config) -> String {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 320, 100);
    let straight = tempfile::tempdir().unwrap();
    let full = run(&cfg, &opts(straight.path(), data.path(), false)).unwrap();
    let ckpt = straight.path().join("checkpoints");
    assert_eq!(
        std::fs::read_to_string(ckpt.join("latest")).unwrap(),
        "epoch-0002"
    );
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        assert!(ckpt.join("epoch-0001").join(f).is_file(), "{f} missing");
    }

    // An interruption during epoch 2 leaves `latest` at epoch 1 and no summary.
    let split = tempfile::tempdir().unwrap();
    copy_run(straight.path(), split.path());
    std::fs::write(split.path().join("checkpoints/latest"), "epoch-0001").unwrap();
    std::fs::remove_dir_all(split.path().join("checkpoints/epoch-0002")).unwrap();
    std::fs::remove_file(split.path().join("summary.json")).unwrap();
    // The checkpoint carries the wall time so far; a resumed run adds its own to it.
    // Set it far above anything this test takes, so that the summary shows it.
    let state_file = split.path().join("checkpoints/epoch-0001/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    let first = state["wall_seconds"].as_f64().unwrap();
    assert!(first > 0.0 && first <= full.wall_seconds, "{first}");
    const EARLIER: f64 = 1.0e6;
    state["wall_seconds"] = EARLIER.into();
    std::fs::write(&state_file, state.to_string()).unwrap();

    // Without --resume an existing run directory is refused.
    let e = format!(
        "{:#}",
        run(&cfg, &opts(split.path(), data.path(), false)).unwrap_err()
    );
    assert!(e.contains("already holds a checkpoint"), "{e}");
    let resumed = run(&cfg, &opts(split.path(), data.path(), true)).unwrap();

    let a = deterministic_metrics(&straight.path().join("metrics.jsonl")).unwrap();
    let b = deterministic_metrics(&split.path().join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 2);
    // Everything but wall-clock measurements must be identical.
    assert_eq!(
        a, b,
        "metrics after resume differ from the uninterrupted run's"
    );
    assert_eq!(full.knn_top1, resumed.knn_top1);
    assert_eq!(full.linear_top1, resumed.linear_top1);
    assert_eq!(resumed.epochs, 2);
    assert!(
        resumed.wall_seconds > EARLIER && resumed.wall_seconds < EARLIER + full.wall_seconds * 20.0,
        "wall time {} s after resuming from a checkpoint {EARLIER} s into the run",
        resumed.wall_seconds
    );
    for f in [
        "config.toml",
        "summary.json",
        "plots/loss.svg",
        "plots/knn.svg",
    ] {
        assert!(split.path().join(f).is_file(), "{f} missing");
    }
    std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap()
}

#[test]
fn a_damaged_latest_pointer_is_reported() {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 64, 20);
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(1);
    cfg.eval.baselines = false;
    cfg.eval.knn.k = 5;
    run(&cfg, &opts(out.path(), data.path(), false)).unwrap();
    std::fs::write(out.path().join("checkpoints/latest"), "epoch-0042").unwrap();
    let e = format!(
        "{:#}",
        run(&cfg, &opts(out.path(), data.path(), true)).unwrap_err()
    );
    assert!(
        e.contains("epoch-0042") && e.contains("no complete checkpoint"),
        "{e}"
    );
}

/// A run interrupted after every single step (the flag a SIGINT handler sets), and
/// resumed each time from its mid-epoch checkpoint, ends exactly where an
/// uninterrupted run does: the same per-epoch metrics (losses summed across the
/// interruptions, mining diagnostics included), the same evaluation.
#[test]
fn a_run_interrupted_at_every_step_matches_the_uninterrupted_run() {
    use contrast_train::Trainer;
    use contrast_train::trainer::Interrupted;
    use std::sync::atomic::AtomicBool;
    static STOP: AtomicBool = AtomicBool::new(true);

    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 320, 100);
    let cfg = tiny_config(2);
    let straight = tempfile::tempdir().unwrap();
    let full = run(&cfg, &opts(straight.path(), data.path(), false)).unwrap();

    let split = tempfile::tempdir().unwrap();
    let mut interruptions = 0;
    let resumed = loop {
        let resume = interruptions > 0;
        let mut t = Trainer::new(&cfg, &opts(split.path(), data.path(), resume))
            .unwrap()
            .with_interrupt(&STOP);
        match t.train() {
            Ok(()) => break t.finish().unwrap(),
            Err(e) => {
                assert!(e.is::<Interrupted>(), "{e:#}");
                interruptions += 1;
            }
        }
    };
    // 320 images in batches of 32: 10 steps an epoch; every step but the last ends
    // in an interruption.
    assert_eq!(interruptions, 19);
    let a = deterministic_metrics(&straight.path().join("metrics.jsonl")).unwrap();
    let b = deterministic_metrics(&split.path().join("metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    assert_eq!(full.knn_top1, resumed.knn_top1);
    assert_eq!(full.linear_top1, resumed.linear_top1);
}

/// `train.checkpoint_every` writes mid-epoch checkpoints named after their step, and
/// `latest` names the newest.
#[test]
fn checkpoint_every_writes_mid_epoch_checkpoints() {
    let data = tempfile::tempdir().unwrap();
    write_synthetic_mnist(data.path(), 320, 100);
    let mut cfg = tiny_config(1);
    cfg.train.checkpoint_every = Some(4);
    cfg.train.keep_checkpoints = 10;
    let out = tempfile::tempdir().unwrap();
    run(&cfg, &opts(out.path(), data.path(), false)).unwrap();
    let ckpt = out.path().join("checkpoints");
    for dir in [
        "epoch-0000-step-000004",
        "epoch-0000-step-000008",
        "epoch-0001",
    ] {
        assert!(ckpt.join(dir).join("state.json").is_file(), "{dir} missing");
    }
    assert_eq!(
        std::fs::read_to_string(ckpt.join("latest")).unwrap(),
        "epoch-0001"
    );
}
