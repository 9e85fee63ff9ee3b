//! Finite-difference check of the whole differentiable path: ConvNet backbone
//! (GEMM convolution, fused BatchNorm + ReLU, max pooling) -> projection head (MLP, or
//! convolution stages on the flattened map then MLP) ->
//! NT-Xent, in f64.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use contrast_encoders::{
    ConvPool, EncoderConfig, HeadConfig, InputShape, ParamBuilder, ProjectionHead, RUNNING_STAT,
};
use contrast_losses::nt_xent;

#[test]
fn encoder_and_loss_gradients_match_finite_differences() {
    check(&[3, 4], ConvPool::Avg, &[]);
}

/// The default layout: the encoder's flattened map continues through the head's
/// convolution stage.
#[test]
fn gradients_through_a_convolutional_head_match_finite_differences() {
    check(&[3], ConvPool::Flatten, &[4]);
}

fn check(channels: &[usize], pool: ConvPool, head_conv: &[usize]) {
    let vm = VarMap::new();
    let pb = ParamBuilder::new(&vm, DType::F64, &Device::Cpu, 11);
    let input = InputShape {
        height: 6,
        width: 6,
        channels: 2,
    };
    let enc = EncoderConfig::Convnet {
        channels: channels.to_vec(),
        pool,
    }
    .build(input, pb.pp("backbone"))
    .unwrap();
    let head = ProjectionHead::new(
        enc.out_dim(),
        enc.out_map(),
        &HeadConfig {
            conv: head_conv.to_vec(),
            hidden: 5,
            out: 3,
            layers: 2,
            out_bn: false,
        },
        pb.pp("head"),
    )
    .unwrap();
    let x =
        Var::from_tensor(&Tensor::randn(0f64, 1.0, (8, 6, 6, 2), &Device::Cpu).unwrap()).unwrap();
    let loss_of = |x: &Tensor| {
        let z = head
            .forward_t(&enc.forward_t(x, true).unwrap(), true)
            .unwrap();
        nt_xent(
            &z.narrow(0, 0, 4).unwrap(),
            &z.narrow(0, 4, 4).unwrap(),
            0.5,
        )
        .unwrap()
    };
    let grads = loss_of(x.as_tensor()).backward().unwrap();
    let value = |t: &Tensor| loss_of(t).to_scalar::<f64>().unwrap();

    let mut vars: Vec<(String, Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| !n.contains(RUNNING_STAT))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.push(("input".into(), x.clone()));
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in &vars {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for idx in [0, base.len() / 2, base.len() - 1] {
            let probe = |delta: f64| {
                let mut v = base.clone();
                v[idx] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let out = value(x.as_tensor());
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                out
            };
            let fd = (probe(h) - probe(-h)) / (2.0 * h);
            let err = (fd - g[idx]).abs() / g[idx].abs().max(1e-3);
            assert!(
                err < 1e-4,
                "{name}[{idx}]: autograd {} vs finite difference {fd}",
                g[idx]
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "checked {checked} entries");
}
