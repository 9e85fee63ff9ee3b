//! NT-Xent streamed around the ranks (`train.gathered_loss = "ring"`), so that no
//! rank forms the global `[2B, 2B]` logits.
//!
//! Each rank keeps its own `2b` normalised rows (both views of its `b` images) as
//! anchors. The ranks' row blocks travel around the ring (`Collective::shift`), and
//! each rank folds every block it sees into its anchors' running log-sum-exp: after
//! `N - 1` shifts each anchor has met every row of the global batch. A second lap
//! computes the gradients: the block travels with the gradient its rows have
//! collected so far as candidates of every rank's anchors, and after `N` shifts it is
//! home with all of it, as Inf-CL does across GPUs. A rank holds its rows, one block
//! in flight with its gradient, and a `[2b, 2b]` tile: memory does not grow with the
//! world.
//!
//! The loss is the global batch's NT-Xent (mean over all `2B` anchors), the same on
//! every rank, and its gradient with respect to this rank's rows is complete, as for
//! the replicated loss, so the parameter gradients are summed over ranks as usual
//! ([`super::World::sum_gradients`]).

use super::World;
use anyhow::bail;
use candle_core::{DType, Result, Tensor};
use contrast_kernels::NORM_EPS;

/// Accumulates `values` (a row of logits) into a running `(max, sum of exp)`.
fn fold_row(values: &[f64], skip: Option<usize>, max: &mut f64, sum: &mut f64) {
    for (j, &v) in values.iter().enumerate() {
        if Some(j) == skip {
            continue;
        }
        if v > *max {
            *sum = *sum * (*max - v).exp() + 1.0;
            *max = v;
        } else {
            *sum += (v - *max).exp();
        }
    }
}

/// NT-Xent of the global batch over `N` ranks, given this rank's views `z1`, `z2`
/// `[b, D]` (raw; normalised inside), streamed around the ring. Returns the global
/// loss, whose gradient with respect to `z1` and `z2` is this rank's complete share
/// (computed here, in f64, in two laps of the ring).
pub fn ring_nt_xent(world: &World, z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    let (b, dim) = z1.dims2()?;
    if z2.dims2()? != (b, dim) {
        candle_core::bail!(
            "ring NT-Xent: views of shapes {:?} and {:?}",
            z1.dims(),
            z2.dims()
        );
    }
    let ranks = world.size();
    let rows = 2 * b;
    let anchors = (rows * ranks) as f64;
    let inv_t = 1.0 / temperature;
    let ring = world.collective();
    let z = Tensor::cat(&[z1, z2], 0)?;
    let dev = z.device().clone();
    let zd = z.detach().to_dtype(DType::F64)?;
    let norm = zd.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(NORM_EPS)?;
    let a = zd.broadcast_div(&norm)?;
    // Each row's positive is its other view, on this rank.
    let partner: Vec<u32> = (0..rows).map(|i| ((i + b) % rows) as u32).collect();
    let a_pos = a.index_select(&Tensor::from_vec(partner, rows, &dev)?, 0)?;
    let positive: Vec<f64> = ((&a * &a_pos)?.sum(1)? * inv_t)?.to_vec1()?;

    // Lap 1: every anchor's log-sum-exp over every other row of the global batch.
    let (mut max, mut sum) = (vec![f64::NEG_INFINITY; rows], vec![0f64; rows]);
    let mut block = a.clone();
    for step in 0..ranks {
        let logits: Vec<Vec<f64>> = (a.matmul(&block.t()?)? * inv_t)?.to_vec2()?;
        for (i, row) in logits.iter().enumerate() {
            let own = (step == 0).then_some(i);
            fold_row(row, own, &mut max[i], &mut sum[i]);
        }
        if step + 1 < ranks {
            block = ring.shift(&block)?;
        }
    }
    let lse: Vec<f64> = max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect();
    let local: f64 = lse.iter().zip(&positive).map(|(l, p)| l - p).sum();
    let loss = (ring.all_reduce_sum(&Tensor::new(&[local], &dev)?)? / anchors)?;

    // Lap 2: the softmax weights again, block by block. Anchors collect
    // `sum_j p_ij a_j`; each block carries `sum_i p_ij a_i` over every rank's anchors
    // and is home after `ranks` shifts.
    let lse = Tensor::from_vec(lse, (rows, 1), &dev)?;
    let off_diagonal =
        Tensor::ones((rows, rows), DType::F64, &dev)?.sub(&Tensor::eye(rows, DType::F64, &dev)?)?;
    let mut travelling = Tensor::cat(&[&a, &a.zeros_like()?], 1)?;
    let mut as_anchor = a.zeros_like()?;
    for step in 0..ranks {
        let block = travelling.narrow(1, 0, dim)?;
        let p = (a.matmul(&block.t()?)? * inv_t)?
            .broadcast_sub(&lse)?
            .exp()?;
        let p = if step == 0 { (p * &off_diagonal)? } else { p };
        as_anchor = (as_anchor + p.matmul(&block)?)?;
        let carried = (travelling.narrow(1, dim, dim)? + p.t()?.matmul(&a)?)?;
        travelling = ring.shift(&Tensor::cat(&[&block, &carried], 1)?)?;
    }
    let as_candidate = travelling.narrow(1, dim, dim)?;
    // The positive logit a_i . a_pos(i) appears once for each of the pair's anchors.
    let grad_a = ((as_anchor + as_candidate)? - (a_pos * 2.0)?)?.affine(inv_t / anchors, 0.0)?;
    // Through the normalisation: (g - (g . a) a) / |z|.
    let radial = (&grad_a * &a)?.sum_keepdim(1)?;
    let grad_z = (grad_a - a.broadcast_mul(&radial)?)?
        .broadcast_div(&norm)?
        .to_dtype(z.dtype())?;
    // The value is the loss; the gradient with respect to z is grad_z.
    let surrogate = (&z * &grad_z)?.sum_all()?;
    (surrogate.clone() - surrogate.detach())? + loss.squeeze(0)?.to_dtype(z.dtype())?
}

