//! Augmentation invariants: shapes, value ranges, determinism, and op definitions.

use contrast_data::augment::{self, Image, sample_crop_box};
use contrast_data::recipe::{BlurConfig, SolarizeConfig};
use contrast_data::{ImageShape, ViewRecipe};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn full_recipe() -> ViewRecipe {
    ViewRecipe {
        blur: Some(BlurConfig {
            p: 0.5,
            sigma: [0.1, 2.0],
            kernel_size: 3,
        }),
        solarize: Some(SolarizeConfig {
            p: 0.2,
            threshold: 0.5,
        }),
        ..ViewRecipe::simclr_cifar()
    }
}

fn pixels(n: usize, seed: u64) -> Vec<u8> {
    (0..n)
        .map(|i| {
            ((i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(97))
                % 256) as u8
        })
        .collect()
}

proptest! {
    #[test]
    fn views_keep_shape_and_range(seed in any::<u64>(), h in 4usize..40, w in 4usize..40, rgb in any::<bool>()) {
        let c = if rgb { 3 } else { 1 };
        let shape = ImageShape { height: h, width: w, channels: c };
        let px = pixels(h * w * c, seed);
        for recipe in [full_recipe(), ViewRecipe::simclr_small_grayscale()] {
            let img = recipe.apply(&px, shape, &mut ChaCha8Rng::seed_from_u64(seed));
            prop_assert_eq!((img.height, img.width, img.channels), (h, w, c));
            prop_assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn same_seed_same_view(seed in any::<u64>()) {
        let shape = ImageShape { height: 28, width: 28, channels: 3 };
        let px = pixels(28 * 28 * 3, 1);
        let a = full_recipe().apply(&px, shape, &mut ChaCha8Rng::seed_from_u64(seed));
        let b = full_recipe().apply(&px, shape, &mut ChaCha8Rng::seed_from_u64(seed));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn crop_boxes_stay_inside(seed in any::<u64>(), h in 1usize..64, w in 1usize..64) {
        let b = sample_crop_box(h, w, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut ChaCha8Rng::seed_from_u64(seed));
        prop_assert!(b.height >= 1 && b.width >= 1);
        prop_assert!(b.top + b.height <= h && b.left + b.width <= w);
    }
}

#[test]
fn different_seeds_give_different_views() {
    let shape = ImageShape {
        height: 28,
        width: 28,
        channels: 1,
    };
    let px = pixels(28 * 28, 3);
    let r = ViewRecipe::simclr_small_grayscale();
    let a = r.apply(&px, shape, &mut ChaCha8Rng::seed_from_u64(1));
    let b = r.apply(&px, shape, &mut ChaCha8Rng::seed_from_u64(2));
    assert_ne!(a, b);
}

fn gray(h: usize, w: usize, f: impl Fn(usize, usize) -> f32) -> Image {
    Image {
        height: h,
        width: w,
        channels: 1,
        data: (0..h * w).map(|i| f(i / w, i % w)).collect(),
    }
}

#[test]
fn full_window_crop_is_the_identity() {
    let img = gray(5, 7, |y, x| (y * 7 + x) as f32 / 40.0);
    let b = augment::CropBox {
        top: 0,
        left: 0,
        height: 5,
        width: 7,
    };
    let out = augment::resized_crop(&img, b, 5, 7);
    for (a, b) in out.data.iter().zip(&img.data) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn flip_mirrors_columns_and_is_an_involution() {
    let img = gray(2, 3, |y, x| (y * 3 + x) as f32);
    let mut f = img.clone();
    augment::hflip(&mut f);
    assert_eq!(f.data, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
    augment::hflip(&mut f);
    assert_eq!(f, img);
}

#[test]
fn blur_preserves_constant_images_and_mean() {
    let mut c = gray(9, 9, |_, _| 0.4);
    augment::gaussian_blur(&mut c, 1.5, 5);
    assert!(c.data.iter().all(|v| (v - 0.4).abs() < 1e-6));
    let mut spike = gray(9, 9, |y, x| if (y, x) == (4, 4) { 1.0 } else { 0.0 });
    augment::gaussian_blur(&mut spike, 1.0, 5);
    let sum: f32 = spike.data.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5 && spike.data[4 * 9 + 4] < 1.0);
}

#[test]
fn solarize_inverts_above_threshold() {
    let mut img = gray(1, 3, |_, x| [0.2, 0.5, 0.9][x]);
    augment::solarize(&mut img, 0.5);
    assert_eq!(img.data, vec![0.2, 0.5, 0.100000024]);
}

#[test]
fn colour_ops_on_rgb() {
    let mut img = Image {
        height: 1,
        width: 2,
        channels: 3,
        data: vec![1.0, 0.0, 0.0, 0.2, 0.4, 0.6],
    };
    let mut g = img.clone();
    augment::to_grayscale(&mut g);
    assert!((g.data[0] - 0.299).abs() < 1e-6 && g.data[0] == g.data[1] && g.data[1] == g.data[2]);
    let mut h = img.clone();
    augment::adjust_hue(&mut h, 1.0 / 3.0);
    assert!(
        (h.data[0] - 0.0).abs() < 1e-5 && (h.data[1] - 1.0).abs() < 1e-5,
        "{:?}",
        h.data
    );
    augment::adjust_hue(&mut h, -1.0 / 3.0);
    for (a, b) in h.data.iter().zip(&img.data) {
        assert!((a - b).abs() < 1e-5);
    }
    augment::adjust_saturation(&mut img, 0.0);
    assert_eq!(img.data[0], img.data[2]);
}

#[test]
fn grayscale_only_ops_are_noops_on_one_channel() {
    let img = gray(3, 3, |y, x| (y + x) as f32 / 4.0);
    let mut a = img.clone();
    augment::adjust_hue(&mut a, 0.3);
    augment::adjust_saturation(&mut a, 0.1);
    augment::to_grayscale(&mut a);
    assert_eq!(a, img);
}

#[test]
fn invalid_recipes_name_the_field() {
    let mut r = ViewRecipe::simclr_small_grayscale();
    r.hflip = 1.5;
    assert!(r.validate().unwrap_err().to_string().contains("hflip"));
    let mut r = ViewRecipe::simclr_small_grayscale();
    r.crop.as_mut().unwrap().scale = [0.0, 1.0];
    assert!(r.validate().unwrap_err().to_string().contains("crop.scale"));
}

#[test]
fn quarter_turns_rotate_counter_clockwise() {
    let img = gray(3, 3, |y, x| (y * 3 + x) as f32 / 8.0);
    let mut once = img.clone();
    augment::rotate_quarter_turns(&mut once, 1);
    // The top-right pixel moves to the top-left, the top-left to the bottom-left.
    assert_eq!(once.data[0], img.data[2]);
    assert_eq!(once.data[6], img.data[0]);
    let mut four = img.clone();
    for _ in 0..4 {
        augment::rotate_quarter_turns(&mut four, 1);
    }
    assert_eq!(four, img);
    let mut twice = img.clone();
    augment::rotate_quarter_turns(&mut twice, 2);
    let mut half = img.clone();
    augment::rotate_quarter_turns(&mut half, 1);
    augment::rotate_quarter_turns(&mut half, 1);
    assert_eq!(twice, half);
}

proptest! {
    /// Drawing the choices and rendering them is the same view as applying the
    /// recipe with the same generator.
    #[test]
    fn sampling_then_rendering_is_applying(seed in any::<u64>(), rotation in 0f32..=1.0) {
        let shape = ImageShape { height: 12, width: 12, channels: 3 };
        let px = pixels(shape.numel(), seed);
        let recipe = ViewRecipe { rotation, ..full_recipe() };
        let applied = recipe.apply(&px, shape, &mut ChaCha8Rng::seed_from_u64(seed));
        let params = recipe.sample(shape, None, &mut ChaCha8Rng::seed_from_u64(seed));
        prop_assert_eq!(recipe.render(&px, shape, &params), applied);
    }
}

/// Sharing a family takes exactly that family's choices from the other view.
#[test]
fn sharing_a_family_takes_only_its_choices() {
    use contrast_data::recipe::Family;
    let shape = ImageShape {
        height: 16,
        width: 16,
        channels: 3,
    };
    let recipe = ViewRecipe {
        rotation: 1.0,
        ..full_recipe()
    };
    let draw = |seed| recipe.sample(shape, None, &mut ChaCha8Rng::seed_from_u64(seed));
    // Two views that differ in every family (found by trying seeds).
    let (q, other) = (0..200u64)
        .map(|s| (draw(2 * s), draw(2 * s + 1)))
        .find(|(a, b)| {
            a.crop != b.crop
                && a.flip != b.flip
                && a.quarter_turns != b.quarter_turns
                && a.jitter != b.jitter
                && a.blur != b.blur
        })
        .expect("two views that differ everywhere");
    for family in [
        Family::Crop,
        Family::Flip,
        Family::Rotation,
        Family::Color,
        Family::Blur,
    ] {
        let mut k = other.clone();
        k.share(family, &q);
        assert_eq!(k.crop == q.crop, family == Family::Crop, "{family:?}");
        assert_eq!(k.flip == q.flip, family == Family::Flip, "{family:?}");
        assert_eq!(
            k.quarter_turns == q.quarter_turns,
            family == Family::Rotation,
            "{family:?}"
        );
        assert_eq!(k.jitter == q.jitter, family == Family::Color, "{family:?}");
        assert_eq!(k.blur == q.blur, family == Family::Blur, "{family:?}");
    }
}
