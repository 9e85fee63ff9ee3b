//! The fused convolution block equals the composition of its parts: output,
//! statistics and the gradients to input, weight, scale, shift and residual.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::cnn::generic;
use contrast_kernels::{BatchNormMode, BlockSpec, ChannelStats, conv_block};
use contrast_testing::max_rel_with_floor;
use proptest::prelude::*;

/// The floor of the scale of the relative errors: relative to the reference's largest
/// value, but at least 1e-3. With one input channel, a 1x1 kernel and one output
/// channel under batch statistics the block is invariant to the scale of its single
/// weight: that weight's gradient is a sum of order-1 terms that cancel to 6e-8 ..
/// 1.2e-4 (seen over 600 runs), and rounding differences of 2e-16 .. 1e-14 between
/// the two paths were "relative" errors above 1e-10 in about 1 run of 150. The other
/// compared tensors' largest values were 3.6e-3 or more over 100 runs (or exactly
/// zero), above the floor; below it the check becomes an absolute 1e-13.
const SCALE_FLOOR: f64 = 1e-3;

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    max_rel_with_floor(a, b, SCALE_FLOOR)
}

fn var(shape: &[usize], mean: f64, std: f64) -> Var {
    Var::from_tensor(&Tensor::randn(mean, std, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Batch statistics, or fixed ones (mean 0.1, variance `var` in every channel).
fn mode(fixed: bool, c: usize, var: f64) -> BatchNormMode {
    if fixed {
        BatchNormMode::Fixed(ChannelStats {
            mean: vec![0.1; c],
            var: vec![var; c],
        })
    } else {
        BatchNormMode::Batch
    }
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
    data_input: bool,
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
    // A data input (no gradient): the block skips the input gradient. (An f32 first
    // layer would also stream its convolution; that path has its own test below.)
    let x = var(&[b, h, h, cin], 0.0, 1.0);
    let xt = if data_input {
        x.as_tensor().detach()
    } else {
        x.as_tensor().clone()
    };
    let w = var(&[k * k * cin, cout], 0.0, 0.5);
    let gamma = var(&[cout], 1.0, 0.2);
    let beta = var(&[cout], 0.0, 0.3);
    let ho = (h + 2 * (k / 2) - k) / stride + 1;
    let r = residual.then(|| var(&[b, ho, ho, cout], 0.0, 1.0));
    let mode = || mode(fixed, cout, 2.0);
    let fused = conv_block(
        &xt,
        w.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
        r.as_ref().map(|r| r.as_tensor()),
        spec,
        mode(),
    )
    .unwrap();
    let bn = generic::conv_block(
        &xt,
        w.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
        r.as_ref().map(|r| r.as_tensor()),
        spec,
        mode(),
    )
    .unwrap();
    let reference = bn.y.clone();
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
    let x = (!data_input).then_some(&x);
    for v in [x, Some(&w), Some(&gamma), Some(&beta), r.as_ref()]
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
        residual in any::<bool>(), recompute in any::<bool>(), data_input in any::<bool>(),
    ) {
        let residual = residual && !pool;
        for e in errors(b, h, cin, cout, k, stride, relu, pool, fixed, residual, recompute, data_input) {
            prop_assert!(e < 1e-10, "relative error {e}");
        }
    }
}

/// `f32` values of a tensor as bits, for exact comparisons.
fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// A first layer on an image batch (no input gradient) streams its convolution
/// output instead of storing it; the output, statistics and parameter gradients are
/// the same bit for bit as on the stored path, which the same block takes when its
/// input needs a gradient. Odd sizes leave a row and column out of the pool and a
/// partial register block; 3 input channels and 20 outputs exercise the channel tail.
#[test]
fn streamed_first_layer_equals_the_stored_path_bit_for_bit() {
    for (b, h, cin, cout, fixed) in [
        (6, 28, 1, 32, false),
        (3, 13, 3, 20, false),
        (4, 9, 1, 16, true),
    ] {
        let spec = BlockSpec {
            kernel: 3,
            stride: 1,
            padding: 1,
            eps: 1e-5,
            relu: true,
            pool: true,
            recompute: false,
        };
        let mode = || mode(fixed, cout, 0.7);
        let f32var = |shape: &[usize], mean: f64, std: f64| {
            Var::from_tensor(
                &var(shape, mean, std)
                    .as_tensor()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
            .unwrap()
        };
        let x = f32var(&[b, h, h, cin], 0.0, 1.0);
        let w = f32var(&[9 * cin, cout], 0.0, 0.5);
        let gamma = f32var(&[cout], 1.0, 0.2);
        let beta = f32var(&[cout], 0.0, 0.3);
        let run = |input: &Tensor| {
            let out = conv_block(
                input,
                w.as_tensor(),
                gamma.as_tensor(),
                beta.as_tensor(),
                None,
                spec,
                mode(),
            )
            .unwrap();
            let up = Tensor::arange(0f32, out.y.elem_count() as f32, &Device::Cpu)
                .unwrap()
                .reshape(out.y.dims())
                .unwrap()
                .sin()
                .unwrap();
            let grads = (&out.y * up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = |v: &Var| bits(grads.get(v.as_tensor()).unwrap());
            (bits(&out.y), out.stats, g(&w), g(&gamma), g(&beta))
        };
        let streamed = run(&x.as_tensor().detach());
        let stored = run(x.as_tensor());
        assert!(
            streamed.0 == stored.0,
            "output differs ({b}x{h}x{h}x{cin} -> {cout})"
        );
        assert_eq!(streamed.1, stored.1, "statistics differ");
        assert!(streamed.2 == stored.2, "weight gradient differs");
        assert!(
            streamed.3 == stored.3 && streamed.4 == stored.4,
            "gamma/beta gradient differs"
        );
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
