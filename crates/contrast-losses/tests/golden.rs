//! Walks every case of the golden file (`../shared/golden/losses.json`, or the file
//! named by `CONTRAST_GOLDEN`) and checks loss values and gradients in f64 and f32.
//!
//! Tolerances: `1e-5` relative in f64 and `1e-4` in f32; a gradient's error is its
//! largest absolute deviation divided by the largest reference magnitude.
//! Cases whose loss is not implemented yet are listed as skipped.

use candle_core::{DType, Device, Tensor, Var};
use contrast_losses::nt_xent;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn golden_path() -> PathBuf {
    match std::env::var_os("CONTRAST_GOLDEN") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/losses.json")
        }
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

fn tensor(rows: &[Vec<f64>], dtype: DType) -> Tensor {
    let (n, d) = (rows.len(), rows[0].len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (n, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn param(case: &Value, key: &str) -> f64 {
    case["params"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: params.{key} missing", case["name"]))
}

/// Computes a case's loss with gradient-carrying inputs; `None` when its loss kind
/// is not implemented.
fn evaluate(case: &Value, dtype: DType) -> Option<(f64, BTreeMap<String, Vec<Vec<f64>>>)> {
    let inputs = &case["inputs"];
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    for key in ["z1", "z2", "z3"] {
        if inputs.get(key).is_some() {
            vars.insert(
                key.into(),
                Var::from_tensor(&tensor(&matrix(&inputs[key]), dtype)).unwrap(),
            );
        }
    }
    let t = |k: &str| vars[k].as_tensor();
    let loss = match case["loss"].as_str().unwrap() {
        "nt_xent" => nt_xent(t("z1"), t("z2"), param(case, "temperature")).unwrap(),
        _ => return None,
    };
    let grads = loss.backward().unwrap();
    let value = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let mut out = BTreeMap::new();
    for (k, v) in &vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            out.insert(
                k.clone(),
                g.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap(),
            );
        }
    }
    Some((value, out))
}

fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

fn grad_err(got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    let scale = want
        .iter()
        .flatten()
        .fold(0f64, |m, x| m.max(x.abs()))
        .max(1e-12);
    got.iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Checks one case in one dtype; returns a failure description.
fn check(case: &Value, dtype: DType, tol: f64) -> Option<Result<String, String>> {
    let (value, grads) = evaluate(case, dtype)?;
    let expected = &case["expected"];
    let want = expected["loss"].as_f64().unwrap();
    let mut worst = rel_err(value, want);
    let mut problems = Vec::new();
    if worst > tol {
        problems.push(format!("loss {value} vs {want} (rel err {worst:.2e})"));
    }
    for (k, g) in expected["grad"].as_object().unwrap() {
        match grads.get(k) {
            None => problems.push(format!("no gradient reached `{k}`")),
            Some(got) => {
                let e = grad_err(got, &matrix(g));
                worst = worst.max(e);
                if e > tol {
                    problems.push(format!("grad {k} rel err {e:.2e}"));
                }
            }
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
    let mut skipped: Vec<String> = Vec::new();
    for case in doc["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap();
        let results = [check(case, DType::F64, 1e-5), check(case, DType::F32, 1e-4)];
        if results.iter().any(|r| r.is_none()) {
            skipped.push(format!("{name} ({})", case["loss"].as_str().unwrap()));
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
    for s in &skipped {
        println!("skipped {s}: loss not implemented");
    }
    println!("golden: {passed} passed, {} skipped", skipped.len());
    if failed > 0 {
        eprintln!("golden: {failed} case(s) failed against {}", path.display());
        std::process::exit(1);
    }
}
