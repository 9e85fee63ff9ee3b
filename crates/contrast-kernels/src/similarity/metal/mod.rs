//! Metal kernel of the streaming InfoNCE path (feature `metal`).
//!
//! On Metal the loss runs the tensor-op streaming path ([`super::tiled`]): candle's
//! Metal matmuls form each candidate tile, and the online log-sum-exp is tensor ops.
//! What tensor comparisons cannot express (per-anchor windows and column lists) goes
//! through [`MaskTile`], whose Metal implementation is `mask_tile.metal`, compiled
//! from source by the Metal driver once per device.
//!
//! Untested: this module cannot be compiled or run on the Linux machines Contrast is
//! developed on (candle's Metal backend needs Apple's frameworks). The kernel mirrors
//! [`MaskTile`]'s CPU implementation rule for rule, and the test
//! `tiled_path_with_windows_and_lists_matches_the_kernel` in contrast-losses is the
//! check to run on macOS with `--features contrast-kernels/metal` and a Metal device.

use crate::similarity::info_nce::Candidates;
use crate::similarity::mask_arrays::MaskArrays;
use crate::similarity::mask_tile::MaskTile;
use candle_core::backend::BackendStorage;
use candle_core::{DType, Layout, MetalDevice, MetalError, MetalStorage, Result, Shape, bail};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder, ComputePipeline};
use objc2_metal::MTLSize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const SOURCE: &str = include_str!("mask_tile.metal");
/// Threads per threadgroup.
const THREADS: usize = 256;

/// The `MaskParams` struct of `mask_tile.metal`.
#[repr(C)]
struct MaskParams {
    rows: u32,
    cols: u32,
    j0: u32,
    rules: u32,
    inv_t: f32,
}

/// The compiled `mask_tile_f32` pipeline of `device`, built on first use.
fn pipeline(device: &MetalDevice) -> Result<ComputePipeline> {
    static CACHE: OnceLock<Mutex<HashMap<String, ComputePipeline>>> = OnceLock::new();
    let key = format!("{:?}", device.id());
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("pipeline cache");
    if let Some(p) = cache.get(&key) {
        return Ok(p.clone());
    }
    let metal = device.metal_device();
    let library = metal
        .new_library_with_source(SOURCE, None)
        .map_err(MetalError::from)?;
    let function = library
        .get_function("mask_tile_f32", None)
        .map_err(MetalError::from)?;
    let p = metal
        .new_compute_pipeline_state_with_function(&function)
        .map_err(MetalError::from)?;
    cache.insert(key, p.clone());
    Ok(p)
}

/// A spec's mask arrays as Metal buffers, in `mask_tile.metal`'s argument order
/// (buffers 3 to 10).
pub(crate) struct DeviceMasks {
    rules: u32,
    buffers: [Arc<Buffer>; 8],
}

impl DeviceMasks {
    fn new(spec: &Candidates, device: &MetalDevice) -> Result<Self> {
        let m = MaskArrays::new(spec);
        Ok(Self {
            rules: m.rules,
            buffers: [
                device.new_buffer_with_data(&m.positive)?,
                device.new_buffer_with_data(&m.row_keys)?,
                device.new_buffer_with_data(&m.col_keys)?,
                device.new_buffer_with_data(&m.window)?,
                device.new_buffer_with_data(&m.excluded.offsets)?,
                device.new_buffer_with_data(&m.excluded.cols)?,
                device.new_buffer_with_data(&m.kept.offsets)?,
                device.new_buffer_with_data(&m.kept.cols)?,
            ],
        })
    }
}

/// [`MaskTile`] on a Metal f32 tile `[B, cols]`; the first tile of a call uploads the
/// masks into the call's [`super::mask_tile::MaskCache`].
pub(crate) fn mask_tile(
    op: &MaskTile<'_>,
    storage: &MetalStorage,
    layout: &Layout,
) -> Result<(MetalStorage, Shape)> {
    if storage.dtype() != DType::F32 {
        bail!(
            "mask_tile: the Metal kernel takes f32 tiles, got {:?}",
            storage.dtype()
        );
    }
    let (rows, cols) = layout.shape().dims2()?;
    let Some((start, _)) = layout.contiguous_offsets() else {
        bail!("mask_tile: the tile must be contiguous");
    };
    let device = storage.device();
    let count = rows * cols;
    let masks = match op.cache.metal.get() {
        Some(m) => m,
        None => {
            let m = DeviceMasks::new(op.spec, device)?;
            op.cache.metal.get_or_init(|| m)
        }
    };
    let params = MaskParams {
        rows: rows as u32,
        cols: cols as u32,
        j0: op.j0 as u32,
        rules: masks.rules,
        inv_t: op.inv_t as f32,
    };
    let out = device
        .new_buffer_builder()
        .with_size_for(count, DType::F32)
        .with_label("contrast-mask-tile")
        .build()?;
    let pipeline = pipeline(device)?;
    {
        let guard = device.command_encoder()?;
        let encoder: &ComputeCommandEncoder = guard.as_ref();
        encoder.set_label("contrast-mask-tile");
        encoder.set_compute_pipeline_state(&pipeline);
        encoder.set_input_buffer(
            0,
            Some(storage.buffer()),
            start * DType::F32.size_in_bytes(),
        );
        encoder.set_output_buffer(1, Some(&out), 0);
        encoder.set_bytes(2, &params);
        for (k, buffer) in masks.buffers.iter().enumerate() {
            encoder.set_input_buffer(3 + k, Some(buffer), 0);
        }
        let size = |width: usize| MTLSize {
            width,
            height: 1,
            depth: 1,
        };
        encoder.dispatch_threads(size(count), size(THREADS.min(count.max(1))));
    }
    Ok((
        MetalStorage::new(out, device.clone(), count, DType::F32),
        layout.shape().clone(),
    ))
}
