//! Queue and bank behaviour: wrap-around, masking, momentum updates, sampling,
//! lookups and checkpoint round trips.

use candle_core::{DType, Device, Tensor};
use contrast_memory::{EMPTY, KeyQueue, MemoryBank};
use contrast_testing::sum_abs_diff;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Keys whose first coordinate encodes `tag` (so entries can be recognised).
fn tagged(tags: &[i64], dim: usize) -> Tensor {
    let data: Vec<f32> = tags
        .iter()
        .flat_map(|&t| {
            (0..dim).map(move |j| {
                if j == 0 {
                    1.0 + t as f32
                } else {
                    0.1 * j as f32
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (tags.len(), dim), &Device::Cpu).unwrap()
}

fn row(t: &Tensor, i: usize) -> Vec<f32> {
    t.narrow(0, i, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn queue_is_fifo_with_wrap_around(capacity in 1usize..40, batches in prop::collection::vec(1usize..17, 1..8)) {
        let mut q = KeyQueue::new(capacity, 4, 7, &Device::Cpu).unwrap();
        let mut all: Vec<i64> = Vec::new();
        for (bi, &b) in batches.iter().enumerate() {
            let ids: Vec<i64> = (0..b as i64).map(|i| bi as i64 * 100 + i).collect();
            let n = q.enqueue(&tagged(&ids, 4), &ids, &ids, None).unwrap();
            prop_assert_eq!(n, b);
            all.extend(&ids);
        }
        // The newest `capacity` ids are present, each at the position FIFO order gives.
        let total = all.len();
        prop_assert_eq!(q.filled(), total.min(capacity));
        prop_assert_eq!(q.ptr(), total % capacity);
        for (k, &id) in all.iter().enumerate().skip(total.saturating_sub(capacity)) {
            let pos = k % capacity;
            prop_assert_eq!(q.ids()[pos], id);
            let r = row(q.keys(), pos);
            let norm: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            prop_assert!((norm - 1.0).abs() < 1e-5);
            prop_assert!(r[0] > 0.0);
        }
        for pos in total..capacity {
            prop_assert_eq!(q.ids()[pos], EMPTY);
        }
    }
}

#[test]
fn masked_rows_are_not_enqueued() {
    let mut q = KeyQueue::new(5, 3, 0, &Device::Cpu).unwrap();
    let ids = [10, 11, 12, 13];
    let n = q
        .enqueue(
            &tagged(&ids, 3),
            &ids,
            &[1, 2, 3, 4],
            Some(&[true, false, true, false]),
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(&q.ids()[..3], &[10, 12, EMPTY]);
    assert_eq!(&q.labels()[..2], &[1, 3]);
    assert_eq!(q.ptr(), 2);
    let e = q
        .enqueue(&tagged(&ids, 3), &ids, &ids, Some(&[true]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask"), "{e}");
    let e = q
        .enqueue(&tagged(&ids, 4), &ids, &ids, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("width 4"), "{e}");
}

#[test]
fn queue_state_round_trips() {
    let mut q = KeyQueue::new(6, 3, 1, &Device::Cpu).unwrap();
    q.enqueue(
        &tagged(&[1, 2, 3, 4], 3),
        &[1, 2, 3, 4],
        &[0, 1, 0, 1],
        None,
    )
    .unwrap();
    let state = q.state().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.safetensors");
    candle_core::safetensors::save(&state, &path).unwrap();
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut r = KeyQueue::new(6, 3, 99, &Device::Cpu).unwrap();
    r.load_state(&loaded).unwrap();
    assert_eq!(
        (r.ptr(), r.filled(), r.ids(), r.labels()),
        (q.ptr(), q.filled(), q.ids(), q.labels())
    );
    assert_eq!(sum_abs_diff(r.keys(), q.keys()), 0.0);
    let mut small = KeyQueue::new(5, 3, 0, &Device::Cpu).unwrap();
    assert!(small.load_state(&loaded).is_err());
}

#[test]
fn bank_updates_by_index_with_momentum() {
    let mut bank = MemoryBank::new(4, 2, 0.5, 0, &Device::Cpu).unwrap();
    let before = row(bank.vectors(), 2);
    let x = Tensor::new(&[[3.0f32, 4.0]], &Device::Cpu).unwrap();
    bank.update(&[2], &x, Some(&[7])).unwrap();
    let after = row(bank.vectors(), 2);
    let mixed = [0.5 * before[0] + 0.5 * 0.6, 0.5 * before[1] + 0.5 * 0.8];
    let n = (mixed[0] * mixed[0] + mixed[1] * mixed[1]).sqrt();
    assert!((after[0] - mixed[0] / n).abs() < 1e-6 && (after[1] - mixed[1] / n).abs() < 1e-6);
    assert_eq!(bank.labels()[2], 7);
    assert_eq!(
        row(bank.vectors(), 1),
        row(
            &MemoryBank::new(4, 2, 0.5, 0, &Device::Cpu)
                .unwrap()
                .vectors()
                .clone(),
            1
        )
    );
    let e = bank.update(&[9], &x, None).unwrap_err().to_string();
    assert!(e.contains("entry 9 does not exist"), "{e}");
}

#[test]
fn bank_sampling_and_nearest_neighbours() {
    let mut bank = MemoryBank::new(50, 3, 0.0, 2, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let s = bank.sample(20, &[0, 1, 2], &mut rng).unwrap();
    let mut unique = s.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20);
    assert!(s.iter().all(|&i| i > 2 && i < 50));
    assert!(bank.sample(48, &[0, 1, 2], &mut rng).is_err());
    // With momentum 0 an update replaces the entry: the query finds it first.
    let q = Tensor::new(&[[0.0f32, 0.0, 1.0]], &Device::Cpu).unwrap();
    bank.update(&[17], &q, None).unwrap();
    let top = bank.nearest(&q, 3).unwrap();
    let first = top.row(0).next().unwrap();
    assert_eq!(first.1, 17);
    assert!((first.0 - 1.0).abs() < 1e-6);
}

#[test]
fn bank_state_round_trips() {
    let mut bank = MemoryBank::new(8, 3, 0.5, 4, &Device::Cpu).unwrap();
    bank.update(
        &[1, 5],
        &Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(),
        Some(&[3, 4]),
    )
    .unwrap();
    let mut other = MemoryBank::new(8, 3, 0.5, 5, &Device::Cpu).unwrap();
    other.load_state(&bank.state().unwrap()).unwrap();
    assert_eq!(other.labels(), bank.labels());
    assert_eq!(row(other.vectors(), 5), row(bank.vectors(), 5));
}

#[test]
fn queue_nearest_neighbours_skip_unwritten_entries() {
    let mut q = KeyQueue::new(10, 3, 0, &Device::Cpu).unwrap();
    assert!(q.nearest(&tagged(&[0], 3), 1).is_err());
    q.enqueue(&tagged(&[5, 1, 3], 3), &[50, 10, 30], &[0, 0, 0], None)
        .unwrap();
    let top = q.nearest(&tagged(&[5], 3), 3).unwrap();
    let hits: Vec<u32> = top.row(0).map(|(_, i)| i).collect();
    assert_eq!(hits[0], 0);
    assert!(hits.iter().all(|&i| i < 3));
    assert!(q.nearest(&tagged(&[5], 3), 4).is_err());
}
