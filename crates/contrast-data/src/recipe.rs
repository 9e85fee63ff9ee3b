//! View recipes: a fixed pipeline of random augmentations, configured in TOML.
//!
//! The pipeline order follows SimCLR's: resized crop, horizontal flip, (quarter-turn
//! rotation,) colour jitter, random grayscale, Gaussian blur, solarize, then
//! per-channel normalisation. A view's random choices can be drawn
//! ([`ViewRecipe::sample`]) apart from rendering them ([`ViewRecipe::render`]), so
//! that views can share some augmentation families and redraw others.

use crate::augment::{self, Image};
use crate::contrastive_crop::{Region, sample_contrastive_crop};
use crate::dataset::ImageShape;
use crate::error::{DataError, Result};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::Beta;
use serde::{Deserialize, Serialize};

/// Random resized crop: area fraction `scale` and aspect ratio `ratio` ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropConfig {
    /// Fraction of the image area kept, `[min, max]` within `(0, 1]`.
    pub scale: [f32; 2],
    /// Width / height ratio range, `[min, max]`, both positive.
    #[serde(default = "default_ratio")]
    pub ratio: [f32; 2],
}

fn default_ratio() -> [f32; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}

/// Colour jitter, applied as a whole with probability `p`, its four adjustments in a
/// random order. Each strength `s` draws a factor in `[max(0, 1 - s), 1 + s]`; `hue`
/// draws a shift in `[-hue, hue]` turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorJitterConfig {
    pub brightness: f32,
    pub contrast: f32,
    #[serde(default)]
    pub saturation: f32,
    #[serde(default)]
    pub hue: f32,
    pub p: f32,
}

/// Gaussian blur with probability `p`, `sigma` drawn uniformly in a range (pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlurConfig {
    pub p: f32,
    pub sigma: [f32; 2],
    /// Odd kernel side in pixels.
    pub kernel_size: usize,
}

/// Solarize with probability `p` at `threshold` (intensity in `[0, 1]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SolarizeConfig {
    pub p: f32,
    pub threshold: f32,
}

/// One view's augmentation pipeline. Missing stages are skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewRecipe {
    #[serde(default)]
    pub crop: Option<CropConfig>,
    /// Probability of a horizontal flip.
    #[serde(default)]
    pub hflip: f32,
    /// Probability of rotating by a random non-zero multiple of 90 degrees (square
    /// images only): the augmentation LooC's experiments add to show what invariance
    /// to it costs.
    #[serde(default)]
    pub rotation: f32,
    #[serde(default)]
    pub color_jitter: Option<ColorJitterConfig>,
    /// Probability of converting to grayscale (no effect on one channel).
    #[serde(default)]
    pub grayscale: f32,
    #[serde(default)]
    pub blur: Option<BlurConfig>,
    #[serde(default)]
    pub solarize: Option<SolarizeConfig>,
}

fn check_prob(field: &str, p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(DataError::config(
            field,
            format!("probability {p} is outside [0, 1]"),
        ));
    }
    Ok(())
}

fn check_range(field: &str, r: [f32; 2], lo: f32, hi: f32) -> Result<()> {
    if !(r[0] > lo && r[0] <= r[1] && r[1] <= hi) {
        return Err(DataError::config(
            field,
            format!(
                "range [{}, {}] must satisfy {lo} < min <= max <= {hi}",
                r[0], r[1]
            ),
        ));
    }
    Ok(())
}

impl ViewRecipe {
    /// SimCLR's recipe adapted to small grayscale images such as Fashion-MNIST
    /// (28x28): crop scale `[0.2, 1]` instead of `[0.08, 1]`, because an 8% crop of a
    /// 28-pixel image is about 8 pixels wide; no blur, which SimCLR also drops on
    /// CIFAR. Flip and jitter strengths are SimCLR's (s = 0.5).
    pub fn simclr_small_grayscale() -> Self {
        Self {
            crop: Some(CropConfig {
                scale: [0.2, 1.0],
                ratio: default_ratio(),
            }),
            hflip: 0.5,
            rotation: 0.0,
            color_jitter: Some(ColorJitterConfig {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.0,
                hue: 0.0,
                p: 0.8,
            }),
            grayscale: 0.0,
            blur: None,
            solarize: None,
        }
    }

    /// SimCLR's CIFAR recipe (colour strength 0.5, no blur).
    pub fn simclr_cifar() -> Self {
        Self {
            crop: Some(CropConfig {
                scale: [0.08, 1.0],
                ratio: default_ratio(),
            }),
            hflip: 0.5,
            rotation: 0.0,
            color_jitter: Some(ColorJitterConfig {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.4,
                hue: 0.1,
                p: 0.8,
            }),
            grayscale: 0.2,
            blur: None,
            solarize: None,
        }
    }

