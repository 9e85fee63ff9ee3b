//! ContrastiveCrop (Peng, Wang, Zhu and You, CVPR 2022): random resized crops that
//! stay on the object and are pushed apart.
//!
//! Two parts, as in the official code (xyupeng/ContrastiveCrop):
//!
//! - **Semantic-aware localisation.** Every `loc_interval` epochs the encoder's last
//!   feature map of each (unaugmented) training image is summed over channels into a
//!   heat map, min-max normalised, upsampled bilinearly to the image size, and
//!   thresholded: the object's box spans the rows and columns whose largest value
//!   exceeds `threshold` ([`region_from_heat_map`]). Boxes start as the whole image.
//! - **Centre-suppressed sampling.** A crop's size and aspect ratio are drawn as in
//!   `RandomResizedCrop`; its top-left corner is placed so that the crop's centre
//!   lies inside the box, at a `Beta(alpha, alpha)` fraction of the allowed range on
//!   each axis ([`sample_contrastive_crop`]). `alpha < 1` is U-shaped: the two views'
//!   crops tend to opposite ends of the object, which makes the positive pair less
//!   similar without leaving the object.
//!
//! The first `warmup_epochs` epochs use plain crops. The trainer computes the heat
//! maps, keeps the boxes in its checkpoints and hands them to the loader as
//! [`Regions`].

use crate::augment::{CropBox, centre_crop, sample_crop_size};
use crate::error::{DataError, Result};
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

/// `data.contrastive_crop`: when and how crops are localised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContrastiveCropConfig {
    /// Shape of the `Beta(alpha, alpha)` that places a crop's centre in the box:
    /// 1 is uniform, below 1 favours the box's edges (the paper's ImageNet setting is
    /// 0.6, its small-dataset one 0.1).
    #[serde(default = "default_alpha")]
    pub alpha: f32,
    /// Heat-map level, in `[0, 1)` of the min-max normalised map, that rows and
    /// columns must exceed to be inside the box (the paper's 0.1).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Epochs trained on plain random resized crops before the first boxes are
    /// used; the boxes are first computed at the end of the last warm-up epoch.
    pub warmup_epochs: usize,
    /// Boxes are recomputed after every epoch `e` (counted from 1) with
    /// `e >= warmup_epochs` and `e` a multiple of `loc_interval`, except the last.
    pub loc_interval: usize,
}

fn default_alpha() -> f32 {
    0.6
}

fn default_threshold() -> f32 {
    0.1
}

impl ContrastiveCropConfig {
    /// Checks `alpha > 0`, `threshold` in `[0, 1)` and `loc_interval >= 1`, naming the
    /// field under `data.contrastive_crop`.
    pub fn validate(&self) -> Result<()> {
        let field = |f: &str| format!("contrastive_crop.{f}");
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return Err(DataError::config(
                field("alpha"),
                format!("{} must be a positive number", self.alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.threshold) {
            return Err(DataError::config(
                field("threshold"),
                format!(
                    "{} must be in [0, 1): the heat map is normalised to [0, 1]",
                    self.threshold
                ),
            ));
        }
        if self.loc_interval == 0 {
            return Err(DataError::config(
                field("loc_interval"),
                "must be at least 1 (epochs between box updates)",
            ));
        }
        Ok(())
    }

    /// Whether epoch `epoch` (0-based) samples crops inside the boxes.
    pub fn uses_boxes(&self, epoch: usize) -> bool {
        epoch >= self.warmup_epochs
    }

    /// Whether the boxes are recomputed after epoch `epoch` (0-based) of `epochs`.
    pub fn refreshes_after(&self, epoch: usize, epochs: usize) -> bool {
        let e = epoch + 1;
        e >= self.warmup_epochs && e.is_multiple_of(self.loc_interval) && e != epochs
    }
}

/// An object box as fractions of the image: rows `top..=bottom` of the height and
/// columns `left..=right` of the width, each in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub top: f32,
    pub left: f32,
    pub bottom: f32,
    pub right: f32,
}

impl Region {
    /// The whole image: where every box starts.
    pub const WHOLE: Region = Region {
        top: 0.0,
        left: 0.0,
        bottom: 1.0,
        right: 1.0,
    };

