//! Records the git commit the binary was built from (`CONTRAST_COMMIT`), read from
//! the repository's `.git` files without running git, for the run summaries. A build
//! outside a git checkout records nothing.

use std::path::{Path, PathBuf};

/// The `.git` directory above the package, following a worktree's `gitdir:` file.
fn git_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.join(".git");
    if root.is_dir() {
        return Some(root);
    }
    let text = std::fs::read_to_string(&root).ok()?;
    let dir = text.strip_prefix("gitdir:")?.trim();
    Some(root.parent()?.join(dir))
}

fn main() {
    let Some(git) = git_dir() else {
        println!("cargo:rerun-if-changed=build.rs");
        return;
    };
    let head_file = git.join("HEAD");
    println!("cargo:rerun-if-changed={}", head_file.display());
    let Ok(head) = std::fs::read_to_string(&head_file) else {
        return;
    };
    let commit = match head.trim().strip_prefix("ref:") {
        None => Some(head.trim().to_string()),
        Some(reference) => {
            let reference = reference.trim();
            // A worktree keeps its refs in the common directory.
            let common = std::fs::read_to_string(git.join("commondir"))
                .map(|c| git.join(c.trim()))
                .unwrap_or_else(|_| git.clone());
            let loose = common.join(reference);
            println!("cargo:rerun-if-changed={}", loose.display());
            println!(
                "cargo:rerun-if-changed={}",
                common.join("packed-refs").display()
            );
            std::fs::read_to_string(&loose)
                .ok()
                .map(|s| s.trim().to_string())
                .or_else(|| {
                    std::fs::read_to_string(common.join("packed-refs"))
                        .ok()?
                        .lines()
                        .find(|l| l.ends_with(reference))
                        .and_then(|l| l.split_whitespace().next())
                        .map(str::to_string)
                })
        }
    };
    if let Some(c) = commit.filter(|c| c.len() >= 7 && c.chars().all(|x| x.is_ascii_hexdigit())) {
        println!("cargo:rustc-env=CONTRAST_COMMIT={c}");
    }
}
