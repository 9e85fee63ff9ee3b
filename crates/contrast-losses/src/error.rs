//! Loss errors: every invalid argument is named, with the value and what was expected.

/// Errors from the loss functions.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// An argument is out of range or has the wrong shape.
    #[error("invalid argument `{arg}`: {message}")]
    InvalidArgument { arg: &'static str, message: String },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, LossError>;

pub(crate) fn invalid(arg: &'static str, message: impl Into<String>) -> LossError {
    LossError::InvalidArgument {
        arg,
        message: message.into(),
    }
}

/// Checks `temperature > 0` and finite.
pub(crate) fn check_temperature(arg: &'static str, t: f64) -> Result<()> {
    if !(t > 0.0 && t.is_finite()) {
        return Err(invalid(arg, format!("{t} must be a finite number > 0")));
    }
    Ok(())
}

/// Checks that `x` is a non-empty `[N, D]` matrix and returns `(N, D)`.
pub(crate) fn check_matrix(arg: &'static str, x: &candle_core::Tensor) -> Result<(usize, usize)> {
    match x.dims() {
        &[n, d] if n > 0 && d > 0 => Ok((n, d)),
        dims => Err(invalid(
            arg,
            format!("expected a non-empty [N, D] matrix, got shape {dims:?}"),
        )),
    }
}

/// Checks that two embedding matrices have the same shape.
pub(crate) fn check_same_shape(
    a_name: &'static str,
    a: &candle_core::Tensor,
    b_name: &'static str,
    b: &candle_core::Tensor,
) -> Result<(usize, usize)> {
    let shape = check_matrix(a_name, a)?;
    check_matrix(b_name, b)?;
    if a.dims() != b.dims() {
        return Err(invalid(
            b_name,
            format!(
                "shape {:?} differs from `{a_name}` shape {:?}",
                b.dims(),
                a.dims()
            ),
        ));
    }
    Ok(shape)
}
