//! Fused BatchNorm(+ReLU) and max-pool kernels against their plain candle
//! compositions: values, statistics, and gradients to every input.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::cnn::generic;
use contrast_kernels::{BatchNormMode, ChannelStats, batch_norm, max_pool2};
use contrast_testing::{XorShift, max_rel};
use proptest::prelude::*;

thread_local! {
    /// The generator's state; each test runs on its own thread, so its draws are fixed.
    static RNG: std::cell::RefCell<XorShift> = std::cell::RefCell::new(XorShift::new(0));
}

/// Seeded normal draws (Box-Muller). candle's CPU `randn` cannot be seeded, and the
/// f32 comparisons near ReLU's kink depend on the draw: an f32 output that rounds to
/// the other side of zero than the f64 reference flips one element's gradient.
/// Fixed draws make these tests repeatable.
fn randn(mean: f64, std: f64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = RNG.with(|r| {
        let mut r = r.borrow_mut();
        (0..n).map(|_| r.normal(mean, std)).collect()
    });
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn var(shape: &[usize], std: f64, dtype: DType) -> Var {
    Var::from_tensor(&randn(0.0, std, shape).to_dtype(dtype).unwrap()).unwrap()
}

/// Runs the kernel in `dtype` and the reference in f64 on the same inputs (and the
/// same upstream gradient); returns the relative errors of output, statistics and
/// the gradients to x, gamma and beta.
fn bn_errors(shape: &[usize], fixed: bool, relu: bool, dtype: DType) -> Vec<f64> {
    let c = *shape.last().unwrap();
    let x = var(shape, 2.0, dtype);
    let gamma = Var::from_tensor(&(randn(1.0, 0.3, &[c]).to_dtype(dtype).unwrap())).unwrap();
    let beta = var(&[c], 0.5, dtype);
    let mode = || {
        if fixed {
            BatchNormMode::Fixed(ChannelStats {
                mean: (0..c).map(|j| j as f64 * 0.1 - 0.2).collect(),
                var: (0..c).map(|j| 0.5 + j as f64 * 0.3).collect(),
            })
        } else {
            BatchNormMode::Batch
        }
    };
    let wide = |v: &Var| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap();
    let (x64, g64, b64) = (wide(&x), wide(&gamma), wide(&beta));
    let fast = batch_norm(
        x.as_tensor(),
        gamma.as_tensor(),
        beta.as_tensor(),
        mode(),
        1e-5,
        relu,
    )
    .unwrap();
    let slow = generic::batch_norm(
        x64.as_tensor(),
        g64.as_tensor(),
        b64.as_tensor(),
        mode(),
        1e-5,
        relu,
    )
    .unwrap();
    let up = randn(0.0, 1.0, shape);
    let gf = (fast.y.clone() * up.to_dtype(dtype).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gs = (slow.y.clone() * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let stat_err = fast
        .stats
        .mean
        .iter()
        .chain(&fast.stats.var)
        .zip(slow.stats.mean.iter().chain(&slow.stats.var))
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() / b.abs().max(1.0)));
    let mut errs = vec![max_rel(&fast.y, &slow.y), stat_err];
    for (v, v64) in [(&x, &x64), (&gamma, &g64), (&beta, &b64)] {
        errs.push(max_rel(
            gf.get(v.as_tensor()).unwrap(),
            gs.get(v64.as_tensor()).unwrap(),
        ));
    }
    errs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn batch_norm_matches_reference(b in 2usize..5, h in 1usize..6, c in 1usize..9, fixed in any::<bool>(), relu in any::<bool>()) {
        // With two values per channel the normalised output is +-1 whatever the input,
        // so the true input gradient in training mode is zero and both sides are
        // rounding noise: no relative comparison is meaningful there.
        prop_assume!(fixed || b * h * h > 2);
        for e in bn_errors(&[b, h, h, c], fixed, relu, DType::F64) {
            prop_assert!(e < 1e-10, "relative error {e}");
        }
    }

    #[test]
    fn max_pool_matches_reference(b in 1usize..4, h in 2usize..9, w in 2usize..9, c in 1usize..6) {
        let x = var(&[b, h, w, c], 1.0, DType::F64);
        let fast = max_pool2(x.as_tensor()).unwrap();
        let slow = generic::max_pool2(x.as_tensor()).unwrap();
        prop_assert!(max_rel(&fast, &slow) == 0.0);
        let up = randn(0.0, 1.0, fast.dims());
        let gf = (fast * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        prop_assert!(max_rel(gf.get(x.as_tensor()).unwrap(), gs.get(x.as_tensor()).unwrap()) < 1e-15);
    }
}

#[test]
fn batch_norm_f32_on_network_shapes() {
    for (shape, relu) in [(vec![64, 28, 28, 32], true), (vec![512, 512], false)] {
        for e in bn_errors(&shape, false, relu, DType::F32) {
            assert!(e < 1e-4, "{shape:?}: relative error {e} against f64");
        }
    }
}

#[test]
fn pooling_ties_send_the_gradient_once() {
    // A flat window, and one whose maximum is tied in its last two places.
    let x = Tensor::new(&[1.0f64, 1.0, 1.0, 1.0, 0.0, 2.0, 3.0, 3.0], &Device::Cpu)
        .unwrap()
        .reshape((2, 2, 2, 1))
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    for pool in [max_pool2, generic::max_pool2] {
        let g = pool(x.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f64> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let x = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
    let g = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    let e = batch_norm(&x, &g, &g, BatchNormMode::Batch, 1e-5, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("at least 2 values per channel"), "{e}");
    let g3 = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    let e = batch_norm(&x, &g3, &g3, BatchNormMode::Batch, 1e-5, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("disagree on the channel count"), "{e}");
    let e = max_pool2(&Tensor::zeros((1, 1, 4, 2), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller than the 2x2 window"), "{e}");
}

#[test]
fn add_relu_matches_the_composition() {
    use contrast_kernels::add_relu;
    let a = var(&[3, 4, 5, 2], 1.0, DType::F64);
    let b = var(&[3, 4, 5, 2], 1.0, DType::F64);
    let fused = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    let plain = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
    assert_eq!(max_rel(&fused, &plain), 0.0);
    let up = randn(0.0, 1.0, &[3, 4, 5, 2]);
    let gf = (fused * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gp = (plain * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in [&a, &b] {
        assert_eq!(
            max_rel(
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap()
            ),
            0.0
        );
    }
}
