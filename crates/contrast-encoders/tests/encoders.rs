//! Encoders: BatchNorm statistics, gradients to every parameter, shapes, seeding.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use contrast_encoders::{
    BatchNorm, ConvPool, EncoderConfig, HeadConfig, InputShape, ParamBuilder, ProjectionHead,
    RUNNING_STAT,
};
use contrast_kernels::OpSet;
use contrast_testing::{max_rel, values};

fn builder(vm: &VarMap, dtype: DType, seed: u64) -> ParamBuilder<'static> {
    ParamBuilder::new(vm, dtype, &Device::Cpu, seed)
}

/// Gradients of `sum((z * w)^2)`: a non-linear loss, so that BatchNorm'd outputs do
/// not give exact zeros.
fn square_loss_grads(z: &Tensor, w: &Tensor) -> candle_core::backprop::GradStore {
    (z * w)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

/// Encoder and head of `cfg` on `input`, their parameters seeded by `seed` in `vm`,
/// running `ops`: a flattened map feeds a convolutional head, vectors an MLP head.
fn network(
    cfg: &EncoderConfig,
    input: InputShape,
    vm: &VarMap,
    dtype: DType,
    ops: OpSet,
) -> (Box<dyn contrast_encoders::Encoder>, ProjectionHead) {
    let pb = builder(vm, dtype, 1).with_ops(ops);
    let enc = cfg.build(input, pb.pp("backbone")).unwrap();
    let conv: &[usize] = if enc.out_map().is_some() { &[5] } else { &[] };
    let head = ProjectionHead::new(
        enc.out_dim(),
        enc.out_map(),
        &head(conv, true),
        pb.pp("head"),
    )
    .unwrap();
    (enc, head)
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

fn convnet(channels: &[usize], pool: ConvPool) -> EncoderConfig {
    EncoderConfig::Convnet {
        channels: channels.to_vec(),
        pool,
    }
}

fn configs() -> Vec<EncoderConfig> {
    vec![
        EncoderConfig::Mlp {
            hidden: vec![16, 8],
        },
        convnet(&[4, 6, 8], ConvPool::Avg),
        EncoderConfig::Resnet18 {
            width: 2,
            recompute_stages: 2,
        },
        convnet(&[4, 6], ConvPool::Flatten),
    ]
}

fn head(conv: &[usize], out_bn: bool) -> HeadConfig {
    HeadConfig {
        conv: conv.to_vec(),
        hidden: 8,
        out: 4,
        layers: 2,
        out_bn,
    }
}

#[test]
fn every_trainable_parameter_receives_a_gradient() {
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 3,
    };
    // f32 parameters throughout; in bf16 the layers cast them to the activations'
    // type, and the gradients must still reach every one of them.
    let sets = [
        (OpSet::Fused, DType::F32),
        (OpSet::Candle, DType::F32),
        (OpSet::Candle, DType::BF16),
    ];
    for (ops, dtype) in sets {
        for cfg in configs() {
            let vm = VarMap::new();
            let (enc, head) = network(&cfg, input, &vm, DType::F32, ops);
            let x = Tensor::randn(0f32, 1.0, (6, 8, 8, 3), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let z = head
                .forward_t(&enc.forward_t(&x, true).unwrap(), true)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert_eq!(z.dims(), &[6, 4]);
            let w = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu).unwrap();
            let grads = square_loss_grads(&z, &w);
            let data = vm.data().lock().unwrap();
            let mut checked = 0;
            for (name, var) in data.iter().filter(|(n, _)| !n.contains(RUNNING_STAT)) {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{ops:?} {dtype:?} {cfg:?}: no gradient for {name}"));
                let norm: f64 = values(g).iter().map(|v| v * v).sum();
                assert!(
                    norm > 0.0,
                    "{ops:?} {dtype:?} {cfg:?}: zero gradient for {name}"
                );
                checked += 1;
            }
            assert!(checked > 4, "{cfg:?}: only {checked} parameters");
        }
    }
}

/// One model definition, two op sets: in f64 the candle bodies give the fused ops'
/// outputs, every parameter's gradient and the running statistics to 1e-9, in
/// training mode and then in eval mode (which reads the running statistics).
#[test]
fn the_op_sets_compute_the_same_network_in_f64() {
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 3,
    };
    let x = Tensor::randn(0f64, 1.0, (6, 8, 8, 3), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f64, 1.0, (6, 4), &Device::Cpu).unwrap();
    for cfg in configs() {
        let nets = [OpSet::Fused, OpSet::Candle].map(|ops| {
            let vm = VarMap::new();
            let net = network(&cfg, input, &vm, DType::F64, ops);
            (vm, net)
        });
        for train in [true, false] {
            let runs: Vec<_> = nets
                .iter()
                .map(|(vm, (enc, head))| {
                    let z = head
                        .forward_t(&enc.forward_t(&x, train).unwrap(), train)
                        .unwrap();
                    let grads = square_loss_grads(&z, &w);
                    let data = vm.data().lock().unwrap();
                    let mut named: Vec<(String, Tensor)> = data
                        .iter()
                        .map(|(name, var)| {
                            let t = if name.contains(RUNNING_STAT) {
                                var.as_tensor().clone()
                            } else {
                                grads.get(var.as_tensor()).unwrap().clone()
                            };
                            (name.clone(), t)
                        })
                        .collect();
                    named.sort_by(|a, b| a.0.cmp(&b.0));
                    (z, named)
                })
                .collect();
            let (zf, gf) = &runs[0];
            let (zc, gc) = &runs[1];
            let e = max_rel(zc, zf);
            assert!(e < 1e-9, "{cfg:?} train {train}: outputs differ by {e}");
            assert_eq!(gf.len(), gc.len());
            for ((name, f), (_, c)) in gf.iter().zip(gc) {
                let e = max_rel(c, f);
                assert!(e < 1e-9, "{cfg:?} train {train}: {name} differs by {e}");
            }
        }
    }
}

