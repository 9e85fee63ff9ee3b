//! Feature extraction and the evaluation protocol (kNN monitor, final kNN and linear
//! probe, raw-pixel baselines).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use contrast_data::contrastive_crop::region_from_heat_map;
use contrast_data::{Dataset, LoaderConfig, Normalization, Region, ViewLoader, ViewRecipe};
use contrast_encoders::{Encoder, Identity, InputShape};
use contrast_eval::{
    KnnConfig, KnnPoint, ProbeConfig, ProbeReport, SimilarityHistogram, knn_accuracy, linear_probe,
};
use contrast_kernels::l2_normalize;

/// The input shape of a dataset's images.
pub fn input_shape(d: &Dataset) -> InputShape {
    InputShape {
        height: d.shape.height,
        width: d.shape.width,
        channels: d.shape.channels,
    }
}

/// The labels of a reference and a query set, or an error naming the one without.
fn labels_of<'a>(reference: &'a Dataset, query: &'a Dataset) -> Result<(&'a [u32], &'a [u32])> {
    match (reference.labels(), query.labels()) {
        (Some(r), Some(q)) => Ok((r, q)),
        _ => anyhow::bail!(
            "`{}` has no class labels: kNN and the linear probe need them",
            reference.name
        ),
    }
}

/// Evaluation settings shared by every measurement of a run.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// The training set's per-channel statistics, applied to every image.
    pub norm: Normalization,
    pub knn: KnnConfig,
    pub probe: ProbeConfig,
    /// Images per forward pass.
    pub batch: usize,
    pub device: Device,
}

impl Evaluator {
    /// Runs `f` on every batch of `data` in order, as the encoder's eval-mode input
    /// `[b, H, W, C]`: normalised, not augmented.
    fn for_each_batch(
        &self,
        data: &Dataset,
        mut f: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let s = data.shape;
        for start in (0..data.len()).step_by(self.batch.max(1)) {
            let end = (start + self.batch).min(data.len());
            f(Tensor::from_vec(
                data.normalized_f32(start..end, &self.norm.mean, &self.norm.std),
                (end - start, s.height, s.width, s.channels),
                &self.device,
            )?)?;
        }
        Ok(())
    }

    /// Representations `[N, D]` of every image of `data`, in eval mode (no
    /// augmentation).
    pub fn features(&self, encoder: &dyn Encoder, data: &Dataset) -> Result<Tensor> {
        let mut parts = Vec::new();
        self.for_each_batch(data, |x| {
            parts.push(encoder.forward_t(&x, false)?.detach());
            Ok(())
        })?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// ContrastiveCrop's object box of every image of `data`: the encoder's last
    /// feature map in eval mode, summed over channels into a heat map, thresholded
    /// at `threshold` ([`region_from_heat_map`]).
    pub fn object_boxes(
        &self,
        encoder: &dyn Encoder,
        data: &Dataset,
        threshold: f32,
    ) -> Result<Vec<Region>> {
        let (h, w) = (data.shape.height, data.shape.width);
        let mut boxes = Vec::with_capacity(data.len());
        self.for_each_batch(data, |x| {
            let map = encoder.feature_map(&x)?.context(
                "data.contrastive_crop: the encoder has no feature map to locate objects on",
            )?;
            let (_, mh, mw, _) = map.dims4()?;
            let heat = map
                .sum(candle_core::D::Minus1)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            boxes.extend(
                heat.chunks_exact(mh * mw)
                    .map(|m| region_from_heat_map(m, mh, mw, h, w, threshold)),
            );
            Ok(())
        })?;
        Ok(boxes)
    }

    /// Weighted-kNN top-1 of the `test` features (`[M, D]`, rows in `test_data`'s
    /// order) against the `bank` features (`[N, D]`, `bank_data`'s order); `k` is
    /// capped at the bank's size.
    pub fn knn_on(
        &self,
        bank: &Tensor,
        bank_data: &Dataset,
        test: &Tensor,
        test_data: &Dataset,
    ) -> Result<f64> {
        let knn = KnnConfig {
            k: self.knn.k.min(bank_data.len()),
            ..self.knn.clone()
        };
        let (bank_labels, test_labels) = labels_of(bank_data, test_data)?;
        knn_accuracy(
            bank,
            bank_labels,
            test,
            test_labels,
            bank_data.num_classes,
            &knn,
        )
        .context("kNN evaluation")
    }

    /// kNN top-1 and linear probe on the given train and test sets.
    pub fn full(
        &self,
        encoder: &dyn Encoder,
        train: &Dataset,
        test: &Dataset,
    ) -> Result<(f64, ProbeReport)> {
        let ftr = self.features(encoder, train)?;
        let fte = self.features(encoder, test)?;
        self.scores(&ftr, train, &fte, test)
    }

    /// kNN top-1 and linear probe on features already extracted (`[N, D]` for
    /// `train`, `[M, D]` for `test`).
    pub fn scores(
        &self,
        ftr: &Tensor,
        train: &Dataset,
        fte: &Tensor,
        test: &Dataset,
    ) -> Result<(f64, ProbeReport)> {
        let top1 = self.knn_on(ftr, train, fte, test)?;
        let (train_labels, test_labels) = labels_of(train, test)?;
        let report = linear_probe(
            ftr,
            train_labels,
            fte,
            test_labels,
            train.num_classes,
            &self.probe,
        )
        .context("linear probe")?;
        Ok((top1, report))
    }

    /// The raw-pixel baseline: the same kNN and probe on normalised pixels.
    pub fn pixels(&self, train: &Dataset, test: &Dataset) -> Result<(f64, ProbeReport)> {
        self.full(&Identity::new(input_shape(train)), train, test)
    }
}

/// The per-epoch monitor's measurements of one split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Monitor {
    /// Weighted kNN against the monitor bank (labelled data only).
    pub knn_top1: Option<f64>,
    pub uniformity: f64,
    pub effective_rank: f64,
    /// Alignment of two augmented views of the split's first [`MONITOR_ALIGNMENT`]
    /// images.
    pub alignment: f64,
}

