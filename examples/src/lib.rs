//! Helpers shared by Contrast's examples (see `README.md` in this folder).

use contrast_data::{Dataset, ImageShape, Result};

/// A labelled grayscale dataset of `n` images of `size x size` pixels
/// (`[n, size, size, 1]`, channels last) in `classes` classes, made without any
/// download: class `c` is a bright bar (rows for even `c`, columns for odd `c`) at a
/// class-specific position, over seeded noise. Image `i` has label `i % classes`.
///
/// Two augmented views of one image share its bar, and images of one class differ
/// only by noise, so an encoder can learn the classes in a few steps, and the
/// same-class candidates of a batch are the false negatives that mining looks for.
pub fn bars(n: usize, size: usize, classes: usize, seed: u64) -> Result<Dataset> {
    // A 64-bit linear congruential generator is enough for noise, and keeps this
    // crate free of dependencies beyond contrast-data.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut noise = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 58) as u8 // 0..64
    };
    let mut images = Vec::with_capacity(n * size * size);
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    for &label in &labels {
        let c = label as usize;
        let line = 1 + (c / 2) * (size - 2) / classes.div_ceil(2).max(1);
        for y in 0..size {
            for x in 0..size {
                let on = if c.is_multiple_of(2) {
                    y == line
                } else {
                    x == line
                };
                images.push(if on { 190 + noise() } else { noise() });
            }
        }
    }
    let shape = ImageShape {
        height: size,
        width: size,
        channels: 1,
    };
    Dataset::new("bars", images, labels, shape, classes)
}
