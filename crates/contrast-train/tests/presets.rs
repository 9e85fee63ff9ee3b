//! Every preset in `configs/` trains for a short epoch: the Fashion-MNIST ones on
//! the real data, the CIFAR ones on generated CIFAR-10 binary files (through the
//! real reader) with a narrow ResNet-18.

use contrast_data::{DatasetChoice, DatasetId, Holdout};
use contrast_train::{Config, RunOptions, run};
use std::path::PathBuf;

#[test]
fn every_preset_runs_a_short_epoch() {
    let data = DatasetId::FashionMnist
        .resolve(None)
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let short: Vec<String> = [
        "data.train_subset=512",
        "data.test_subset=256",
        "data.batch_size=64",
        "train.epochs=1",
        "eval.monitor_bank=512",
        "eval.baselines=false",
        "eval.probe.epochs=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cifar_dir = tempfile::tempdir().unwrap();
    let cifar = contrast_testing::images::cifar10_files(cifar_dir.path(), 110, 256, 3);
    let mut ran = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let cfg =
            Config::load(&path, &short).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let (cfg, data_dir) = match cfg.data.dataset {
            DatasetChoice::Named(DatasetId::Cifar10) => {
                // The preset's ResNet-18 at width 8: the same network, 64x cheaper.
                let mut set = short.clone();
                set.push("model.encoder.width=8".into());
                set.push("model.encoder.recompute_stages=0".into());
                let cfg = Config::load(&path, &set)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                (cfg, cifar.clone())
            }
            _ => {
                // The Fashion-MNIST presets hold out 5,000 images to monitor on; a
                // short epoch monitors 256 of them.
                let mut cfg = cfg;
                assert!(cfg.data.validation.is_some(), "{}", path.display());
                cfg.data.validation = Some(Holdout::Count(256));
                (cfg, data.clone())
            }
        };
        let out = tempfile::tempdir().unwrap();
        let summary = run(
            &cfg,
            &RunOptions {
                out_dir: out.path().to_path_buf(),
                data_dir: Some(data_dir),
                resume: false,
                progress: false,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(summary.epochs, 1);
        let knn = summary.knn_top1.expect("Fashion-MNIST has labels");
        assert!(knn > 0.3, "{}: kNN {knn}", path.display());
        // Runs that contrast every other instance in the batch (SimCLR, DCL, debiased,
        // HCL, and FNC's loss less what it cancels), queue runs and the memory bank's
        // background (Invariance Propagation) log what their negatives were, and only
        // they; FNC (policy or loss) and clustering how well they identified false
        // negatives.
        let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
        let logs_negatives = match cfg.method {
            contrast_train::config::MethodConfig::Simclr => {
                cfg.loss.contrasts_every_instance() || cfg.loss.name() == "fnc"
            }
            contrast_train::config::MethodConfig::Moco { .. }
            | contrast_train::config::MethodConfig::Bank { .. } => true,
        };
        for key in ["\"neg_false_fraction\"", "\"neg_sim_p90\""] {
            assert_eq!(
                metrics.contains(key),
                logs_negatives,
                "{}: {key} in {metrics}",
                path.display()
            );
        }
        // The debiased losses and the `debias` policy log how often their correction
        // hit its floor.
        let debiased = matches!(cfg.loss.name(), "debiased" | "hcl")
            || cfg.mining.iter().any(|p| p.name() == "debias");
        assert_eq!(
            metrics.contains("\"debias_floor_share\""),
            debiased,
            "{}: {metrics}",
            path.display()
        );
        // Two-view in-batch losses at one temperature without policies log the
        // share NT-Xent's softmax gives the positive, and only they.
        let shares = matches!(cfg.method, contrast_train::config::MethodConfig::Simclr)
            && matches!(
                cfg.loss.name(),
                "nt_xent" | "decoupled" | "decoupled_weighted" | "debiased" | "hcl"
            )
            && cfg.mining.is_empty()
            && cfg.data.views == 2;
        assert_eq!(
            metrics.contains("\"positive_share\""),
            shares,
            "{}: {metrics}",
            path.display()
        );
        if cfg.loss.name() == "fnc"
            || cfg
                .mining
                .iter()
                .any(|p| matches!(p.name(), "fnc" | "cluster"))
        {
            assert!(
                metrics.contains("\"fn_identified_precision\""),
                "{}: {metrics}",
                path.display()
            );
        }
        ran.push(cfg.name);
    }
    ran.sort();
    println!("presets run: {ran:?}");
    for required in [
        "simclr-fmnist",
        "simclr-cifar10",
        "moco-cifar10",
        "moco-ring-fmnist",
        "dcl-fmnist",
        "debiased-fmnist",
        "hcl-fmnist",
        "supcon-fmnist",
        "simlap-fmnist",
        "ccrop-fmnist",
        "ccrop-cifar10",
        "looc-fmnist",
        "mine-fnc-elim-fmnist",
        "mine-fnc-attract-fmnist",
        "mine-hcl-fmnist",
        "mine-mochi-fmnist",
        "mine-ring-fmnist",
        "mine-cluster-fmnist",
        "mine-nnclr-fmnist",
        "mine-supervised-fmnist",
        "mine-batch-hard-fmnist",
        "mine-combo-fmnist",
        "moco-fnc-fmnist",
        "fnc-fmnist",
        "moco-mochi-fmnist",
        "moco-label-aware-fmnist",
    ] {
        assert!(
            ran.iter().any(|n| n == required),
            "missing preset {required}"
        );
    }
}
