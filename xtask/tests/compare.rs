//! `cargo xtask compare --quick` end to end on the two-entry smoke suite: every
//! (entry, seed) trains and is evaluated, the tables are written, and a second
//! invocation reuses the runs. Needs Fashion-MNIST.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `xtask compare ARGS` in `cwd`.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(cwd)
        .arg("compare")
        .args(args)
        .output()
        .unwrap()
}

/// The stdout of a run that must have succeeded.
fn succeeded(o: Output) -> String {
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// The quick smoke suite into `out`, from the repository root.
fn run(out: &Path, extra: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = out.to_str().unwrap();
    let args = [
        "--suite",
        "configs/suites/smoke.toml",
        "--quick",
        "--out",
        out,
    ];
    run_in(&root, &[&args[..], extra].concat())
}

fn compare(out: &Path, extra: &[&str]) -> String {
    succeeded(run(out, extra))
}

#[test]
fn a_quick_suite_runs_compares_and_is_reused() {
    let out = tempfile::tempdir().unwrap();
    let first = compare(out.path(), &[]);
    assert!(first.contains("no claims"), "{first}");
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        md.contains("| simclr | 2 |") && md.contains("| dcl | 2 |"),
        "{md}"
    );
    assert!(
        ["tie", "better", "worse"].iter().any(|v| md.contains(v)),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        let knn = r["test_knn"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&knn), "{r}");
        assert!(r["validation_knn"].as_f64().is_some(), "{r}");
        // Linux's /proc says how much of the CPU other processes took meanwhile.
        if cfg!(target_os = "linux") {
            let share = r["others_cpu_share"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&share), "{r}");
        }
    }
    let second = compare(out.path(), &[]);
    assert_eq!(second.matches("reused").count(), 4, "{second}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("results.md")).unwrap(),
        md,
        "the same runs give the same tables"
    );
    // --only keeps the baseline: both entries' runs are reused.
    let only = compare(out.path(), &["--only", "dcl"]);
    assert_eq!(only.matches("reused").count(), 4, "{only}");
    // Another baseline: the pairs turn round (dcl's differences from simclr, negated).
    let flipped = compare(out.path(), &["--baseline", "dcl"]);
    assert!(
        flipped.contains("Paired differences from `dcl`") && flipped.contains("| simclr |"),
        "{flipped}"
    );
    // Two runs stopped before they finished: seed 0 of simclr left its checkpoint
    // and its configuration, and continues from them; seed 1's config.toml says
    // another seed, so it is trained again from the start. Both end as before.
    let simclr = out.path().join("simclr");
    for seed in [0, 1] {
        for f in ["summary.json", "eval.json"] {
            std::fs::remove_file(simclr.join(format!("seed-{seed}")).join(f)).unwrap();
        }
    }
    let config = simclr.join("seed-1/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\nseed = 1\n"), "{text}");
    std::fs::write(&config, text.replace("\nseed = 1\n", "\nseed = 5\n")).unwrap();
    // --no-train tables the two finished runs and leaves the unfinished ones alone.
    let tabled = compare(out.path(), &["--no-train"]);
    assert!(
        tabled.contains("simclr seed 0: not run (--no-train)")
            && tabled.contains("simclr seed 1: not run (--no-train)")
            && !tabled.contains("resuming"),
        "{tabled}"
    );
    let partial: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(partial["runs"].as_array().unwrap().len(), 2, "{partial}");
    assert!(!simclr.join("seed-0/summary.json").exists());
    let resumed = compare(out.path(), &[]);
    assert!(
        resumed.contains("simclr seed 0: resuming") && resumed.matches("resuming").count() == 1,
        "{resumed}"
    );
    let log = |seed: u64| std::fs::read_to_string(simclr.join(format!("seed-{seed}/run.log")));
    assert!(log(0).unwrap().contains("resuming from"));
    assert!(!log(1).unwrap().contains("resuming from"));
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    for (before, after) in runs.iter().zip(again["runs"].as_array().unwrap()) {
        for key in [
            "validation_knn",
            "test_knn",
            "linear",
            "map_at_r",
            "uniformity",
        ] {
            assert_eq!(before[key], after[key], "{key}: {before} then {after}");
        }
    }
    let o = run(out.path(), &["--baseline", "dlc"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("`dlc` (--baseline)"),
        "{err}"
    );
    let o = run(out.path(), &["--only", "dlc"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--only dlc") && err.contains("simclr, dcl"),
        "{err}"
    );
}

/// The one run of a `--seeds 1` comparison in `out`, from its results.json.
fn only_run(out: &Path) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{json}");
    runs[0].clone()
}

#[test]
fn an_entry_trained_in_another_suite_is_evaluated_from_its_checkpoint() {
    // Suite `a` trains SimCLR; `b` and `c` merge the classes into two superclasses,
    // `b` evaluating a's run (trained_in) and `c` training its own. SimCLR reads no
    // labels, so b's figures must be c's exactly: the reuse is only sound because
    // the training is the same.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = root.join("configs/simclr-fmnist.toml");
    let tmp = tempfile::tempdir().unwrap();
    let merged = "set = ['data.superclasses=[{ name = \"a\", classes = [0, 2, 4, 6] }, { name = \"b\", classes = [1, 3, 5, 7, 8, 9] }]']";
    let suite = |name: &str, head: &str, extra: &str| {
        std::fs::write(
            tmp.path().join(format!("{name}.toml")),
            format!(
                "name = \"{name}\"\nbaseline = \"simclr\"\n{head}\n[[run]]\nname = \"simclr\"\nconfig = {:?}\n{extra}\n",
                config.display().to_string()
            ),
        )
        .unwrap();
    };
    suite("a", "", "");
    suite("b", merged, "trained_in = \"a.toml\"");
    suite("c", merged, "");
    let quick = |name: &str| {
        succeeded(run_in(
            tmp.path(),
            &[
                "--suite",
                &format!("{name}.toml"),
                "--quick",
                "--seeds",
                "1",
            ],
        ))
    };
    let out = |name: &str| tmp.path().join(format!("runs/compare-{name}-quick"));
    quick("a");
    let b = quick("b");
    assert!(b.contains("evaluating") && b.contains("trained in"), "{b}");
    let dir = out("b").join("simclr/seed-0");
    assert!(
        dir.join("trained-in.json").is_file() && !dir.join("checkpoints").exists(),
        "b trained instead of evaluating a's checkpoint"
    );
    quick("c");
    let (a, b, c) = (
        only_run(&out("a")),
        only_run(&out("b")),
        only_run(&out("c")),
    );
    assert!(b["trained_in"].as_str().unwrap().ends_with("seed-0"), "{b}");
    for metric in [
        "validation_knn",
        "test_knn",
        "linear",
        "map_at_r",
        "uniformity",
    ] {
        assert_eq!(b[metric], c[metric], "{metric}: b {b}\nc {c}");
    }
    // Two superclasses are easier to tell apart than ten classes.
    assert!(
        b["test_knn"].as_f64().unwrap() > a["test_knn"].as_f64().unwrap(),
        "a {a}\nb {b}"
    );
    assert_eq!(
        b["images_per_sec"], a["images_per_sec"],
        "a's training stands for b's"
    );
    // A second invocation reuses b's run.
    assert!(quick("b").contains("reused"));
}
