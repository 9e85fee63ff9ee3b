//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)]

use contrast_data::idx::encode_idx;
use contrast_train::Config;
use std::path::Path;

/// Writes a synthetic 10-class MNIST-layout dataset (12x12 images) into `dir/mnist`:
/// each class is a bright bar at a class-specific position plus noise, so that a
/// small encoder can learn it in a few steps.
pub fn write_synthetic_mnist(dir: &Path, train: usize, test: usize) {
    let root = dir.join("mnist");
    std::fs::create_dir_all(&root).unwrap();
    let mut state = 12345u64;
    let mut rand = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = Vec::with_capacity(n * 144);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let label = (i % 10) as u8;
            labels.push(label);
            for y in 0..12 {
                for x in 0..12 {
                    let on = if label < 5 {
                        y == 1 + 2 * label as usize
                    } else {
                        x == 1 + 2 * (label as usize - 5)
                    };
                    let noise = (rand() % 60) as u8;
                    images.push(if on { 190 + noise } else { noise });
                }
            }
        }
        std::fs::write(
            root.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[n, 12, 12], &images),
        )
        .unwrap();
        std::fs::write(
            root.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[n], &labels),
        )
        .unwrap();
    }
}

/// A small, fast configuration on the synthetic dataset.
pub fn tiny_config(epochs: usize) -> Config {
    let text = format!(
        r#"
name = "tiny"
seed = 3
[data]
dataset = "mnist"
batch_size = 32
[data.augment]
hflip = 0.5
crop = {{ scale = [0.6, 1.0] }}
[model]
encoder = {{ kind = "convnet", channels = [8, 16] }}
head = {{ hidden = 32, out = 16 }}
[loss]
name = "nt_xent"
temperature = 0.5
[optim]
name = "sgd"
lr = 0.1
weight_decay = 1e-4
[train]
epochs = {epochs}
[eval]
knn = {{ k = 20, temperature = 0.1 }}
probe = {{ epochs = 5, batch_size = 64, lr = 0.01, weight_decay = 0.0, seed = 0 }}
monitor_bank = 200
"#
    );
    Config::from_toml(&text, "tiny", &[]).unwrap()
}