/// Refuses `train.gathered_loss = "ring"` for what it does not compute: it streams
/// NT-Xent over two views, without mining policies, on the in-batch method.
pub fn check_ring(cfg: &crate::Config) -> anyhow::Result<()> {
    use crate::config::MethodConfig;
    use contrast_losses::LossConfig;
    if !matches!(cfg.loss, LossConfig::NtXent(_))
        || !matches!(cfg.method, MethodConfig::Simclr)
        || !cfg.mining.is_empty()
        || cfg.data.views != 2
    {
        bail!(
            "train.gathered_loss = \"ring\" streams NT-Xent over two views without mining policies (method simclr); this run has loss `{}`, {} mining policies and {} views: use \"replicated\"",
            cfg.loss.name(),
            cfg.mining.len(),
            cfg.data.views
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    /// The ring computes NT-Xent alone, and a config asking it of another loss or
    /// with mining policies is refused, naming the key.
    #[test]
    fn the_ring_refuses_what_it_does_not_stream() {
        let text = |loss: &str, mining: &str| {
            format!(
                "name = \"r\"\n{mining}\n[data]\ndataset = \"mnist\"\nbatch_size = 8\naugment = {{ hflip = 0.5 }}\n[model]\nencoder = {{ kind = \"mlp\", hidden = [8] }}\n[loss]\nname = \"{loss}\"\ntemperature = 0.5\n[optim]\nname = \"sgd\"\nlr = 0.1\n[train]\nepochs = 1\ngathered_loss = \"ring\"\n"
            )
        };
        let cfg = |loss: &str, mining: &str| {
            crate::Config::from_toml(&text(loss, mining), "ring.toml", &[]).unwrap()
        };
        assert!(check_ring(&cfg("nt_xent", "")).is_ok());
        for bad in [
            cfg("supcon", ""),
            cfg("nt_xent", "mining = [{ name = \"hcl\", beta = 1.0 }]"),
        ] {
            let e = check_ring(&bad).unwrap_err().to_string();
            assert!(
                e.contains("train.gathered_loss") && e.contains("replicated"),
                "{e}"
            );
        }
    }

    /// In one process the ring is the plain NT-Xent, in value and gradient.
    #[test]
    fn a_ring_of_one_is_nt_xent() {
        let z1 = Var::from_tensor(&contrast_testing::uniform_tensor(4, (6, 5), -1.0, 1.0)).unwrap();
        let z2 = Var::from_tensor(&contrast_testing::uniform_tensor(5, (6, 5), -1.0, 1.0)).unwrap();
        let grads = |loss: Tensor| {
            let g = loss.backward().unwrap();
            let get = |v: &Var| g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
            let v: Vec<f64> = Tensor::cat(&[get(&z1), get(&z2)], 0)
                .unwrap()
                .to_vec1()
                .unwrap();
            (loss.to_scalar::<f64>().unwrap(), v)
        };
        let world = World::single();
        let ring = grads(ring_nt_xent(&world, z1.as_tensor(), z2.as_tensor(), 0.3).unwrap());
        let plain =
            grads(contrast_losses::nt_xent_reference(z1.as_tensor(), z2.as_tensor(), 0.3).unwrap());
        assert!(
            (ring.0 - plain.0).abs() < 1e-12,
            "{} vs {}",
            ring.0,
            plain.0
        );
        for (a, b) in ring.1.iter().zip(&plain.1) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }
}
