//! What mining chose, judged against labels: evaluation only, never fed back.

use crate::batch::MiningBatch;
use crate::error::Result;
use crate::plan::MiningPlan;
use crate::queue::{QueueBatch, QueuePlan};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Similarities sampled for the quantiles (a reservoir).
const RESERVOIR: usize = 50_000;

/// Running counts over an epoch (serialisable, so that a mid-epoch checkpoint keeps
/// them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    negatives: u64,
    false_negatives: u64,
    sim_sum: f64,
    seen: u64,
    reservoir: Vec<f32>,
    identified: u64,
    identified_true: u64,
    true_false_negatives: u64,
    neighbours: u64,
    neighbours_agreeing: u64,
    /// Anchors of a debiased loss (debiased, HCL), and those whose corrected negative
    /// term sat at its floor (absent from checkpoints written before they were kept).
    #[serde(default)]
    debias_anchors: u64,
    #[serde(default)]
    debias_floored: u64,
    /// Sum over anchors of the share NT-Xent's softmax gave the positive, and the
    /// anchor count (absent from checkpoints written before they were kept).
    #[serde(default)]
    positive_share_sum: f64,
    #[serde(default)]
    positive_anchors: u64,
}

/// The epoch's figures (keys of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticsSummary {
    /// Share of kept negatives that have the anchor's label.
    pub neg_false_fraction: f64,
    /// Mean and 90th percentile of kept negatives' cosine similarity.
    pub neg_sim_mean: f64,
    pub neg_sim_p90: f64,
    /// Of the candidates a policy identified as false negatives, the share that are
    /// (same label, other image), and the share of all such candidates identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fn_identified_precision: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fn_identified_recall: Option<f64>,
    /// Share of nearest-neighbour positives with the anchor's label: NNCLR's
    /// replaced anchors, Invariance Propagation's hard positives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nn_positive_precision: Option<f64>,
    /// Share of a debiased loss's anchors whose corrected negative term sat at its
    /// floor `N e^(-1/t)`, so that the loss did not push their negatives away
    /// (`contrast_losses::debias_floored`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debias_floor_share: Option<f64>,
    /// Mean share that NT-Xent's softmax, at the loss's temperature, gave each
    /// anchor's positive (`contrast_losses::nt_xent_positive_share`): NT-Xent's pull
    /// on the positive is scaled by one minus it, the factor DCL removes. In-batch
    /// two-view losses without mining policies only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positive_share: Option<f64>,
}

impl Diagnostics {
    /// Adds one batch's plan; batches without labels are skipped.
    pub fn add(&mut self, batch: &MiningBatch, plan: &MiningPlan, rng: &mut ChaCha8Rng) {
        let (Some(al), Some(cl)) = (&batch.anchor_labels, &batch.candidate_labels) else {
            return;
        };
        if let Some((agree, n)) = plan.neighbour_agreement {
            self.neighbours += n as u64;
            self.neighbours_agreeing += agree as u64;
        }
        for i in 0..plan.anchors {
            let row = batch.sim_row(i);
            for c in plan.kept_negatives(i) {
                self.negative(cl[c] == al[i], row[c], rng);
            }
            if let Some(found) = &plan.identified {
                let is_fn =
                    |c: usize| cl[c] == al[i] && batch.candidate_ids[c] != batch.anchor_ids[i];
                self.identification(&found[i], plan.candidates, is_fn);
            }
        }
    }

    /// Adds one memory-bank step (Invariance Propagation). Anchor `i` is bank entry
    /// `rows[i]` of class `labels[i]`; its negatives are its `background` entries
    /// (with their cosine) other than its own, its positives the other entries of
    /// `positives`, judged by `bank_labels` (`-1`, an entry not yet visited: a negative
    /// of no class, and no positive judged).
    pub fn add_bank(
        &mut self,
        rows: &[u32],
        labels: &[i64],
        bank_labels: &[i64],
        background: &[Vec<(u32, f32)>],
        positives: &[Vec<u32>],
        rng: &mut ChaCha8Rng,
    ) {
        for (i, (&own, &label)) in rows.iter().zip(labels).enumerate() {
            let same = |j: u32| bank_labels[j as usize] >= 0 && bank_labels[j as usize] == label;
            for &(j, s) in background[i].iter().filter(|&&(j, _)| j != own) {
                self.negative(same(j), s, rng);
            }
            for &j in &positives[i] {
                if j != own && bank_labels[j as usize] >= 0 {
                    self.neighbours += 1;
                    self.neighbours_agreeing += same(j) as u64;
                }
            }
        }
    }

