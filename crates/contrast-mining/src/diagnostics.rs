//! What mining chose, judged against labels: evaluation only, never fed back.

use crate::batch::MiningBatch;
use crate::plan::MiningPlan;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Similarities sampled for the quantiles (a reservoir).
const RESERVOIR: usize = 50_000;

/// Running counts over an epoch.
#[derive(Debug, Clone, Default)]
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
    /// Share of nearest-neighbour positives (NNCLR) with the anchor's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nn_positive_precision: Option<f64>,
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
                self.negatives += 1;
                self.false_negatives += (cl[c] == al[i]) as u64;
                let s = row[c];
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
            if let Some(found) = &plan.identified {
                let is_fn =
                    |c: usize| cl[c] == al[i] && batch.candidate_ids[c] != batch.anchor_ids[i];
                self.identified += found[i].len() as u64;
                self.identified_true +=
                    found[i].iter().filter(|&&c| is_fn(c as usize)).count() as u64;
                self.true_false_negatives +=
                    (0..plan.candidates).filter(|&c| is_fn(c)).count() as u64;
            }
        }
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
        })
    }
}
