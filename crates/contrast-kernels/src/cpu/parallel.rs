//! Deterministic parallel reductions.

use crate::cpu::gemm::Element;
use rayon::prelude::*;

/// Sums per-item contributions into a `width`-long accumulator in parallel, with a
/// result independent of scheduling: items `0..count` are cut into at most one
/// contiguous, non-empty range per rayon thread (`ceil(count / threads)` items each),
/// `add(range, acc)` accumulates a range in order, and the per-range accumulators are
/// added in range order.
pub(crate) fn ordered_sum<T, F>(width: usize, count: usize, add: F) -> Vec<T>
where
    T: Element,
    F: Fn(std::ops::Range<usize>, &mut [T]) + Sync,
{
    let per = count.div_ceil(rayon::current_num_threads().max(1)).max(1);
    // With more threads than items per range, fewer ranges than threads: none empty.
    let groups = count.div_ceil(per);
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

#[cfg(test)]
mod tests {
    use super::ordered_sum;

    /// Every range is non-empty and inside `0..count`, and together they cover it once,
    /// for more threads than items too (16 threads over 98 items made a last range
    /// `105..98` before).
    #[test]
    fn ranges_cover_the_items_once_for_any_thread_count() {
        for threads in [1, 2, 3, 8, 16] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for count in [0, 1, 2, 7, 25, 98] {
                let seen: Vec<f64> = pool.install(|| {
                    ordered_sum(count.max(1), count, |range, acc| {
                        assert!(range.start < range.end && range.end <= count, "{range:?}");
                        range.for_each(|i| acc[i] += 1.0);
                    })
                });
                let want = if count == 0 {
                    vec![0.0]
                } else {
                    vec![1.0; count]
                };
                assert_eq!(seen, want, "{threads} threads, {count} items");
            }
        }
    }
}
