//! Clustering-aware negatives: online spherical k-means over the candidate stream,
//! with the cluster id as a key (MCL, ClusterNS).
//!
//! The centroids follow the embeddings as they train: every step assigns the batch's
//! candidates to their nearest centroid (cosine) and moves each centroid towards the
//! mean of its members by `lr`, then renormalises. Without a memory bank the stream
//! of batches plays the bank's part; each epoch visits every image once.

use super::{Policy, Stage, Step};
use crate::batch::{MiningBatch, flat_f32};
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use candle_core::{DType, Device, Tensor};
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What the cluster id does to an anchor's negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// Same-cluster candidates are presumed false negatives and removed (ClusterNS's
    /// false-negative mask); they are reported as identified.
    RemoveSame,
    /// Only same-cluster candidates stay negatives (MCL's feature-aware sampling).
    RestrictToSame,
    /// Same-cluster negatives are kept at weight `same_weight` (between removal and
    /// plain instance discrimination); they are reported as identified.
    DownweightSame,
}

/// Online spherical k-means state.
#[derive(Debug, Clone, Default)]
pub struct OnlineKMeans {
    /// Unit centroids `[K * D]`, row-major; empty until seeded.
    centroids: Vec<f32>,
    dim: usize,
}

impl OnlineKMeans {
    /// Whether the centroids have been seeded.
    pub fn is_seeded(&self) -> bool {
        !self.centroids.is_empty()
    }

    /// Number of centroids once seeded.
    pub fn clusters(&self) -> usize {
        self.centroids.len() / self.dim.max(1)
    }

    /// Seeds `k` centroids from distinct random rows of `x` `[N * D]`.
    fn seed(&mut self, x: &[f32], dim: usize, k: usize, rng: &mut ChaCha8Rng) -> Result<()> {
        let n = x.len() / dim;
        if n < k {
            return Err(invalid(
                "k",
                format!("{k} clusters need at least {k} candidates per batch, got {n}"),
            ));
        }
        self.dim = dim;
        self.centroids = sample(rng, n, k)
            .into_iter()
            .flat_map(|r| x[r * dim..(r + 1) * dim].iter().copied())
            .collect();
        Ok(())
    }

    /// The nearest centroid of each row of `x` `[N * D]` (unit rows).
    pub fn assign(&self, x: &[f32]) -> Vec<u32> {
        let d = self.dim;
        x.chunks_exact(d)
            .map(|row| {
                let dot = |c: usize| {
                    self.centroids[c * d..(c + 1) * d]
                        .iter()
                        .zip(row)
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                };
                (0..self.clusters())
                    .max_by(|&a, &b| dot(a).total_cmp(&dot(b)).then(b.cmp(&a)))
                    .unwrap_or(0) as u32
            })
            .collect()
    }

    /// Moves each centroid towards the mean of its members by `lr`, renormalised.
    fn update(&mut self, x: &[f32], assigned: &[u32], lr: f32) {
        let d = self.dim;
        let mut sums = vec![0f32; self.centroids.len()];
        let mut counts = vec![0usize; self.clusters()];
        for (row, &c) in x.chunks_exact(d).zip(assigned) {
            counts[c as usize] += 1;
            sums[c as usize * d..(c as usize + 1) * d]
                .iter_mut()
                .zip(row)
                .for_each(|(s, v)| *s += v);
        }
        for (c, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let centroid = &mut self.centroids[c * d..(c + 1) * d];
            for (v, s) in centroid.iter_mut().zip(&sums[c * d..(c + 1) * d]) {
                *v += lr * (s / n as f32 - *v);
            }
            let norm = centroid
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            centroid.iter_mut().for_each(|v| *v /= norm);
        }
    }

    /// The centroids as a tensor `[K, D]` for checkpoints (empty `[0, 0]` unseeded).
    pub fn state(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let t = Tensor::from_slice(&self.centroids, (self.clusters(), self.dim), device)?;
        Ok(HashMap::from([("centroids".to_string(), t)]))
    }

    /// Restores [`OnlineKMeans::state`].
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let t = state
            .get("centroids")
            .ok_or_else(|| invalid("state", "missing `centroids`"))?;
        let (_, d) = t.dims2()?;
        self.dim = d;
        self.centroids = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(())
    }
}

