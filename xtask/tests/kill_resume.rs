//! The short kill-and-resume test of the suite: `cargo xtask reliability` with three
//! SIGKILLs. Each kill stops a real training process at a random moment; the run is
//! resumed each time and must end bit for bit where an uninterrupted run does (the
//! command fails otherwise). The long form (20 kills) is `cargo xtask reliability`.
//! Needs Fashion-MNIST, as the trainer's real-data test (`.ci/run` installs it).

use std::path::Path;
use std::process::Command;

#[test]
fn a_run_killed_three_times_ends_as_the_uninterrupted_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["reliability", "--kills", "3", "--seed", "7"])
        .current_dir(&root)
        .output()
        .expect("running xtask reliability");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("bit for bit"), "{stdout}");
    assert!(stdout.contains("3 SIGKILLs"), "{stdout}");
}
