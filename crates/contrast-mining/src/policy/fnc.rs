//! `fnc`: false negative cancellation (Huynh et al., 2022) as a policy. Identification
//! and the cancellation modes are [`contrast_losses::sampling`]'s, shared with the
//! `fnc` loss: in-batch, a candidate is scored against every view of the anchor's
//! image; on a queue, against the query, its key and the support views (momentum
//! embeddings of more views of the image, when the run makes them): the image's
//! support set.

use super::{Policy, QueueNeeds, QueueRow, Stage, Step};
use crate::batch::MiningBatch;
use crate::error::Result;
use crate::plan::MiningPlan;
use contrast_losses::{Aggregation, Cancellation, FalseNegativeRule, FncConfig};
use serde::{Deserialize, Serialize};

/// Candidates whose similarity to the anchor's image (aggregated over its views) is
/// among the `topk` highest and/or above `threshold` are attracted (made positives) or
/// eliminated (removed from the denominator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fnc {
    #[serde(default)]
    pub topk: Option<usize>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub aggregation: Aggregation,
    #[serde(default)]
    pub cancellation: Cancellation,
}

/// The `fnc` loss's identification and cancellation as a policy (its temperature
/// is the loss's own), so that a run of the loss can plan the same decisions for its
/// diagnostics.
impl From<&FncConfig> for Fnc {
    fn from(c: &FncConfig) -> Self {
        Self {
            topk: c.topk,
            threshold: c.threshold,
            aggregation: c.aggregation,
            cancellation: c.cancellation,
        }
    }
}

impl Fnc {
    fn rule(&self) -> Result<FalseNegativeRule> {
        Ok(FalseNegativeRule::new(self.topk, self.threshold)?)
    }
}

impl Policy for Fnc {
    fn name(&self) -> &'static str {
        "fnc"
    }

    fn stage(&self) -> Stage {
        match self.cancellation {
            Cancellation::Attraction => Stage::Positives,
            Cancellation::Elimination => Stage::Removal,
        }
    }

    fn validate(&self) -> Result<()> {
        self.rule().map(|_| ())
    }

    fn plan(&mut self, batch: &MiningBatch, plan: &mut MiningPlan, _: &mut Step<'_>) -> Result<()> {
        let rule = self.rule()?;
        let mut identified = vec![Vec::new(); plan.anchors];
        for (i, found) in identified.iter_mut().enumerate() {
            let views: Vec<usize> = (0..plan.anchors)
                .filter(|&r| batch.anchor_ids[r] == batch.anchor_ids[i])
                .collect();
            let scored: Vec<(u32, f32)> = (0..plan.candidates)
                .filter(|&c| {
                    batch.candidate_ids[c] != batch.anchor_ids[i] && !plan.is_positive(i, c)
                })
                .map(|c| {
                    let per_view = views.iter().map(|&r| batch.sim_row(r)[c]);
                    (c as u32, self.aggregation.combine(per_view))
                })
                .collect();
            *found = rule.identify(scored);
        }
        for (i, found) in identified.iter().enumerate() {
            for &c in found {
                match self.cancellation {
                    Cancellation::Attraction => plan.add_positive(i, c as usize, 1.0),
                    Cancellation::Elimination => plan.row_mut(i)[c as usize] = 0.0,
                }
            }
        }
        plan.add_identified(identified);
        Ok(())
    }

    fn on_queue(&self) -> bool {
        true
    }

    fn queue_needs(&self) -> QueueNeeds {
        QueueNeeds {
            support_sims: true,
            ..QueueNeeds::default()
        }
    }

    fn plan_queue_row(&self, row: &mut QueueRow<'_>) -> Result<()> {
        let rule = self.rule()?;
        let (batch, i) = (row.batch, row.query);
        // Written entries of other images, scored against the query and its support
        // set.
        let scored: Vec<(u32, f32)> = (0..batch.entries())
            .filter(|&j| batch.queue_ids[j] >= 0 && batch.queue_ids[j] != batch.query_ids[i])
            .map(|j| {
                let views =
                    std::iter::once(row.sims[j]).chain(row.support_sims.iter().map(|s| s[j]));
                (j as u32, self.aggregation.combine(views))
            })
            .collect();
        let found = rule.identify(scored);
        let list = match self.cancellation {
            Cancellation::Attraction => &mut row.plan.attracted[i],
            Cancellation::Elimination => &mut row.plan.excluded[i],
        };
        list.extend(&found);
        list.sort_unstable();
        list.dedup();
        row.identified.extend(found);
        Ok(())
    }
}
