//! What a policy sees: normalised, detached anchors and candidates, their similarity
//! rows, and per-row and per-column keys.

use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use candle_core::{DType, Tensor};
use contrast_kernels::l2_normalize;

/// One batch of anchors against candidates.
#[derive(Debug, Clone)]
pub struct MiningBatch {
    /// Anchors `[B, D]`, unit rows, detached.
    pub anchors: Tensor,
    /// Candidates `[N, D]`, unit rows, detached.
    pub candidates: Tensor,
    /// Cosine similarities `[B * N]`, row-major.
    pub sims: Vec<f32>,
    /// Instance id of each anchor and candidate: equal ids are views of one image.
    pub anchor_ids: Vec<i64>,
    pub candidate_ids: Vec<i64>,
    /// Class labels, read only by supervised policies and by diagnostics.
    pub anchor_labels: Option<Vec<i64>>,
    pub candidate_labels: Option<Vec<i64>>,
    /// The anchors are the first candidates (in-batch): candidate `i` is anchor `i`.
    pub same_set: bool,
}

impl MiningBatch {
    /// The in-batch set of `views` (each `[B, D]`, rows aligned): every view is an
    /// anchor and a candidate; `ids` and `labels` are per image.
    pub fn in_batch(views: &[Tensor], ids: &[i64], labels: Option<&[i64]>) -> Result<Self> {
        if views.len() < 2 {
            return Err(invalid(
                "views",
                "mining needs at least two views per image",
            ));
        }
        let b = views[0].dim(0)?;
        if ids.len() != b || labels.is_some_and(|l| l.len() != b) {
            return Err(invalid(
                "ids",
                format!("expected {b} ids and labels, one per image"),
            ));
        }
        let z = l2_normalize(&Tensor::cat(views, 0)?.detach())?;
        let per_view =
            |v: &[i64]| -> Vec<i64> { (0..views.len()).flat_map(|_| v.iter().copied()).collect() };
        let sims: Vec<f32> = z
            .matmul(&z.t()?)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            anchors: z.clone(),
            candidates: z,
            sims,
            anchor_ids: per_view(ids),
            candidate_ids: per_view(ids),
            anchor_labels: labels.map(per_view),
            candidate_labels: labels.map(per_view),
            same_set: true,
        })
    }

    /// Number of anchors.
    pub fn anchors_len(&self) -> usize {
        self.anchor_ids.len()
    }

    /// Number of candidates.
    pub fn candidates_len(&self) -> usize {
        self.candidate_ids.len()
    }

    /// Similarity row of anchor `i`.
    pub fn sim_row(&self, i: usize) -> &[f32] {
        let n = self.candidates_len();
        &self.sims[i * n..(i + 1) * n]
    }

    /// Whether candidate `c` is anchor `i` itself.
    pub fn is_self(&self, i: usize, c: usize) -> bool {
        self.same_set && i == c
    }

    /// Instance discrimination: each anchor's positives are the other views of its
    /// image (equal mass), and the anchor itself is removed.
    pub fn default_plan(&self) -> MiningPlan {
        let (b, n) = (self.anchors_len(), self.candidates_len());
        let positives = (0..b)
            .map(|i| {
                (0..n)
                    .filter(|&c| !self.is_self(i, c) && self.candidate_ids[c] == self.anchor_ids[i])
                    .map(|c| (c as u32, 1.0))
                    .collect()
            })
            .collect();
        let mut plan = MiningPlan::new(b, n, positives);
        if self.same_set {
            for i in 0..b {
                plan.row_mut(i)[i] = 0.0;
            }
        }
        plan
    }

    /// Labels of anchors and candidates, or an error naming the policy that needs them.
    pub fn labels(&self, policy: &'static str) -> Result<(&[i64], &[i64])> {
        match (&self.anchor_labels, &self.candidate_labels) {
            (Some(a), Some(c)) => Ok((a, c)),
            _ => Err(invalid(
                "labels",
                format!("policy `{policy}` needs class labels"),
            )),
        }
    }

    /// Every `(anchor, candidate)` pair whose labels agree (the anchor's own views
    /// included), anchor by anchor; fails naming `policy` when labels are missing.
    pub fn same_label_pairs(&self, policy: &'static str) -> Result<Vec<(usize, usize)>> {
        let (al, cl) = self.labels(policy)?;
        Ok(al
            .iter()
            .enumerate()
            .flat_map(|(i, &a)| {
                cl.iter()
                    .enumerate()
                    .filter(move |&(_, &l)| l == a)
                    .map(move |(c, _)| (i, c))
            })
            .collect())
    }
}

/// The values of `t` as f32, row-major (for policies that work on raw rows).
pub(crate) fn flat_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
