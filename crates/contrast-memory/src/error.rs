//! Memory errors.

/// Errors from queues and banks; messages name the argument and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("invalid argument `{arg}`: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MemoryError>;

pub(crate) fn invalid(arg: &'static str, message: impl Into<String>) -> MemoryError {
    MemoryError::InvalidArgument {
        arg,
        message: message.into(),
    }
}
