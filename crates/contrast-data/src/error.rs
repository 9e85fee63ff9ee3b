//! Errors raised while locating, reading and augmenting datasets.

use std::path::PathBuf;

/// Everything that can go wrong in `contrast-data`. Each variant names the file or
/// value at fault and what was expected, so a user can act on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused to open or read a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what its format requires.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    /// No directory holding the dataset was found.
    #[error(
        "dataset `{name}` not found; looked in: {searched}. Run `cargo xtask data fetch {name}` or pass --data-dir"
    )]
    NotFound { name: String, searched: String },
    /// A configuration value is out of its valid range.
    #[error("invalid {field}: {message}")]
    Config { field: String, message: String },
}

impl DataError {
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;
