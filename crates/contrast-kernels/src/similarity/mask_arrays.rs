//! A [`Candidates`] spec flattened into the plain arrays the GPU kernels read.
//!
//! The CUDA (`cuda/info_nce.cu`) and Metal (`metal/mask_tile.metal`) kernels evaluate
//! the same rules as [`Candidates::removed`] from these arrays. Rules a spec does not
//! use get one-element placeholders, so that every kernel argument is a valid buffer.

use crate::similarity::info_nce::{Candidates, Positive};

// Bits of `rules`; the kernel sources define the same values.
const RULE_EXCLUDE_SELF: u32 = 1;
const RULE_KEYS: u32 = 2;
const RULE_WINDOW: u32 = 4;
const RULE_EXCLUDED: u32 = 8;
const RULE_KEPT: u32 = 16;
const RULE_POSITIVE_COLUMN: u32 = 32;

/// Sorted per-anchor column lists as CSR: offsets `[B + 1]` and the columns.
pub(crate) struct ColumnLists {
    pub offsets: Vec<u32>,
    pub cols: Vec<u32>,
}

impl ColumnLists {
    fn new(lists: &Option<Vec<Vec<u32>>>) -> Self {
        let Some(lists) = lists else {
            return Self {
                offsets: vec![0],
                cols: vec![0],
            };
        };
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        offsets.push(0u32);
        let mut cols = Vec::with_capacity(lists.iter().map(Vec::len).sum::<usize>().max(1));
        for l in lists {
            cols.extend_from_slice(l);
            offsets.push(cols.len() as u32);
        }
        if cols.is_empty() {
            cols.push(0);
        }
        Self { offsets, cols }
    }
}

/// The mask inputs of one call, in kernel argument order.
pub(crate) struct MaskArrays {
    /// Which rules apply (bit set, see the kernel sources).
    pub rules: u32,
    /// Positive column per anchor `[B]` (placeholder `[-1]` for the extra logit).
    pub positive: Vec<i32>,
    /// Label keys `[B]` and `[N]`.
    pub row_keys: Vec<i64>,
    pub col_keys: Vec<i64>,
    /// Per anchor `(lo, hi)` dot-product band, flattened `[B * 2]`.
    pub window: Vec<f32>,
    pub excluded: ColumnLists,
    pub kept: ColumnLists,
}

impl MaskArrays {
    pub fn new(spec: &Candidates) -> Self {
        let rules = [
            (spec.exclude_self, RULE_EXCLUDE_SELF),
            (spec.keys.is_some(), RULE_KEYS),
            (spec.window.is_some(), RULE_WINDOW),
            (spec.excluded.is_some(), RULE_EXCLUDED),
            (spec.always_kept.is_some(), RULE_KEPT),
            (
                matches!(spec.positive, Positive::Column(_)),
                RULE_POSITIVE_COLUMN,
            ),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |r, (_, bit)| r | bit);
        let positive = match &spec.positive {
            Positive::Column(p) => p.iter().map(|&j| j as i32).collect(),
            Positive::Extra => vec![-1],
        };
        let (row_keys, col_keys) = match &spec.keys {
            Some((rk, ck)) => (rk.clone(), ck.clone()),
            None => (vec![-1], vec![-1]),
        };
        let window = match &spec.window {
            Some(w) => w.iter().flat_map(|&(lo, hi)| [lo, hi]).collect(),
            None => vec![0.0],
        };
        Self {
            rules,
            positive,
            row_keys,
            col_keys,
            window,
            excluded: ColumnLists::new(&spec.excluded),
            kept: ColumnLists::new(&spec.always_kept),
        }
    }
}