/// Images whose two views the per-epoch alignment compares.
pub const MONITOR_ALIGNMENT: usize = 1000;

/// Everything `cargo xtask eval` measures on one split (`eval.json`): a number per
/// metric (`null` where the images have no labels), with the settings beside them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    /// Weighted kNN against the training images, top-1 and top-5.
    pub knn_top1: Option<f64>,
    pub knn_top5: Option<f64>,
    /// Linear probe trained on the training images' features.
    pub linear_top1: Option<f64>,
    /// Retrieval within the split, each query excluding itself (cosine).
    pub precision_at_1: Option<f64>,
    pub r_precision: Option<f64>,
    pub map_at_r: Option<f64>,
    /// k-means with one cluster per class against the classes.
    pub nmi: Option<f64>,
    pub ami: Option<f64>,
    /// Mean squared distance between two augmented views' normalised
    /// representations (Wang & Isola, alpha = 2).
    pub alignment: f64,
    pub uniformity: f64,
    pub effective_rank: f64,
    /// Mean over dimensions of the standard deviation of the L2-normalised
    /// representation: about `1 / sqrt(D)` when spread, 0 when collapsed.
    pub embedding_std: f64,
    /// Weighted kNN for k in [`SWEEP_KS`] and temperatures [`SWEEP_TEMPERATURES`],
    /// from one pass over the bank.
    pub knn_sweep: Vec<KnnPoint>,
    /// Cosine histograms of same-class and different-class pairs, and their overlap.
    pub similarity: Option<SimilarityHistogram>,
    /// The plots drawn, relative to the run directory: the SVG files, each with a
    /// PNG of the same name beside it.
    #[serde(default)]
    pub plots: Vec<String>,
    pub settings: EvalSettings,
}

/// The kNN sweep's neighbour counts.
pub const SWEEP_KS: [usize; 7] = [1, 5, 10, 20, 50, 100, 200];
/// The kNN sweep's temperatures (InstDisc's 0.07 and 0.1).
pub const SWEEP_TEMPERATURES: [f64; 2] = [0.07, 0.1];
/// Bins of the similarity histograms over `[-1, 1]`.
pub const HISTOGRAM_BINS: usize = 40;

/// The settings an [`EvalReport`] was measured with.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalSettings {
    pub split: String,
    pub images: usize,
    pub train_images: usize,
    pub checkpoint: String,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub probe: ProbeConfig,
    pub kmeans_seed: u64,
    pub alignment_seed: u64,
    pub representation_dim: usize,
}

