//! MoCHi: synthetic hard negatives mixed from each anchor's hardest negatives.

use super::selection::ranked_negatives;
use crate::batch::MiningBatch;
use crate::error::{Result, invalid};
use crate::plan::MiningPlan;
use candle_core::{DType, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// For each anchor, `mixes` points `normalize(a h_j + (1 - a) h_k)` of two distinct
/// negatives among its `n_hardest` (a uniform in [0, 1)) and `query_mixes` points
/// `normalize(b q + (1 - b) h_j)` with the anchor (b uniform in [0, 0.5)). The points
/// are detached `[B, S, D]`; they are never enqueued.
pub(crate) fn mochi(
    batch: &MiningBatch,
    plan: &mut MiningPlan,
    n_hardest: usize,
    mixes: usize,
    query_mixes: usize,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let d = batch.candidates.dim(1)?;
    let cand: Vec<f32> = batch
        .candidates
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let anch: Vec<f32> = batch
        .anchors
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let s = mixes + query_mixes;
    let mut out = vec![0f32; plan.anchors * s * d];
    let row = |c: usize| &cand[c * d..(c + 1) * d];
    for i in 0..plan.anchors {
        let hard: Vec<&[f32]> = ranked_negatives(batch, plan, i)
            .into_iter()
            .take(n_hardest)
            .map(row)
            .collect();
        if hard.len() < 2 {
            return Err(invalid(
                "n_hardest",
                format!(
                    "anchor {i} has {} kept negatives; mochi needs 2",
                    hard.len()
                ),
            ));
        }
        mix_points(
            &hard,
            &anch[i * d..(i + 1) * d],
            mixes,
            query_mixes,
            rng,
            &mut out[i * s * d..(i + 1) * s * d],
        );
    }
    let points = Tensor::from_vec(out, (plan.anchors, s, d), batch.candidates.device())?;
    plan.synthetic = Some(points.to_dtype(batch.candidates.dtype())?.detach());
    Ok(())
}

/// Writes `mixes + query_mixes` unit points into `out` (`[S * D]`): `mixes` of two
/// distinct rows of `hard` (weight uniform in [0, 1)), then `query_mixes` of `anchor`
/// (weight uniform in [0, 0.5)) with one row of `hard`.
pub(crate) fn mix_points(
    hard: &[&[f32]],
    anchor: &[f32],
    mixes: usize,
    query_mixes: usize,
    rng: &mut ChaCha8Rng,
    out: &mut [f32],
) {
    let d = anchor.len();
    for (k, point) in out
        .chunks_exact_mut(d)
        .enumerate()
        .take(mixes + query_mixes)
    {
        let (w, x, y) = if k < mixes {
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
}
