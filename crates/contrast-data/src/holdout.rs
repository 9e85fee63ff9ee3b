//! Held-out splits: a validation or test part given as a count, a fraction of the
//! source, or a folder of its own, and the seeded carving of a count out of a set.

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::seeds::{Stream, stream_rng};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The size or the source of a held-out split (`data.validation`, `data.test`).
///
/// In TOML an integer is a count (`5000`), a number with a point a fraction of the
/// source (`0.1`), and a string a folder or manifest (`"data/val"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Holdout {
    Count(usize),
    Fraction(f64),
    Folder(PathBuf),
}

/// Which split is carved: the coordinate of its [`Stream::Holdout`] draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldoutPart {
    Test = 0,
    Validation = 1,
}

impl HoldoutPart {
    /// The config key that sizes it.
    pub fn key(self) -> &'static str {
        match self {
            HoldoutPart::Test => "data.test",
            HoldoutPart::Validation => "data.validation",
        }
    }
}

impl Holdout {
    /// The number of images to hold out of `total`, checked: at least one, and at
    /// least one left. `Folder` has no count (it is read, not carved).
    pub fn count(&self, total: usize, part: HoldoutPart) -> Result<Option<usize>> {
        let n = match self {
            Holdout::Folder(_) => return Ok(None),
            Holdout::Count(n) => *n,
            Holdout::Fraction(f) => (f * total as f64).round() as usize,
        };
        if n == 0 || n >= total {
            return Err(DataError::config(
                part.key(),
                format!(
                    "{self} would hold out {n} of {total} images: expected at least 1 and fewer than {total}"
                ),
            ));
        }
        Ok(Some(n))
    }
}

impl std::fmt::Display for Holdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holdout::Count(n) => write!(f, "{n}"),
            Holdout::Fraction(x) => write!(f, "{x}"),
            Holdout::Folder(p) => write!(f, "\"{}\"", p.display()),
        }
    }
}

impl Serialize for Holdout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Holdout::Count(n) => s.serialize_u64(*n as u64),
            Holdout::Fraction(x) => s.serialize_f64(*x),
            Holdout::Folder(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for Holdout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Holdout;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a count of images (an integer), a fraction in (0, 1), or a folder path",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Holdout, E> {
                Ok(Holdout::Count(v as usize))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Holdout, E> {
                usize::try_from(v)
                    .map(Holdout::Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Holdout, E> {
                if v > 0.0 && v < 1.0 {
                    Ok(Holdout::Fraction(v))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Holdout, E> {
                if v.is_empty() {
                    return Err(E::invalid_value(serde::de::Unexpected::Str(v), &self));
                }
                Ok(Holdout::Folder(PathBuf::from(v)))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Splits `data` into (the rest, `n` held-out images), drawn by `seed` and `part`.
/// Both keep the source order, so a dataset index still names the same image in
/// every epoch.
pub fn carve(data: &Dataset, n: usize, seed: u64, part: HoldoutPart) -> (Dataset, Dataset) {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut stream_rng(seed, Stream::Holdout, &[part as u64]));
    let mut held = order[..n.min(order.len())].to_vec();
    let mut rest = order[n.min(order.len())..].to_vec();
    held.sort_unstable();
    rest.sort_unstable();
    (data.subset(&rest), data.subset(&held))
}
