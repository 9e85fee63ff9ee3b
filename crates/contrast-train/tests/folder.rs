//! Training on a folder of one's own images, labelled and unlabeled: one epoch on
//! generated PNG and JPEG files of mixed sizes and modes with two corrupt files, the
//! cache reused by the next run, and the files a run leaves (embeddings, report,
//! metrics.csv, run.log).

use candle_core::Device;
use contrast_testing::images::{flat_folder, labelled_folder};
use contrast_train::{Config, RunOptions, run};
use std::path::Path;

const BASE: &str = r#"
name = "folder-test"
[data]
dataset = "folder"
batch_size = 16
size = 16
augment = { hflip = 0.5, crop = { scale = [0.5, 1.0], ratio = [0.75, 1.3333333] } }
[model]
encoder = { kind = "convnet", channels = [8, 16], pool = "avg" }
head = { hidden = 32, out = 16 }
[loss]
name = "nt_xent"
temperature = 0.2
[optim]
name = "sgd"
lr = 0.1
[train]
epochs = 1
[eval]
knn = { k = 5, temperature = 0.1 }
probe = { epochs = 2, batch_size = 16, lr = 0.01, weight_decay = 0.0, seed = 0 }
"#;

fn config(data: &Path, cache: &Path, extra: &[&str]) -> anyhow::Result<Config> {
    let mut set = vec![
        format!("data.path=\"{}\"", data.display()),
        format!("data.cache=\"{}\"", cache.display()),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    Config::from_toml(BASE, "folder-test.toml", &set)
}

fn opts(out: &Path) -> RunOptions {
    RunOptions {
        out_dir: out.to_path_buf(),
        command: Some("test".into()),
        ..Default::default()
    }
}

#[test]
fn a_labelled_folder_trains_and_leaves_embeddings_and_a_report() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(data.path(), 3, 24, true, 11);
    let cfg = config(data.path(), cache.path(), &["data.validation=12"]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = run(&cfg, &opts(out.path())).unwrap();
    // 72 good images: a tenth (7) is the test split, 12 validate, 53 train.
    assert_eq!(s.skipped_files, 2);
    assert_eq!(
        (s.train_images, s.validation_images, s.test_images),
        (53, Some(12), 7)
    );
    assert!(s.labelled && s.knn_top1.is_some() && s.linear_top1.is_some());
    assert_eq!(s.monitor_split, "validation");
    assert!(s.effective_rank.unwrap() >= 1.0);
    assert_eq!(s.encoder["kind"], "convnet");
    assert_eq!(s.command.as_deref(), Some("test"));
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"knn_split\":\"validation\""),
        "{metrics}"
    );
    let csv = std::fs::read_to_string(out.path().join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("epoch,step,loss,lr,"));
    assert_eq!(lines.count(), 1);

    // Embeddings of every split, with labels and the image files.
    for (split, n) in [("train", 53), ("validation", 12), ("test", 7)] {
        let file = out.path().join(format!("embeddings/{split}.safetensors"));
        let t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        assert_eq!(t["embeddings"].dims(), [n, 16]);
        assert_eq!(t["labels"].dims(), [n]);
        assert_eq!(t["indices"].dims(), [n]);
        let paths =
            std::fs::read_to_string(out.path().join(format!("embeddings/{split}.paths.txt")))
                .unwrap();
        assert_eq!(paths.lines().count(), n);
        assert!(paths.lines().all(|p| Path::new(p).is_file()));
    }
    // The final validation kNN is the one the embeddings give (bank: all of train,
    // k = 5, t = 0.1), beside the untrained encoder's on the same split.
    let load = |split: &str| {
        let file = out.path().join(format!("embeddings/{split}.safetensors"));
        let t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let labels: Vec<u32> = t["labels"]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&l| l as u32)
            .collect();
        (t["embeddings"].clone(), labels)
    };
    let ((ftr, ltr), (fv, lv)) = (load("train"), load("validation"));
    let knn = contrast_eval::KnnConfig {
        k: 5,
        temperature: 0.1,
    };
    let expected = contrast_eval::knn_accuracy(&ftr, &ltr, &fv, &lv, 3, &knn).unwrap();
    assert_eq!(s.validation_knn_top1, Some(expected));
    let untrained = s.untrained_knn_top1.unwrap();
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        report.contains("linear probe top-1") && report.contains("class0"),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "| validation | {expected:.4} | {untrained:.4} | - |"
        )),
        "{report}"
    );
    let log = std::fs::read_to_string(out.path().join("run.log")).unwrap();
    assert!(log.contains("decoded, cache written"), "{log}");
    assert!(
        log.contains("warning: skipped") && log.contains("notes.jpg"),
        "{log}"
    );

    // The next run maps the cache instead of decoding.
    let out2 = tempfile::tempdir().unwrap();
    let s2 = run(&cfg, &opts(out2.path())).unwrap();
    let log = std::fs::read_to_string(out2.path().join("run.log")).unwrap();
    assert!(log.contains("cache reused"), "{log}");
    assert_eq!(s2.skipped_files, 2);
    assert_eq!(s2.knn_top1, s.knn_top1);

    // data.on_error = "fail" stops before training, naming a corrupt file.
    let strict = config(data.path(), cache.path(), &["data.on_error=\"fail\""]).unwrap();
    let err = format!(
        "{:#}",
        run(&strict, &opts(tempfile::tempdir().unwrap().path())).unwrap_err()
    );
    assert!(
        err.contains("notes.jpg") || err.contains("truncated.png"),
        "{err}"
    );
}

