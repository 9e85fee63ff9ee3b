//! LooC's views from the loader: view 2 + i shares family i's choices with the query
//! (view 0) and redraws the rest; view 1 redraws everything.

use contrast_data::recipe::Family;
use contrast_data::{Dataset, ImageShape, LoaderConfig, Normalization, ViewLoader, ViewRecipe};
use std::sync::Arc;

fn loader(recipe: ViewRecipe, views: usize, shape: ImageShape) -> ViewLoader {
    let n = 16;
    let images: Vec<u8> = (0..n * shape.numel())
        .map(|k| ((k * 131 + k / 7) % 256) as u8)
        .collect();
    let data = Dataset::new("toy", images, vec![0; n], shape, 1).unwrap();
    let norm = Normalization::from_dataset(&data);
    let config = LoaderConfig {
        batch_size: 16,
        drop_last: true,
        shuffle: false,
        seed: 5,
        prefetch: 1,
    };
    ViewLoader::new(Arc::new(data), vec![recipe; views], norm, config).unwrap()
}

const SQUARE: ImageShape = ImageShape {
    height: 8,
    width: 8,
    channels: 1,
};

#[test]
fn the_family_key_shares_the_family_and_redraws_the_rest() {
    // Only rotation, always applied: the rotation key equals the query, and the
    // key that redraws everything differs from it for some images.
    let rotation_only = ViewRecipe {
        crop: None,
        hflip: 0.0,
        rotation: 1.0,
        color_jitter: None,
        grayscale: 0.0,
        blur: None,
        solarize: None,
    };
    let l = loader(rotation_only.clone(), 3, SQUARE)
        .leave_one_out(vec![Family::Rotation])
        .unwrap();
    let b = l.batch(0, 0, &l.order(0));
    assert_eq!(b.views[2], b.views[0]);
    assert_ne!(b.views[1], b.views[0]);

    // Rotation and flip: leaving flip out, the flip key takes the query's flip but
    // redraws its rotation, so it no longer equals the query everywhere.
    let both = ViewRecipe {
        hflip: 0.5,
        ..rotation_only
    };
    let l = loader(both, 3, SQUARE)
        .leave_one_out(vec![Family::Flip])
        .unwrap();
    let b = l.batch(0, 0, &l.order(0));
    assert_ne!(b.views[2], b.views[0]);
}

#[test]
fn leave_one_out_errors_name_what_is_wrong() {
    let recipe = ViewRecipe::simclr_small_grayscale();
    let e = loader(recipe.clone(), 3, SQUARE)
        .leave_one_out(vec![Family::Color, Family::Flip])
        .unwrap_err()
        .to_string();
    assert!(e.contains("need 4 views") && e.contains("not 3"), "{e}");
    // The recipe never rotates: leaving rotation out would change nothing.
    let e = loader(recipe, 3, SQUARE)
        .leave_one_out(vec![Family::Rotation])
        .unwrap_err()
        .to_string();
    assert!(e.contains("rotation") && e.contains("never applied"), "{e}");
    // Quarter turns need square images.
    let wide = ImageShape {
        height: 4,
        width: 8,
        channels: 1,
    };
    let images = vec![0u8; 4 * wide.numel()];
    let data = Dataset::new("wide", images, vec![0; 4], wide, 1).unwrap();
    let norm = Normalization::from_dataset(&data);
    let e = ViewLoader::new(
        Arc::new(data),
        vec![
            ViewRecipe {
                rotation: 0.5,
                ..ViewRecipe::simclr_small_grayscale()
            };
            2
        ],
        norm,
        LoaderConfig {
            batch_size: 2,
            drop_last: true,
            shuffle: false,
            seed: 0,
            prefetch: 1,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("rotation") && e.contains("square"), "{e}");
}
