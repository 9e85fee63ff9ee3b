//! Access to the CPU storages that custom ops receive.

use candle_core::{Layout, Result, bail};

/// The part of `data` that a contiguous layout `l` covers; `what` names the operand
/// (op and argument, e.g. `"conv_block: x"`) in the error for a strided one.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what} must be contiguous"),
    }
}