impl Evaluator {
    /// The per-epoch monitor on `split`: kNN against `bank` when `labelled`, and the
    /// label-free uniformity, effective rank and alignment (views drawn by `seed`),
    /// all from one feature pass over `split`.
    pub fn monitor(
        &self,
        encoder: &dyn Encoder,
        bank: &Dataset,
        split: &Dataset,
        labelled: bool,
        recipe: &ViewRecipe,
        seed: u64,
    ) -> Result<Monitor> {
        let ft = self.features(encoder, split)?;
        let knn_top1 = if labelled {
            let fb = self.features(encoder, bank)?;
            Some(self.knn_on(&fb, bank, &ft, split)?)
        } else {
            None
        };
        Ok(Monitor {
            knn_top1,
            uniformity: contrast_eval::uniformity(&ft)?,
            effective_rank: contrast_eval::effective_rank(&ft)?,
            alignment: self.alignment(encoder, &split.head(MONITOR_ALIGNMENT), recipe, seed)?,
        })
    }

    /// Alignment of `data` under `recipe`: two augmented views of every image (seeded
    /// by `seed`, in order), `mean |f(x1)/|f(x1)| - f(x2)/|f(x2)||^2`.
    pub fn alignment(
        &self,
        encoder: &dyn Encoder,
        data: &Dataset,
        recipe: &ViewRecipe,
        seed: u64,
    ) -> Result<f64> {
        let loader = ViewLoader::new(
            std::sync::Arc::new(data.clone()),
            vec![recipe.clone(); 2],
            self.norm.clone(),
            LoaderConfig {
                batch_size: self.batch.max(1),
                drop_last: false,
                shuffle: false,
                seed,
                prefetch: 2,
            },
        )?;
        let s = data.shape;
        let (mut sum, mut count) = (0f64, 0usize);
        for batch in loader.stream(0, 0) {
            let b = batch.len();
            let view = |v: usize| -> Result<Tensor> {
                let x = Tensor::from_slice(
                    &batch.views[v],
                    (b, s.height, s.width, s.channels),
                    &self.device,
                )?;
                Ok(l2_normalize(
                    &encoder.forward_t(&x, false)?.to_dtype(DType::F32)?,
                )?)
            };
            let d: f64 = (view(0)? - view(1)?)?
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar()?;
            sum += d;
            count += b;
        }
        Ok(sum / count.max(1) as f64)
    }

    /// Every metric of [`EvalReport`] for `split` (named `split_name`), with
    /// `train` as the kNN bank and the probe's training set; label metrics only
    /// when both have labels.
    ///
    /// With `plots = Some((run directory, method name))` it also draws, under
    /// `plots/`, the singular-value spectrum, the similarity histograms, and a PCA
    /// and a t-SNE map of the split coloured by class, each titled with the method
    /// (SVG and PNG).
    #[allow(clippy::too_many_arguments)]
    pub fn report(
        &self,
        encoder: &dyn Encoder,
        train: &Dataset,
        split: &Dataset,
        split_name: &str,
        recipe: &ViewRecipe,
        seed: u64,
        checkpoint: &str,
        plots: Option<(&std::path::Path, &str)>,
    ) -> Result<EvalReport> {
        let fte = self.features(encoder, split)?;
        let labelled = train.is_labelled() && split.is_labelled();
        let (mut knn1, mut knn5, mut linear) = (None, None, None);
        let (mut retrieval, mut clusters) = (None, None);
        let (mut knn_sweep, mut similarity) = (Vec::new(), None);
        if let (true, Some(split_labels)) = (labelled, split.labels()) {
            let ftr = self.features(encoder, train)?;
            let (bank_labels, _) = labels_of(train, split)?;
            knn_sweep = contrast_eval::knn_sweep(
                &fte,
                split_labels,
                &ftr,
                bank_labels,
                train.num_classes,
                &SWEEP_KS,
                &SWEEP_TEMPERATURES,
            )?;
            similarity = Some(contrast_eval::similarity_histogram(
                &fte,
                split_labels,
                train.num_classes,
                HISTOGRAM_BINS,
            )?);
            let knn = KnnConfig {
                k: self.knn.k.min(train.len()),
                ..self.knn.clone()
            };
            let pred =
                contrast_eval::knn_predict(&fte, &ftr, bank_labels, train.num_classes, &knn)?;
            knn1 = Some(contrast_eval::accuracy(&pred.predictions, split_labels));
            knn5 = Some(pred.top_k_accuracy(split_labels, 5));
            // The probe alone: kNN was scored above, from the same neighbours.
            let probe = linear_probe(
                &ftr,
                bank_labels,
                &fte,
                split_labels,
                train.num_classes,
                &self.probe,
            )
            .context("linear probe")?;
            linear = Some(probe.test_top1);
            retrieval = Some(contrast_eval::retrieval(
                &fte,
                split_labels,
                train.num_classes,
            )?);
            clusters = Some(contrast_eval::clustering(
                &fte,
                split_labels,
                train.num_classes,
                seed,
            )?);
        }
        let z = l2_normalize(&fte.to_dtype(DType::F32)?)?;
        let mean = z.mean_keepdim(0)?;
        let embedding_std: f64 = z
            .broadcast_sub(&mean)?
            .sqr()?
            .mean(0)?
            .sqrt()?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar()?;
        let plots = match plots {
            Some((dir, method)) => {
                draw_eval_plots(dir, method, split_name, &fte, split, similarity.as_ref())?
            }
            None => Vec::new(),
        };
        Ok(EvalReport {
            plots,
            knn_top1: knn1,
            knn_top5: knn5,
            linear_top1: linear,
            precision_at_1: retrieval.map(|r| r.precision_at_1),
            r_precision: retrieval.map(|r| r.r_precision),
            map_at_r: retrieval.map(|r| r.map_at_r),
            nmi: clusters.map(|c| c.nmi),
            ami: clusters.map(|c| c.ami),
            alignment: self.alignment(encoder, split, recipe, seed)?,
            uniformity: contrast_eval::uniformity(&fte)?,
            effective_rank: contrast_eval::effective_rank(&fte)?,
            embedding_std,
            knn_sweep,
            similarity,
            settings: EvalSettings {
                split: split_name.to_string(),
                images: split.len(),
                train_images: train.len(),
                checkpoint: checkpoint.to_string(),
                knn_k: self.knn.k.min(train.len()),
                knn_temperature: self.knn.temperature,
                probe: self.probe.clone(),
                kmeans_seed: seed,
                alignment_seed: seed,
                representation_dim: fte.dim(1)?,
            },
        })
    }
}

