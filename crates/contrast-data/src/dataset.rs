//! Image datasets: `u8` pixels in `[N, H, W, C]` (channels last), owned or
//! memory-mapped, plus labels when the source has them.

use crate::error::{DataError, Result};
use std::sync::Arc;

/// Height, width and channel count of every image in a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl ImageShape {
    /// Number of values in one image (`H * W * C`).
    pub fn numel(&self) -> usize {
        self.height * self.width * self.channels
    }
}

/// Image bytes `[N, H, W, C]`, owned or memory-mapped from a cache file.
#[derive(Debug)]
pub enum Pixels {
    /// Decoded into memory (the bundled readers).
    Owned(Vec<u8>),
    /// A region of a memory-mapped file (an image-folder cache): epochs read the
    /// decoded pixels from the page cache instead of decoding again.
    Mapped {
        map: memmap2::Mmap,
        offset: usize,
        len: usize,
    },
}

impl std::ops::Deref for Pixels {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }
}

/// An image set held as bytes, channels last, with a class label per image when
/// the source has them.
///
/// Bytes keep Fashion-MNIST's 60,000 training images at 47 MB; conversion to `f32`
/// happens per batch, inside augmentation. A subset shares its parent's pixels and
/// holds only the rows it takes, so carving a validation split copies no image.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name, used in messages and run reports.
    pub name: String,
    /// Every image of the source, `[rows, H, W, C]` row-major.
    pixels: Arc<Pixels>,
    /// The source row of each image of this dataset, in order.
    rows: Vec<u32>,
    /// One class index per image, each `< num_classes`; `None` for unlabeled data.
    labels: Option<Vec<u32>>,
    pub shape: ImageShape,
    /// Number of classes (0 for unlabeled data).
    pub num_classes: usize,
    /// Class names by index, when the source names them (image-folder classes);
    /// empty otherwise.
    pub class_names: Vec<String>,
    /// The file of each source row, when the images came from files.
    paths: Option<Arc<Vec<std::path::PathBuf>>>,
}

/// The train and test parts of a dataset.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

impl Dataset {
    /// Builds a labelled dataset after checking that sizes and labels agree.
    pub fn new(
        name: impl Into<String>,
        images: Vec<u8>,
        labels: Vec<u32>,
        shape: ImageShape,
        num_classes: usize,
    ) -> Result<Self> {
        Self::from_pixels(
            name,
            Pixels::Owned(images),
            Some(labels),
            shape,
            num_classes,
        )
    }

    /// Builds a dataset from pixels and optional labels (`num_classes` is ignored,
    /// and 0, without them), checking that sizes and labels agree.
    pub fn from_pixels(
        name: impl Into<String>,
        pixels: Pixels,
        labels: Option<Vec<u32>>,
        shape: ImageShape,
        num_classes: usize,
    ) -> Result<Self> {
        let name = name.into();
        let numel = shape.numel();
        if numel == 0 || !pixels.len().is_multiple_of(numel) {
            return Err(DataError::config(
                "images",
                format!(
                    "{name}: {} bytes of pixels are not a whole number of {}x{}x{} images",
                    pixels.len(),
                    shape.height,
                    shape.width,
                    shape.channels
                ),
            ));
        }
        let n = pixels.len() / numel;
        if let Some(labels) = &labels {
            if labels.len() != n {
                return Err(DataError::config(
                    "images",
                    format!(
                        "{name}: {} bytes of pixels do not match {} labels of {}x{}x{} images",
                        pixels.len(),
                        labels.len(),
                        shape.height,
                        shape.width,
                        shape.channels
                    ),
                ));
            }
            if let Some((i, &l)) = labels
                .iter()
                .enumerate()
                .find(|(_, l)| **l as usize >= num_classes)
            {
                return Err(DataError::config(
                    "labels",
                    format!(
                        "{name}: label {l} at index {i} is not below num_classes = {num_classes}"
                    ),
                ));
            }
        }
        let num_classes = if labels.is_some() { num_classes } else { 0 };
        Ok(Self {
            name,
            pixels: Arc::new(pixels),
            rows: (0..n as u32).collect(),
            labels,
            shape,
            num_classes,
            class_names: Vec::new(),
            paths: None,
        })
    }

