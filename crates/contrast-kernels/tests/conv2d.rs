//! The GEMM convolution kernels against the plain candle composition: values and
//! gradients to both arguments, over random shapes, strides and paddings.

use candle_core::{DType, Device, Tensor, Var};
use contrast_kernels::cnn::generic;
use contrast_kernels::conv2d_nhwc;
use contrast_testing::max_rel;
use proptest::prelude::*;

/// Batch, input sides, channels, kernel, stride and padding of one comparison.
#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
}

/// Runs both paths on the same inputs with a random upstream gradient and returns
/// the relative errors of output, input gradient and weight gradient.
fn compare(dtype: DType, c: Case) -> [f64; 3] {
    let Case {
        b,
        h,
        w,
        cin,
        cout,
        k,
        s,
        p,
    } = c;
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::randn(0f64, 1.0, (b, h, w, cin), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let wt = Var::from_tensor(
        &Tensor::randn(0f64, 0.5, (k * k * cin, cout), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap(),
    )
    .unwrap();
    let y_fast = conv2d_nhwc(x.as_tensor(), wt.as_tensor(), k, s, p).unwrap();
    let y_ref = generic::conv2d(x.as_tensor(), wt.as_tensor(), k, s, p).unwrap();
    let up = Tensor::randn(0f64, 1.0, y_ref.dims(), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let g_fast = (y_fast.clone() * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ref = (y_ref.clone() * &up)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    [
        max_rel(&y_fast, &y_ref),
        max_rel(
            g_fast.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        ),
        max_rel(
            g_fast.get(wt.as_tensor()).unwrap(),
            g_ref.get(wt.as_tensor()).unwrap(),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn kernel_matches_reference_f64(
        b in 1usize..6, h in 1usize..12, w in 1usize..12, cin in 1usize..7, cout in 1usize..9,
        k in prop::sample::select(vec![1usize, 3, 5]), s in 1usize..3, p in 0usize..3,
    ) {
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        for e in compare(DType::F64, Case { b, h, w, cin, cout, k, s, p }) {
            prop_assert!(e < 1e-12, "relative error {e}");
        }
    }
}

#[test]
fn kernel_matches_reference_f32_on_network_shapes() {
    for (b, h, cin, cout, k, s, p) in [
        (8, 28, 1, 32, 3, 1, 1),
        (4, 14, 32, 64, 3, 2, 1),
        (3, 8, 64, 128, 1, 2, 0),
        (2, 7, 16, 16, 1, 1, 0),
    ] {
        for e in compare(
            DType::F32,
            Case {
                b,
                h,
                w: h,
                cin,
                cout,
                k,
                s,
                p,
            },
        ) {
            assert!(
                e < 1e-4,
                "shape {:?}: relative error {e}",
                (b, h, cin, cout, k, s, p)
            );
        }
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 5, 5, 3), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((9 * 4, 8), DType::F32, &dev).unwrap();
    let e = conv2d_nhwc(&x, &w, 3, 1, 1).unwrap_err().to_string();
    assert!(e.contains("expected 3x3x3"), "{e}");
    let w = Tensor::zeros((9 * 3, 8), DType::F32, &dev).unwrap();
    let e = conv2d_nhwc(&x.narrow(1, 0, 1).unwrap(), &w, 3, 1, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the padded input"), "{e}");
}