#[test]
fn output_widths_and_eval_mode_are_consistent() {
    let input = InputShape {
        height: 12,
        width: 12,
        channels: 1,
    };
    // The flattened ConvNet pools 12 -> 6 -> 3: a 3x3x6 map.
    for (cfg, width) in configs().into_iter().zip([8, 8, 16, 54]) {
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
    let cfg = convnet(&[4, 8], ConvPool::Avg);
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
    let e = convnet(&[], ConvPool::Avg)
        .build(input, builder(&vm, DType::F32, 0))
        .err()
        .unwrap();
    assert!(e.to_string().contains("channels"), "{e}");
    // Four pools take 8x8 images to nothing.
    let e = convnet(&[2, 2, 2, 2], ConvPool::Flatten)
        .build(input, builder(&VarMap::new(), DType::F32, 0))
        .err()
        .unwrap();
    assert!(e.to_string().contains("fewer `channels`"), "{e}");
    let x = Tensor::zeros((2, 8, 8, 3), DType::F32, &Device::Cpu).unwrap();
    let enc = convnet(&[4], ConvPool::Avg)
        .build(input, builder(&vm, DType::F32, 0))
        .unwrap();
    assert!(enc.forward_t(&x, true).is_err());
    // Convolution stages in the head need a feature map, not a pooled vector.
    let e = ProjectionHead::new(
        enc.out_dim(),
        enc.out_map(),
        &head(&[4], false),
        builder(&vm, DType::F32, 0),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("pool = \"flatten\""), "{e}");
}

#[test]
fn a_network_split_between_encoder_and_conv_head_computes_the_whole_convnet() {
    let input = InputShape {
        height: 12,
        width: 12,
        channels: 2,
    };
    // Whole: stages 4-6-8, global average pooling, MLP head. Split: stages 4-6 with
    // the map flattened, then stage 8 and pooling in the head.
    let (whole, split) = (VarMap::new(), VarMap::new());
    let wb = builder(&whole, DType::F64, 5);
    let enc_w = convnet(&[4, 6, 8], ConvPool::Avg)
        .build(input, wb.pp("backbone"))
        .unwrap();
    let head_w =
        ProjectionHead::new(enc_w.out_dim(), None, &head(&[], false), wb.pp("head")).unwrap();
    let sb = builder(&split, DType::F64, 6);
    let enc_s = convnet(&[4, 6], ConvPool::Flatten)
        .build(input, sb.pp("backbone"))
        .unwrap();
    let head_s = ProjectionHead::new(
        enc_s.out_dim(),
        enc_s.out_map(),
        &head(&[8], false),
        sb.pp("head"),
    )
    .unwrap();
    {
        let (w, s) = (whole.data().lock().unwrap(), split.data().lock().unwrap());
        assert_eq!(w.len(), s.len());
        for (name, var) in s.iter() {
            let from = name.replace("head.conv.stage0", "backbone.stage2");
            var.set(w[&from].as_tensor()).unwrap();
        }
    }
    let x = Tensor::randn(0f64, 1.0, (5, 12, 12, 2), &Device::Cpu).unwrap();
    for train in [true, false] {
        let zw = values(
            &head_w
                .forward_t(&enc_w.forward_t(&x, train).unwrap(), train)
                .unwrap(),
        );
        let zs = values(
            &head_s
                .forward_t(&enc_s.forward_t(&x, train).unwrap(), train)
                .unwrap(),
        );
        assert_eq!(zw.len(), 20);
        for (a, b) in zw.iter().zip(&zs) {
            assert!((a - b).abs() < 1e-10, "train {train}: {a} vs {b}");
        }
    }
}

#[test]
fn every_batch_norm_records_running_statistics_in_training_mode() {
    // The ResNet's blocks run as one fused op each, which returns the statistics of
    // all three BatchNorms; every one of them must move its running statistics.
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 3,
    };
    for cfg in configs() {
        let vm = VarMap::new();
        let enc = cfg.build(input, builder(&vm, DType::F32, 2)).unwrap();
        let x = Tensor::randn(0f32, 2.0, (4, 8, 8, 3), &Device::Cpu).unwrap();
        let stats = || -> Vec<(String, Vec<f64>)> {
            let data = vm.data().lock().unwrap();
            let mut v: Vec<_> = data
                .iter()
                .filter(|(n, _)| n.contains(RUNNING_STAT))
                .map(|(n, t)| (n.clone(), values(t.as_tensor())))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let before = stats();
        enc.forward_t(&x, false).unwrap();
        assert_eq!(
            stats(),
            before,
            "{cfg:?}: eval mode moved running statistics"
        );
        enc.forward_t(&x, true).unwrap();
        let after = stats();
        assert!(!before.is_empty());
        for ((name, old), (_, new)) in before.iter().zip(&after) {
            assert_ne!(old, new, "{cfg:?}: {name} did not move");
        }
    }
}

#[test]
fn ema_moves_towards_the_online_network_and_copy_matches() {
    use contrast_encoders::{MomentumSchedule, copy_vars, ema_update};
    let input = InputShape {
        height: 8,
        width: 8,
        channels: 1,
    };
    let cfg = convnet(&[4], ConvPool::Avg);
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
