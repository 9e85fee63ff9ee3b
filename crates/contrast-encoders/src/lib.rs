//! Encoders for contrastive learning, channels last (`[B, H, W, C]`).
//!
//! - Backbones: [`Mlp`], [`ConvNet`], the CIFAR-stem [`ResNet18`], and [`Identity`]
//!   (raw pixels, for baselines).
//! - [`BatchNorm`] that trains: batch statistics and running-statistic updates in
//!   training mode, running statistics in eval mode.
//! - [`ProjectionHead`]: the layers between representation and loss: an MLP, optionally
//!   after convolution stages that continue from a [`ConvNet`]'s flattened map.
//! - [`FeatureFilter`]: SimLAP's class-pair gates.
//! - [`ema`]: momentum copies (MoCo's key encoder) and their schedule.
//!
//! One model definition runs on two op sets ([`contrast_kernels::OpSet`], chosen on
//! the [`ParamBuilder`]): the fused CPU kernels, or candle tensor ops that run on any
//! device. Neither uses candle-nn's fused LayerNorm or softmax, whose candle 0.11
//! fast paths drop gradients, and convolutions are im2col plus a matrix product
//! ([`conv`]).
//!
//! # Example
//!
//! A seeded ConvNet embedding a batch of images `[B, H, W, C]` into `[B, D]`:
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarMap;
//! use contrast_encoders::{ConvNet, ConvPool, Encoder, InputShape, ParamBuilder};
//!
//! let input = InputShape { height: 8, width: 8, channels: 1 };
//! // Every parameter is drawn from a generator keyed by the seed and its path.
//! let build = |varmap: &VarMap, seed| {
//!     let pb = ParamBuilder::new(varmap, DType::F32, &Device::Cpu, seed);
//!     ConvNet::new(input, &[4, 8], ConvPool::Avg, pb.pp("backbone"))
//! };
//! let varmap = VarMap::new();
//! let net = build(&varmap, 0)?;
//! assert_eq!(varmap.all_vars().len(), 2 * 5); // per stage: weight, BN scale and shift, 2 running stats
//!
//! let x = Tensor::arange(0f32, 128.0, &Device::Cpu)?
//!     .affine(1.0 / 128.0, -0.5)?
//!     .reshape((2, 8, 8, 1))?;
//! let h = net.forward_t(&x, false)?; // eval mode: BatchNorm uses running statistics
//! // Global average pooling: the representation is the last stage's width.
//! assert_eq!(h.dims(), &[2, 8]);
//! let values = h.flatten_all()?.to_vec1::<f32>()?;
//! assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0)); // pooled ReLU outputs
//!
//! // The same seed rebuilds the same network; another seed, another one.
//! let same = build(&VarMap::new(), 0)?.forward_t(&x, false)?;
//! assert_eq!(same.flatten_all()?.to_vec1::<f32>()?, values);
//! let other = build(&VarMap::new(), 1)?.forward_t(&x, false)?;
//! assert_ne!(other.flatten_all()?.to_vec1::<f32>()?, values);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod batch_norm;
pub mod config;
pub mod conv;
pub mod convnet;
pub mod ema;
pub mod filter;
pub mod head;
pub mod linear;
pub mod mlp;
pub mod ops;
pub mod params;
pub mod resnet;

pub use batch_norm::{BatchNorm, RUNNING_STAT};
pub use config::EncoderConfig;
pub use conv::{Conv2d, ConvSpec};
pub use convnet::{ConvNet, ConvPool};
pub use ema::{MomentumSchedule, copy_vars, ema_update};
pub use filter::{FeatureFilter, FeatureFilterConfig, SimLapParams};
pub use head::{HeadConfig, ProjectionHead};
pub use linear::Linear;
pub use mlp::Mlp;
pub use params::{ParamBuilder, ParamInit};
pub use resnet::ResNet18;

use candle_core::{Result, Tensor};

/// Height, width and channels of the images an encoder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl InputShape {
    /// Values per image.
    pub fn numel(&self) -> usize {
        self.height * self.width * self.channels
    }
}

/// A backbone: images `[B, H, W, C]` to representations `[B, out_dim]`.
pub trait Encoder: Send + Sync + std::fmt::Debug {
    /// Runs the network; `train` selects batch statistics in BatchNorm (and updates
    /// the running ones).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// Width of the representation.
    fn out_dim(&self) -> usize;

    /// The `[H, W, C]` shape of the representation when it is a flattened feature
    /// map (a convolutional projection head continues from it); `None` for vectors.
    fn out_map(&self) -> Option<InputShape> {
        None
    }

    /// The last convolution stage's output `[B, Hf, Wf, C]` before any pooling, in
    /// eval mode: what ContrastiveCrop sums over channels into heat maps. `None` for
    /// encoders without a spatial map.
    fn feature_map(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The flattened input as the representation: the raw-pixel baseline.
#[derive(Debug, Clone)]
pub struct Identity {
    dim: usize,
}

impl Identity {
    /// An identity encoder for images of `input` shape.
    pub fn new(input: InputShape) -> Self {
        Self { dim: input.numel() }
    }
}

impl Encoder for Identity {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        x.flatten_from(1)
    }

    fn out_dim(&self) -> usize {
        self.dim
    }
}