    /// The same dataset with class names (one per class).
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.num_classes {
            return Err(DataError::config(
                "class_names",
                format!(
                    "{}: {} class names for {} classes",
                    self.name,
                    names.len(),
                    self.num_classes
                ),
            ));
        }
        self.class_names = names;
        Ok(self)
    }

    /// The same dataset with the file each image was read from (one per image).
    pub fn with_paths(mut self, paths: Vec<std::path::PathBuf>) -> Result<Self> {
        if paths.len() != self.pixels.len() / self.shape.numel() {
            return Err(DataError::config(
                "paths",
                format!(
                    "{}: {} paths for {} images",
                    self.name,
                    paths.len(),
                    self.len()
                ),
            ));
        }
        self.paths = Some(Arc::new(paths));
        Ok(self)
    }

    /// The file image `i` was read from, when it came from one.
    pub fn path(&self, i: usize) -> Option<&std::path::Path> {
        self.paths
            .as_ref()
            .map(|p| p[self.rows[i] as usize].as_path())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The class label of every image, or `None` for unlabeled data.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// True when every image has a class label.
    pub fn is_labelled(&self) -> bool {
        self.labels.is_some()
    }

    /// The pixels of image `i`, `[H, W, C]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.numel();
        let r = self.rows[i] as usize;
        &self.pixels[r * n..(r + 1) * n]
    }

    /// A new dataset holding the given images, in the given order. It shares the
    /// pixels (no image is copied).
    pub fn subset(&self, indices: &[usize]) -> Self {
        Self {
            name: self.name.clone(),
            pixels: self.pixels.clone(),
            rows: indices.iter().map(|&i| self.rows[i]).collect(),
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            shape: self.shape,
            num_classes: self.num_classes,
            class_names: self.class_names.clone(),
            paths: self.paths.clone(),
        }
    }

    /// The same images with their classes merged: an image of class `c` gets class
    /// `map[c]`, named `names[map[c]]` (e.g. Fashion-MNIST's 10 classes as 4
    /// superclasses). Needs labels, one entry of `map` per class, and every entry
    /// below `names.len()`.
    pub fn merge_classes(&self, map: &[u32], names: Vec<String>) -> Result<Self> {
        let fail =
            |message: String| DataError::config("classes", format!("{}: {message}", self.name));
        let Some(labels) = &self.labels else {
            return Err(fail("the images have no labels to merge".into()));
        };
        if map.len() != self.num_classes {
            return Err(fail(format!(
                "{} class mappings for {} classes",
                map.len(),
                self.num_classes
            )));
        }
        if let Some(&m) = map.iter().find(|&&m| m as usize >= names.len()) {
            return Err(fail(format!("class {m} is not below {}", names.len())));
        }
        Ok(Self {
            labels: Some(labels.iter().map(|&l| map[l as usize]).collect()),
            num_classes: names.len(),
            class_names: names,
            ..self.clone()
        })
    }

    /// The first `n` images (all of them when `n >= len`).
    pub fn head(&self, n: usize) -> Self {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx)
    }

    /// Per-channel mean and standard deviation of the pixels, scaled to `[0, 1]`.
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.shape.channels;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for i in 0..self.len() {
            for (k, &p) in self.image(i).iter().enumerate() {
                let v = p as f64 / 255.0;
                sum[k % c] += v;
                sq[k % c] += v * v;
            }
        }
        let count = (self.len() * self.shape.numel() / c.max(1)).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / count - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// Images `range` as `f32`, scaled to `[0, 1]` and normalised per channel with
    /// `mean` and `std`, laid out `[n, H, W, C]`. This is the un-augmented input used
    /// for evaluation.
    pub fn normalized_f32(
        &self,
        range: std::ops::Range<usize>,
        mean: &[f32],
        std: &[f32],
    ) -> Vec<f32> {
        let c = self.shape.channels;
        range
            .flat_map(|i| self.image(i).iter().enumerate())
            .map(|(k, &p)| (p as f32 / 255.0 - mean[k % c]) / std[k % c])
            .collect()
    }
}
