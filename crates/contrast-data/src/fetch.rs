//! Provisioning datasets: Debian's package where there is one, otherwise a download
//! from the dataset's canonical location, verified by checksum.

use crate::catalog::DatasetId;
use crate::error::{DataError, Result};
use crate::read::read_maybe_gz;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One downloadable file and the SHA-256 of its *decompressed* content. Hashing the
/// payload rather than the archive accepts any faithful recompression (Debian's
/// package recompresses the upstream `.gz` files).
struct RemoteFile {
    name: &'static str,
    url: &'static str,
    sha256: &'static str,
}

const FASHION_MNIST_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com";

fn remote_files(id: DatasetId) -> Option<Vec<RemoteFile>> {
    match id {
        DatasetId::FashionMnist => Some(vec![
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                url: FASHION_MNIST_URL,
                sha256: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                url: FASHION_MNIST_URL,
                sha256: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                url: FASHION_MNIST_URL,
                sha256: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                url: FASHION_MNIST_URL,
                sha256: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
        ]),
        _ => None,
    }
}

/// How a dataset was provisioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// It was already present in this directory.
    Present(PathBuf),
    /// Debian's package was installed; the files are in this directory.
    Apt(PathBuf),
    /// The files were downloaded and verified into this directory.
    Downloaded(PathBuf),
}

impl Provisioned {
    /// The directory holding the dataset.
    pub fn dir(&self) -> &Path {
        match self {
            Provisioned::Present(p) | Provisioned::Apt(p) | Provisioned::Downloaded(p) => p,
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn try_apt(package: &str) -> bool {
    if !is_root() || Command::new("apt-get").arg("--version").output().is_err() {
        return false;
    }
    Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn download(files: &[RemoteFile], dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|source| DataError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    for f in files {
        let target = dest.join(f.name);
        let partial = dest.join(format!("{}.part", f.name));
        let url = format!("{}/{}", f.url, f.name);
        let status = Command::new("curl")
            .args(["-fL", "--retry", "3", "-o"])
            .arg(&partial)
            .arg(&url)
            .status()
            .map_err(|source| DataError::Io {
                path: PathBuf::from("curl"),
                source,
            })?;
        if !status.success() {
            return Err(DataError::format(
                &partial,
                format!("download of {url} failed ({status})"),
            ));
        }
        let got = sha256_hex(&read_maybe_gz(&partial)?);
        if got != f.sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(DataError::format(
                &target,
                format!(
                    "checksum mismatch: content SHA-256 {got}, expected {}",
                    f.sha256
                ),
            ));
        }
        std::fs::rename(&partial, &target).map_err(|source| DataError::Io {
            path: target.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Makes `id` available: returns where it already is, or installs Debian's package
/// (when root and apt exist), or downloads into `download_root/<name>`.
pub fn fetch(id: DatasetId, explicit: Option<&Path>, download_root: &Path) -> Result<Provisioned> {
    if let Ok(dir) = id.resolve(explicit) {
        return Ok(Provisioned::Present(dir));
    }
    if let Some(pkg) = id.debian_package()
        && try_apt(pkg)
        && let Ok(dir) = id.resolve(None)
    {
        return Ok(Provisioned::Apt(dir));
    }
    let files = remote_files(id).ok_or_else(|| {
        DataError::config(
            "dataset",
            format!(
                "`{id}` has no verified download source; place its files in {}",
                download_root.join(id.name()).display()
            ),
        )
    })?;
    let dest = download_root.join(id.name());
    download(&files, &dest)?;
    Ok(Provisioned::Downloaded(dest))
}
