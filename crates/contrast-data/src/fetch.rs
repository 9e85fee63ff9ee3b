//! Provisioning datasets: Debian's package where there is one, otherwise a download
//! from the dataset's canonical location (feature `download`: ureq over rustls, no
//! external program), resumed from a partial file, verified by checksum.

use crate::catalog::DatasetId;
use crate::error::{DataError, Result};
#[cfg(feature = "download")]
use crate::read::read_maybe_gz;
#[cfg(feature = "download")]
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One downloadable file and the SHA-256 of its *decompressed* content. Hashing the
/// payload rather than the archive accepts any faithful recompression (Debian's
/// package recompresses the upstream `.gz` files).
#[derive(Debug, Clone)]
pub struct RemoteFile {
    /// File name, also the last URL segment.
    pub name: String,
    /// Base URL; the file is at `{url}/{name}`.
    pub url: String,
    pub sha256: String,
}

const FASHION_MNIST_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com";

/// The verified download of `id`, for the datasets that have one.
pub fn remote_files(id: DatasetId) -> Option<Vec<RemoteFile>> {
    let file = |name: &str, sha256: &str| RemoteFile {
        name: name.into(),
        url: FASHION_MNIST_URL.into(),
        sha256: sha256.into(),
    };
    match id {
        DatasetId::FashionMnist => Some(vec![
            file(
                "train-images-idx3-ubyte.gz",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            file(
                "train-labels-idx1-ubyte.gz",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            file(
                "t10k-images-idx3-ubyte.gz",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            file(
                "t10k-labels-idx1-ubyte.gz",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ]),
        _ => None,
    }
}

/// The datasets `fetch` can provision (a Debian package or a verified download).
pub fn fetchable() -> Vec<DatasetId> {
    DatasetId::ALL
        .into_iter()
        .filter(|id| id.debian_package().is_some() || remote_files(*id).is_some())
        .collect()
}

/// Where the files of a dataset that can't be fetched go, and in which layout.
pub fn placement(id: DatasetId, root: &Path) -> String {
    let dir = root.join(id.name());
    let layout = match id {
        DatasetId::FashionMnist | DatasetId::Mnist => {
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (raw or .gz)"
        }
        DatasetId::Cifar10 => {
            "the binary version (cifar-10-binary.tar.gz, extracted): cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin and test_batch.bin"
        }
        DatasetId::Cifar100 => {
            "the binary version (cifar-100-binary.tar.gz, extracted): cifar-100-binary/train.bin and test.bin"
        }
    };
    format!(
        "`{id}` has no verified download here; place {layout} in {} (or any directory given by --data-dir, data.path or {})",
        dir.display(),
        crate::catalog::DATA_DIR_ENV
    )
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
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

#[cfg(feature = "download")]
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes received so far and the total when the server said it, for a progress
/// display.
pub type Progress<'a> = &'a dyn Fn(&str, u64, Option<u64>);

/// Downloads `files` into `dest`, each to `<name>.part` and renamed once its
/// checksum matches. A `.part` left by an interrupted download is continued with an
/// HTTP range request (or restarted when the server ignores the range); a file whose
/// content does not match is deleted, so the next attempt starts clean.
#[cfg(feature = "download")]
pub fn download(files: &[RemoteFile], dest: &Path, progress: Progress<'_>) -> Result<()> {
    use std::io::{Read, Write};
    std::fs::create_dir_all(dest).map_err(|source| DataError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    for f in files {
        let target = dest.join(&f.name);
        let partial = dest.join(format!("{}.part", f.name));
        let url = format!("{}/{}", f.url, f.name);
        let io = |source| DataError::Io {
            path: partial.clone(),
            source,
        };
        let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
        let mut request = agent.get(&url);
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let mut response = match request.call() {
            // The partial file is already whole: verify it as it is.
            Err(ureq::Error::StatusCode(416)) if have > 0 => None,
            Err(e) => {
                return Err(DataError::format(
                    &partial,
                    format!("download of {url} failed: {e}"),
                ));
            }
            Ok(r) => Some(r),
        };
        if let Some(response) = response.as_mut() {
            let resumed = have > 0 && response.status().as_u16() == 206;
            let start = if resumed { have } else { 0 };
            let total = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(|n| n + start);
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(resumed)
                .truncate(!resumed)
                .open(&partial)
                .map_err(io)?;
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 1 << 16];
            let mut done = start;
            progress(&f.name, done, total);
            loop {
                let n = reader.read(&mut buf).map_err(|e| {
                    DataError::format(
                        &partial,
                        format!(
                            "download of {url} broke off after {done} bytes ({e}); run the command again to continue it"
                        ),
                    )
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(io)?;
                done += n as u64;
                progress(&f.name, done, total);
            }
            out.sync_all().map_err(io)?;
        }
        verify(f, &partial, &target)?;
    }
    Ok(())
}

/// Checks the downloaded `partial` against `f`'s checksum and moves it to `target`;
/// deletes it when it does not match.
#[cfg(feature = "download")]
fn verify(f: &RemoteFile, partial: &Path, target: &Path) -> Result<()> {
    let got = sha256_hex(&read_maybe_gz(partial)?);
    if got != f.sha256 {
        let _ = std::fs::remove_file(partial);
        return Err(DataError::format(
            target,
            format!(
                "checksum mismatch: content SHA-256 {got}, expected {}; the download was deleted",
                f.sha256
            ),
        ));
    }
    std::fs::rename(partial, target).map_err(|source| DataError::Io {
        path: target.to_path_buf(),
        source,
    })
}

#[cfg(not(feature = "download"))]
pub fn download(files: &[RemoteFile], dest: &Path, _progress: Progress<'_>) -> Result<()> {
    Err(DataError::config(
        "dataset",
        format!(
            "this build has no download client (feature `download` of contrast-data); place {} in {}",
            files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            dest.display()
        ),
    ))
}

/// Makes `id` available: returns where it already is, or installs Debian's package
/// (when root and apt exist), or downloads into `download_root/<name>`.
pub fn fetch(
    id: DatasetId,
    explicit: Option<&Path>,
    download_root: &Path,
    progress: Progress<'_>,
) -> Result<Provisioned> {
    if let Ok(dir) = id.resolve(explicit) {
        return Ok(Provisioned::Present(dir));
    }
    if let Some(pkg) = id.debian_package()
        && try_apt(pkg)
        && let Ok(dir) = id.resolve(None)
    {
        return Ok(Provisioned::Apt(dir));
    }
    let files = remote_files(id)
        .ok_or_else(|| DataError::config("dataset", placement(id, download_root)))?;
    let dest = download_root.join(id.name());
    download(&files, &dest, progress)?;
    Ok(Provisioned::Downloaded(dest))
}
