//! The loader: determinism, coverage and prefetch independence.

use contrast_data::{Dataset, ImageShape, LoaderConfig, Normalization, ViewLoader, ViewRecipe};
use std::sync::Arc;

fn dataset(n: usize) -> Arc<Dataset> {
    let shape = ImageShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let images = (0..n * 64).map(|i| (i * 31 % 251) as u8).collect();
    let labels = (0..n as u32).map(|i| i % 10).collect();
    Arc::new(Dataset::new("toy", images, labels, shape, 10).unwrap())
}

fn loader(prefetch: usize, seed: u64) -> ViewLoader {
    ViewLoader::new(
        dataset(50),
        vec![ViewRecipe::simclr_small_grayscale(); 2],
        Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        },
        LoaderConfig {
            batch_size: 8,
            drop_last: true,
            shuffle: true,
            seed,
            prefetch,
        },
    )
    .unwrap()
}

#[test]
fn same_seed_same_batches_whatever_the_prefetch() {
    let a: Vec<_> = loader(1, 7).stream(2, 0).collect();
    let b: Vec<_> = loader(4, 7).stream(2, 0).collect();
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.views, y.views);
    }
    let c: Vec<_> = loader(1, 8).stream(2, 0).collect();
    assert_ne!(a[0].indices, c[0].indices);
}

#[test]
fn resuming_mid_epoch_gives_the_same_batches() {
    let l = loader(2, 3);
    let all: Vec<_> = l.stream(1, 0).collect();
    let tail: Vec<_> = l.stream(1, 4).collect();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].views, all[4].views);
}

#[test]
fn an_epoch_visits_distinct_images_and_views_differ() {
    let l = loader(2, 1);
    let mut seen: Vec<u32> = l.stream(0, 0).flat_map(|b| b.indices).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 48);
    let b = l.stream(0, 0).next().unwrap();
    assert_eq!(b.views.len(), 2);
    assert_eq!(b.views[0].len(), 8 * 64);
    assert_ne!(b.views[0], b.views[1]);
    assert_eq!(
        b.labels,
        Some(b.indices.iter().map(|i| i % 10).collect::<Vec<_>>())
    );
}

#[test]
fn bad_configuration_is_rejected() {
    let err = ViewLoader::new(
        dataset(5),
        vec![ViewRecipe::simclr_small_grayscale()],
        Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        },
        LoaderConfig {
            batch_size: 10,
            drop_last: true,
            shuffle: true,
            seed: 0,
            prefetch: 1,
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("batch_size"), "{err}");
}

/// The shards of a data-parallel run: every rank's batch keeps the global indices
/// and labels, its views are its own rows', and the ranks' views together are the
/// single process's, whatever the world size.
#[test]
fn sharded_batches_split_the_single_process_views() {
    let whole: Vec<_> = loader(2, 5).stream(1, 0).collect();
    for ranks in [2usize, 4, 8] {
        let shards: Vec<Vec<_>> = (0..ranks)
            .map(|r| {
                loader(2, 5)
                    .sharded(r, ranks)
                    .unwrap()
                    .stream(1, 0)
                    .collect()
            })
            .collect();
        for (step, batch) in whole.iter().enumerate() {
            for v in 0..2 {
                let joined: Vec<f32> = shards
                    .iter()
                    .flat_map(|s| s[step].views[v].iter().copied())
                    .collect();
                assert_eq!(
                    joined, batch.views[v],
                    "{ranks} ranks, step {step}, view {v}"
                );
            }
            for (r, s) in shards.iter().enumerate() {
                let share = 8 / ranks;
                assert_eq!(s[step].indices, batch.indices);
                assert_eq!(s[step].labels, batch.labels);
                assert_eq!(s[step].local, r * share..(r + 1) * share);
            }
        }
    }
}

#[test]
fn a_batch_that_does_not_split_over_the_ranks_is_refused() {
    let e = loader(1, 0).sharded(0, 3).unwrap_err().to_string();
    assert!(e.contains("batch_size") && e.contains("3 ranks"), "{e}");
    assert!(loader(1, 0).sharded(2, 2).is_err());
}
