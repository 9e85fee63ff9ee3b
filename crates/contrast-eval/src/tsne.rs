//! t-SNE maps of an embedding for plots: Barnes-Hut t-SNE (van der Maaten 2014,
//! through the `bhtsne` crate) on the cosine neighbourhoods of the L2-normalised
//! rows, started from their PCA map.
//!
//! The neighbourhoods come from the blocked top-`k` search
//! ([`contrast_kernels::topk_similarity`]), so no `[N, N]` distance matrix is formed,
//! and the PCA start makes the map deterministic and keeps the global layout that a
//! random start loses (Kobak & Linderman 2021).

use crate::embedding::PCA_ROWS;
use crate::error::{Result, invalid};
use bhtsne::{Neighbor, tSNE};
use candle_core::{D, DType, Tensor};

/// Rows mapped (the first ones): the same rows [`crate::pca_2d`] projects.
pub const TSNE_ROWS: usize = PCA_ROWS;

/// The fewest rows [`tsne_2d`] maps (perplexity 2 needs 7 neighbours and the row).
pub const TSNE_MIN_ROWS: usize = 10;

/// t-SNE settings. The defaults are the common ones (perplexity 30, theta 0.5,
/// 1,000 iterations, the first 250 with early exaggeration 12).
#[derive(Debug, Clone, PartialEq)]
pub struct TsneConfig {
    /// Effective number of neighbours; lowered to `(N - 1) / 3 - 1` for small `N`.
    pub perplexity: f64,
    /// Barnes-Hut accuracy: cells seen under an angle below `theta` count as one point.
    pub theta: f64,
    /// Gradient iterations.
    pub iterations: usize,
}

impl Default for TsneConfig {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            theta: 0.5,
            iterations: 1000,
        }
    }
}

/// A 2-D t-SNE map of the first [`TSNE_ROWS`] rows of `features` `[N, D]`, with
/// affinities from cosine similarity (the Euclidean distance of the normalised rows,
/// `sqrt(2 - 2 cos)`), started from `init` (one point per mapped row, e.g. the
/// [`crate::pca_2d`] map; rescaled to a standard deviation of 1e-4).
pub fn tsne_2d(
    features: &Tensor,
    init: &[(f64, f64)],
    cfg: &TsneConfig,
) -> Result<Vec<(f64, f64)>> {
    let (n, _) = features.dims2().map_err(|_| {
        invalid(
            "features",
            format!("expected [N, D], got {:?}", features.dims()),
        )
    })?;
    let n = n.min(TSNE_ROWS);
    // Perplexity p needs 3p + 1 <= N - 1 neighbours in bhtsne.
    let perplexity = cfg.perplexity.min(((n as f64 - 1.0) / 3.0 - 1.0).floor());
    if n < TSNE_MIN_ROWS {
        return Err(invalid(
            "features",
            format!("t-SNE needs at least {TSNE_MIN_ROWS} rows, got {n}"),
        ));
    }
    if init.len() < n {
        return Err(invalid(
            "init",
            format!("{} starting points for {n} mapped rows", init.len()),
        ));
    }
    if !(cfg.theta > 0.0 && cfg.iterations > 0) {
        return Err(invalid(
            "cfg",
            format!(
                "theta must be > 0 and iterations > 0, got {} and {}",
                cfg.theta, cfg.iterations
            ),
        ));
    }
    let x = features.narrow(0, 0, n)?.to_dtype(DType::F32)?;
    let x = x.broadcast_div(
        &x.sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?,
    )?;
    let k = ((3.0 * perplexity).ceil() as usize).min(n - 1);
    // k + 1: the row itself is among its own nearest (ties may put it second).
    let top = contrast_kernels::topk_similarity(&x, &x, k + 1)?;
    let neighbours: Vec<Vec<Neighbor<f32>>> = (0..n)
        .map(|i| {
            top.row(i)
                .filter(|&(_, j)| j as usize != i)
                .take(k)
                .map(|(s, j)| Neighbor {
                    index: j as usize,
                    distance: (2.0 - 2.0 * s).max(0.0).sqrt(),
                })
                .collect()
        })
        .collect();
    let start = scaled_start(&init[..n]);
    let rows: Vec<usize> = (0..n).collect();
    let mut tsne: tSNE<f32, usize> = tSNE::new(&rows);
    tsne.perplexity(perplexity as f32)
        .epochs(cfg.iterations)
        .initial_embedding(start)
        .barnes_hut_with_neighbors(cfg.theta as f32, &neighbours);
    Ok(tsne
        .embedding()
        .chunks_exact(2)
        .map(|p| (p[0] as f64, p[1] as f64))
        .collect())
}

