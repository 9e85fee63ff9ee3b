//! Evaluation errors.

/// Errors from evaluation routines; messages name the argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("invalid argument `{arg}`: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("plot {path}: {message}")]
    Plot { path: String, message: String },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

pub(crate) fn invalid(arg: &'static str, message: impl Into<String>) -> EvalError {
    EvalError::InvalidArgument {
        arg,
        message: message.into(),
    }
}

/// Checks that `features` is `[N, D]` with one label per row and labels below
/// `num_classes`.
pub(crate) fn check_labelled(
    arg: &'static str,
    features: &candle_core::Tensor,
    labels: &[u32],
    num_classes: usize,
) -> Result<usize> {
    let (n, _) = features.dims2().map_err(|_| {
        invalid(
            arg,
            format!("expected [N, D] features, got shape {:?}", features.dims()),
        )
    })?;
    if n != labels.len() {
        return Err(invalid(
            arg,
            format!("{n} feature rows but {} labels", labels.len()),
        ));
    }
    if let Some(l) = labels.iter().find(|&&l| l as usize >= num_classes) {
        return Err(invalid(
            arg,
            format!("label {l} is not below num_classes = {num_classes}"),
        ));
    }
    Ok(n)
}