/// The eval plots of `split` (features `fte`) under `dir/plots/`; returns their paths
/// relative to `dir`.
fn draw_eval_plots(
    dir: &std::path::Path,
    method: &str,
    split_name: &str,
    fte: &Tensor,
    split: &Dataset,
    similarity: Option<&SimilarityHistogram>,
) -> Result<Vec<String>> {
    use contrast_eval::{Series, line_plot, scatter_plot};
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)?;
    let mut written = Vec::new();
    // Each plot is written as SVG and PNG; the SVG is listed.
    let name = |what: &str| format!("plots/eval-{split_name}-{what}");
    let s = contrast_eval::singular_values(fte)?;
    let top = s.first().copied().unwrap_or(0.0);
    if top > 0.0 {
        let points = s
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| ((k + 1) as f64, (v / top).log10()))
            .collect();
        let file = name("spectrum");
        line_plot(
            &dir.join(&file),
            &format!("{method}: singular values of the {split_name} representations"),
            "index k",
            "log10(s_k / s_1)",
            &[Series {
                name: "singular values".into(),
                points,
            }],
        )?;
        written.push(format!("{file}.svg"));
    }
    if let Some(h) = similarity {
        let centres: Vec<f64> = h.edges.windows(2).map(|e| 0.5 * (e[0] + e[1])).collect();
        let series = |name: &str, v: &[f64]| Series {
            name: name.into(),
            points: centres.iter().copied().zip(v.iter().copied()).collect(),
        };
        let file = name("similarity");
        line_plot(
            &dir.join(&file),
            &format!(
                "{method}: cosine of same- and different-class pairs (overlap {:.3})",
                h.overlap
            ),
            "cosine similarity",
            "share of pairs",
            &[
                series("same class", &h.positive),
                series("different class", &h.negative),
            ],
        )?;
        written.push(format!("{file}.svg"));
    }
    let points = contrast_eval::pca_2d(fte)?;
    let classes = split.labels().map(|l| &l[..points.len()]);
    let file = name("pca");
    scatter_plot(
        &dir.join(&file),
        &format!(
            "{method}: PCA of {} {split_name} representations",
            points.len()
        ),
        &points,
        classes,
        &split.class_names,
    )?;
    written.push(format!("{file}.svg"));
    if points.len() < contrast_eval::TSNE_MIN_ROWS {
        return Ok(written);
    }
    let map = contrast_eval::tsne_2d(fte, &points, &contrast_eval::TsneConfig::default())?;
    let file = name("tsne");
    scatter_plot(
        &dir.join(&file),
        &format!(
            "{method}: t-SNE of {} {split_name} representations",
            map.len()
        ),
        &map,
        classes.map(|c| &c[..map.len()]),
        &split.class_names,
    )?;
    written.push(format!("{file}.svg"));
    Ok(written)
}