    /// Counts one labelled batch of a debiased loss: `floored` of its `anchors` had
    /// their negative term at the floor.
    pub fn add_debias_floor(&mut self, floored: usize, anchors: usize) {
        self.debias_anchors += anchors as u64;
        self.debias_floored += floored as u64;
    }

    /// Counts one labelled batch's positive shares: their `sum` over `anchors`.
    pub fn add_positive_share(&mut self, sum: f64, anchors: usize) {
        self.positive_share_sum += sum;
        self.positive_anchors += anchors as u64;
    }

    /// Counts one anchor's identified candidates against the `is_fn` truth over its
    /// `candidates`.
    fn identification(&mut self, found: &[u32], candidates: usize, is_fn: impl Fn(usize) -> bool) {
        self.identified += found.len() as u64;
        self.identified_true += found.iter().filter(|&&c| is_fn(c as usize)).count() as u64;
        self.true_false_negatives += (0..candidates).filter(|&c| is_fn(c)).count() as u64;
    }

    /// Counts one kept negative at similarity `s`.
    fn negative(&mut self, same_label: bool, s: f32, rng: &mut ChaCha8Rng) {
        self.negatives += 1;
        self.false_negatives += same_label as u64;
        self.sim_sum += s as f64;
        self.seen += 1;
        if self.reservoir.len() < RESERVOIR {
            self.reservoir.push(s);
        } else {
            let k = rng.random_range(0..self.seen);
            if (k as usize) < RESERVOIR {
                self.reservoir[k as usize] = s;
            }
        }
    }

    /// Adds one queue step's plan (MoCo); steps without labels are skipped. Entries
    /// never written (label `-1`) count as negatives of no class; synthetic points
    /// are not counted.
    pub fn add_queue(
        &mut self,
        batch: &QueueBatch,
        plan: &QueuePlan,
        rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        let Some(labels) = &batch.query_labels else {
            return Ok(());
        };
        let ql = &batch.queue_labels;
        batch.for_each_row(false, |i, sims, _| {
            let is_fn = |j: usize| {
                ql[j] >= 0 && ql[j] == labels[i] && batch.queue_ids[j] != batch.query_ids[i]
            };
            for (j, &s) in sims.iter().enumerate() {
                if plan.is_negative(i, j, s) {
                    self.negative(ql[j] == labels[i], s, rng);
                }
            }
            if let Some(found) = &plan.identified {
                self.identification(&found[i], ql.len(), is_fn);
            }
            Ok(())
        })
    }

    /// The summary, or `None` when no labelled batch was added.
    pub fn summary(&self) -> Option<DiagnosticsSummary> {
        if self.negatives == 0 {
            return None;
        }
        let mut sorted = self.reservoir.clone();
        sorted.sort_by(f32::total_cmp);
        let p90 = sorted[((sorted.len() as f64 * 0.9) as usize).min(sorted.len() - 1)] as f64;
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                None
            } else {
                Some(a as f64 / b as f64)
            }
        };
        let identifies = self.true_false_negatives > 0 || self.identified > 0;
        Some(DiagnosticsSummary {
            neg_false_fraction: self.false_negatives as f64 / self.negatives as f64,
            neg_sim_mean: self.sim_sum / self.seen as f64,
            neg_sim_p90: p90,
            fn_identified_precision: if identifies {
                ratio(self.identified_true, self.identified)
            } else {
                None
            },
            fn_identified_recall: if identifies {
                ratio(self.identified_true, self.true_false_negatives)
            } else {
                None
            },
            nn_positive_precision: ratio(self.neighbours_agreeing, self.neighbours),
            debias_floor_share: ratio(self.debias_floored, self.debias_anchors),
            positive_share: (self.positive_anchors > 0)
                .then(|| self.positive_share_sum / self.positive_anchors as f64),
        })
    }
}
