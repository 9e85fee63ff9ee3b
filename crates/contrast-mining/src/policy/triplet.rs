//! `batch_hard` and `batch_easy_hard`: metric-learning triplet miners that keep one
//! same-label positive and the hardest different-label negative per anchor; need
//! labels.

use super::{Policy, Stage, Step};
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

/// The hardest (least similar) same-label positive and the hardest (most similar)
/// different-label negative (Hermans et al., 2017).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHard {}

/// The easiest (most similar) same-label positive and the hardest different-label
/// negative (Xuan et al., 2020).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEasyHard {}

impl Policy for BatchHard {
    fn name(&self) -> &'static str {
        "batch_hard"
    }

    fn stage(&self) -> Stage {
        Stage::Selection
    }

    fn reads_labels(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        triplet(batch, plan, PositiveChoice::Hardest, self.name())
    }
}

impl Policy for BatchEasyHard {
    fn name(&self) -> &'static str {
        "batch_easy_hard"
    }

    fn stage(&self) -> Stage {
        Stage::Selection
    }

    fn reads_labels(&self) -> bool {
        true
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        triplet(batch, plan, PositiveChoice::Easiest, self.name())
    }
}

/// One same-label positive chosen by `choice` and the hardest different-label negative
/// per anchor; every other candidate leaves the row.
fn triplet(
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
