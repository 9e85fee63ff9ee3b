//! Reading whole files, transparently un-gzipping them.

use crate::error::{DataError, Result};
use std::io::Read;
use std::path::Path;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads `path` fully. A file that starts with the gzip magic bytes is decompressed;
/// a truncated or corrupt gzip stream is reported as a format error naming the file.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.len() >= 2 && raw[..2] == GZIP_MAGIC {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                DataError::format(path, format!("corrupt or truncated gzip stream: {e}"))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The first existing file among `dir/name` and `dir/name.gz`.
pub fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}
