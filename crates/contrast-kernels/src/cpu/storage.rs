//! Access to the CPU storages that custom ops receive.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, bail};

/// The part of `data` that a contiguous layout `l` covers; `what` names the operand
/// (op and argument, e.g. `"conv_block: x"`) in the error for a strided one.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what} must be contiguous"),
    }
}

/// The contiguous slices of a binary op's two CPU operands, both f32 or both f64,
/// handed to `on_f32` or `on_f64`. `op` and `names` (the operands, e.g. `["x", "w"]`)
/// name them in the errors for a strided operand or mixed or other types.
pub(crate) fn with_pair<R>(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    names: [&str; 2],
    on_f32: impl FnOnce(&[f32], &[f32]) -> R,
    on_f64: impl FnOnce(&[f64], &[f64]) -> R,
) -> Result<R> {
    let [n1, n2] = names.map(|n| format!("{op}: {n}"));
    match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            Ok(on_f32(contiguous(a, l1, &n1)?, contiguous(b, l2, &n2)?))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            Ok(on_f64(contiguous(a, l1, &n1)?, contiguous(b, l2, &n2)?))
        }
        _ => bail!(
            "{op}: expected two f32 or two f64 tensors, got {:?} and {:?}",
            s1.dtype(),
            s2.dtype()
        ),
    }
}

/// The contiguous slices of a ternary op's three CPU operands, all f32 or all f64,
/// handed to `on_f32` or `on_f64`. `op` and `names` (the operands, e.g.
/// `["x", "gamma", "beta"]`) name them in the errors for a strided operand or mixed
/// or other types; operands are checked in order.
pub(crate) fn with_triple<R>(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    names: [&str; 3],
    on_f32: impl FnOnce(&[f32], &[f32], &[f32]) -> R,
    on_f64: impl FnOnce(&[f64], &[f64], &[f64]) -> R,
) -> Result<R> {
    let [n1, n2, n3] = names.map(|n| format!("{op}: {n}"));
    match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => Ok(on_f32(
            contiguous(a, l1, &n1)?,
            contiguous(b, l2, &n2)?,
            contiguous(c, l3, &n3)?,
        )),
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => Ok(on_f64(
            contiguous(a, l1, &n1)?,
            contiguous(b, l2, &n2)?,
            contiguous(c, l3, &n3)?,
        )),
        _ => bail!(
            "{op}: expected three f32 or three f64 tensors, got {} {:?}, {} {:?} and {} {:?}",
            names[0],
            s1.dtype(),
            names[1],
            s2.dtype(),
            names[2],
            s3.dtype()
        ),
    }
}