/// Online spherical k-means with `k` centroids (moved by `lr` per step, seeded once
/// the mean pair cosine is below `start_below`); the cluster id removes, restricts or
/// down-weights (to `same_weight`) negatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub k: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_mode")]
    pub mode: ClusterMode,
    #[serde(default = "default_start_below")]
    pub start_below: f64,
    #[serde(default = "default_same_weight")]
    pub same_weight: f64,
}

fn default_lr() -> f64 {
    0.1
}

fn default_mode() -> ClusterMode {
    ClusterMode::RemoveSame
}

fn default_start_below() -> f64 {
    1.0
}

fn default_same_weight() -> f64 {
    0.5
}

/// The policy at run time: its parameters and the k-means state.
#[derive(Debug)]
pub(crate) struct Clustering {
    params: Cluster,
    state: OnlineKMeans,
}

impl Clustering {
    pub(crate) fn new(params: Cluster) -> Self {
        Self {
            params,
            state: OnlineKMeans::default(),
        }
    }
}

impl Policy for Clustering {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn stage(&self) -> Stage {
        match self.params.mode {
            ClusterMode::RemoveSame => Stage::Removal,
            ClusterMode::RestrictToSame => Stage::Selection,
            ClusterMode::DownweightSame => Stage::Weighting,
        }
    }

    fn validate(&self) -> Result<()> {
        let p = &self.params;
        if p.k < 2 {
            return Err(invalid("k", format!("cluster needs k >= 2, got {}", p.k)));
        }
        if !(0.0..=1.0).contains(&p.same_weight) {
            return Err(invalid(
                "same_weight",
                format!("cluster needs same_weight in [0, 1], got {}", p.same_weight),
            ));
        }
        if !(p.lr > 0.0 && p.lr <= 1.0) {
            return Err(invalid(
                "lr",
                format!("cluster needs lr in (0, 1], got {}", p.lr),
            ));
        }
        Ok(())
    }

    /// Assigns the batch to clusters, updates the centroids and reweights negatives by
    /// cluster. Seeding waits until the batch's mean off-diagonal cosine is below
    /// `start_below` (ClusterNS starts its k-means once embeddings have spread out).
    fn plan(
        &mut self,
        batch: &MiningBatch,
        plan: &mut MiningPlan,
        step: &mut Step<'_>,
    ) -> Result<()> {
        let (p, state) = (&self.params, &mut self.state);
        let dim = batch.candidates.dim(1)?;
        let x = flat_f32(&batch.candidates)?;
        if !state.is_seeded() {
            if mean_pair_cosine(batch) >= p.start_below {
                return Ok(());
            }
            state.seed(&x, dim, p.k, step.rng)?;
        }
        let cand = state.assign(&x);
        let anch = if batch.same_set {
            cand.clone()
        } else {
            state.assign(&flat_f32(&batch.anchors)?)
        };
        let mut identified = vec![Vec::new(); plan.anchors];
        for (i, found) in identified.iter_mut().enumerate() {
            for c in plan.kept_negatives(i) {
                let same = cand[c] == anch[i];
                match p.mode {
                    ClusterMode::RemoveSame if same => {
                        plan.row_mut(i)[c] = 0.0;
                        found.push(c as u32);
                    }
                    ClusterMode::DownweightSame if same => {
                        plan.row_mut(i)[c] *= p.same_weight as f32;
                        found.push(c as u32);
                    }
                    ClusterMode::RestrictToSame if !same => plan.row_mut(i)[c] = 0.0,
                    _ => {}
                }
            }
        }
        if p.mode != ClusterMode::RestrictToSame {
            plan.add_identified(identified);
        }
        state.update(&x, &cand, p.lr as f32);
        Ok(())
    }

    fn state(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        self.state.state(device)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.state.load_state(state)
    }
}

/// Mean cosine over distinct anchor-candidate pairs of different images.
fn mean_pair_cosine(batch: &MiningBatch) -> f64 {
    let (mut sum, mut n) = (0f64, 0usize);
    for i in 0..batch.anchors_len() {
        for (c, s) in batch.sim_row(i).iter().enumerate() {
            if batch.candidate_ids[c] != batch.anchor_ids[i] {
                sum += *s as f64;
                n += 1;
            }
        }
    }
    if n == 0 { 1.0 } else { sum / n as f64 }
}
