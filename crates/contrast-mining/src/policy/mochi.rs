//! `mochi`: MoCHi (Kalantidis et al., 2020), synthetic hard negatives mixed from each
//! anchor's hardest negatives, in-batch and on a queue.

use super::selection::ranked_negatives;
use super::{Policy, QueueNeeds, QueueRow, Stage, Step};
use crate::batch::{MiningBatch, flat_f32};
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use candle_core::Tensor;
use contrast_losses::hardest_first;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// From each anchor's `n_hardest` negatives, `mixes` points mixing two of them and
/// `query_mixes` points mixing one with the anchor (its weight below 0.5). The points
/// are detached unit rows `[B, S, D]`, `S = mixes + query_mixes`; never enqueued.
/// The first `warmup_epochs` epochs train without them, as the paper's short warm-up
/// (its length is not given; reimplementations use 10 of 200 epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mochi {
    pub n_hardest: usize,
    pub mixes: usize,
    pub query_mixes: usize,
    #[serde(default)]
    pub warmup_epochs: usize,
    /// The training's current epoch (0-based), from [`Policy::set_progress`].
    #[serde(skip)]
    pub epoch: usize,
}

impl Mochi {
    /// Mixing from `n_hardest` negatives, without a warm-up.
    pub fn new(n_hardest: usize, mixes: usize, query_mixes: usize) -> Self {
        Self {
            n_hardest,
            mixes,
            query_mixes,
            warmup_epochs: 0,
            epoch: 0,
        }
    }

    /// Synthetic points per anchor now: none during the warm-up.
    fn points(&self) -> usize {
        if self.warming_up() {
            0
        } else {
            self.configured_points()
        }
    }

    fn configured_points(&self) -> usize {
        self.mixes + self.query_mixes
    }

    fn warming_up(&self) -> bool {
        self.epoch < self.warmup_epochs
    }
}

impl Policy for Mochi {
    fn name(&self) -> &'static str {
        "mochi"
    }

    fn stage(&self) -> Stage {
        Stage::Synthesis
    }

    fn set_progress(&mut self, epoch: usize, _epochs: usize) {
        self.epoch = epoch;
    }

    fn validate(&self) -> Result<()> {
        if self.n_hardest < 2 || self.configured_points() == 0 {
            return Err(invalid(
                "n_hardest",
                "mochi needs n_hardest >= 2 and at least one mixed point",
            ));
        }
        Ok(())
    }

    fn plan(
        &mut self,
        batch: &MiningBatch,
        plan: &mut MiningPlan,
        step: &mut Step<'_>,
    ) -> Result<()> {
        if self.warming_up() {
            return Ok(());
        }
        let d = batch.candidates.dim(1)?;
        let (cand, anch) = (flat_f32(&batch.candidates)?, flat_f32(&batch.anchors)?);
        let s = self.points();
        let mut out = vec![0f32; plan.anchors * s * d];
        let row = |c: usize| &cand[c * d..(c + 1) * d];
        for i in 0..plan.anchors {
            let hard: Vec<&[f32]> = ranked_negatives(batch, plan, i)
                .into_iter()
                .take(self.n_hardest)
                .map(row)
                .collect();
            self.mix(
                i,
                &hard,
                &anch[i * d..(i + 1) * d],
                step.rng,
                &mut out[i * s * d..(i + 1) * s * d],
            )?;
        }
        let points = Tensor::from_vec(out, (plan.anchors, s, d), batch.candidates.device())?;
        plan.synthetic = Some(points.to_dtype(batch.candidates.dtype())?.detach());
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn queue_needs(&self) -> QueueNeeds {
        QueueNeeds {
            synthetic: self.points(),
            ..QueueNeeds::default()
        }
    }

    fn plan_queue_row(&self, row: &mut QueueRow<'_>) -> Result<()> {
        if self.warming_up() {
            return Ok(());
        }
        let (queue, query) = row.vectors.expect("mochi asks for the queue's rows");
        let d = query.len();
        let i = row.query;
        let mut kept: Vec<(usize, f32)> = row
            .sims
            .iter()
            .copied()
            .enumerate()
            .filter(|&(j, s)| row.plan.is_negative(i, j, s))
            .collect();
        if self.n_hardest < kept.len() {
            kept.select_nth_unstable_by(self.n_hardest, hardest_first);
            kept.truncate(self.n_hardest);
        }
        kept.sort_by(hardest_first);
        let hard: Vec<&[f32]> = kept
            .iter()
            .map(|&(j, _)| &queue[j * d..(j + 1) * d])
            .collect();
        self.mix(i, &hard, query, row.rng, row.synthetic)
    }
}

impl Mochi {
    /// Writes anchor `i`'s `S` unit points into `out` (`[S * D]`): `mixes` of two
    /// distinct rows of `hard` (most similar first; weight uniform in [0, 1)), then
    /// `query_mixes` of `anchor` (weight uniform in [0, 0.5)) with one row of `hard`.
    fn mix(
        &self,
        i: usize,
        hard: &[&[f32]],
        anchor: &[f32],
        rng: &mut ChaCha8Rng,
        out: &mut [f32],
    ) -> Result<()> {
        if hard.len() < 2 {
            return Err(invalid(
                "n_hardest",
                format!(
                    "anchor {i} has {} kept negatives; mochi needs 2",
                    hard.len()
                ),
            ));
        }
        let d = anchor.len();
        for (k, point) in out.chunks_exact_mut(d).enumerate().take(self.points()) {
            let (w, x, y) = if k < self.mixes {
                let a = rng.random_range(0..hard.len());
                let mut b = rng.random_range(0..hard.len() - 1);
                if b >= a {
                    b += 1;
                }
                (rng.random::<f32>(), hard[a], hard[b])
            } else {
                let n = hard[rng.random_range(0..hard.len())];
                (rng.random_range(0.0..0.5f32), anchor, n)
            };
            for j in 0..d {
                point[j] = w * x[j] + (1.0 - w) * y[j];
            }
            let norm = point.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            point.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(())
    }
}
