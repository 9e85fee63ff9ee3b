//! Optimisers against hand-computed updates; weight decay skips rank-1 parameters.

use candle_core::{Device, Tensor, Var};
use contrast_train::config::OptimConfig;
use contrast_train::optim::{Optimizer, Param};

fn vals(v: &Var) -> Vec<f64> {
    v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
}

/// Loss `sum(c * w)` has the constant gradient `c`.
fn step(opt: &mut Optimizer, vars: &[&Var], c: f64, lr: f64) {
    let loss = vars
        .iter()
        .map(|v| (v.as_tensor() * c).unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    opt.step(&loss.backward().unwrap(), lr).unwrap();
}

#[test]
fn sgd_momentum_and_decay_match_pytorch() {
    let w = Var::from_tensor(&Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap()).unwrap();
    let cfg = OptimConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.5,
    };
    let mut opt = Optimizer::new(
        cfg,
        vec![Param::new("w", w.clone()), Param::new("b", b.clone())],
    );
    assert!(opt.params()[0].decay && !opt.params()[1].decay);
    step(&mut opt, &[&w, &b], 1.0, 0.1);
    // w: g = 1 + 0.5 w; buf = g; w -= 0.1 g.  b: g = 1 (no decay).
    let w1: Vec<f64> = [1.0, 2.0]
        .iter()
        .map(|w: &f64| w - 0.1 * (1.0 + 0.5 * w))
        .collect();
    let g1: Vec<f64> = [1.0, 2.0].iter().map(|w: &f64| 1.0 + 0.5 * w).collect();
    assert_eq!(vals(&w), w1);
    assert_eq!(vals(&b), vec![0.9, 1.9]);
    step(&mut opt, &[&w, &b], 1.0, 0.1);
    for i in 0..2 {
        let buf = 0.9 * g1[i] + (1.0 + 0.5 * w1[i]);
        assert!((vals(&w)[i] - (w1[i] - 0.1 * buf)).abs() < 1e-12);
    }
    assert!((vals(&b)[0] - (0.9 - 0.1 * 1.9)).abs() < 1e-12);
}

#[test]
fn adamw_first_step_is_lr_sized_and_decay_is_decoupled() {
    let w = Var::from_tensor(&Tensor::new(&[[1.0f64, -2.0]], &Device::Cpu).unwrap()).unwrap();
    let cfg = OptimConfig::Adamw {
        lr: 0.01,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = Optimizer::new(cfg, vec![Param::new("w", w.clone())]);
    step(&mut opt, &[&w], 3.0, 0.01);
    // Bias-corrected first step: m_hat / sqrt(v_hat) = sign(g) = 1.
    let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) - 0.01];
    for (g, w) in vals(&w).iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{g} vs {w}");
    }
}

#[test]
fn state_round_trips_and_rejects_foreign_buffers() {
    let w = Var::from_tensor(&Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap()).unwrap();
    let cfg = OptimConfig::Sgd {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.0,
    };
    let mut a = Optimizer::new(cfg.clone(), vec![Param::new("w", w.clone())]);
    step(&mut a, &[&w], 1.0, 0.1);
    let (state, steps) = a.state();
    let mut b = Optimizer::new(cfg.clone(), vec![Param::new("w", w.clone())]);
    b.load_state(state.clone(), steps).unwrap();
    assert_eq!(b.steps(), 1);
    let mut c = Optimizer::new(cfg, vec![Param::new("v", w.clone())]);
    let e = c.load_state(state, steps).unwrap_err().to_string();
    assert!(e.contains("names no parameter"), "{e}");
}