#[test]
fn an_unlabeled_folder_trains_without_label_evaluations() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    flat_folder(data.path(), 3, 60, true, 12);
    let cfg = config(data.path(), cache.path(), &[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = run(&cfg, &opts(out.path())).unwrap();
    assert!(!s.labelled);
    assert_eq!(
        (s.knn_top1, s.linear_top1, s.untrained_knn_top1),
        (None, None, None)
    );
    assert!(s.uniformity.unwrap() < 0.0 && s.effective_rank.unwrap() >= 1.0);
    assert_eq!((s.train_images, s.test_images, s.skipped_files), (54, 6, 2));
    let t = candle_core::safetensors::load(
        out.path().join("embeddings/train.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(!t.contains_key("labels"));
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"knn_top1\":null"), "{metrics}");

    // What reads labels is refused, before any image is decoded, naming both sides.
    let supcon = config(
        data.path(),
        cache.path(),
        &["loss={name=\"supcon\", temperature=0.1}"],
    )
    .unwrap();
    let err = format!(
        "{:#}",
        run(&supcon, &opts(tempfile::tempdir().unwrap().path())).unwrap_err()
    );
    assert!(
        err.contains("loss.name = \"supcon\"") && err.contains("has none"),
        "{err}"
    );
}

#[test]
fn folder_keys_are_checked_before_any_data_is_read() {
    let err = Config::from_toml(BASE, "folder-test.toml", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs data.path"), "{err}");
    let fmnist = BASE.replace("dataset = \"folder\"", "dataset = \"fashion-mnist\"");
    let err = Config::from_toml(&fmnist, "f.toml", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.size applies to data.dataset = \"folder\""),
        "{err}"
    );
    let err = Config::from_toml(BASE, "f.toml", &["data.dataset=\"folders\"".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("or folder (with data.path)"), "{err}");
    let err = Config::from_toml(
        BASE,
        "f.toml",
        &["data.path=\"x\"".into(), "data.test=1.5".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("data.test") && err.contains("a fraction in (0, 1)"),
        "{err}"
    );
}

#[test]
fn a_trained_run_is_evaluated_and_embedded_from_its_checkpoint() {
    use contrast_train::config::SplitName;
    use contrast_train::log::RunLog;
    use contrast_train::report::{EmbedFormat, write_embedding_file};
    use contrast_train::run_dir::OpenedRun;
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(data.path(), 3, 20, false, 13);
    let cfg = config(data.path(), cache.path(), &["data.validation=0.2"]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let s = run(&cfg, &opts(out.path())).unwrap();

    let log = RunLog::stdout_only();
    let opened = OpenedRun::open(out.path(), None, None, None, &log).unwrap();
    let test = opened.split(SplitName::Test).unwrap();
    let e = opened
        .eval
        .report(
            opened.model.backbone.as_ref(),
            &opened.data.train,
            test,
            "test",
            &opened.cfg.data.augment,
            0,
            "latest",
            Some((out.path(), "folder-test")),
        )
        .unwrap();
    assert_eq!(e.plots.len(), 3, "{:?}", e.plots);
    for p in &e.plots {
        let svg = std::fs::read_to_string(out.path().join(p)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("folder-test"),
            "{p}"
        );
    }
    // The checkpoint reproduces the run's own final evaluation.
    assert_eq!(e.knn_top1, s.knn_top1);
    assert_eq!(e.linear_top1, s.linear_top1);
    assert!((e.uniformity - s.uniformity.unwrap()).abs() < 1e-9);
    for v in [
        e.precision_at_1,
        e.r_precision,
        e.map_at_r,
        e.nmi,
        e.knn_top5,
    ] {
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{e:?}");
    }
    assert!(e.knn_top5 >= e.knn_top1);
    assert!(e.alignment >= 0.0 && e.embedding_std > 0.0);
    assert_eq!(e.settings.images, test.len());
    // The report tables the sweep one row per k (those within the bank) and one
    // column per temperature.
    let md = contrast_train::report::write_report(out.path(), Some(&s), Some(&e), &[]).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("| k | t = 0.07 | t = 0.1 |"), "{md}");
    let k1 = e
        .knn_sweep
        .iter()
        .find(|p| p.k == 1 && p.temperature == 0.1)
        .unwrap();
    assert!(
        md.lines().any(|l| l.starts_with("| 1 | ")
            && l.ends_with(&format!("| {:.4} ({:.4}) |", k1.top1, k1.top5))),
        "{md}"
    );
    let rows = md
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with(") |"))
        .count();
    assert_eq!(rows, e.knn_sweep.len() / 2, "{md}");
    // A run that shared the machine says so, naming the other ranks when it had some.
    let report = |s: &contrast_train::Summary| {
        let path = contrast_train::report::write_report(out.path(), Some(s), Some(&e), &[]);
        std::fs::read_to_string(path.unwrap()).unwrap()
    };
    let mut shared = s.clone();
    (shared.others_cpu_share, shared.ranks) = (Some(0.3), 2);
    let md = report(&shared);
    assert!(
        md.contains("other processes (this machine's other ranks included) took 30% of"),
        "{md}"
    );
    shared.others_cpu_share = Some(0.01);
    assert!(!report(&shared).contains("disturbed"));

    // .npy files: a header NumPy reads, then N x D little-endian f32.
    let file = out.path().join("emb/val");
    let valid = opened.split(SplitName::Validation).unwrap();
    let f = opened
        .eval
        .features(opened.model.backbone.as_ref(), valid)
        .unwrap();
    let written = write_embedding_file(&file, EmbedFormat::Npy, &f, valid).unwrap();
    assert_eq!(written.len(), 4, "{written:?}");
    let bytes = std::fs::read(out.path().join("emb/val.embeddings.npy")).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    let n = valid.len();
    assert!(header.contains(&format!("'shape': ({n}, 16)")), "{header}");
    assert_eq!(bytes.len() - 10 - hlen, n * 16 * 4);
    let first = f32::from_le_bytes(bytes[10 + hlen..14 + hlen].try_into().unwrap());
    let want: Vec<Vec<f32>> = f.to_vec2().unwrap();
    assert_eq!(first, want[0][0]);
    assert!(opened.split(SplitName::Validation).is_ok());
}
