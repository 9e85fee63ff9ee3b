//! Policies that decide from class labels: supervised positives, label-aware removal
//! and the metric-learning miners.

use crate::batch::MiningBatch;
use crate::error::Result;
use crate::plan::MiningPlan;
use serde::{Deserialize, Serialize};

/// Which same-label candidate a triplet miner keeps as the positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositiveChoice {
    /// The least similar (batch-hard, Hermans et al.).
    Hardest,
    /// The most similar (batch-easy-hard, Xuan et al.).
    Easiest,
}

/// Same-label candidates (other than the anchor itself) become positives.
pub(crate) fn supervised(batch: &MiningBatch, plan: &mut MiningPlan) -> Result<()> {
    let (al, cl) = batch.labels("supervised")?;
    for (i, &a) in al.iter().enumerate() {
        for (c, &l) in cl.iter().enumerate() {
            if !batch.is_self(i, c) && l == a {
                plan.add_positive(i, c, 1.0);
            }
        }
    }
    Ok(())
}

/// Same-label candidates that are not positives leave the negatives.
pub(crate) fn label_aware(batch: &MiningBatch, plan: &mut MiningPlan) -> Result<()> {
    let (al, cl) = batch.labels("label_aware")?;
    for (i, &a) in al.iter().enumerate() {
        for (c, &l) in cl.iter().enumerate() {
            if l == a && !plan.is_positive(i, c) {
                plan.row_mut(i)[c] = 0.0;
            }
        }
    }
    Ok(())
}

/// Triplet mining: one same-label positive chosen by `choice` and the hardest (most
/// similar) different-label negative; every other candidate leaves the row.
pub(crate) fn triplet(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    choice: PositiveChoice,
    policy: &'static str,
) -> Result<()> {
    let (al, cl) = batch.labels(policy)?;
    for (i, &a) in al.iter().enumerate() {
        let row = batch.sim_row(i);
        let same = (0..plan.candidates).filter(|&c| !batch.is_self(i, c) && cl[c] == a);
        let by_sim = |a: &usize, b: &usize| row[*a].total_cmp(&row[*b]);
        let positive = match choice {
            PositiveChoice::Hardest => same.min_by(by_sim),
            PositiveChoice::Easiest => same.max_by(by_sim),
        };
        let negative = (0..plan.candidates)
            .filter(|&c| cl[c] != a && plan.row(i)[c] > 0.0)
            .max_by(by_sim);
        if let Some(p) = positive {
            plan.positives[i] = vec![(p as u32, 1.0)];
        }
        let keep = |c: usize| Some(c) == negative || Some(c) == positive;
        for c in 0..plan.candidates {
            if !keep(c) {
                plan.row_mut(i)[c] = 0.0;
            }
        }
    }
    Ok(())
}

/// Multi-similarity mining (Wang et al. 2019): negatives with `s > min_pos - epsilon`,
/// positives with `s < max_neg + epsilon`.
pub(crate) fn multi_similarity(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    epsilon: f64,
) -> Result<()> {
    let (al, cl) = batch.labels("multi_similarity")?;
    let eps = epsilon as f32;
    for (i, &a) in al.iter().enumerate() {
        let row = batch.sim_row(i);
        let same: Vec<usize> = (0..plan.candidates)
            .filter(|&c| !batch.is_self(i, c) && cl[c] == a)
            .collect();
        let diff: Vec<usize> = (0..plan.candidates)
            .filter(|&c| cl[c] != a && plan.row(i)[c] > 0.0)
            .collect();
        let min_pos = same.iter().map(|&c| row[c]).fold(f32::INFINITY, f32::min);
        let max_neg = diff
            .iter()
            .map(|&c| row[c])
            .fold(f32::NEG_INFINITY, f32::max);
        let positives: Vec<(u32, f32)> = same
            .iter()
            .filter(|&&c| row[c] < max_neg + eps)
            .map(|&c| (c as u32, 1.0))
            .collect();
        if !positives.is_empty() {
            plan.positives[i] = positives;
        }
        for c in diff {
            if row[c] <= min_pos - eps {
                plan.row_mut(i)[c] = 0.0;
            }
        }
        // Same-label candidates that are not selected positives are not negatives.
        for c in same {
            if !plan.is_positive(i, c) {
                plan.row_mut(i)[c] = 0.0;
            }
        }
    }
    Ok(())
}
