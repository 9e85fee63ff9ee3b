//! The IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).
//!
//! An IDX file is a 4-byte magic (`0, 0, type, ndim`), `ndim` big-endian `u32`
//! dimensions, then the data. Only the unsigned-byte type (`0x08`) is used by
//! these datasets and only it is accepted.

use crate::dataset::{Dataset, ImageShape, Split};
use crate::error::{DataError, Result};
use crate::read::{find_file, read_maybe_gz};
use std::path::Path;

const TYPE_U8: u8 = 0x08;

/// A parsed IDX array of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes; `path` is only used to name the file in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated IDX header: {} bytes, expected at least 4",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(
            path,
            format!(
                "bad IDX magic {:02x}{:02x}{:02x}{:02x}: expected 0000 followed by type and rank",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != TYPE_U8 {
        return Err(DataError::format(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported: expected 0x08 (unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated IDX header: rank {ndim} needs {header} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header;
    if found != expected {
        let what = if found < expected {
            "truncated"
        } else {
            "oversized"
        };
        return Err(DataError::format(
            path,
            format!("{what} IDX data: dimensions {dims:?} need {expected} bytes, found {found}"),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file from disk (gzip detected by its magic bytes).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    parse_idx(&read_maybe_gz(path)?, path)
}

/// Reads an images file (`[N, H, W]`) and a labels file (`[N]`) into a dataset.
pub fn read_idx_pair(
    name: &str,
    images_path: &Path,
    labels_path: &Path,
    num_classes: usize,
) -> Result<Dataset> {
    let images = read_idx(images_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::format(
            images_path,
            format!(
                "expected a rank-3 image array [N, H, W], found dimensions {:?}",
                images.dims
            ),
        ));
    }
    let labels = read_idx(labels_path)?;
    if labels.dims.len() != 1 {
        return Err(DataError::format(
            labels_path,
            format!(
                "expected a rank-1 label array [N], found dimensions {:?}",
                labels.dims
            ),
        ));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::format(
            labels_path,
            format!(
                "{} labels for {} images in {}",
                labels.dims[0],
                images.dims[0],
                images_path.display()
            ),
        ));
    }
    if let Some((i, &l)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(DataError::format(
            labels_path,
            format!("label {l} at index {i} is out of range: expected 0..{num_classes}"),
        ));
    }
    let shape = ImageShape {
        height: images.dims[1],
        width: images.dims[2],
        channels: 1,
    };
    Dataset::new(
        name,
        images.data,
        labels.data.iter().map(|&l| l as u32).collect(),
        shape,
        num_classes,
    )
}

/// Loads the four standard MNIST-layout files (`train-images-idx3-ubyte[.gz]`, ...)
/// from `dir`.
pub fn load_mnist_dir(name: &str, dir: &Path) -> Result<Split> {
    let file = |stem: &str| {
        find_file(dir, stem).ok_or_else(|| {
            DataError::format(
                dir.join(stem),
                "missing file (looked for it raw and with .gz)",
            )
        })
    };
    let train = read_idx_pair(
        name,
        &file("train-images-idx3-ubyte")?,
        &file("train-labels-idx1-ubyte")?,
        10,
    )?;
    let test = read_idx_pair(
        name,
        &file("t10k-images-idx3-ubyte")?,
        &file("t10k-labels-idx1-ubyte")?,
        10,
    )?;
    Ok(Split { train, test })
}

/// Serialises an IDX array (used by tests and tools that write fixtures).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
