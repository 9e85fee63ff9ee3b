//! Mining errors.

/// Errors from mining; messages name the argument and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum MiningError {
    #[error("invalid argument `{arg}`: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    /// A policy's parameters are invalid; `source` names the parameter.
    #[error("policy `{policy}`: {source}")]
    Policy {
        policy: &'static str,
        source: Box<MiningError>,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Memory(#[from] contrast_memory::MemoryError),
    #[error(transparent)]
    Loss(#[from] contrast_losses::LossError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MiningError>;

pub(crate) fn invalid(arg: &'static str, message: impl Into<String>) -> MiningError {
    MiningError::InvalidArgument {
        arg,
        message: message.into(),
    }
}
