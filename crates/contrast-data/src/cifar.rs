//! The CIFAR-10 and CIFAR-100 binary formats.
//!
//! CIFAR-10 records are 1 label byte then 3,072 pixel bytes (1,024 red, 1,024 green,
//! 1,024 blue, each 32x32 row-major). CIFAR-100 records carry a coarse and a fine
//! label byte before the pixels; the fine label (100 classes) is used.

use crate::dataset::{Dataset, ImageShape, Split};
use crate::error::{DataError, Result};
use crate::read::{find_file, read_maybe_gz};
use std::path::{Path, PathBuf};

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * 3;

/// Which CIFAR variant a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    /// Number of classes of the label that is read.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

/// Parses CIFAR binary records and appends them, channels last, to `images`/`labels`.
pub fn parse_cifar(
    bytes: &[u8],
    kind: CifarKind,
    path: &Path,
    images: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let record = kind.label_bytes() + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(DataError::format(
            path,
            format!(
                "size {} bytes is not a positive multiple of the {record}-byte {kind:?} record (truncated or wrong variant)",
                bytes.len()
            ),
        ));
    }
    for (r, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[kind.label_bytes() - 1] as u32;
        if label as usize >= kind.num_classes() {
            return Err(DataError::format(
                path,
                format!(
                    "label {label} in record {r} is out of range: expected 0..{}",
                    kind.num_classes()
                ),
            ));
        }
        labels.push(label);
        let planes = &rec[kind.label_bytes()..];
        for p in 0..SIDE * SIDE {
            for ch in 0..3 {
                images.push(planes[ch * SIDE * SIDE + p]);
            }
        }
    }
    Ok(())
}

fn load_files(name: &str, kind: CifarKind, files: &[PathBuf]) -> Result<Dataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        parse_cifar(&read_maybe_gz(f)?, kind, f, &mut images, &mut labels)?;
    }
    let shape = ImageShape {
        height: SIDE,
        width: SIDE,
        channels: 3,
    };
    Dataset::new(name, images, labels, shape, kind.num_classes())
}

/// Loads CIFAR from `dir`, or from its usual sub-directory
/// (`cifar-10-batches-bin`, `cifar-100-binary`).
pub fn load_cifar_dir(name: &str, kind: CifarKind, dir: &Path) -> Result<Split> {
    let (sub, train_names, test_name): (&str, Vec<String>, &str) = match kind {
        CifarKind::Cifar10 => (
            "cifar-10-batches-bin",
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            "test_batch.bin",
        ),
        CifarKind::Cifar100 => ("cifar-100-binary", vec!["train.bin".into()], "test.bin"),
    };
    let root = if dir.join(sub).is_dir() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    };
    let find = |n: &str| {
        find_file(&root, n)
            .ok_or_else(|| DataError::format(root.join(n), "missing CIFAR batch file"))
    };
    let train_files = train_names
        .iter()
        .map(|n| find(n))
        .collect::<Result<Vec<_>>>()?;
    let test_files = vec![find(test_name)?];
    Ok(Split {
        train: load_files(name, kind, &train_files)?,
        test: load_files(name, kind, &test_files)?,
    })
}
