//! Resource errors end a run with a message that names what went wrong, and leave the
//! last checkpoint intact: a dataset directory that does not exist, an output path
//! that cannot be a directory, and a full disk (a file-size limit, `ulimit -f`, which
//! the trainer meets as an error rather than a SIGXFSZ kill). Needs Fashion-MNIST.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const SMALL: [&str; 6] = [
    "--set",
    "data.train_subset=1000",
    "--set",
    "data.test_subset=500",
    "--set",
    "eval.baselines=false",
];

fn train(extra: &[&str], out: &Path, limit_blocks: Option<u64>) -> Output {
    let exe = env!("CARGO_BIN_EXE_xtask");
    let mut args: Vec<String> = ["train"]
        .iter()
        .chain(&SMALL)
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    args.extend(["--out".to_string(), out.display().to_string()]);
    let mut cmd = match limit_blocks {
        // The limit applies to the training process alone.
        Some(blocks) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -f {blocks}; exec \"$0\" \"$@\""))
                .arg(exe)
                .args(&args);
            c
        }
        None => {
            let mut c = Command::new(exe);
            c.args(&args);
            c
        }
    };
    cmd.current_dir(root())
        .output()
        .expect("running xtask train")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_missing_data_directory_is_named() {
    let out = tempfile::tempdir().unwrap();
    let o = train(
        &["--data-dir", "/nonexistent/datasets"],
        &out.path().join("run"),
        None,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("--data-dir /nonexistent/datasets") && e.contains("fashion-mnist"),
        "{e}"
    );
}

#[test]
fn an_output_path_that_cannot_be_a_directory_is_named() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let o = train(&["--set", "train.epochs=1"], &file.join("run"), None);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("a-file/run/checkpoints") && e.contains("Not a directory"),
        "{e}"
    );
}

#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let o = train(&["--set", "train.epochs=1"], &run, None);
    assert!(o.status.success(), "{}", stderr(&o));
    // Resume for a second epoch with files limited to 500 KB: the model file of the
    // epoch-2 checkpoint (2.3 MB) cannot be written.
    let o = train(&["--set", "train.epochs=2", "--resume"], &run, Some(1000));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("epoch-0002") && e.contains("File too large"),
        "{e}"
    );
    let ckpt = run.join("checkpoints");
    assert_eq!(
        std::fs::read_to_string(ckpt.join("latest")).unwrap(),
        "epoch-0001"
    );
    // The kept checkpoint still resumes: without the limit the run finishes.
    let o = train(&["--set", "train.epochs=2", "--resume"], &run, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(ckpt.join("latest")).unwrap(),
        "epoch-0002"
    );
}