    /// The box's share of the image area, in `[0, 1]`.
    pub fn area(&self) -> f32 {
        (self.bottom - self.top).max(0.0) * (self.right - self.left).max(0.0)
    }

    /// `[top, left, bottom, right]`, the official code's `(h0, w0, h1, w1)` order.
    pub fn to_array(self) -> [f32; 4] {
        [self.top, self.left, self.bottom, self.right]
    }

    /// The inverse of [`Region::to_array`], checking that the box lies in the image.
    pub fn from_array(a: [f32; 4]) -> Result<Self> {
        let r = Region {
            top: a[0],
            left: a[1],
            bottom: a[2],
            right: a[3],
        };
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        if !(a.iter().all(|&v| unit(v)) && r.top <= r.bottom && r.left <= r.right) {
            return Err(DataError::config(
                "contrastive_crop boxes",
                format!("{a:?} is not a box [top, left, bottom, right] inside [0, 1]"),
            ));
        }
        Ok(r)
    }
}

/// The object box of one image from its heat map `map` (`[map_height, map_width]`,
/// row-major: a feature map summed over channels) for an image of `height x width`
/// pixels: min-max normalise, resize bilinearly (half-pixel centres, as
/// `F.interpolate(mode = "bilinear")`), and keep the rows and columns whose largest
/// value exceeds `threshold`. Returns the first and last kept row over `height` and
/// column over `width`, as the official `update_box` does. A constant map has no
/// object to find and gives [`Region::WHOLE`], as does one with a non-finite value.
pub fn region_from_heat_map(
    map: &[f32],
    map_height: usize,
    map_width: usize,
    height: usize,
    width: usize,
    threshold: f32,
) -> Region {
    assert_eq!(map.len(), map_height * map_width, "heat map size");
    let (lo, hi) = map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if map.iter().any(|v| !v.is_finite()) || hi <= lo {
        return Region::WHOLE;
    }
    let scaled = crate::augment::Image {
        height: map_height,
        width: map_width,
        channels: 1,
        data: map.iter().map(|v| (v - lo) / (hi - lo)).collect(),
    };
    let whole = CropBox {
        top: 0,
        left: 0,
        height: map_height,
        width: map_width,
    };
    let up = crate::augment::resized_crop(&scaled, whole, height, width);
    let mut row_max = vec![f32::NEG_INFINITY; height];
    let mut col_max = vec![f32::NEG_INFINITY; width];
    for (y, row) in up.data.chunks_exact(width).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            row_max[y] = row_max[y].max(v);
            col_max[x] = col_max[x].max(v);
        }
    }
    let span = |m: &[f32]| {
        let first = m.iter().position(|&v| v > threshold)?;
        let last = m.iter().rposition(|&v| v > threshold)?;
        Some((first as f32 / m.len() as f32, last as f32 / m.len() as f32))
    };
    match (span(&row_max), span(&col_max)) {
        (Some((top, bottom)), Some((left, right))) => Region {
            top,
            left,
            bottom,
            right,
        },
        _ => Region::WHOLE,
    }
}

/// A crop as `RandomResizedCrop` draws it (size from `scale` and `ratio`, ten tries,
/// else a centre crop), placed so that its centre falls inside `region`: with the
/// crop `h x w`, its top row is `c0 + floor((c1 - c0) u)`, `u ~ beta`, where
/// `c0 = clamp(floor(H top) - h/2, 0, H - h)` and `c1` the same for `bottom`; the same
/// for columns with an independent draw.
pub fn sample_contrastive_crop<R: Rng>(
    height: usize,
    width: usize,
    scale: [f32; 2],
    ratio: [f32; 2],
    region: Region,
    beta: &Beta<f32>,
    rng: &mut R,
) -> CropBox {
    let Some((h, w)) = sample_crop_size(height, width, scale, ratio, rng) else {
        return centre_crop(height, width, ratio);
    };
    // The allowed range of the top-left corner on one axis of `size` pixels for a
    // crop of `len`, with the box spanning fractions `from..=to`.
    let corner = |size: usize, len: usize, from: f32, to: f32, rng: &mut R| {
        let place = |f: f32| {
            ((size as f32 * f).floor() as isize - (len / 2) as isize)
                .clamp(0, (size - len) as isize) as usize
        };
        let (c0, c1) = (place(from), place(to));
        let u = beta.sample(rng);
        c0 + ((c1 - c0) as f32 * u).floor() as usize
    };
    let top = corner(height, h, region.top, region.bottom, rng);
    let left = corner(width, w, region.left, region.right, rng);
    CropBox {
        top,
        left,
        height: h,
        width: w,
    }
}

