//! Walks every case of the golden file (`tests/golden/losses.json`, or the file named
//! by `CONTRAST_GOLDEN`) and checks loss values, gradients and each case's extra
//! outputs (false-negative masks, propagated neighbours, soft targets, kNN scores), in
//! f64 and in f32.
//!
//! Tolerances: `1e-5` relative in f64 and `1e-4` in f32; a gradient's error is its
//! largest absolute deviation divided by the largest reference magnitude. A case whose
//! loss kind is unknown fails the run.

use candle_core::{DType, Device, Tensor, Var};
use contrast_losses::{
    AsclConfig, AsclTargets, Cancellation, FncConfig, InvPConfig, RingConfig, alignment, ascl,
    debiased, decoupled, decoupled_weighted, fnc, hcl, invariance_propagation, moco_info_nce,
    nt_xent, ring, supcon, uniformity,
};
use contrast_testing::{max_rel_err, values};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn golden_path() -> PathBuf {
    match std::env::var_os("CONTRAST_GOLDEN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/losses.json"),
    }
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("matrix")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect()
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

fn tensor(rows: &[Vec<f64>], dtype: DType) -> Tensor {
    let (n, d) = (rows.len(), rows[0].len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

struct Case<'a> {
    v: &'a Value,
    dtype: DType,
}

impl Case<'_> {
    fn f(&self, key: &str) -> f64 {
        self.v["params"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: params.{key} missing", self.v["name"]))
    }

    fn u(&self, key: &str) -> usize {
        self.f(key) as usize
    }

    fn constant(&self, key: &str) -> Tensor {
        tensor(&matrix(&self.v["inputs"][key]), self.dtype)
    }

    fn expected(&self, key: &str) -> &Value {
        &self.v["expected"][key]
    }
}

/// A computed loss, the gradient-carrying inputs, and extra checks `(what, error)`.
struct Outcome {
    loss: Option<Tensor>,
    extras: Vec<(String, f64)>,
}

/// The relative error of `got` against `want` (infinite when their lengths differ).
fn max_err(got: &[f64], want: &[f64]) -> f64 {
    max_rel_err(got, want, 1e-12)
}

fn compute(c: &Case<'_>, vars: &BTreeMap<String, Var>) -> Option<Outcome> {
    let z = |k: &str| vars[k].as_tensor();
    let t = || c.f("temperature");
    let plain = |loss: Tensor| Outcome {
        loss: Some(loss),
        extras: vec![],
    };
    Some(match c.v["loss"].as_str().unwrap() {
        "nt_xent" => plain(nt_xent(z("z1"), z("z2"), t()).unwrap()),
        "moco_info_nce" => {
            plain(moco_info_nce(z("z1"), z("z2"), &c.constant("queue"), t()).unwrap())
        }
        "supcon" => {
            let labels = Tensor::new(ints(&c.v["inputs"]["labels"]), &Device::Cpu).unwrap();
            let views = [z("z1").clone(), z("z2").clone()];
            plain(supcon(&views, &labels, t(), c.f("base_temperature")).unwrap())
        }
        "decoupled" => plain(decoupled(z("z1"), z("z2"), t()).unwrap()),
        "decoupled_weighted" => {
            plain(decoupled_weighted(z("z1"), z("z2"), t(), c.f("sigma")).unwrap())
        }
        "debiased" => plain(debiased(z("z1"), z("z2"), t(), c.f("tau_plus")).unwrap()),
        "hcl" => plain(hcl(z("z1"), z("z2"), t(), c.f("tau_plus"), c.f("beta")).unwrap()),
        "ring" => {
            let cfg = RingConfig {
                temperature: t(),
                outer: c.f("outer"),
                inner: c.f("inner"),
            };
            let k = c.u("queue_size");
            let band = contrast_losses::sampling::ring_band(k, cfg.outer, cfg.inner);
            let band_err = if band == (c.u("inner_idx")..c.u("outer_size")) {
                0.0
            } else {
                f64::INFINITY
            };
            Outcome {
                loss: Some(ring(z("z1"), z("z2"), &c.constant("queue"), &cfg).unwrap()),
                extras: vec![("ring band".into(), band_err)],
            }
        }
        "fnc_attraction" => {
            let views: Vec<Tensor> = (1..=c.u("num_views"))
                .map(|i| z(&format!("z{i}")).clone())
                .collect();
            let cfg = FncConfig {
                temperature: t(),
                topk: Some(c.u("topk")),
                threshold: Some(c.f("threshold")),
                aggregation: contrast_losses::Aggregation::Max,
                cancellation: Cancellation::Attraction,
            };
            let (loss, fns) = fnc(&views, &cfg).unwrap();
            let want: Vec<f64> = matrix(c.expected("false_negative_mask"))
                .into_iter()
                .flatten()
                .collect();
            let got: Vec<f64> = fns.mask.iter().map(|&m| m as u8 as f64).collect();
            Outcome {
                loss: Some(loss),
                extras: vec![("false-negative mask".into(), max_err(&got, &want))],
            }
        }
        "invariance_propagation" => {
            let cfg = InvPConfig {
                temperature: t(),
                n_background: c.u("n_background"),
                diffusion_layer: c.u("diffusion_layer"),
                n_pos: c.u("n_pos"),
                lam_inv: c.f("lam_inv"),
                exclusive: c.v["params"]["exclusive"].as_bool().unwrap(),
                hard_pos: c.v["params"]["hard_pos"].as_bool().unwrap(),
            };
            let neighbors: Vec<Vec<u32>> = c.v["inputs"]["neighbors"]
                .as_array()
                .unwrap()
                .iter()
                .map(ints)
                .collect();
            let out = invariance_propagation(
                z("z1"),
                &ints(&c.v["inputs"]["indices"]),
                &c.constant("bank"),
                &neighbors,
                c.f("ramp_weight"),
                &cfg,
            )
            .unwrap();
            let want: Vec<f64> = matrix(c.expected("propagated_neighbors"))
                .into_iter()
                .flatten()
                .collect();
            let got: Vec<f64> = out.propagated.iter().flatten().map(|&x| x as f64).collect();
            let part =
                |t: &Tensor, key: &str| max_err(&values(t), &[c.expected(key).as_f64().unwrap()]);
            Outcome {
                extras: vec![
                    ("propagated neighbours".into(), max_err(&got, &want)),
                    ("L_ins".into(), part(&out.instance, "L_ins")),
                    ("L_inv".into(), part(&out.invariance, "L_inv")),
                ],
                loss: Some(out.loss),
            }
        }
        "ascl" => {
            let cfg = AsclConfig {
                temperature: c.f("T1"),
                target_temperature: c.f("T2"),
                nn_num: c.u("nn_num"),
                targets: AsclTargets::Ascl,
            };
            let (loss, targets) = ascl(z("z1"), z("z2"), &c.constant("queue"), &cfg).unwrap();
            let want: Vec<f64> = c
                .expected("target_positive_weight")
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let got = values(&targets.narrow(1, 0, 1).unwrap());
            Outcome {
                loss: Some(loss),
                extras: vec![("positive target weight".into(), max_err(&got, &want))],
            }
        }
        "alignment" => plain(alignment(z("z1"), z("z2"), c.f("alpha")).unwrap()),
        "uniformity" => plain(uniformity(z("z1"), c.f("t")).unwrap()),
        "knn_predict" => {
            let cfg = contrast_eval::KnnConfig {
                k: c.u("k"),
                temperature: t(),
            };
            let pred = contrast_eval::knn_predict(
                &c.constant("query"),
                &c.constant("bank"),
                &ints(&c.v["inputs"]["bank_labels"]),
                c.u("num_classes"),
                &cfg,
            )
            .unwrap();
            let want_pred: Vec<f64> = ints(c.expected("pred"))
                .into_iter()
                .map(f64::from)
                .collect();
            let got_pred: Vec<f64> = pred.predictions.iter().map(|&p| p as f64).collect();
            let want_scores: Vec<f64> =
                matrix(c.expected("scores")).into_iter().flatten().collect();
            let pred_err = if want_pred == got_pred {
                0.0
            } else {
                f64::INFINITY
            };
            Outcome {
                loss: None,
                extras: vec![
                    ("predictions".into(), pred_err),
                    ("class scores".into(), max_err(&pred.scores, &want_scores)),
                ],
            }
        }
        _ => return None,
    })
}

/// Checks one case in one dtype; `None` for an unknown loss kind.
fn check(case: &Value, dtype: DType, tol: f64) -> Option<Result<String, String>> {
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    let grads_wanted = case["expected"]["grad"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for key in ["z1", "z2", "z3", "z4"] {
        if case["inputs"].get(key).is_some() {
            vars.insert(
                key.into(),
                Var::from_tensor(&tensor(&matrix(&case["inputs"][key]), dtype)).unwrap(),
            );
        }
    }
    let c = Case { v: case, dtype };
    let outcome = compute(&c, &vars)?;
    let mut worst = 0f64;
    let mut problems = Vec::new();
    if let Some(loss) = &outcome.loss {
        let value = values(loss)[0];
        let want = case["expected"]["loss"].as_f64().unwrap();
        let e = max_err(&[value], &[want]);
        worst = worst.max(e);
        if e > tol {
            problems.push(format!("loss {value} vs {want} (rel err {e:.2e})"));
        }
        let grads = loss.backward().unwrap();
        for (k, g) in &grads_wanted {
            match vars.get(k).and_then(|v| grads.get(v.as_tensor())) {
                None => problems.push(format!("no gradient reached `{k}`")),
                Some(got) => {
                    let want: Vec<f64> = matrix(g).into_iter().flatten().collect();
                    let e = max_err(&values(got), &want);
                    worst = worst.max(e);
                    if e > tol {
                        problems.push(format!("grad {k} rel err {e:.2e}"));
                    }
                }
            }
        }
    }
    for (what, e) in outcome.extras {
        worst = worst.max(e);
        if e > tol {
            problems.push(format!("{what} err {e:.2e}"));
        }
    }
    Some(if problems.is_empty() {
        Ok(format!("{dtype:?} max rel err {worst:.1e}"))
    } else {
        Err(format!("{dtype:?}: {}", problems.join("; ")))
    })
}

fn main() {
    let path = golden_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read golden file {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("golden file is JSON");
    assert_eq!(
        doc["format"],
        "contrast-golden/1",
        "{}: unexpected format",
        path.display()
    );
    let (mut passed, mut failed) = (0usize, 0usize);
    for case in doc["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap();
        let kind = case["loss"].as_str().unwrap_or("?");
        let results = [check(case, DType::F64, 1e-5), check(case, DType::F32, 1e-4)];
        if results.iter().any(|r| r.is_none()) {
            failed += 1;
            println!("FAILED  {name}: unknown loss kind `{kind}`");
            continue;
        }
        let results: Vec<Result<String, String>> = results.into_iter().flatten().collect();
        if results.iter().all(|r| r.is_ok()) {
            passed += 1;
            let notes: Vec<String> = results.into_iter().map(|r| r.unwrap()).collect();
            println!("ok      {name}: {}", notes.join(", "));
        } else {
            failed += 1;
            let notes: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
            println!("FAILED  {name}: {}", notes.join(" | "));
        }
    }
    println!("golden: {passed} passed, 0 skipped");
    if failed > 0 {
        eprintln!("golden: {failed} case(s) failed against {}", path.display());
        std::process::exit(1);
    }
}
