//! A loader that augments views in parallel (rayon) on a background thread, a few
//! batches ahead of the model.
//!
//! Determinism: the epoch's order comes from `(seed, epoch)` and each image's
//! augmentation from `(seed, epoch, view, dataset index)`, so results do not depend on
//! thread scheduling, the prefetch depth or where a resumed run starts.

use crate::contrastive_crop::Regions;
use crate::dataset::{Dataset, ImageShape};
use crate::error::{DataError, Result};
use crate::recipe::{Family, ViewRecipe};
use crate::seeds::{Stream, stream_rng};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batching and ordering options.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch (each yields one sample per view).
    pub batch_size: usize,
    /// Drop the last incomplete batch of an epoch.
    pub drop_last: bool,
    /// Shuffle the order each epoch.
    pub shuffle: bool,
    /// Seed of every random choice the loader makes.
    pub seed: u64,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

/// Per-channel normalisation applied after augmentation: `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Normalisation with the dataset's own training statistics.
    pub fn from_dataset(d: &Dataset) -> Self {
        let (mean, std) = d.channel_stats();
        Self { mean, std }
    }
}

/// One batch: the dataset indices (instance ids) and labels (`None` for unlabeled
/// data) of all `B` images, and one `[b, H, W, C]` buffer per view for the `b` images
/// of `local`, the rows this process encodes (all of them, `0..B`, except in a
/// data-parallel run, where each rank holds its own shard).
#[derive(Debug, Clone)]
pub struct Batch {
    pub epoch: usize,
    pub step: usize,
    pub indices: Vec<u32>,
    pub labels: Option<Vec<u32>>,
    pub views: Vec<Vec<f32>>,
    pub shape: ImageShape,
    pub local: Range<usize>,
}

impl Batch {
    /// Number of images in the (global) batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// A single-process batch: every row's views are held.
    pub fn whole(
        epoch: usize,
        step: usize,
        indices: Vec<u32>,
        labels: Option<Vec<u32>>,
        views: Vec<Vec<f32>>,
        shape: ImageShape,
    ) -> Self {
        let local = 0..indices.len();
        Self {
            epoch,
            step,
            indices,
            labels,
            views,
            shape,
            local,
        }
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The labels as `i64` class ids (what the losses and the memory take), or
    /// `None` for unlabeled data.
    pub fn class_ids(&self) -> Option<Vec<i64>> {
        self.labels
            .as_ref()
            .map(|l| l.iter().map(|&c| c as i64).collect())
    }
}

/// Produces augmented multi-view batches from a dataset.
#[derive(Debug, Clone)]
pub struct ViewLoader {
    dataset: Arc<Dataset>,
    recipes: Arc<Vec<ViewRecipe>>,
    norm: Arc<Normalization>,
    config: LoaderConfig,
    /// `(rank, ranks)`: this process augments the `rank`-th of `ranks` equal
    /// shares of every batch.
    shard: (usize, usize),
    /// ContrastiveCrop's object boxes, one per image: crops are placed inside them
    /// while set.
    regions: Option<Arc<Regions>>,
    /// LooC's leave-one-out keys: view `2 + i` takes family `families[i]`'s random
    /// choices from view 0 (the query) and draws the rest afresh.
    leave_one_out: Arc<Vec<Family>>,
}

impl ViewLoader {
    /// Checks the recipes and configuration against the dataset.
    pub fn new(
        dataset: Arc<Dataset>,
        recipes: Vec<ViewRecipe>,
        norm: Normalization,
        config: LoaderConfig,
    ) -> Result<Self> {
        if recipes.is_empty() {
            return Err(DataError::config(
                "views",
                "at least one view recipe is required",
            ));
        }
        for r in &recipes {
            r.validate()?;
            if r.rotation > 0.0 && dataset.shape.height != dataset.shape.width {
                return Err(DataError::config(
                    "rotation",
                    format!(
                        "quarter-turn rotation needs square images; `{}` has {}x{}",
                        dataset.name, dataset.shape.height, dataset.shape.width
                    ),
                ));
            }
        }
        if config.batch_size == 0 {
            return Err(DataError::config("batch_size", "must be at least 1"));
        }
        if config.drop_last && config.batch_size > dataset.len() {
            return Err(DataError::config(
                "batch_size",
                format!(
                    "{} exceeds the {} images of `{}` while drop_last is set",
                    config.batch_size,
                    dataset.len(),
                    dataset.name
                ),
            ));
        }
        let c = dataset.shape.channels;
        if norm.mean.len() != c || norm.std.len() != c || norm.std.iter().any(|s| *s <= 0.0) {
            return Err(DataError::config(
                "normalization",
                format!("expected {c} means and {c} positive standard deviations"),
            ));
        }
        Ok(Self {
            dataset,
            recipes: Arc::new(recipes),
            norm: Arc::new(norm),
            config: LoaderConfig {
                prefetch: config.prefetch.max(1),
                ..config
            },
            shard: (0, 1),
            regions: None,
            leave_one_out: Arc::new(Vec::new()),
        })
    }

    /// The loader of rank `rank` of `ranks` in a data-parallel run: batches keep
    /// `batch_size` images in the same order as in one process (the global batch),
    /// and this rank augments only its share, rows `rank * b..(rank + 1) * b` with
    /// `b = batch_size / ranks`. Each image's augmentation depends on the image, not
    /// on the rank, so the ranks' views together are the single process's views.
    pub fn sharded(mut self, rank: usize, ranks: usize) -> Result<Self> {
        if ranks == 0 || rank >= ranks || !self.config.batch_size.is_multiple_of(ranks) {
            return Err(DataError::config(
                "batch_size",
                format!(
                    "the global batch of {} images does not split evenly over {ranks} ranks; choose a multiple of {ranks}",
                    self.config.batch_size
                ),
            ));
        }
        self.shard = (rank, ranks);
        Ok(self)
    }

