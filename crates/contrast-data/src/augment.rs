//! Image augmentation ops on `f32` images in `[0, 1]`, channels last.
//!
//! Ops follow torchvision's definitions (random resized crop, colour jitter, blur,
//! solarize) so that recipes from the literature carry over. Grayscale images
//! (one channel) accept every op; saturation, hue and grayscale conversion leave them
//! unchanged because they have no chroma.

use rand::Rng;

/// An image being augmented: `[H, W, C]` row-major `f32`, nominally in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

/// Luma weights (ITU-R 601), as torchvision's `rgb_to_grayscale`.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

impl Image {
    /// Converts `u8` pixels `[H, W, C]` to `[0, 1]` floats.
    pub fn from_u8(pixels: &[u8], height: usize, width: usize, channels: usize) -> Self {
        debug_assert_eq!(pixels.len(), height * width * channels);
        Self {
            height,
            width,
            channels,
            data: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        }
    }

    fn luma(&self, px: &[f32]) -> f32 {
        if self.channels == 3 {
            LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2]
        } else {
            px[0]
        }
    }

    /// Mean grayscale intensity over the image.
    fn mean_luma(&self) -> f32 {
        let sum: f32 = self
            .data
            .chunks_exact(self.channels)
            .map(|px| self.luma(px))
            .sum();
        sum / (self.height * self.width) as f32
    }
}

/// A crop window in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Samples a crop window as torchvision's `RandomResizedCrop.get_params`: an area
/// fraction from `scale` and a log-uniform aspect ratio from `ratio`, ten tries, then
/// a centre crop with the ratio clamped. The window's position is uniform.
pub fn sample_crop_box<R: Rng>(
    height: usize,
    width: usize,
    scale: [f32; 2],
    ratio: [f32; 2],
    rng: &mut R,
) -> CropBox {
    match sample_crop_size(height, width, scale, ratio, rng) {
        Some((h, w)) => CropBox {
            top: rng.random_range(0..=height - h),
            left: rng.random_range(0..=width - w),
            height: h,
            width: w,
        },
        None => centre_crop(height, width, ratio),
    }
}

/// The size `(h, w)` of a random resized crop: up to ten draws of an area fraction
/// in `scale` and a log-uniform aspect ratio in `ratio`, the first that fits the
/// image; `None` when none does (the caller then takes [`centre_crop`]).
pub(crate) fn sample_crop_size<R: Rng>(
    height: usize,
    width: usize,
    scale: [f32; 2],
    ratio: [f32; 2],
    rng: &mut R,
) -> Option<(usize, usize)> {
    let area = (height * width) as f32;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale[0]..=scale[1]);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if w > 0 && h > 0 && w <= width && h <= height {
            return Some((h, w));
        }
    }
    None
}

