//! LooC ("What Should Not Be Contrastive in Contrastive Learning", Xiao et al., 2021):
//! a shared backbone with `n + 1` embedding spaces, one invariant to every
//! augmentation and one per augmentation family that stays sensitive to it.
//!
//! Keys: `k_0` resamples every augmentation of the query; `k_i` (`i >= 1`) shares the
//! query's parameters of family `i` and resamples the others. In space 0 only `k_0`
//! is positive. In space `i` only `k_i` is positive and the other keys of the same
//! image are extra negatives, which keeps space `i` variant to family `i`:
//!
//! ```text
//! L = -1/(n+1) [ log E00+ / (E00+ + sum E00-)
//!              + sum_i log Eii+ / (sum_j Eij+ + sum Eii-) ],   Eij = exp(z_i^q . z_i^{k_j} / t)
//! ```
//!
//! Each space's term is the generalised InfoNCE ([`generalized_info_nce`]) over that
//! space's candidates (its positive key, the other keys in spaces `i >= 1`, the
//! negatives) with a one-hot target on the positive and unit weights.
//!
//! No official code exists; this follows the formula of the paper (Xiao et al., "What
//! Should Not Be Contrastive in Contrastive Learning", ICLR 2021).

use crate::error::{Result, check_matrix, check_temperature, invalid};
use crate::generalized::{generalized_info_nce, one_hot};
use candle_core::{D, Tensor};
use contrast_kernels::l2_normalize;
use serde::{Deserialize, Serialize};

/// `loss = { name = "looc", temperature }`: trained by the MoCo method with
/// `method.families` (the augmentation families left out, one embedding space each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoocConfig {
    pub temperature: f64,
}

/// LooC loss. `queries[h]` `[B, D]` is the query in space `h` (`h = 0..=n`);
/// `keys[h][j]` `[B, D]` is key `j` embedded in space `h`; `negatives[h]` `[K, D]`
/// (normalised, constant) are space `h`'s negatives (a queue, or other images' keys).
/// Reduction: mean over `B`.
pub fn looc(
    queries: &[Tensor],
    keys: &[Vec<Tensor>],
    negatives: &[Tensor],
    temperature: f64,
) -> Result<Tensor> {
    check_temperature("temperature", temperature)?;
    let spaces = queries.len();
    if spaces < 2 {
        return Err(invalid(
            "queries",
            "LooC needs the invariant space and at least one augmentation space",
        ));
    }
    if keys.len() != spaces || keys.iter().any(|k| k.len() != spaces) {
        return Err(invalid(
            "keys",
            format!("expected {spaces} spaces of {spaces} keys each"),
        ));
    }
    if negatives.len() != spaces {
        return Err(invalid(
            "negatives",
            format!("expected one negative set per space ({spaces})"),
        ));
    }
    let (b, d) = check_matrix("queries", &queries[0])?;
    let mut total: Option<Tensor> = None;
    for h in 0..spaces {
        let q = l2_normalize(&queries[h])?;
        if queries[h].dims() != [b, d] {
            return Err(invalid(
                "queries",
                format!(
                    "space {h} has shape {:?}, space 0 has [{b}, {d}]",
                    queries[h].dims()
                ),
            ));
        }
        let (kn, dn) = check_matrix("negatives", &negatives[h])?;
        if dn != d || kn == 0 {
            return Err(invalid(
                "negatives",
                format!("space {h}: rows of dimension {dn}, expected {d}"),
            ));
        }
        let pos_logit = |j: usize| -> Result<Tensor> {
            let k = l2_normalize(&keys[h][j])?;
            Ok(((&q * &k)?.sum_keepdim(D::Minus1)? / temperature)?)
        };
        let neg = (q.matmul(&negatives[h].detach().t()?)? / temperature)?;
        // Candidates: the positive key of this space, the other keys if h > 0, the negatives.
        let mut columns = vec![pos_logit(h)?];
        if h > 0 {
            for j in (0..spaces).filter(|&j| j != h) {
                columns.push(pos_logit(j)?);
            }
        }
        columns.push(neg);
        let all = Tensor::cat(&columns, 1)?;
        let targets = one_hot(
            &vec![0; all.dim(0)?],
            all.dim(1)?,
            all.dtype(),
            all.device(),
        )?;
        let term = generalized_info_nce(&all, &targets, None, None)?.mean_all()?;
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    Ok((total.expect("at least two spaces") / spaces as f64)?)
}