/// `init` centred and scaled to a standard deviation of 1e-4 along its first axis,
/// flattened row-major. A degenerate start (all points equal) is spread on a small
/// spiral so the gradient has something to separate.
fn scaled_start(init: &[(f64, f64)]) -> Vec<f32> {
    let n = init.len() as f64;
    let (mx, my) = init
        .iter()
        .fold((0.0, 0.0), |(a, b), p| (a + p.0 / n, b + p.1 / n));
    let sd = (init.iter().map(|p| (p.0 - mx).powi(2)).sum::<f64>() / n).sqrt();
    init.iter()
        .enumerate()
        .flat_map(|(i, p)| {
            if sd > 0.0 && sd.is_finite() {
                let s = 1e-4 / sd;
                [((p.0 - mx) * s) as f32, ((p.1 - my) * s) as f32]
            } else {
                let (r, a) = (1e-4 * (1.0 + i as f64 / n), i as f64);
                [(r * a.cos()) as f32, (r * a.sin()) as f32]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Three tight clusters in 16 dimensions, 40 rows each, interleaved.
    fn clusters() -> (Tensor, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut x, mut labels) = (Vec::new(), Vec::new());
        for i in 0..120 {
            let c = i % 3;
            for d in 0..16 {
                let centre = if d % 3 == c { 1.0 } else { 0.0 };
                x.push(centre + 0.05 * (rng.random::<f32>() - 0.5));
            }
            labels.push(c as u32);
        }
        (
            Tensor::from_vec(x, (120, 16), &Device::Cpu).unwrap(),
            labels,
        )
    }

    #[test]
    fn separated_clusters_stay_separated_in_the_map() {
        let (x, labels) = clusters();
        let init = crate::pca_2d(&x).unwrap();
        let map = tsne_2d(&x, &init, &TsneConfig::default()).unwrap();
        assert_eq!(map.len(), 120);
        assert!(map.iter().all(|p| p.0.is_finite() && p.1.is_finite()));
        // Every point's nearest neighbour in the map has its class, and the map has
        // grown from the 1e-4 start to a spread of several units.
        let d2 = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).powi(2) + (a.1 - b.1).powi(2);
        for i in 0..map.len() {
            let j = (0..map.len())
                .filter(|&j| j != i)
                .min_by(|&a, &b| d2(map[i], map[a]).total_cmp(&d2(map[i], map[b])))
                .unwrap();
            assert_eq!(labels[i], labels[j], "point {i}'s nearest neighbour is {j}");
        }
        let spread = map
            .iter()
            .map(|p| d2(*p, map[0]))
            .fold(0.0, f64::max)
            .sqrt();
        assert!(spread > 1.0, "map spread {spread}");
    }

    #[test]
    fn bad_inputs_are_refused_with_the_argument_named() {
        let (x, _) = clusters();
        let init = crate::pca_2d(&x).unwrap();
        let few = x.narrow(0, 0, 8).unwrap();
        let e = tsne_2d(&few, &init, &TsneConfig::default()).unwrap_err();
        assert!(e.to_string().contains("at least 10 rows"), "{e}");
        let e = tsne_2d(&x, &init[..50], &TsneConfig::default()).unwrap_err();
        assert!(e.to_string().contains("`init`"), "{e}");
        let cfg = TsneConfig {
            theta: 0.0,
            ..TsneConfig::default()
        };
        assert!(tsne_2d(&x, &init, &cfg).is_err());
    }

    #[test]
    fn a_collapsed_start_still_maps() {
        let (x, labels) = clusters();
        let map = tsne_2d(&x, &[(0.0, 0.0); 120], &TsneConfig::default()).unwrap();
        let centre = |c: u32| {
            let m: Vec<_> = (0..120)
                .filter(|&i| labels[i] == c)
                .map(|i| map[i])
                .collect();
            let n = m.len() as f64;
            m.iter()
                .fold((0.0, 0.0), |a, p| (a.0 + p.0 / n, a.1 + p.1 / n))
        };
        let (a, b) = (centre(0), centre(1));
        assert!(((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt() > 1.0);
    }
}
