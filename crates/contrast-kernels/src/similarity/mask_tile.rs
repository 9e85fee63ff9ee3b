//! Every [`Candidates`] rule applied to one tile of dot products, as a custom op.
//!
//! The tensor-op streaming path ([`super::tiled`]) builds the positive, `exclude_self`
//! and key masks from tensor comparisons; windows (top-k, Ring and semi-hard bands)
//! and per-anchor column lists do not reduce to such comparisons, so that path applies
//! this op to each tile instead. It runs on the CPU (any float dtype) and on Metal
//! (f32, feature `metal`, [`super::metal`]), which has no custom InfoNCE kernel of
//! its own.

use crate::similarity::info_nce::Candidates;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, WithDType, bail};
use rayon::prelude::*;

/// What the tiles of one call share: on Metal, the spec's mask arrays, uploaded by
/// the first tile and reused by the others.
#[derive(Default)]
pub(crate) struct MaskCache {
    #[cfg(feature = "metal")]
    pub(crate) metal: std::sync::OnceLock<crate::similarity::metal::DeviceMasks>,
}

/// Masks and scales the tile `[B, cols]` of raw dot products for candidate columns
/// `j0..j0 + cols`: kept entries become `dot / t`, removed ones `-inf`.
pub(crate) struct MaskTile<'a> {
    pub spec: &'a Candidates,
    pub j0: usize,
    pub inv_t: f64,
    /// Shared by every tile of one call (see [`MaskCache`]); read by the Metal
    /// kernel only.
    #[cfg_attr(not(feature = "metal"), allow(dead_code))]
    pub cache: &'a MaskCache,
}

impl MaskTile<'_> {
    fn apply<T: WithDType>(&self, dots: &[T], cols: usize) -> Vec<T> {
        let removed = T::from_f64(f64::NEG_INFINITY);
        let mut out = dots.to_vec();
        out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let pos = self.spec.positive_of(i);
            for (k, v) in row.iter_mut().enumerate() {
                let dot = v.to_f64();
                *v = if self.spec.removed(i, self.j0 + k, pos, dot) {
                    removed
                } else {
                    T::from_f64(dot * self.inv_t)
                };
            }
        });
        out
    }
}

impl CustomOp1 for MaskTile<'_> {
    fn name(&self) -> &'static str {
        "contrast-mask-tile"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, cols) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("mask_tile: the tile must be contiguous");
        };
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.apply(&v[start..end], cols)),
            CpuStorage::F64(v) => CpuStorage::F64(self.apply(&v[start..end], cols)),
            CpuStorage::F16(v) => CpuStorage::F16(self.apply(&v[start..end], cols)),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.apply(&v[start..end], cols)),
            other => bail!("mask_tile: expected a float tile, got {:?}", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        storage: &candle_core::MetalStorage,
        layout: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        crate::similarity::metal::mask_tile(self, storage, layout)
    }
}
