//! `cargo xtask compare --quick` end to end on the two-entry smoke suite: every
//! (entry, seed) trains and is evaluated, the tables are written, and a second
//! invocation reuses the runs. Needs Fashion-MNIST.

use std::path::Path;
use std::process::Command;

fn run(out: &Path, extra: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(&root)
        .args([
            "compare",
            "--suite",
            "configs/suites/smoke.toml",
            "--quick",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn compare(out: &Path, extra: &[&str]) -> String {
    let o = run(out, extra);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    text
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
    let o = run(out.path(), &["--only", "dlc"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--only dlc") && err.contains("simclr, dcl"),
        "{err}"
    );
}
