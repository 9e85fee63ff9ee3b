//! Encoders: BatchNorm statistics, gradients to every parameter, shapes, seeding.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use contrast_encoders::{
    BatchNorm, EncoderConfig, HeadConfig, InputShape, ParamBuilder, ProjectionHead, RUNNING_STAT,
};

fn builder(vm: &VarMap, dtype: DType, seed: u64) -> ParamBuilder<'static> {
    ParamBuilder::new(vm, dtype, &Device::Cpu, seed)
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn batch_norm_updates_running_statistics_in_training_mode_only() {
    let vm = VarMap::new();
    let bn = BatchNorm::new(2, builder(&vm, DType::F64, 0).pp("bn")).unwrap();
    // Channel 0: 1, 2, 3, 4 (mean 2.5, unbiased var 5/3); channel 1: constant 7.
    let x = Tensor::from_vec(
        vec![1.0f64, 7.0, 2.0, 7.0, 3.0, 7.0, 4.0, 7.0],
        (4, 2),
        &Device::Cpu,
    )
    .unwrap();
    let y = bn.forward_t(&x, true).unwrap();
    let rm = values(bn.running_mean());
    let rv = values(bn.running_var());
    assert!(
        (rm[0] - 0.25).abs() < 1e-12 && (rm[1] - 0.7).abs() < 1e-12,
        "{rm:?}"
    );
    assert!(
        (rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-12 && (rv[1] - 0.9).abs() < 1e-12,
        "{rv:?}"
    );
    // Training output is normalised with the batch statistics (biased variance 1.25).
    let y = values(&y);
    assert!((y[0] - (1.0 - 2.5) / (1.25f64 + 1e-5).sqrt()).abs() < 1e-9);
    // Eval mode uses the running statistics and leaves them unchanged.
    let e = values(&bn.forward_t(&x, false).unwrap());
    assert!((e[0] - (1.0 - 0.25) / (rv[0] + 1e-5).sqrt()).abs() < 1e-9);
    assert_eq!(values(bn.running_mean()), rm);
}

fn configs() -> Vec<EncoderConfig> {
    vec![
        EncoderConfig::Mlp {
            hidden: vec![16, 8],
        },
        EncoderConfig::Convnet {
            channels: vec![4, 6, 8],
        },
        EncoderConfig::Resnet18 {
            width: 2,
            recompute_stages: 2,
        },
    ]
}

#[test]
fn every_trainable_parameter_receives_a_gradient() {
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 3,
    };
    for cfg in configs() {
        let vm = VarMap::new();
        let pb = builder(&vm, DType::F32, 1);
        let enc = cfg.build(input, pb.pp("backbone")).unwrap();
        let head = ProjectionHead::new(
            enc.out_dim(),
            &HeadConfig {
                hidden: 8,
                out: 4,
                layers: 2,
                out_bn: true,
            },
            pb.pp("head"),
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (6, 8, 8, 3), &Device::Cpu).unwrap();
        let z = head
            .forward_t(&enc.forward_t(&x, true).unwrap(), true)
            .unwrap();
        assert_eq!(z.dims(), &[6, 4]);
        let w = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap();
        // A non-linear loss, so that BatchNorm'd outputs do not give exact zeros.
        let grads = (z * w)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let data = vm.data().lock().unwrap();
        let mut checked = 0;
        for (name, var) in data.iter().filter(|(n, _)| !n.contains(RUNNING_STAT)) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{cfg:?}: no gradient for {name}"));
            let norm: f64 = values(g).iter().map(|v| v * v).sum();
            assert!(norm > 0.0, "{cfg:?}: zero gradient for {name}");
            checked += 1;
        }
        assert!(checked > 4, "{cfg:?}: only {checked} parameters");
    }
}

#[test]
fn output_widths_and_eval_mode_are_consistent() {
    let input = InputShape {
        height: 12,
        width: 12,
        channels: 1,
    };
    for (cfg, width) in configs().into_iter().zip([8, 8, 16]) {
        let vm = VarMap::new();
        let enc = cfg.build(input, builder(&vm, DType::F32, 0)).unwrap();
        assert_eq!(enc.out_dim(), width, "{cfg:?}");
        let x = Tensor::randn(0f32, 1.0, (3, 12, 12, 1), &Device::Cpu).unwrap();
        let a = values(&enc.forward_t(&x, false).unwrap());
        let b = values(&enc.forward_t(&x, false).unwrap());
        assert_eq!(a.len(), 3 * width);
        assert_eq!(a, b, "{cfg:?}: eval mode must be deterministic");
    }
}

#[test]
fn the_seed_fixes_the_initialisation() {
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let cfg = EncoderConfig::Convnet {
        channels: vec![4, 8],
    };
    let init = |seed| {
        let vm = VarMap::new();
        cfg.build(input, builder(&vm, DType::F32, seed)).unwrap();
        let data = vm.data().lock().unwrap();
        values(data["stage0.conv.weight"].as_tensor())
    };
    assert_eq!(init(3), init(3));
    assert_ne!(init(3), init(4));
}

#[test]
fn bad_configurations_are_errors() {
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let vm = VarMap::new();
    let e = EncoderConfig::Convnet { channels: vec![] }
        .build(input, builder(&vm, DType::F32, 0))
        .err()
        .unwrap();
    assert!(e.to_string().contains("channels"), "{e}");
    let x = Tensor::zeros((2, 8, 8, 3), DType::F32, &Device::Cpu).unwrap();
    let enc = EncoderConfig::Convnet { channels: vec![4] }
        .build(input, builder(&vm, DType::F32, 0))
        .unwrap();
    assert!(enc.forward_t(&x, true).is_err());
}

#[test]
fn ema_moves_towards_the_online_network_and_copy_matches() {
    use contrast_encoders::{MomentumSchedule, copy_vars, ema_update};
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let cfg = EncoderConfig::Convnet { channels: vec![4] };
    let (online, target) = (VarMap::new(), VarMap::new());
    cfg.build(input, builder(&online, DType::F64, 1)).unwrap();
    cfg.build(input, builder(&target, DType::F64, 2)).unwrap();
    let get = |vm: &VarMap, name: &str| values(vm.data().lock().unwrap()[name].as_tensor());
    let (s, t0) = (
        get(&online, "stage0.conv.weight"),
        get(&target, "stage0.conv.weight"),
    );
    ema_update(&target, &online, 0.9).unwrap();
    let t1 = get(&target, "stage0.conv.weight");
    for i in 0..s.len() {
        assert!((t1[i] - (0.9 * t0[i] + 0.1 * s[i])).abs() < 1e-12);
    }
    copy_vars(&target, &online).unwrap();
    assert_eq!(get(&target, "stage0.conv.weight"), s);
    assert_eq!(
        get(&target, "stage0.bn.running_var"),
        get(&online, "stage0.bn.running_var")
    );
    assert!(ema_update(&target, &online, 1.5).is_err());

    let constant = MomentumSchedule {
        base: 0.99,
        cosine: false,
    };
    assert_eq!(constant.at(50, 100), 0.99);
    let cosine = MomentumSchedule {
        base: 0.99,
        cosine: true,
    };
    assert!((cosine.at(0, 100) - 0.99).abs() < 1e-12);
    assert!((cosine.at(50, 100) - 0.995).abs() < 1e-12);
    assert!((cosine.at(100, 100) - 1.0).abs() < 1e-12);
}
