//! Small shape-level operations shared by the encoders (channels last).

use candle_core::{Result, Tensor};

/// Global average pooling, `[B, H, W, C] -> [B, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    x.reshape((b, h * w, c))?.mean(1)
}
