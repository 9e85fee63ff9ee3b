//! Deterministic parallel reductions.

use crate::gemm::Element;
use rayon::prelude::*;

/// Sums per-item contributions into a `width`-long accumulator in parallel, with a
/// result independent of scheduling: items `0..count` are cut into one contiguous
/// range per rayon thread, `add(range, acc)` accumulates a range in order, and the
/// per-range accumulators are added in range order.
pub fn ordered_sum<T, F>(width: usize, count: usize, add: F) -> Vec<T>
where
    T: Element,
    F: Fn(std::ops::Range<usize>, &mut [T]) + Sync,
{
    let groups = rayon::current_num_threads().clamp(1, count.max(1));
    let per = count.div_ceil(groups);
    let partials: Vec<Vec<T>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut acc = vec![T::ZERO; width];
            add(g * per..((g + 1) * per).min(count), &mut acc);
            acc
        })
        .collect();
    let mut total = vec![T::ZERO; width];
    for p in partials {
        total.iter_mut().zip(&p).for_each(|(t, v)| *t += *v);
    }
    total
}
