//! What mining decides for one batch: the inputs of the generalised InfoNCE.
//!
//! Candidate weights are kept as one dense row per anchor. The mining pipeline works
//! on in-batch candidates (`N = V * B`), where that is `O(B^2)`; queue-scale negatives
//! are masked inside the streaming kernel from per-row and per-column keys instead.

use candle_core::Tensor;

/// Per-anchor decisions over candidates `0..N`.
#[derive(Debug, Clone)]
pub struct MiningPlan {
    pub anchors: usize,
    pub candidates: usize,
    /// Positive candidates of each anchor with their (unnormalised) mass; the loss
    /// spreads the target in proportion to it.
    pub positives: Vec<Vec<(u32, f32)>>,
    /// Candidate weights `[B * N]`, row-major; 0 removes a candidate.
    pub weights: Vec<f32>,
    /// HCL concentration: negatives weighted by `exp(beta l) / mean(exp(beta l))`.
    pub hardness_beta: Option<f64>,
    /// Debiasing class prior `tau+`.
    pub tau_plus: Option<f64>,
    /// Synthetic negatives per anchor `[B, S, D]` (unit rows, detached; MoCHi).
    pub synthetic: Option<Tensor>,
    /// Candidates a policy identified as false negatives, per anchor (diagnostics).
    pub identified: Option<Vec<Vec<u32>>>,
    /// Detached anchors `[B, D]` that replace the given ones in the loss (NNCLR's
    /// nearest neighbours); gradients then reach only the candidates.
    pub anchor_override: Option<Tensor>,
    /// Of the anchors replaced by a neighbour, how many neighbours share the anchor's
    /// label, and how many were replaced (diagnostics).
    pub neighbour_agreement: Option<(usize, usize)>,
}

impl MiningPlan {
    /// A plan with the given positives, every candidate at weight 1.
    pub fn new(anchors: usize, candidates: usize, positives: Vec<Vec<(u32, f32)>>) -> Self {
        Self {
            anchors,
            candidates,
            positives,
            weights: vec![1.0; anchors * candidates],
            hardness_beta: None,
            tau_plus: None,
            synthetic: None,
            identified: None,
            anchor_override: None,
            neighbour_agreement: None,
        }
    }

    /// Records identified false negatives per anchor, merged with earlier policies'.
    pub fn add_identified(&mut self, found: Vec<Vec<u32>>) {
        match &mut self.identified {
            None => self.identified = Some(found),
            Some(ids) => {
                for (row, new) in ids.iter_mut().zip(found) {
                    for c in new {
                        if !row.contains(&c) {
                            row.push(c);
                        }
                    }
                }
            }
        }
    }

    /// Candidate weights of anchor `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.weights[i * self.candidates..(i + 1) * self.candidates]
    }

    /// Mutable candidate weights of anchor `i`.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.weights[i * self.candidates..(i + 1) * self.candidates]
    }

    /// Whether `c` is a positive of anchor `i`.
    pub fn is_positive(&self, i: usize, c: usize) -> bool {
        self.positives[i].iter().any(|(j, _)| *j as usize == c)
    }

    /// Adds `c` to anchor `i`'s positives with mass `m` (no duplicates).
    pub fn add_positive(&mut self, i: usize, c: usize, m: f32) {
        if !self.is_positive(i, c) {
            self.positives[i].push((c as u32, m));
        }
    }

    /// Negatives of anchor `i` still counted: not positive and weight > 0.
    pub fn kept_negatives(&self, i: usize) -> Vec<usize> {
        let mut positive = vec![false; self.candidates];
        for &(c, _) in &self.positives[i] {
            positive[c as usize] = true;
        }
        (0..self.candidates)
            .filter(|&c| self.row(i)[c] > 0.0 && !positive[c])
            .collect()
    }
}
