//! In-memory image datasets: `u8` pixels in `[N, H, W, C]` (channels last) plus labels.

use crate::error::{DataError, Result};

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

/// A labelled image set held in memory as bytes, channels last.
///
/// Bytes keep Fashion-MNIST's 60,000 training images at 47 MB; conversion to `f32`
/// happens per batch, inside augmentation.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name, used in messages and run reports.
    pub name: String,
    /// Pixels, `[len, H, W, C]` row-major.
    pub images: Vec<u8>,
    /// One class index per image, each `< num_classes`.
    pub labels: Vec<u32>,
    pub shape: ImageShape,
    pub num_classes: usize,
}

/// The train and test parts of a dataset.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

impl Dataset {
    /// Builds a dataset after checking that sizes and labels agree.
    pub fn new(
        name: impl Into<String>,
        images: Vec<u8>,
        labels: Vec<u32>,
        shape: ImageShape,
        num_classes: usize,
    ) -> Result<Self> {
        let name = name.into();
        if images.len() != labels.len() * shape.numel() {
            return Err(DataError::config(
                "images",
                format!(
                    "{name}: {} bytes of pixels do not match {} labels of {}x{}x{} images",
                    images.len(),
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
                format!("{name}: label {l} at index {i} is not below num_classes = {num_classes}"),
            ));
        }
        Ok(Self {
            name,
            images,
            labels,
            shape,
            num_classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`, `[H, W, C]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.numel();
        &self.images[i * n..(i + 1) * n]
    }

    /// A new dataset holding the given images, in the given order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut images = Vec::with_capacity(indices.len() * self.shape.numel());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Self {
            name: self.name.clone(),
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            num_classes: self.num_classes,
        }
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
        for (k, &p) in self.images.iter().enumerate() {
            let v = p as f64 / 255.0;
            sum[k % c] += v;
            sq[k % c] += v * v;
        }
        let count = (self.images.len() / c.max(1)).max(1) as f64;
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
        let n = self.shape.numel();
        self.images[range.start * n..range.end * n]
            .iter()
            .enumerate()
            .map(|(k, &p)| (p as f32 / 255.0 - mean[k % c]) / std[k % c])
            .collect()
    }
}
