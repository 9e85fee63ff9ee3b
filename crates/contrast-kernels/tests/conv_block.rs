//! The fused convolution block equals the composition of its parts: output,
//! statistics and the gradients to input, weight, scale, shift and residual.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::{
    BatchNormMode, BlockSpec, ChannelStats, batch_norm_reference, conv_block,
    conv2d_nhwc_reference, max_pool2_reference,
};
use proptest::prelude::*;

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f64> = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f64> = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = b.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn var(shape: &[usize], mean: f64, std: f64) -> Var {
    Var::from_tensor(&Tensor::randn(mean, std, shape, &Device::Cpu).unwrap()).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn errors(
    b: usize,
    h: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    relu: bool,
    pool: bool,
    fixed: bool,
    residual: bool,
    recompute: bool,
) -> Vec<f64> {
    let spec = BlockSpec {
        kernel: k,
        stride,
        padding: k / 2,
        eps: 1e-5,
        relu,
        pool,
        recompute,
    };
    let x = var(&[b, h, h, cin], 0.0, 1.0);
    let w = var(&[k * k * cin, cout], 0.0, 0.5);
    let gamma = var(&[cout], 1.0, 0.2);
    let beta = var(&[cout], 0.0, 0.3);
    let ho = (h + 2 * (k / 2) - k) / stride + 1;
    let r = residual.then(|| var(&[b, ho, ho, cout], 0.0, 1.0));
    let mode = || {
        if fixed {
            BatchNormMode::Fixed(ChannelStats {
                mean: vec![0.1; cout],
                var: vec![2.0; cout],
            })
        } else {
            BatchNormMode::Batch
        }
    };
    let fused = conv_block(
        x.as_tensor(),
        w.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
        r.as_ref().map(|r| r.as_tensor()),
        spec,
        mode(),
    )
    .unwrap();
    let pre = conv2d_nhwc_reference(x.as_tensor(), w.as_tensor(), k, stride, k / 2).unwrap();
    let bn = batch_norm_reference(
        &pre,
        gamma.as_tensor(),
        beta.as_tensor(),
        mode(),
        1e-5,
        relu && !residual,
    )
    .unwrap();
    let joined = match &r {
        Some(r) if relu => (&bn.y + r.as_tensor()).unwrap().relu().unwrap(),
        Some(r) => (&bn.y + r.as_tensor()).unwrap(),
        None => bn.y.clone(),
    };
    let reference = if pool {
        max_pool2_reference(&joined).unwrap()
    } else {
        joined
    };
    let up = Tensor::randn(0f64, 1.0, reference.dims(), &Device::Cpu).unwrap();
    let gf = (fused.y.clone() * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gr = (reference.clone() * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let stat = fused
        .stats
        .mean
        .iter()
        .zip(&bn.stats.mean)
        .chain(fused.stats.var.iter().zip(&bn.stats.var))
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    let mut out = vec![max_rel(&fused.y, &reference), stat];
    for v in [Some(&x), Some(&w), Some(&gamma), Some(&beta), r.as_ref()]
        .into_iter()
        .flatten()
    {
        out.push(max_rel(
            gf.get(v.as_tensor()).unwrap(),
            gr.get(v.as_tensor()).unwrap(),
        ));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20))]
    #[test]
    fn fused_block_matches_composition(
        b in 1usize..4, h in 4usize..10, cin in 1usize..5, cout in 1usize..6,
        k in prop::sample::select(vec![1usize, 3]), stride in 1usize..3,
        relu in any::<bool>(), pool in any::<bool>(), fixed in any::<bool>(),
        residual in any::<bool>(), recompute in any::<bool>(),
    ) {
        for e in errors(b, h, cin, cout, k, stride, relu, pool, fixed, residual && !pool, recompute) {
            prop_assert!(e < 1e-10, "relative error {e}");
        }
    }
}

#[test]
fn too_small_for_pooling_is_an_error() {
    let x = Tensor::zeros((2, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap();
    let g = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let spec = BlockSpec {
        kernel: 1,
        stride: 1,
        padding: 0,
        eps: 1e-5,
        relu: true,
        pool: true,
        recompute: false,
    };
    let e = conv_block(&x, &w, &g, &g, None, spec, BatchNormMode::Batch)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("smaller than the 2x2 pool"), "{e}");
}

#[test]
fn residual_of_the_wrong_shape_is_an_error() {
    let x = Tensor::zeros((2, 4, 4, 1), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((9, 2), DType::F32, &Device::Cpu).unwrap();
    let g = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let r = Tensor::zeros((2, 4, 4, 3), DType::F32, &Device::Cpu).unwrap();
    let spec = BlockSpec {
        kernel: 3,
        stride: 1,
        padding: 1,
        eps: 1e-5,
        relu: true,
        pool: false,
        recompute: false,
    };
    let e = conv_block(&x, &w, &g, &g, Some(&r), spec, BatchNormMode::Batch)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("the residual must be [2, 4, 4, 2]"), "{e}");
}
