//! Mining plus a loss: a sampling pipeline decides, the generalised InfoNCE scores.
//!
//! Shows the mining API on one batch: a [`Pipeline`] of [`PolicyConfig`]s parsed
//! from the same TOML a run config holds (FNC eliminating likely false negatives,
//! then HCL weighting the hard ones), a [`MiningBatch`] of two views with instance
//! ids and labels, the [`MiningPlan`] the pipeline makes, the loss of that plan with
//! [`mined_info_nce`] and its backward pass. It prints what the plan decided (how
//! many negatives were removed, how many of those were truly same-class, the HCL
//! weighting) and the loss beside those of plain instance discrimination and of FNC
//! alone.
//!
//! The embeddings are synthetic: 4 classes of 8 images, two views each, so each of
//! the 64 anchors has 62 negatives, 14 of them views of its class's other images
//! (the false negatives).
//!
//! Run it with:
//!
//! ```sh
//! cargo run --release -p contrast-examples --example mining_plus_loss
//! ```

use anyhow::{Result, ensure};
use candle_core::{Device, Tensor, Var};
use contrast_mining::{MiningBatch, MiningPlan, Pipeline, PolicyConfig, mined_info_nce};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Deserialize;

/// The policies, written as a run config writes them (`configs/mine-*.toml`).
const MINING_TOML: &str = r#"
mining = [
  { name = "fnc", topk = 10, aggregation = "max", cancellation = "elimination" },
  { name = "hcl", beta = 1.0 },
]
"#;

const CLASSES: usize = 4;
const IMAGES: usize = 32;
const DIM: usize = 32;
const TEMPERATURE: f64 = 0.2;

/// The `mining` list of a config file.
#[derive(Deserialize)]
struct MiningSection {
    mining: Vec<PolicyConfig>,
}

/// Two views `[B, D]` of `IMAGES` images: a class centre, plus an image offset, plus
/// view noise, so same-class images are close and views of one image closer.
fn synthetic_views(rng: &mut ChaCha8Rng, device: &Device) -> Result<[Tensor; 2]> {
    let mut gaussian = |n: usize, std: f32| -> Vec<f32> {
        (0..n)
            .map(|_| std * rng.sample::<f32, _>(StandardNormal))
            .collect()
    };
    let centres = gaussian(CLASSES * DIM, 1.0);
    let images: Vec<f32> = (0..IMAGES * DIM)
        .zip(gaussian(IMAGES * DIM, 0.5))
        .map(|(k, offset)| centres[((k / DIM) % CLASSES) * DIM + k % DIM] + offset)
        .collect();
    let mut view = || -> Result<Tensor> {
        let values: Vec<f32> = images
            .iter()
            .zip(gaussian(IMAGES * DIM, 0.3))
            .map(|(x, n)| x + n)
            .collect();
        Ok(Tensor::from_vec(values, (IMAGES, DIM), device)?)
    };
    Ok([view()?, view()?])
}

/// Negatives the plan keeps for anchor `i`, and how many of `default`'s it dropped
/// that share the anchor's label.
fn removed(plan: &MiningPlan, default: &MiningPlan, labels: &[i64], i: usize) -> (usize, usize) {
    let kept = plan.kept_negatives(i);
    let dropped: Vec<usize> = default
        .kept_negatives(i)
        .into_iter()
        .filter(|c| !kept.contains(c))
        .collect();
    let same_class = dropped.iter().filter(|&&c| labels[c] == labels[i]).count();
    (dropped.len(), same_class)
}

fn main() -> Result<()> {
    let device = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(0);

    let section: MiningSection = toml::from_str(MINING_TOML)?;
    // The pipeline validates the policies and orders them by stage (removal, then
    // weighting), whatever their order in the list.
    let mut pipeline = Pipeline::new(section.mining.clone())?;
    let names: Vec<&str> = pipeline.policies().map(|p| p.name()).collect();
    println!("pipeline: {}", names.join(" -> "));

    // The views stand for an encoder's projections: trainable, so the loss has
    // gradients to give.
    let [v1, v2] = synthetic_views(&mut rng, &device)?;
    let (z1, z2) = (Var::from_tensor(&v1)?, Var::from_tensor(&v2)?);
    let ids: Vec<i64> = (0..IMAGES as i64).collect();
    let labels: Vec<i64> = (0..IMAGES).map(|i| (i % CLASSES) as i64).collect();
    // In-batch: the 2B views (view-major) are both the anchors and the candidates.
    // Labels are optional; FNC and HCL never read them, they are for reporting.
    let batch = MiningBatch::in_batch(
        &[z1.as_tensor().clone(), z2.as_tensor().clone()],
        &ids,
        Some(&labels),
    )?;
    let plan = pipeline.plan(&batch, &mut rng)?;
    let default = batch.default_plan();

    let anchors = batch.anchors_len();
    let view_labels = batch.anchor_labels.as_deref().expect("labels given");
    let (mut dropped, mut same_class) = (0, 0);
    for i in 0..anchors {
        let (d, s) = removed(&plan, &default, view_labels, i);
        dropped += d;
        same_class += s;
    }
    let before: usize = (0..anchors).map(|i| default.kept_negatives(i).len()).sum();
    println!(
        "{anchors} anchors x {} candidates: {before} negatives before mining",
        batch.candidates_len()
    );
    println!(
        "fnc removed {dropped} ({:.1} per anchor), {same_class} of them same-class ({:.0}% precision; {} same-class negatives in all)",
        dropped as f64 / anchors as f64,
        100.0 * same_class as f64 / dropped.max(1) as f64,
        anchors * 2 * (IMAGES / CLASSES - 1)
    );
    println!(
        "hcl weights the {} kept negatives by exp(beta * logit) / mean, beta = {:?}",
        before - dropped,
        plan.hardness_beta.expect("hcl sets beta")
    );

    // The same tensor is anchors and candidates; mined_info_nce normalises them.
    let z = Tensor::cat(&[z1.as_tensor(), z2.as_tensor()], 0)?;
    let loss = mined_info_nce(&z, &z, &plan, TEMPERATURE)?;
    let value = loss.to_scalar::<f32>()?;
    // For comparison: no policy, and FNC alone. Removing same-class negatives lowers
    // the loss; HCL's up-weighting of the hardest remaining ones raises it again.
    let plain = mined_info_nce(&z, &z, &default, TEMPERATURE)?.to_scalar::<f32>()?;
    let fnc_only = Pipeline::new(section.mining[..1].to_vec())?.plan(&batch, &mut rng)?;
    let fnc = mined_info_nce(&z, &z, &fnc_only, TEMPERATURE)?.to_scalar::<f32>()?;
    println!("loss at t = {TEMPERATURE}: plain {plain:.4}, fnc {fnc:.4}, fnc + hcl {value:.4}");

    let grads = loss.backward()?;
    let g1 = grads.get(&z1).expect("z1 takes part in the loss");
    let norm = g1.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    println!("gradient on view 1: {:?}, norm {norm:.4}", g1.dims());

    ensure!(
        value.is_finite() && norm > 0.0,
        "no finite loss or gradient"
    );
    ensure!(dropped > 0, "fnc removed nothing");
    ensure!(
        2 * same_class > dropped,
        "fnc removed mostly true negatives ({same_class} of {dropped} same-class)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn plan_removes_false_negatives() {
        super::main().unwrap();
    }
}