    /// Checks every probability and range.
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = &self.crop {
            check_range("crop.scale", c.scale, 0.0, 1.0)?;
            check_range("crop.ratio", c.ratio, 0.0, f32::INFINITY)?;
        }
        check_prob("hflip", self.hflip)?;
        check_prob("rotation", self.rotation)?;
        check_prob("grayscale", self.grayscale)?;
        if let Some(j) = &self.color_jitter {
            check_prob("color_jitter.p", j.p)?;
            for (name, v) in [
                ("color_jitter.brightness", j.brightness),
                ("color_jitter.contrast", j.contrast),
                ("color_jitter.saturation", j.saturation),
            ] {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(DataError::config(
                        name,
                        format!("strength {v} must be >= 0"),
                    ));
                }
            }
            if !(0.0..=0.5).contains(&j.hue) {
                return Err(DataError::config(
                    "color_jitter.hue",
                    format!("{} is outside [0, 0.5]", j.hue),
                ));
            }
        }
        if let Some(b) = &self.blur {
            check_prob("blur.p", b.p)?;
            check_range("blur.sigma", b.sigma, 0.0, f32::INFINITY)?;
            if b.kernel_size % 2 == 0 {
                return Err(DataError::config(
                    "blur.kernel_size",
                    format!("{} must be odd", b.kernel_size),
                ));
            }
        }
        if let Some(s) = &self.solarize {
            check_prob("solarize.p", s.p)?;
            check_prob("solarize.threshold", s.threshold)?;
        }
        Ok(())
    }

    /// Augments one image of `shape` and returns it at the same size, in `[0, 1]`.
    pub fn apply<R: Rng>(&self, pixels: &[u8], shape: ImageShape, rng: &mut R) -> Image {
        self.apply_in(pixels, shape, None, rng)
    }

    /// [`ViewRecipe::apply`], with the crop placed by ContrastiveCrop inside `region`
    /// (the image's object box and the centre distribution) when one is given.
    pub fn apply_in<R: Rng>(
        &self,
        pixels: &[u8],
        shape: ImageShape,
        region: Option<(Region, &Beta<f32>)>,
        rng: &mut R,
    ) -> Image {
        self.render(pixels, shape, &self.sample(shape, region, rng))
    }

    /// Draws every random choice of one view of an image of `shape`, in pipeline
    /// order, without touching pixels: what [`ViewRecipe::render`] applies. Drawing
    /// and rendering separately gives the same image as [`ViewRecipe::apply_in`] with
    /// the same generator.
    pub fn sample<R: Rng>(
        &self,
        shape: ImageShape,
        region: Option<(Region, &Beta<f32>)>,
        rng: &mut R,
    ) -> ViewParams {
        let (h, w) = (shape.height, shape.width);
        let crop = self.crop.as_ref().map(|c| match region {
            Some((region, beta)) => {
                sample_contrastive_crop(h, w, c.scale, c.ratio, region, beta, rng)
            }
            None => augment::sample_crop_box(h, w, c.scale, c.ratio, rng),
        });
        let flip = self.hflip > 0.0 && rng.random::<f32>() < self.hflip;
        let quarter_turns = if self.rotation > 0.0 && rng.random::<f32>() < self.rotation {
            rng.random_range(1..=3u8)
        } else {
            0
        };
        let jitter = match &self.color_jitter {
            Some(j) if rng.random::<f32>() < j.p => {
                let mut order = [0u8, 1, 2, 3];
                order.shuffle(rng);
                let factor = |s: f32, rng: &mut R| rng.random_range((1.0 - s).max(0.0)..=1.0 + s);
                let mut steps = Vec::with_capacity(4);
                for op in order {
                    match op {
                        0 if j.brightness > 0.0 => {
                            steps.push(ColorStep::Brightness(factor(j.brightness, rng)))
                        }
                        1 if j.contrast > 0.0 => {
                            steps.push(ColorStep::Contrast(factor(j.contrast, rng)))
                        }
                        2 if j.saturation > 0.0 => {
                            steps.push(ColorStep::Saturation(factor(j.saturation, rng)))
                        }
                        3 if j.hue > 0.0 => {
                            steps.push(ColorStep::Hue(rng.random_range(-j.hue..=j.hue)))
                        }
                        _ => {}
                    }
                }
                steps
            }
            _ => Vec::new(),
        };
        let grayscale = self.grayscale > 0.0 && rng.random::<f32>() < self.grayscale;
        let blur = match &self.blur {
            Some(b) if rng.random::<f32>() < b.p => {
                Some((rng.random_range(b.sigma[0]..=b.sigma[1]), b.kernel_size))
            }
            _ => None,
        };
        let solarize = match &self.solarize {
            Some(s) if rng.random::<f32>() < s.p => Some(s.threshold),
            _ => None,
        };
        ViewParams {
            crop,
            flip,
            quarter_turns,
            jitter,
            grayscale,
            blur,
            solarize,
        }
    }

    /// Renders one view of the image `pixels` of `shape` with the choices `p`, at the
    /// same size, in `[0, 1]`.
    pub fn render(&self, pixels: &[u8], shape: ImageShape, p: &ViewParams) -> Image {
        let mut img = Image::from_u8(pixels, shape.height, shape.width, shape.channels);
        if let Some(b) = p.crop {
            img = augment::resized_crop(&img, b, shape.height, shape.width);
        }
        if p.flip {
            augment::hflip(&mut img);
        }
        if p.quarter_turns > 0 {
            augment::rotate_quarter_turns(&mut img, p.quarter_turns);
        }
        for step in &p.jitter {
            match *step {
                ColorStep::Brightness(f) => augment::adjust_brightness(&mut img, f),
                ColorStep::Contrast(f) => augment::adjust_contrast(&mut img, f),
                ColorStep::Saturation(f) => augment::adjust_saturation(&mut img, f),
                ColorStep::Hue(shift) => augment::adjust_hue(&mut img, shift),
            }
        }
        if p.grayscale {
            augment::to_grayscale(&mut img);
        }
        if let Some((sigma, kernel_size)) = p.blur {
            augment::gaussian_blur(&mut img, sigma, kernel_size);
        }
        if let Some(threshold) = p.solarize {
            augment::solarize(&mut img, threshold);
        }
        img
    }
}

