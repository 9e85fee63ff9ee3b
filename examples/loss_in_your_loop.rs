//! A Contrast loss in your own candle training loop.
//!
//! Shows the pieces of Contrast used as a library, without its trainer: a seeded
//! [`Mlp`] encoder and [`ProjectionHead`] whose variables live in a candle-nn
//! [`VarMap`], two augmented views per image from contrast-data's [`ViewLoader`]
//! (synthetic bar images, nothing to download), the NT-Xent loss ([`nt_xent`]), and
//! candle-nn's own [`AdamW`]. The loss is printed every few steps and must fall.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --release -p contrast-examples --example loss_in_your_loop
//! ```

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use contrast_data::{LoaderConfig, Normalization, ViewLoader, ViewRecipe};
use contrast_encoders::{
    Encoder, HeadConfig, InputShape, Mlp, ParamBuilder, ProjectionHead, RUNNING_STAT,
};
use contrast_losses::nt_xent;
use std::sync::Arc;
use std::time::Instant;

/// Images per batch; each gives two views, so the loss sees `2 * BATCH` anchors.
const BATCH: usize = 64;
const EPOCHS: usize = 5;
/// NT-Xent temperature (the default config's 0.2).
const TEMPERATURE: f64 = 0.2;

fn main() -> Result<()> {
    let started = Instant::now();
    let device = Device::Cpu;

    // 512 synthetic 16x16 grayscale images of 8 classes; SimCLR's small-image
    // augmentations (crop, flip, brightness and contrast jitter) make the views.
    let data = Arc::new(contrast_examples::bars(512, 16, 8, 0)?);
    let norm = Normalization::from_dataset(&data);
    let recipe = ViewRecipe::simclr_small_grayscale();
    let loader = ViewLoader::new(
        data.clone(),
        vec![recipe.clone(), recipe],
        norm,
        LoaderConfig {
            batch_size: BATCH,
            drop_last: true,
            shuffle: true,
            seed: 0,
            prefetch: 2,
        },
    )?;

    // Encoder and head share one VarMap; ParamBuilder seeds every parameter from
    // (seed, path), so the run is repeatable (candle's CPU RNG cannot be seeded).
    let varmap = VarMap::new();
    let pb = ParamBuilder::new(&varmap, DType::F32, &device, 0);
    let input = InputShape {
        height: 16,
        width: 16,
        channels: 1,
    };
    let encoder = Mlp::new(input, &[256, 128], pb.pp("backbone"))?;
    let head_cfg = HeadConfig {
        hidden: 128,
        out: 64,
        ..HeadConfig::default()
    };
    let head = ProjectionHead::new(encoder.out_dim(), None, &head_cfg, pb.pp("head"))?;

    // BatchNorm keeps its running statistics in the VarMap too (names containing
    // RUNNING_STAT); they are updated by the forward pass, not by the optimiser.
    let trainable: Vec<_> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(name, _)| !name.contains(RUNNING_STAT))
        .map(|(_, var)| var.clone())
        .collect();
    let mut opt = AdamW::new(
        trainable,
        ParamsAdamW {
            lr: 2e-3,
            weight_decay: 1e-4,
            ..ParamsAdamW::default()
        },
    )?;

    println!(
        "{} images, {} steps of {BATCH} pairs, NT-Xent at t = {TEMPERATURE} (chance: ln({}) = {:.3})",
        data.len(),
        EPOCHS * loader.steps_per_epoch(),
        2 * BATCH - 1,
        ((2 * BATCH - 1) as f64).ln()
    );
    let mut losses = Vec::new();
    for epoch in 0..EPOCHS {
        for batch in loader.stream(epoch, 0) {
            let s = batch.shape;
            let dims = (batch.len(), s.height, s.width, s.channels);
            let v1 = Tensor::from_slice(&batch.views[0], dims, &device)?;
            let v2 = Tensor::from_slice(&batch.views[1], dims, &device)?;
            // Both views in one forward pass `[2B, H, W, C]`: BatchNorm then
            // normalises them with the same statistics, as Contrast's trainer does.
            let z = head.forward_t(&encoder.forward_t(&Tensor::cat(&[v1, v2], 0)?, true)?, true)?;
            let (z1, z2) = (
                z.narrow(0, 0, batch.len())?,
                z.narrow(0, batch.len(), batch.len())?,
            );
            let loss = nt_xent(&z1, &z2, TEMPERATURE)?;
            opt.backward_step(&loss)?;

            let value = loss.to_scalar::<f32>()?;
            ensure!(
                value.is_finite(),
                "non-finite loss at step {}",
                losses.len()
            );
            losses.push(value);
            if losses.len() % 5 == 1 {
                println!("step {:>3}  loss {value:.4}", losses.len());
            }
        }
    }

    let mean = |xs: &[f32]| xs.iter().sum::<f32>() / xs.len() as f32;
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    println!(
        "mean loss of the first 5 steps {first:.4}, of the last 5 {last:.4} ({} steps in {:.1} s)",
        losses.len(),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        last < first - 0.1,
        "the loss did not fall: {first:.4} -> {last:.4}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loss_falls() {
        super::main().unwrap();
    }
}