/// What the loader needs to draw contrastive crops: the `Beta(alpha, alpha)` and one
/// box per dataset image (indexed like the dataset).
#[derive(Debug, Clone)]
pub struct Regions {
    beta: Beta<f32>,
    boxes: Vec<Region>,
}

impl Regions {
    /// Boxes `boxes` (one per image) sampled with `Beta(alpha, alpha)`.
    pub fn new(alpha: f32, boxes: Vec<Region>) -> Result<Self> {
        let beta = Beta::new(alpha, alpha).map_err(|e| {
            DataError::config(
                "contrastive_crop.alpha",
                format!("{alpha} gives no Beta distribution: {e}"),
            )
        })?;
        Ok(Self { beta, boxes })
    }

    /// Number of boxes (the dataset's size).
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// True when there are no boxes.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// The box of image `index` and the centre distribution.
    pub fn of(&self, index: usize) -> (Region, &Beta<f32>) {
        (self.boxes[index], &self.beta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// `P(U < a)` for `U ~ Beta(alpha, alpha)`, by Simpson's rule after the
    /// substitution `x = s^(1/alpha)`, which removes the singularity at 0 (`a <= 1/2`;
    /// the upper half follows by symmetry).
    fn beta_cdf(alpha: f64, a: f64) -> f64 {
        let lower = |a: f64| {
            let n = 20_000;
            let end = a.powf(alpha);
            let f = |s: f64| (1.0 - s.powf(1.0 / alpha)).powf(alpha - 1.0) / alpha;
            let hstep = end / n as f64;
            let mut sum = f(0.0) + f(end);
            for k in 1..n {
                sum += f(k as f64 * hstep) * if k % 2 == 1 { 4.0 } else { 2.0 };
            }
            sum * hstep / 3.0
        };
        let half = lower(0.5);
        if a <= 0.5 {
            lower(a) / (2.0 * half)
        } else {
            1.0 - lower(1.0 - a) / (2.0 * half)
        }
    }

    #[test]
    fn the_box_spans_the_rows_and_columns_above_the_threshold() {
        // A 4x4 map with one hot cell at row 1, column 2 on a 16x16 image: after
        // bilinear upsampling by 4 the hot cell's influence spans about 1.5 cells.
        let mut map = vec![0f32; 16];
        map[4 + 2] = 1.0;
        let r = region_from_heat_map(&map, 4, 4, 16, 16, 0.1);
        // Output row y samples source row (y + 0.5) / 4 - 0.5, and the best column
        // carries weight 0.875 of column 2, so a row exceeds 0.1 where its weight on
        // row 1 exceeds 0.1 / 0.875: source rows within 0.886 of 1, output rows 2..=9.
        // Columns likewise: within 0.886 of column 2, output columns 6..=13.
        assert_eq!(r.top, 2.0 / 16.0);
        assert_eq!(r.bottom, 9.0 / 16.0);
        assert_eq!(r.left, 6.0 / 16.0);
        assert_eq!(r.right, 13.0 / 16.0);
        // Shifting and scaling the map changes nothing (min-max normalisation).
        let moved: Vec<f32> = map.iter().map(|v| 3.0 * v - 7.0).collect();
        assert_eq!(region_from_heat_map(&moved, 4, 4, 16, 16, 0.1), r);
        // A constant map, or one with a NaN, has no object.
        assert_eq!(
            region_from_heat_map(&[2.0; 16], 4, 4, 16, 16, 0.1),
            Region::WHOLE
        );
        let mut nan = map.clone();
        nan[0] = f32::NAN;
        assert_eq!(region_from_heat_map(&nan, 4, 4, 16, 16, 0.1), Region::WHOLE);
    }

    #[test]
    fn crop_corners_follow_the_beta_distribution_inside_the_box() {
        // 400x400 image, crops of exactly 200x200 (scale 1/4, ratio 1): with the box
        // in the lower-right quarter the top row ranges over c0 = 200 - 100 = 100 to
        // c1 = min(400 - 100, 200) = 200, so (top - 100) / 100 is Beta floored to
        // hundredths, and P(top - 100 < 100 a) = P(U < a) exactly for a in hundredths.
        let region = Region {
            top: 0.5,
            left: 0.5,
            bottom: 1.0,
            right: 1.0,
        };
        for alpha in [0.6f32, 1.0, 2.0] {
            let beta = Beta::new(alpha, alpha).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let n = 40_000;
            let (mut tops, mut lefts) = (Vec::new(), Vec::new());
            for _ in 0..n {
                let b = sample_contrastive_crop(
                    400,
                    400,
                    [0.25, 0.25],
                    [1.0, 1.0],
                    region,
                    &beta,
                    &mut rng,
                );
                assert_eq!((b.height, b.width), (200, 200));
                assert!((100..=200).contains(&b.top) && (100..=200).contains(&b.left));
                tops.push(b.top - 100);
                lefts.push(b.left - 100);
            }
            for a in [0.05, 0.1, 0.25, 0.5, 0.75, 0.9] {
                let want = beta_cdf(alpha as f64, a);
                // Binomial standard error; 5 of them keeps the test from flaking.
                let tol = 5.0 * (want * (1.0 - want) / n as f64).sqrt();
                for (axis, xs) in [("top", &tops), ("left", &lefts)] {
                    let got =
                        xs.iter().filter(|&&t| (t as f64) < 100.0 * a).count() as f64 / n as f64;
                    assert!(
                        (got - want).abs() < tol,
                        "alpha {alpha}, {axis}: P(U < {a}) = {got}, Beta CDF {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn crops_centre_on_the_box_and_fit_the_image() {
        // A box in the top-left corner of a 28x28 image pulls every crop's centre
        // towards it; a whole-image box keeps crops anywhere.
        let corner = Region {
            top: 0.0,
            left: 0.0,
            bottom: 0.25,
            right: 0.25,
        };
        let beta = Beta::new(0.6f32, 0.6).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..2_000 {
            let b = sample_contrastive_crop(
                28,
                28,
                [0.2, 1.0],
                [0.75, 4.0 / 3.0],
                corner,
                &beta,
                &mut rng,
            );
            assert!(b.top + b.height <= 28 && b.left + b.width <= 28);
            // The corner may move at most from 0 to floor(7) - len/2, clamped.
            assert!(b.top <= 7usize.saturating_sub(b.height / 2));
            assert!(b.left <= 7usize.saturating_sub(b.width / 2));
        }
    }

    #[test]
    fn configs_are_checked_and_schedules_follow_the_official_loop() {
        let cfg = ContrastiveCropConfig {
            alpha: 0.6,
            threshold: 0.1,
            warmup_epochs: 3,
            loc_interval: 3,
        };
        cfg.validate().unwrap();
        let used: Vec<bool> = (0..6).map(|e| cfg.uses_boxes(e)).collect();
        assert_eq!(used, [false, false, false, true, true, true]);
        // Refreshed after epochs 3 and 6 of 12 (1-based), never after the last.
        let refreshed: Vec<usize> = (0..12).filter(|&e| cfg.refreshes_after(e, 12)).collect();
        assert_eq!(refreshed, [2, 5, 8]);
        for (bad, field) in [
            (
                ContrastiveCropConfig {
                    alpha: 0.0,
                    ..cfg.clone()
                },
                "contrastive_crop.alpha",
            ),
            (
                ContrastiveCropConfig {
                    threshold: 1.0,
                    ..cfg.clone()
                },
                "contrastive_crop.threshold",
            ),
            (
                ContrastiveCropConfig {
                    loc_interval: 0,
                    ..cfg.clone()
                },
                "contrastive_crop.loc_interval",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(Region::from_array([0.1, 0.2, 0.05, 0.9]).is_err());
        assert_eq!(
            Region::from_array(Region::WHOLE.to_array()).unwrap(),
            Region::WHOLE
        );
    }
}
