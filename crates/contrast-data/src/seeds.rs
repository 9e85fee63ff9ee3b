//! Named random streams: every random draw of a training run comes from a ChaCha
//! generator whose seed is [`stream_seed`]`(run seed, stream, coordinates)`.
//!
//! Each [`Stream`] has its own domain tag and a fixed number of coordinates (an epoch,
//! a step, a view, an image index). The derivation folds the SplitMix64 finaliser,
//! a bijection on `u64`, over `[seed, domain, coordinates...]`:
//!
//! ```text
//! h0 = mix(mix(seed) ^ mix(domain)),   h_{n+1} = mix(h_n ^ mix(c_n))
//! ```
//!
//! For a fixed tail of coordinates each step is a bijection of `h`, so two streams
//! with different domains never give the same seed for the same coordinates, and one
//! stream never repeats a seed for two coordinate tuples that differ only in earlier
//! places. (Before the streams were named, a step's mining seed `[epoch, step, 0x313]`
//! equalled the augmentation seed of view `step` of image 787 in that epoch.)
//! Coordinates of different lengths or different streams can still meet by chance,
//! with probability about `2^-64` per pair; the tests check a whole run's worth.
//!
//! The linear probe is not a training stream: it draws from `eval.probe.seed`, the
//! same for every run, so that probes of different encoders compare like with like.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A random stream of a training run, with its coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The order of epoch `[epoch]`.
    EpochOrder,
    /// The augmentation of one image: `[epoch, view, dataset index]`.
    Augmentation,
    /// The model's initial parameters, `[]` (each parameter then hashes its path).
    ModelInit,
    /// A step's mining decisions (k-means seeding, MoCHi's mixes): `[epoch, step]`.
    Mining,
    /// A step's diagnostics sampling: `[epoch, step]`.
    Diagnostics,
    /// A step's SimLAP partner classes: `[epoch, step]`.
    Partners,
    /// A step's Shuffle-BN permutation of MoCo's keys: `[epoch, step]`.
    KeyShuffle,
    /// The initial keys of MoCo's queue, `[]`.
    QueueInit,
    /// The initial keys of LooC's queue of embedding space `[space]` (1 and up).
    SpaceQueueInit,
    /// The initial vectors of the memory bank, `[]`.
    BankInit,
    /// The mining policies' own state (NNCLR's initial support keys), `[]`.
    PolicyState,
    /// Which images a carved split holds: `[split]` (0 test, 1 validation).
    Holdout,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 12] = [
        Stream::EpochOrder,
        Stream::Augmentation,
        Stream::ModelInit,
        Stream::Mining,
        Stream::Diagnostics,
        Stream::Partners,
        Stream::KeyShuffle,
        Stream::QueueInit,
        Stream::SpaceQueueInit,
        Stream::BankInit,
        Stream::PolicyState,
        Stream::Holdout,
    ];

    /// The stream's name, which is also its domain tag.
    pub const fn name(self) -> &'static str {
        match self {
            Stream::EpochOrder => "epoch-order",
            Stream::Augmentation => "augmentation",
            Stream::ModelInit => "model-init",
            Stream::Mining => "mining",
            Stream::Diagnostics => "diagnostics",
            Stream::Partners => "partners",
            Stream::KeyShuffle => "key-shuffle",
            Stream::QueueInit => "queue-init",
            Stream::SpaceQueueInit => "space-queue-init",
            Stream::BankInit => "bank-init",
            Stream::PolicyState => "policy-state",
            Stream::Holdout => "holdout",
        }
    }

    /// How many coordinates the stream takes.
    pub const fn arity(self) -> usize {
        match self {
            Stream::EpochOrder | Stream::Holdout | Stream::SpaceQueueInit => 1,
            Stream::Augmentation => 3,
            Stream::Mining | Stream::Diagnostics | Stream::Partners | Stream::KeyShuffle => 2,
            Stream::ModelInit | Stream::QueueInit | Stream::BankInit | Stream::PolicyState => 0,
        }
    }

    /// The domain tag: FNV-1a of the name.
    fn domain(self) -> u64 {
        self.name().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}

/// SplitMix64's finaliser: a bijection that decorrelates nearby integers.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The seed of `stream` at `coords` for a run seeded with `seed`.
///
/// # Panics
/// If `coords` does not have the stream's [`Stream::arity`]: a stream read with the
/// wrong coordinates is a programming error that would silently share draws.
pub fn stream_seed(seed: u64, stream: Stream, coords: &[u64]) -> u64 {
    assert_eq!(
        coords.len(),
        stream.arity(),
        "stream `{}` takes {} coordinates",
        stream.name(),
        stream.arity()
    );
    coords
        .iter()
        .fold(mix(mix(seed) ^ mix(stream.domain())), |h, &c| {
            mix(h ^ mix(c))
        })
}

/// A generator for `stream` at `coords` (see [`stream_seed`]).
pub fn stream_rng(seed: u64, stream: Stream, coords: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(stream_seed(seed, stream, coords))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn names_and_domains_are_distinct() {
        let mut seen = HashMap::new();
        for s in Stream::ALL {
            assert!(
                seen.insert(s.domain(), s).is_none(),
                "{s:?} shares a domain"
            );
        }
    }

    /// A run's worth of coordinates: 4 epochs of 300 steps, 3 views of 5,000 images,
    /// every stream. No two (stream, coordinates) give the same seed.
    #[test]
    fn a_runs_streams_never_collide() {
        let seed = 0;
        let mut seen: HashMap<u64, (Stream, Vec<u64>)> = HashMap::new();
        let mut put = |stream: Stream, coords: Vec<u64>| {
            let s = stream_seed(seed, stream, &coords);
            if let Some(prev) = seen.insert(s, (stream, coords.clone())) {
                panic!("{stream:?} {coords:?} collides with {prev:?}");
            }
        };
        for s in Stream::ALL.into_iter().filter(|s| s.arity() == 0) {
            put(s, vec![]);
        }
        for epoch in 0..4u64 {
            put(Stream::EpochOrder, vec![epoch]);
            for step in 0..300u64 {
                for s in [
                    Stream::Mining,
                    Stream::Diagnostics,
                    Stream::Partners,
                    Stream::KeyShuffle,
                ] {
                    put(s, vec![epoch, step]);
                }
            }
            for view in 0..3u64 {
                for index in 0..5000u64 {
                    put(Stream::Augmentation, vec![epoch, view, index]);
                }
            }
        }
    }

    #[test]
    fn the_old_mining_and_augmentation_collision_is_gone() {
        // Before: derive(seed, [0, 0, 0x313]) served both step 0's mining and view 0
        // of image 787 in epoch 0.
        assert_ne!(
            stream_seed(0, Stream::Mining, &[0, 0]),
            stream_seed(0, Stream::Augmentation, &[0, 0, 0x313])
        );
        assert_ne!(
            stream_seed(0, Stream::QueueInit, &[]),
            stream_seed(0, Stream::BankInit, &[])
        );
    }

    #[test]
    #[should_panic(expected = "takes 2 coordinates")]
    fn wrong_coordinates_are_refused() {
        stream_seed(0, Stream::Mining, &[0, 0, 0x313]);
    }
}
