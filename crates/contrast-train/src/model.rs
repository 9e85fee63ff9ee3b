//! The trained network: backbone plus projection head (and LooC's per-family
//! heads), with its variables.

use crate::config::{Config, ModelConfig, RepresentationChoice};
use crate::device::Precision;
use crate::optim::Param;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use contrast_data::recipe::Family;
use contrast_encoders::{
    Encoder, FeatureFilter, InputShape, ParamBuilder, ProjectionHead, RUNNING_STAT, SimLapParams,
};
use contrast_kernels::{CrossProcessSum, OpSet};
use contrast_losses::LossConfig;
use std::sync::Arc;

/// Backbone, projection head, optional SimLAP feature filter and LooC's extra
/// embedding spaces sharing one [`VarMap`] (names `backbone.*`, `head.*`,
/// `filter.*`, `spaces.FAMILY.*`), on one device and running one op set.
pub struct ContrastiveModel {
    pub varmap: VarMap,
    pub backbone: Box<dyn Encoder>,
    pub head: ProjectionHead,
    pub filter: Option<FeatureFilter>,
    /// LooC's heads, one per augmentation family left out, each as configured by
    /// `model.head`: the spaces that stay sensitive to that family.
    pub spaces: Vec<ProjectionHead>,
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
            .field("spaces", &self.spaces.len())
            .field("params", &self.num_params())
            .field("device", &self.device.location())
            .field("ops", &self.ops)
            .finish_non_exhaustive()
    }
}

/// What a method adds to backbone and head.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelParts {
    /// SimLAP's feature filter (and learnable scale).
    pub simlap: Option<SimLapParams>,
    /// LooC's extra embedding spaces, one head per augmentation family named.
    pub spaces: Vec<Family>,
}

/// What the run `cfg` adds to the model for a dataset of `num_classes` classes:
/// SimLAP's feature filter, and its logit scale when learnable (started at
/// `ln(1 / temperature)`); LooC's heads, one per family of `method.families`.
pub fn model_parts(cfg: &Config, num_classes: usize) -> ModelParts {
    let simlap = match &cfg.loss {
        LossConfig::Simlap(c) => Some(SimLapParams {
            classes: num_classes,
            log_scale: c.learnable_scale.then(|| (1.0 / c.temperature).ln()),
        }),
        _ => None,
    };
    ModelParts {
        simlap,
        spaces: cfg.method.families().to_vec(),
    }
}

impl ContrastiveModel {
    /// Builds the model on `device` with seeded initial values (f32), its encoders
    /// computing at `precision` with the op set `cfg.ops` picks for the device;
    /// `parts` adds SimLAP's feature filter or LooC's heads, see [`model_parts`].
    pub fn new(
        cfg: &ModelConfig,
        input: InputShape,
        parts: ModelParts,
        device: &Device,
        seed: u64,
        precision: Precision,
    ) -> Result<Self> {
        Self::with_sync_bn(cfg, input, parts, device, seed, precision, None)
    }

    /// [`ContrastiveModel::new`], with the BatchNorm layers synchronised across a
    /// data-parallel run's processes through `sync` when given (`model.sync_bn`).
    pub fn with_sync_bn(
        cfg: &ModelConfig,
        input: InputShape,
        parts: ModelParts,
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
        let spaces = parts
            .spaces
            .iter()
            .map(|f| {
                ProjectionHead::new(
                    backbone.out_dim(),
                    backbone.out_map(),
                    &cfg.head,
                    pb.pp(format!("spaces.{}", f.name())),
                )
                .with_context(|| format!("building LooC's `{}` head (model.head)", f.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        let filter = match parts.simlap {
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
            spaces,
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

    /// Representation `[B, D]` and the projection of every embedding space `[B, out]`:
    /// the head's, then each of LooC's, all f32.
    pub fn forward_spaces(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let h = self.backbone.forward_t(&x.to_dtype(self.compute)?, train)?;
        let z = std::iter::once(&self.head)
            .chain(&self.spaces)
            .map(|head| Ok(head.forward_t(&h, train)?.to_dtype(DType::F32)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((h.to_dtype(DType::F32)?, z))
    }

    /// The encoder that evaluation reads (`eval.representation`): the backbone, or
    /// (LooC++) every embedding space's L2-normalised projection, concatenated.
    pub fn representation(&self, choice: RepresentationChoice) -> Representation<'_> {
        Representation {
            model: self,
            spaces: choice == RepresentationChoice::Spaces,
        }
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

/// What evaluation embeds with: a model's backbone, or (LooC++) the concatenation of
/// its embedding spaces' normalised projections `[B, (1 + spaces) * out]`.
#[derive(Debug)]
pub struct Representation<'a> {
    model: &'a ContrastiveModel,
    spaces: bool,
}

impl Encoder for Representation<'_> {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let backbone = self.model.backbone.as_ref();
        if !self.spaces {
            return backbone.forward_t(x, train);
        }
        let h = backbone.forward_t(x, train)?;
        let z = std::iter::once(&self.model.head)
            .chain(&self.model.spaces)
            .map(|head| contrast_kernels::l2_normalize(&head.forward_t(&h, train)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&z, 1)
    }

    fn out_dim(&self) -> usize {
        if self.spaces {
            (1 + self.model.spaces.len()) * self.model.head.out_dim()
        } else {
            self.model.backbone.out_dim()
        }
    }

    fn out_map(&self) -> Option<InputShape> {
        if self.spaces {
            None
        } else {
            self.model.backbone.out_map()
        }
    }

    fn feature_map(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.model.backbone.feature_map(x)
    }
}
