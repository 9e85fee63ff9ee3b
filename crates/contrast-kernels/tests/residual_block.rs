//! The fused residual block equals its composition from `conv_block` ops: output,
//! statistics, and the gradients to the input and every parameter, with and without
//! a projection shortcut, kept or recomputed convolutions, batch or fixed statistics.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::cnn::generic;
use contrast_kernels::{BatchNormMode, ChannelStats, ConvBn, residual_block};
use contrast_testing::max_rel;

fn var(shape: &[usize], mean: f64, std: f64, dtype: DType) -> Var {
    let t = Tensor::randn(mean, std, shape, &Device::Cpu).unwrap();
    Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
}

/// Weights, gamma and beta of one layer.
struct Params([Var; 3]);

impl Params {
    fn new(rows: usize, c: usize, dtype: DType) -> Self {
        Self([
            var(&[rows, c], 0.0, 0.3, dtype),
            var(&[c], 1.0, 0.2, dtype),
            var(&[c], 0.0, 0.3, dtype),
        ])
    }

    fn layer(&self, fixed: bool) -> ConvBn<'_> {
        let c = self.0[1].elem_count();
        ConvBn {
            w: self.0[0].as_tensor(),
            gamma: self.0[1].as_tensor(),
            beta: self.0[2].as_tensor(),
            mode: if fixed {
                BatchNormMode::Fixed(ChannelStats {
                    mean: vec![0.1; c],
                    var: vec![1.5; c],
                })
            } else {
                BatchNormMode::Batch
            },
        }
    }
}

/// Largest relative difference between the fused op and the composition over the
/// output, statistics and all gradients.
fn worst(cin: usize, c: usize, stride: usize, fixed: bool, recompute: bool, dtype: DType) -> f64 {
    let (b, h) = (3, 6);
    let x = var(&[b, h, h, cin], 0.0, 1.0, dtype);
    let first = Params::new(9 * cin, c, dtype);
    let second = Params::new(9 * c, c, dtype);
    let projection = stride != 1 || cin != c;
    let short = projection.then(|| Params::new(cin, c, dtype));
    let ho = (h - 1) / stride + 1;
    let u = Tensor::randn(0f64, 1.0, (b, ho, ho, c), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let (l1, l2) = (first.layer(fixed), second.layer(fixed));
    let ls = short.as_ref().map(|s| s.layer(fixed));
    let fused = residual_block(
        x.as_tensor(),
        &l1,
        &l2,
        ls.as_ref(),
        stride,
        1e-5,
        recompute,
    )
    .unwrap();
    let plain =
        generic::residual_block(x.as_tensor(), &l1, &l2, ls.as_ref(), stride, 1e-5).unwrap();
    assert_eq!(fused.stats.len(), 2 + usize::from(projection));
    let mut worst = max_rel(&fused.y, &plain.y);
    for (a, b) in fused.stats.iter().zip(&plain.stats) {
        for (p, q) in a.mean.iter().zip(&b.mean).chain(a.var.iter().zip(&b.var)) {
            worst = worst.max((p - q).abs() / q.abs().max(1e-6));
        }
    }
    let gf = (&fused.y * &u)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gp = (&plain.y * &u)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let mut vars = vec![&x];
    for p in [Some(&first), Some(&second), short.as_ref()]
        .into_iter()
        .flatten()
    {
        vars.extend(p.0.iter());
    }
    for v in vars {
        let (a, b) = (gf.get(v.as_tensor()), gp.get(v.as_tensor()));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("a gradient is missing ({} / {})", a.is_some(), b.is_some());
        };
        worst = worst.max(max_rel(a, b));
    }
    worst
}

#[test]
fn fused_block_equals_the_composition_in_f64() {
    for (cin, c, stride) in [(4, 4, 1), (3, 5, 2), (3, 5, 1)] {
        for fixed in [false, true] {
            for recompute in [false, true] {
                let e = worst(cin, c, stride, fixed, recompute, DType::F64);
                assert!(
                    e < 1e-10,
                    "cin {cin} c {c} stride {stride} fixed {fixed} recompute {recompute}: {e}"
                );
            }
        }
    }
}

#[test]
fn fused_block_equals_the_composition_in_f32() {
    for (cin, c, stride) in [(4, 4, 1), (3, 5, 2)] {
        let e = worst(cin, c, stride, false, true, DType::F32);
        assert!(e < 1e-4, "cin {cin} c {c} stride {stride}: {e}");
    }
}

#[test]
fn mismatched_weights_are_errors() {
    let x = var(&[2, 4, 4, 3], 0.0, 1.0, DType::F32);
    let (first, second) = (
        Params::new(27, 5, DType::F32),
        Params::new(45, 5, DType::F32),
    );
    // A width change without a projection shortcut.
    let e = residual_block(
        x.as_tensor(),
        &first.layer(false),
        &second.layer(false),
        None,
        1,
        1e-5,
        false,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("shortcut projection"), "{e}");
    // The second layer's weights for the wrong width.
    let wrong = Params::new(27, 5, DType::F32);
    let short = Params::new(3, 5, DType::F32);
    let e = residual_block(
        x.as_tensor(),
        &first.layer(false),
        &wrong.layer(false),
        Some(&short.layer(false)),
        1,
        1e-5,
        false,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("[9*C, C]"), "{e}");
}