/// One colour-jitter adjustment with its drawn factor (hue: shift in turns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ColorStep {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
    Hue(f32),
}

/// Every random choice of one augmented view ([`ViewRecipe::sample`]), grouped by
/// augmentation family so that views can share some families and redraw the others
/// (LooC's leave-one-out keys, [`ViewParams::share`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewParams {
    /// The crop window in source pixels (family `crop`).
    pub crop: Option<augment::CropBox>,
    /// Mirrored left to right (family `flip`).
    pub flip: bool,
    /// Counter-clockwise quarter turns, 0 to 3 (family `rotation`).
    pub quarter_turns: u8,
    /// The colour-jitter adjustments in the order applied (family `color`).
    pub jitter: Vec<ColorStep>,
    /// Converted to grayscale (family `color`).
    pub grayscale: bool,
    /// Gaussian blur `(sigma, kernel side)` (family `blur`).
    pub blur: Option<(f32, usize)>,
    /// Solarize threshold (family `solarize`).
    pub solarize: Option<f32>,
}

/// A group of augmentations whose random choices a view can take over from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// The crop window.
    Crop,
    /// The horizontal flip.
    Flip,
    /// Quarter-turn rotation (`rotation`).
    Rotation,
    /// Colour jitter and grayscale conversion.
    Color,
    /// Gaussian blur.
    Blur,
    /// Solarize.
    Solarize,
}

impl Family {
    /// The family's name in configs.
    pub fn name(self) -> &'static str {
        match self {
            Family::Crop => "crop",
            Family::Flip => "flip",
            Family::Rotation => "rotation",
            Family::Color => "color",
            Family::Blur => "blur",
            Family::Solarize => "solarize",
        }
    }

    /// Whether `recipe` draws anything in this family (a family it never applies
    /// cannot make views differ).
    pub fn is_active(self, recipe: &ViewRecipe) -> bool {
        match self {
            Family::Crop => recipe.crop.is_some(),
            Family::Flip => recipe.hflip > 0.0,
            Family::Rotation => recipe.rotation > 0.0,
            Family::Color => recipe.color_jitter.is_some() || recipe.grayscale > 0.0,
            Family::Blur => recipe.blur.is_some(),
            Family::Solarize => recipe.solarize.is_some(),
        }
    }
}

impl ViewParams {
    /// Takes family `family`'s choices from `other`, keeping its own for the rest.
    pub fn share(&mut self, family: Family, other: &ViewParams) {
        match family {
            Family::Crop => self.crop = other.crop,
            Family::Flip => self.flip = other.flip,
            Family::Rotation => self.quarter_turns = other.quarter_turns,
            Family::Color => {
                self.jitter = other.jitter.clone();
                self.grayscale = other.grayscale;
            }
            Family::Blur => self.blur = other.blur,
            Family::Solarize => self.solarize = other.solarize,
        }
    }
}
