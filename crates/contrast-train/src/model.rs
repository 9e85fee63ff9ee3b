//! The trained network: backbone plus projection head, with its variables.

use crate::config::ModelConfig;
use crate::device::Precision;
use crate::optim::Param;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use contrast_encoders::{
    Encoder, FeatureFilter, InputShape, ParamBuilder, ProjectionHead, RUNNING_STAT, SimLapParams,
};
use contrast_kernels::{CrossProcessSum, OpSet};
use contrast_losses::LossConfig;
use std::sync::Arc;

/// Backbone, projection head and optional SimLAP feature filter sharing one
/// [`VarMap`] (names `backbone.*`, `head.*`, `filter.*`), on one device and running
/// one op set.
pub struct ContrastiveModel {
    pub varmap: VarMap,
    pub backbone: Box<dyn Encoder>,
    pub head: ProjectionHead,
    pub filter: Option<FeatureFilter>,
    device: Device,
    ops: OpSet,
    /// The encoders' activation dtype.
    compute: DType,
}

impl std::fmt::Debug for ContrastiveModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContrastiveModel")
            .field("backbone", &self.backbone)
            .field("head", &self.head)
            .field("filter", &self.filter)
            .field("params", &self.num_params())
            .field("device", &self.device.location())
            .field("ops", &self.ops)
            .finish_non_exhaustive()
    }
}

/// What a run with `loss` adds to the model for a dataset of `num_classes` classes:
/// SimLAP's feature filter, and its logit scale when learnable (started at
/// `ln(1 / temperature)`); nothing for the other losses.
pub fn simlap_params(loss: &LossConfig, num_classes: usize) -> Option<SimLapParams> {
    match loss {
        LossConfig::Simlap(c) => Some(SimLapParams {
            classes: num_classes,
            log_scale: c.learnable_scale.then(|| (1.0 / c.temperature).ln()),
        }),
        _ => None,
    }
}

impl ContrastiveModel {
    /// Builds the model on `device` with seeded initial values (f32), its encoders
    /// computing at `precision` with the op set `cfg.ops` picks for the device;
    /// `simlap` asks for SimLAP's feature filter (and learnable scale), see
    /// [`simlap_params`].
    pub fn new(
        cfg: &ModelConfig,
        input: InputShape,
        simlap: Option<SimLapParams>,
        device: &Device,
        seed: u64,
        precision: Precision,
    ) -> Result<Self> {
        Self::with_sync_bn(cfg, input, simlap, device, seed, precision, None)
    }

    /// [`ContrastiveModel::new`], with the BatchNorm layers synchronised across a
    /// data-parallel run's processes through `sync` when given (`model.sync_bn`).
    pub fn with_sync_bn(
        cfg: &ModelConfig,
        input: InputShape,
        simlap: Option<SimLapParams>,
        device: &Device,
        seed: u64,
        precision: Precision,
        sync: Option<Arc<dyn CrossProcessSum>>,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let ops = cfg.ops.resolve(device, precision)?;
        let pb = ParamBuilder::new(&varmap, DType::F32, device, seed).with_ops(ops);
        let pb = match sync {
            Some(sum) => pb.with_sync_bn(sum),
            None => pb,
        };
        let backbone = cfg
            .encoder
            .build(input, pb.pp("backbone"))
            .context("building the encoder (model.encoder)")?;
        let head = ProjectionHead::new(
            backbone.out_dim(),
            backbone.out_map(),
            &cfg.head,
            pb.pp("head"),
        )
        .context("building the projection head (model.head)")?;
        let filter = match simlap {
            Some(params) => Some(
                FeatureFilter::new(
                    params,
                    cfg.head.out,
                    &cfg.filter.clone().unwrap_or_default(),
                    pb.pp("filter"),
                )
                .context("building the feature filter (model.filter)")?,
            ),
            None => None,
        };
        Ok(Self {
            varmap,
            backbone,
            head,
            filter,
            device: device.clone(),
            ops,
            compute: precision.dtype(),
        })
    }

    /// The device the variables live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The op set the encoders run.
    pub fn ops(&self) -> OpSet {
        self.ops
    }

    /// Representation `[B, D]` and projection `[B, out]` of images `[B, H, W, C]`,
    /// both f32 (the encoders run in the model's precision in between).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let h = self.backbone.forward_t(&x.to_dtype(self.compute)?, train)?;
        let z = self.head.forward_t(&h, train)?;
        Ok((h.to_dtype(DType::F32)?, z.to_dtype(DType::F32)?))
    }

    /// Trainable parameters (running statistics excluded), sorted by name.
    pub fn params(&self) -> Vec<Param> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut params: Vec<Param> = data
            .iter()
            .filter(|(name, _)| !name.contains(RUNNING_STAT))
            .map(|(name, var)| Param::new(name.clone(), var.clone()))
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        params
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.var.elem_count()).sum()
    }
}