/// The fallback of a random resized crop: the whole image, its aspect ratio clamped
/// into `ratio`, centred.
pub(crate) fn centre_crop(height: usize, width: usize, ratio: [f32; 2]) -> CropBox {
    let in_ratio = width as f32 / height as f32;
    let (w, h) = if in_ratio < ratio[0] {
        (width, ((width as f32 / ratio[0]).round() as usize).max(1))
    } else if in_ratio > ratio[1] {
        (((height as f32 * ratio[1]).round() as usize).max(1), height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// Resizes the window `b` of `img` to `out_h x out_w` with bilinear interpolation
/// (half-pixel centres, edge clamping, no antialiasing).
pub fn resized_crop(img: &Image, b: CropBox, out_h: usize, out_w: usize) -> Image {
    let c = img.channels;
    let mut data = vec![0f32; out_h * out_w * c];
    let sy = b.height as f32 / out_h as f32;
    let sx = b.width as f32 / out_w as f32;
    let max_y = (img.height - 1) as f32;
    let max_x = (img.width - 1) as f32;
    for y in 0..out_h {
        let fy = (b.top as f32 + (y as f32 + 0.5) * sy - 0.5).clamp(0.0, max_y);
        let y0 = fy.floor() as usize;
        let y1 = (y0 + 1).min(img.height - 1);
        let wy = fy - y0 as f32;
        for x in 0..out_w {
            let fx = (b.left as f32 + (x as f32 + 0.5) * sx - 0.5).clamp(0.0, max_x);
            let x0 = fx.floor() as usize;
            let x1 = (x0 + 1).min(img.width - 1);
            let wx = fx - x0 as f32;
            for ch in 0..c {
                let at = |yy: usize, xx: usize| img.data[(yy * img.width + xx) * c + ch];
                let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
                let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
                data[(y * out_w + x) * c + ch] = (top * (1.0 - wy) + bottom * wy).clamp(0.0, 1.0);
            }
        }
    }
    Image {
        height: out_h,
        width: out_w,
        channels: c,
        data,
    }
}

/// Rotates a square image counter-clockwise by `turns` quarter turns (0 to 3).
pub fn rotate_quarter_turns(img: &mut Image, turns: u8) {
    assert_eq!(img.height, img.width, "quarter turns need a square image");
    let (n, c) = (img.height, img.channels);
    let src = img.data.clone();
    for y in 0..n {
        for x in 0..n {
            // The source pixel that lands at (y, x).
            let (sy, sx) = match turns % 4 {
                0 => (y, x),
                1 => (x, n - 1 - y),
                2 => (n - 1 - y, n - 1 - x),
                _ => (n - 1 - x, y),
            };
            let (to, from) = ((y * n + x) * c, (sy * n + sx) * c);
            img.data[to..to + c].copy_from_slice(&src[from..from + c]);
        }
    }
}

/// Mirrors the image left to right.
pub fn hflip(img: &mut Image) {
    let (w, c) = (img.width, img.channels);
    for row in img.data.chunks_exact_mut(w * c) {
        for x in 0..w / 2 {
            for ch in 0..c {
                row.swap(x * c + ch, (w - 1 - x) * c + ch);
            }
        }
    }
}

fn blend_clamped(v: f32, other: f32, factor: f32) -> f32 {
    (factor * v + (1.0 - factor) * other).clamp(0.0, 1.0)
}

/// Multiplies intensities by `factor` (torchvision `adjust_brightness`).
pub fn adjust_brightness(img: &mut Image, factor: f32) {
    img.data
        .iter_mut()
        .for_each(|v| *v = (*v * factor).clamp(0.0, 1.0));
}

/// Blends with the mean grayscale intensity (torchvision `adjust_contrast`).
pub fn adjust_contrast(img: &mut Image, factor: f32) {
    let mean = img.mean_luma();
    img.data
        .iter_mut()
        .for_each(|v| *v = blend_clamped(*v, mean, factor));
}

/// Blends each pixel with its grayscale value (torchvision `adjust_saturation`).
/// A no-op on one-channel images.
pub fn adjust_saturation(img: &mut Image, factor: f32) {
    if img.channels != 3 {
        return;
    }
    for px in img.data.chunks_exact_mut(3) {
        let g = LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2];
        px.iter_mut()
            .for_each(|v| *v = blend_clamped(*v, g, factor));
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let h = if delta <= 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    let s = if max <= 0.0 { 0.0 } else { delta / max };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match sector as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Rotates hue by `shift` turns, `shift` in `[-0.5, 0.5]` (torchvision `adjust_hue`).
/// A no-op on one-channel images.
pub fn adjust_hue(img: &mut Image, shift: f32) {
    if img.channels != 3 {
        return;
    }
    for px in img.data.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(px[0], px[1], px[2]);
        let (r, g, b) = hsv_to_rgb(h + shift, s, v);
        px[0] = r.clamp(0.0, 1.0);
        px[1] = g.clamp(0.0, 1.0);
        px[2] = b.clamp(0.0, 1.0);
    }
}

/// Replaces RGB by its luma in every channel. A no-op on one-channel images.
pub fn to_grayscale(img: &mut Image) {
    if img.channels != 3 {
        return;
    }
    for px in img.data.chunks_exact_mut(3) {
        let g = LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2];
        px.fill(g.clamp(0.0, 1.0));
    }
}

/// Index `i` reflected into `0..n` (torchvision's "reflect" padding, edge excluded).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let mut i = i;
    while i < 0 || i >= n {
        i = if i < 0 { -i } else { 2 * (n - 1) - i };
    }
    i as usize
}

/// One 1-D pass of `weights` (centred) along rows (`vertical = false`) or columns.
fn blur_pass(
    src: &[f32],
    dst: &mut [f32],
    (h, w, c): (usize, usize, usize),
    weights: &[f32],
    vertical: bool,
) {
    let r = (weights.len() / 2) as isize;
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let v: f32 = weights
                    .iter()
                    .enumerate()
                    .map(|(t, wt)| {
                        let off = t as isize - r;
                        let (yy, xx) = if vertical {
                            (reflect(y as isize + off, h), x)
                        } else {
                            (y, reflect(x as isize + off, w))
                        };
                        wt * src[(yy * w + xx) * c + ch]
                    })
                    .sum();
                dst[(y * w + x) * c + ch] = v.clamp(0.0, 1.0);
            }
        }
    }
}

/// Separable Gaussian blur with standard deviation `sigma` (pixels) and an odd
/// `kernel_size`, reflecting at the borders as torchvision does.
pub fn gaussian_blur(img: &mut Image, sigma: f32, kernel_size: usize) {
    let r = (kernel_size.max(1) / 2) as isize;
    let mut weights: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= norm);
    let dims = (img.height, img.width, img.channels);
    let mut tmp = vec![0f32; img.data.len()];
    blur_pass(&img.data, &mut tmp, dims, &weights, false);
    blur_pass(&tmp, &mut img.data, dims, &weights, true);
}

/// Inverts every intensity at or above `threshold` (torchvision `solarize`).
pub fn solarize(img: &mut Image, threshold: f32) {
    img.data.iter_mut().for_each(|v| {
        if *v >= threshold {
            *v = 1.0 - *v
        }
    });
}
