//! Image folders for the readers' and the trainer's tests: real PNG and JPEG files
//! of mixed sizes and colour modes, a learnable pattern per class, and corrupt files
//! beside them.

use crate::XorShift;
use image::{DynamicImage, ImageFormat, RgbImage};
use std::path::{Path, PathBuf};

/// One generated image: stripes whose angle says the class, a tint, and noise, at
/// `w x h` pixels. Image `k` of a class varies the phase, size and noise.
fn pattern(class: usize, classes: usize, w: u32, h: u32, rng: &mut XorShift) -> RgbImage {
    let angle = std::f64::consts::PI * class as f64 / classes as f64;
    let (c, s) = (angle.cos(), angle.sin());
    let period = w.min(h) as f64 / 3.0;
    let phase = rng.uniform(0.0, period);
    let tint = [(class * 70 % 256) as f64, (class * 130 % 256) as f64, 90.0];
    RgbImage::from_fn(w, h, |x, y| {
        let t = (x as f64 * c + y as f64 * s + phase) / period;
        let v = 0.5 + 0.45 * (2.0 * std::f64::consts::PI * t).sin();
        let noise = rng.uniform(-10.0, 10.0);
        image::Rgb(std::array::from_fn(|k| {
            (v * 200.0 + 0.2 * tint[k] + noise).clamp(0.0, 255.0) as u8
        }))
    })
}

/// Writes image `k` of `class` to `dir/stem.{png|jpg}`: every third image is
/// grayscale, every fifth PNG keeps an alpha channel, sizes run from 20 to 59 pixels
/// a side, not square.
fn write_one(
    dir: &Path,
    stem: &str,
    class: usize,
    classes: usize,
    k: usize,
    rng: &mut XorShift,
) -> PathBuf {
    let w = 20 + (k * 7 % 40) as u32;
    let h = 20 + (k * 13 % 40) as u32;
    let rgb = pattern(class, classes, w, h, rng);
    let png = k.is_multiple_of(2);
    let img = match (k % 3, k % 5) {
        (0, _) => DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8()),
        (_, 0) if png => DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb).to_rgba8()),
        _ => DynamicImage::ImageRgb8(rgb),
    };
    let (ext, format) = if png {
        ("png", ImageFormat::Png)
    } else {
        ("jpg", ImageFormat::Jpeg)
    };
    let path = dir.join(format!("{stem}.{ext}"));
    img.save_with_format(&path, format)
        .expect("writing a test image");
    path
}

/// Two files that are not images: a PNG cut after 40 bytes and text named `.jpg`.
fn write_corrupt(dir: &Path) -> Vec<PathBuf> {
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(RgbImage::new(8, 8))
        .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
        .expect("encoding");
    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &png[..40]).expect("writing");
    let text = dir.join("notes.jpg");
    std::fs::write(&text, "not a picture\n").expect("writing");
    vec![truncated, text]
}

/// Writes `classes` class sub-folders (`class0`, `class1`, ...) of `per_class`
/// images each under `dir`, and, with `corrupt`, two unreadable files in the first
/// class. Returns the corrupt files.
pub fn labelled_folder(
    dir: &Path,
    classes: usize,
    per_class: usize,
    corrupt: bool,
    seed: u64,
) -> Vec<PathBuf> {
    let mut rng = XorShift::new(seed);
    for c in 0..classes {
        let sub = dir.join(format!("class{c}"));
        std::fs::create_dir_all(&sub).expect("creating a class folder");
        for k in 0..per_class {
            write_one(&sub, &format!("img{k:04}"), c, classes, k, &mut rng);
        }
    }
    if corrupt {
        write_corrupt(&dir.join("class0"))
    } else {
        Vec::new()
    }
}

/// Writes `n` images of `classes` patterns directly in `dir` (no classes known to a
/// reader), and with `corrupt` two unreadable files. Returns the corrupt files.
pub fn flat_folder(dir: &Path, classes: usize, n: usize, corrupt: bool, seed: u64) -> Vec<PathBuf> {
    let mut rng = XorShift::new(seed);
    std::fs::create_dir_all(dir).expect("creating the folder");
    for k in 0..n {
        write_one(
            dir,
            &format!("img{k:04}"),
            k % classes,
            classes,
            k,
            &mut rng,
        );
    }
    if corrupt {
        write_corrupt(dir)
    } else {
        Vec::new()
    }
}

/// Writes CIFAR-10 binary files (`data_batch_1.bin` .. `data_batch_5.bin` with
/// `per_batch` records each, `test_batch.bin` with `test` records) into
/// `dir/cifar-10-batches-bin`: 32x32 stripes whose angle says the class (label =
/// record index mod 10), in the format's planar layout. Returns the directory to
/// pass as the data directory.
pub fn cifar10_files(dir: &Path, per_batch: usize, test: usize, seed: u64) -> PathBuf {
    let root = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&root).expect("creating the CIFAR folder");
    let mut rng = XorShift::new(seed);
    let mut records = |n: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 3073);
        for k in 0..n {
            let class = k % 10;
            let img = pattern(class, 10, 32, 32, &mut rng);
            out.push(class as u8);
            for ch in 0..3 {
                out.extend(img.pixels().map(|p| p[ch]));
            }
        }
        out
    };
    for b in 1..=5 {
        std::fs::write(root.join(format!("data_batch_{b}.bin")), records(per_batch))
            .expect("writing a CIFAR batch");
    }
    std::fs::write(root.join("test_batch.bin"), records(test))
        .expect("writing the CIFAR test batch");
    dir.to_path_buf()
}

/// A few small images encoded as files would hold them: PNG in gray, RGB, RGBA and
/// 16-bit gray, and JPEG in RGB and gray (the fuzzer's seeds).
pub fn encoded_samples() -> Vec<Vec<u8>> {
    let mut rng = XorShift::new(9);
    let rgb = DynamicImage::ImageRgb8(pattern(1, 3, 9, 6, &mut rng));
    let cases = [
        (DynamicImage::ImageLuma8(rgb.to_luma8()), ImageFormat::Png),
        (rgb.clone(), ImageFormat::Png),
        (DynamicImage::ImageRgba8(rgb.to_rgba8()), ImageFormat::Png),
        (DynamicImage::ImageLuma16(rgb.to_luma16()), ImageFormat::Png),
        (rgb.clone(), ImageFormat::Jpeg),
        (DynamicImage::ImageLuma8(rgb.to_luma8()), ImageFormat::Jpeg),
    ];
    cases
        .into_iter()
        .map(|(img, format)| {
            let mut out = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut out), format)
                .expect("encoding a sample");
            out
        })
        .collect()
}