    /// LooC's views: view 0 is the query, view 1 the key that redraws every
    /// augmentation, and view `2 + i` the key that shares family `families[i]` with the
    /// query and redraws the others. Needs `2 + families.len()` views.
    pub fn leave_one_out(mut self, families: Vec<Family>) -> Result<Self> {
        if self.recipes.len() != 2 + families.len() {
            return Err(DataError::config(
                "views",
                format!(
                    "{} leave-one-out families need {} views (query, key, one key per family), not {}",
                    families.len(),
                    2 + families.len(),
                    self.recipes.len()
                ),
            ));
        }
        for f in &families {
            if !f.is_active(&self.recipes[0]) {
                return Err(DataError::config(
                    "families",
                    format!(
                        "family `{}` is never applied by the recipe, so leaving it out changes nothing",
                        f.name()
                    ),
                ));
            }
        }
        self.leave_one_out = Arc::new(families);
        Ok(self)
    }

    /// Places every crop inside its image's box with ContrastiveCrop from now on
    /// (`Some`), or draws plain random resized crops (`None`). Streams already
    /// started keep what they were started with.
    pub fn set_regions(&mut self, regions: Option<Arc<Regions>>) -> Result<()> {
        if let Some(r) = &regions
            && r.len() != self.dataset.len()
        {
            return Err(DataError::config(
                "contrastive_crop",
                format!(
                    "{} boxes for the {} images of `{}`",
                    r.len(),
                    self.dataset.len(),
                    self.dataset.name
                ),
            ));
        }
        self.regions = regions;
        Ok(())
    }

    /// The dataset being loaded.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order of dataset indices in `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.dataset.len() as u32).collect();
        if self.config.shuffle {
            let mut rng = stream_rng(self.config.seed, Stream::EpochOrder, &[epoch as u64]);
            order.shuffle(&mut rng);
        }
        order
    }

    /// Builds batch `step` of `epoch` from that epoch's `order`, augmenting in
    /// parallel over images.
    pub fn batch(&self, epoch: usize, step: usize, order: &[u32]) -> Batch {
        let b = self.config.batch_size;
        let indices: Vec<u32> = order[step * b..((step + 1) * b).min(order.len())].to_vec();
        let (rank, ranks) = self.shard;
        let share = indices.len() / ranks;
        let local = rank * share..(rank + 1) * share;
        let shape = self.dataset.shape;
        let numel = shape.numel();
        let c = shape.channels;
        let views = self
            .recipes
            .iter()
            .enumerate()
            .map(|(v, recipe)| {
                let mut buf = vec![0f32; local.len() * numel];
                buf.par_chunks_mut(numel)
                    .zip(indices[local.clone()].par_iter())
                    .for_each(|(out, &idx)| {
                        let mut rng = stream_rng(
                            self.config.seed,
                            Stream::Augmentation,
                            &[epoch as u64, v as u64, idx as u64],
                        );
                        let region = self.regions.as_ref().map(|r| r.of(idx as usize));
                        let mut params = recipe.sample(shape, region, &mut rng);
                        if let Some(&family) =
                            v.checked_sub(2).and_then(|i| self.leave_one_out.get(i))
                        {
                            // The query's choices, drawn again from its own stream.
                            let mut query_rng = stream_rng(
                                self.config.seed,
                                Stream::Augmentation,
                                &[epoch as u64, 0, idx as u64],
                            );
                            let query = self.recipes[0].sample(shape, region, &mut query_rng);
                            params.share(family, &query);
                        }
                        let img = recipe.render(self.dataset.image(idx as usize), shape, &params);
                        for (k, (o, x)) in out.iter_mut().zip(&img.data).enumerate() {
                            *o = (x - self.norm.mean[k % c]) / self.norm.std[k % c];
                        }
                    });
                buf
            })
            .collect();
        Batch {
            epoch,
            step,
            labels: self
                .dataset
                .labels()
                .map(|l| indices.iter().map(|&i| l[i as usize]).collect()),
            indices,
            views,
            shape,
            local,
        }
    }

    /// Streams the batches of `epoch` from `start_step` on, prepared on a background
    /// thread up to `prefetch` batches ahead.
    pub fn stream(&self, epoch: usize, start_step: usize) -> EpochStream {
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(self.config.prefetch);
        let loader = self.clone();
        let steps = self.steps_per_epoch();
        let handle = std::thread::Builder::new()
            .name("contrast-loader".into())
            .spawn(move || {
                let order = loader.order(epoch);
                for step in start_step..steps {
                    if tx.send(loader.batch(epoch, step, &order)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the loader thread");
        EpochStream {
            rx: Some(rx),
            handle: Some(handle),
            waited: Duration::ZERO,
        }
    }
}

/// The batches of one epoch, arriving from the loader thread. Records how long the
/// consumer waited for data, which should stay near zero.
#[derive(Debug)]
pub struct EpochStream {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    waited: Duration,
}

impl EpochStream {
    /// Total time spent blocked waiting for a batch.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Iterator for EpochStream {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let start = Instant::now();
        let batch = self.rx.as_ref()?.recv().ok();
        self.waited += start.elapsed();
        batch
    }
}

impl Drop for EpochStream {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
