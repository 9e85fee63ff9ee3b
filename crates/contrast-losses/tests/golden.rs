//! Walks every golden file and checks loss values, gradients and each case's extra
//! outputs (false-negative masks, propagated and refreshed neighbours, soft targets,
//! kNN scores, MoCHi's mixed logits, ContrastiveCrop boxes), in f64 and in f32.
//!
//! Files: every `*.json` in `tests/golden/` in name order (`losses.json`, the cases
//! first collected from peer libraries; `reference.json`, written by
//! `benches/torch/golden.py`), then the file named by `CONTRAST_GOLDEN` if set. Each
//! file ends with a line `golden: N passed, M skipped (FILE)`.
//!
//! Tolerances: `1e-5` relative in f64 and `1e-4` in f32, both against the f64
//! reference; a gradient's error is its largest absolute deviation divided by the
//! largest reference magnitude. A case whose loss kind is unknown fails the run. A case
//! is skipped only when it names, in `params.requires`, a cargo feature of this crate
//! that the test was built without (a device backend).

use candle_core::{DType, Device, Tensor, Var};
use contrast_losses::{
    AsclConfig, AsclTargets, Cancellation, FncConfig, GatePenalty, InvPConfig, RingConfig,
    alignment, ascl, debiased, decoupled, decoupled_weighted, fnc, gate_penalty, hcl, hcl_queue,
    invariance_propagation, looc, moco_info_nce, nt_xent, ramp, refreshed_neighbours, ring, simlap,
    simlap_learnable, supcon, uniformity,
};
use contrast_mining::policy::Mochi;
use contrast_mining::{Pipeline, PolicyConfig, QueueBatch, QueuePlan, mined_moco_info_nce};
use contrast_testing::{max_rel_err, values};
use rand::SeedableRng;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The golden files, in the order they are checked.
fn golden_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden file in {}", dir.display());
    if let Some(extra) = std::env::var_os("CONTRAST_GOLDEN") {
        files.push(PathBuf::from(extra));
    }
    files
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().expect("matrix").iter().map(numbers).collect()
}

/// A vector or a matrix, flattened.
fn flat(v: &Value) -> Vec<f64> {
    match v.as_array().and_then(|a| a.first()) {
        Some(Value::Array(_)) => matrix(v).into_iter().flatten().collect(),
        _ => numbers(v),
    }
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as u32)
        .collect()
}

fn int_rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().expect("rows").iter().map(ints).collect()
}

/// A `[n]` or `[n, d]` tensor from a JSON vector or matrix.
fn tensor(v: &Value, dtype: DType) -> Tensor {
    let rows = v.as_array().expect("vector or matrix");
    let t = match rows.first() {
        Some(Value::Array(first)) => {
            let (n, d) = (rows.len(), first.len());
            Tensor::from_vec(flat(v), (n, d), &Device::Cpu)
        }
        _ => Tensor::from_vec(numbers(v), rows.len(), &Device::Cpu),
    };
    t.unwrap().to_dtype(dtype).unwrap()
}

struct Case<'a> {
    v: &'a Value,
    dtype: DType,
    vars: &'a BTreeMap<String, Var>,
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

    fn flag(&self, key: &str) -> bool {
        self.v["params"][key]
            .as_bool()
            .unwrap_or_else(|| panic!("{}: params.{key} missing", self.v["name"]))
    }

    fn text(&self, key: &str) -> &str {
        self.v["params"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: params.{key} missing", self.v["name"]))
    }

    /// Input `key`: the gradient-carrying variable when the case wants its gradient,
    /// else a constant.
    fn input(&self, key: &str) -> Tensor {
        match self.vars.get(key) {
            Some(v) => v.as_tensor().clone(),
            None => tensor(&self.v["inputs"][key], self.dtype),
        }
    }

    fn ints(&self, key: &str) -> Vec<u32> {
        ints(&self.v["inputs"][key])
    }

    fn labels(&self, key: &str) -> Tensor {
        Tensor::new(self.ints(key), &Device::Cpu).unwrap()
    }

    fn expected(&self, key: &str) -> &Value {
        &self.v["expected"][key]
    }

    /// The error of a discrete result: 0 when equal, else infinite.
    fn exact<T: PartialEq>(got: T, want: T) -> f64 {
        if got == want { 0.0 } else { f64::INFINITY }
    }
}

/// A computed loss (when the kind has one) and extra checks `(what, error)`.
struct Outcome {
    loss: Option<Tensor>,
    extras: Vec<(String, f64)>,
}

/// The relative error of `got` against `want` (infinite when their lengths differ).
fn max_err(got: &[f64], want: &[f64]) -> f64 {
    max_rel_err(got, want, 1e-12)
}

fn plain(loss: Tensor) -> Outcome {
    Outcome {
        loss: Some(loss),
        extras: vec![],
    }
}

/// The cargo features of this crate a case may require, and whether they are built.
fn feature_built(name: &str) -> Option<bool> {
    match name {
        "cuda" => Some(cfg!(feature = "cuda")),
        "cudnn" => Some(cfg!(feature = "cudnn")),
        "metal" => Some(cfg!(feature = "metal")),
        _ => None,
    }
}

/// Why a case is not checked.
enum NotRun {
    /// It requires a feature this build lacks (counted as skipped).
    Skip(String),
    /// Its kind or a required feature is unknown (a failure).
    Unknown(String),
}

fn compute(c: &Case<'_>) -> Result<Outcome, NotRun> {
    let z = |k: &str| c.input(k);
    let t = || c.f("temperature");
    Ok(match c.v["loss"].as_str().unwrap_or("?") {
        "nt_xent" => plain(nt_xent(&z("z1"), &z("z2"), t()).unwrap()),
        "moco_info_nce" => plain(moco_info_nce(&z("z1"), &z("z2"), &z("queue"), t()).unwrap()),
        "supcon" => {
            let views = [z("z1"), z("z2")];
            plain(supcon(&views, &c.labels("labels"), t(), c.f("base_temperature")).unwrap())
        }
        "decoupled" => plain(decoupled(&z("z1"), &z("z2"), t()).unwrap()),
        "decoupled_weighted" => {
            plain(decoupled_weighted(&z("z1"), &z("z2"), t(), c.f("sigma")).unwrap())
        }
        "debiased" => plain(debiased(&z("z1"), &z("z2"), t(), c.f("tau_plus")).unwrap()),
        "hcl" => plain(hcl(&z("z1"), &z("z2"), t(), c.f("tau_plus"), c.f("beta")).unwrap()),
        "hcl_queue" => plain(
            hcl_queue(
                &z("z1"),
                &z("z2"),
                &z("queue"),
                t(),
                c.f("tau_plus"),
                c.f("beta"),
            )
            .unwrap(),
        ),
        "ring" => {
            let cfg = RingConfig {
                temperature: t(),
                outer: c.f("outer"),
                inner: c.f("inner"),
            };
            let k = c.u("queue_size");
            let band = contrast_losses::sampling::ring_band(k, cfg.outer, cfg.inner);
            let band_err = Case::exact(band, c.u("inner_idx")..c.u("outer_size"));
            Outcome {
                loss: Some(ring(&z("z1"), &z("z2"), &z("queue"), &cfg).unwrap()),
                extras: vec![("ring band".into(), band_err)],
            }
        }
        kind @ ("fnc_attraction" | "fnc_elimination") => {
            let views: Vec<Tensor> = (1..=c.u("num_views"))
                .map(|i| z(&format!("z{i}")))
                .collect();
            let cfg = FncConfig {
                temperature: t(),
                topk: Some(c.u("topk")),
                threshold: Some(c.f("threshold")),
                aggregation: contrast_losses::Aggregation::Max,
                cancellation: if kind == "fnc_attraction" {
                    Cancellation::Attraction
                } else {
                    Cancellation::Elimination
                },
            };
            let (loss, fns) = fnc(&views, &cfg).unwrap();
            let want = flat(c.expected("false_negative_mask"));
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
                exclusive: c.flag("exclusive"),
                hard_pos: c.flag("hard_pos"),
            };
            let indices = c.ints("indices");
            let out = invariance_propagation(
                &z("z1"),
                &indices,
                &z("bank"),
                &int_rows(&c.v["inputs"]["neighbors"]),
                c.f("ramp_weight"),
                &cfg,
            )
            .unwrap();
            let part =
                |t: &Tensor, key: &str| max_err(&values(t), &[c.expected(key).as_f64().unwrap()]);
            let mut extras = vec![
                (
                    "propagated neighbours".into(),
                    Case::exact(
                        out.propagated.clone(),
                        int_rows(c.expected("propagated_neighbors")),
                    ),
                ),
                ("L_ins".into(), part(&out.instance, "L_ins")),
                ("L_inv".into(), part(&out.invariance, "L_inv")),
            ];
            if !c.expected("nearest").is_null() {
                extras.push((
                    "nearest bank entries".into(),
                    Case::exact(out.nearest.clone(), int_rows(c.expected("nearest"))),
                ));
                let refreshed: Vec<Vec<u32>> = indices
                    .iter()
                    .zip(&out.nearest)
                    .map(|(&i, n)| refreshed_neighbours(i, n))
                    .collect();
                extras.push((
                    "refreshed neighbours".into(),
                    Case::exact(refreshed, int_rows(c.expected("refreshed_neighbors"))),
                ));
            }
            Outcome {
                extras,
                loss: Some(out.loss),
            }
        }
        "invp_ramp" => {
            let end = c.u("end");
            let epochs: Vec<usize> = c.ints("epochs").into_iter().map(|e| e as usize).collect();
            let at =
                |gaussian| -> Vec<f64> { epochs.iter().map(|&e| ramp(e, end, gaussian)).collect() };
            Outcome {
                loss: None,
                extras: vec![
                    (
                        "binary ramp".into(),
                        max_err(&at(false), &flat(c.expected("binary"))),
                    ),
                    (
                        "gaussian ramp".into(),
                        max_err(&at(true), &flat(c.expected("gaussian"))),
                    ),
                ],
            }
        }
        "ascl" => {
            let cfg = AsclConfig {
                temperature: c.f("T1"),
                target_temperature: c.f("T2"),
                nn_num: c.u("nn_num"),
                targets: AsclTargets::Ascl,
            };
            let (loss, targets) = ascl(&z("z1"), &z("z2"), &z("queue"), &cfg).unwrap();
            let want = flat(c.expected("target_positive_weight"));
            let got = values(&targets.narrow(1, 0, 1).unwrap());
            Outcome {
                loss: Some(loss),
                extras: vec![("positive target weight".into(), max_err(&got, &want))],
            }
        }
        "alignment" => plain(alignment(&z("z1"), &z("z2"), c.f("alpha")).unwrap()),
        "uniformity" => plain(uniformity(&z("z1"), c.f("t")).unwrap()),
        "simlap" => {
            let (labels, partners) = (c.labels("labels"), c.labels("partners"));
            let (z1, z2, gates) = (z("z1"), z("z2"), z("gates"));
            plain(if c.flag("learnable_scale") {
                simlap_learnable(&z1, &z2, &labels, &partners, &gates, &z("log_scale")).unwrap()
            } else {
                simlap(&z1, &z2, &labels, &partners, &gates, t()).unwrap()
            })
        }
        "simlap_gate_penalty" => {
            let kind = match c.text("penalty") {
                "entropy" => GatePenalty::Entropy,
                "variance" => GatePenalty::Variance,
                other => return Err(NotRun::Unknown(format!("gate penalty `{other}`"))),
            };
            plain(gate_penalty(&z("gates"), kind).unwrap())
        }
        "looc" => {
            let spaces = c.u("spaces");
            let queries: Vec<Tensor> = (0..spaces).map(|h| z(&format!("q{h}"))).collect();
            let keys: Vec<Vec<Tensor>> = (0..spaces)
                .map(|h| (0..spaces).map(|j| z(&format!("k{h}_{j}"))).collect())
                .collect();
            let negatives: Vec<Tensor> = (0..spaces).map(|h| z(&format!("neg{h}"))).collect();
            plain(looc(&queries, &keys, &negatives, t()).unwrap())
        }
        "mochi" => mochi(c),
        "ccrop_box" => {
            let map = &c.v["inputs"]["heat_map"];
            let (hf, wf) = (map.as_array().unwrap().len(), matrix(map)[0].len());
            let heat: Vec<f32> = flat(map).into_iter().map(|v| v as f32).collect();
            let region = contrast_data::contrastive_crop::region_from_heat_map(
                &heat,
                hf,
                wf,
                c.u("height"),
                c.u("width"),
                c.f("threshold") as f32,
            );
            let got: Vec<f64> = region.to_array().iter().map(|&v| v as f64).collect();
            Outcome {
                loss: None,
                extras: vec![("box".into(), max_err(&got, &flat(c.expected("box"))))],
            }
        }
        "knn_predict" => {
            let cfg = contrast_eval::KnnConfig {
                k: c.u("k"),
                temperature: t(),
            };
            let pred = contrast_eval::knn_predict(
                &z("query"),
                &z("bank"),
                &c.ints("bank_labels"),
                c.u("num_classes"),
                &cfg,
            )
            .unwrap();
            let want_pred = ints(c.expected("pred"));
            let got_pred = pred.predictions.clone();
            Outcome {
                loss: None,
                extras: vec![
                    ("predictions".into(), Case::exact(got_pred, want_pred)),
                    (
                        "class scores".into(),
                        max_err(&pred.scores, &flat(c.expected("scores"))),
                    ),
                ],
            }
        }
        other => return Err(NotRun::Unknown(format!("loss kind `{other}`"))),
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = dot(v, v).sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Whether `point` is `a x + c y` (least squares, residual below `1e-8`) with `a, c`
/// not negative and, for a query mix, the query's weight `a` not above `c`.
fn is_mix(point: &[f64], x: &[f64], y: &[f64], query_mix: bool) -> bool {
    let (xx, yy, xy) = (dot(x, x), dot(y, y), dot(x, y));
    let (px, py) = (dot(point, x), dot(point, y));
    let det = xx * yy - xy * xy;
    if det.abs() < 1e-12 {
        return false;
    }
    let a = (px * yy - py * xy) / det;
    let c = (py * xx - px * xy) / det;
    let resid: f64 = point
        .iter()
        .zip(x.iter().zip(y))
        .map(|(p, (u, v))| (p - a * u - c * v).powi(2))
        .sum();
    resid < 1e-8 && a >= -1e-4 && c >= -1e-4 && (!query_mix || a <= c + 1e-4)
}

/// MoCHi on the queue. The mixing draws are random in the policy, so the case gives
/// them: the synthetic points built from the case's draws go through the loss MoCHi
/// trains with ([`mined_moco_info_nce`] with a [`QueuePlan`] holding them), and the
/// policy itself, run with a seeded generator, must produce only documented mixes of
/// the reference's `n_hardest` entries per query (two of them, weights not negative;
/// or the query and one of them, the query weighing less).
fn mochi(c: &Case<'_>) -> Outcome {
    let (q, k, queue) = (c.input("z1"), c.input("z2"), c.input("queue"));
    let (b, d) = q.dims2().unwrap();
    let (n_hardest, mixes, query_mixes) = (c.u("n_hardest"), c.u("mixes"), c.u("query_mixes"));
    let queue_rows = matrix(&c.v["inputs"]["queue"]);
    let hardest = int_rows(c.expected("hardest"));
    let queries: Vec<Vec<f64>> = matrix(&c.v["inputs"]["z1"])
        .iter()
        .map(|r| unit(r))
        .collect();
    let inputs = &c.v["inputs"];
    // The synthetic points of the case's draws, [B, S, D].
    let mut points = Vec::with_capacity(b * (mixes + query_mixes) * d);
    for i in 0..b {
        let hard = |r: u32| &queue_rows[hardest[i][r as usize] as usize];
        let mix = |w: f64, x: &[f64], y: &[f64]| -> Vec<f64> {
            unit(
                &x.iter()
                    .zip(y)
                    .map(|(u, v)| w * u + (1.0 - w) * v)
                    .collect::<Vec<_>>(),
            )
        };
        for (pair, w) in int_rows(&inputs["mix_pairs"][i])
            .iter()
            .zip(numbers(&inputs["mix_weights"][i]))
        {
            points.extend(mix(w, hard(pair[0]), hard(pair[1])));
        }
        for (j, w) in ints(&inputs["query_mix_negatives"][i])
            .into_iter()
            .zip(numbers(&inputs["query_mix_weights"][i]))
        {
            points.extend(mix(w, &queries[i], hard(j)));
        }
    }
    let s = mixes + query_mixes;
    let synthetic = Tensor::from_vec(points, (b, s, d), &Device::Cpu)
        .unwrap()
        .to_dtype(c.dtype)
        .unwrap();
    let mut plan = QueuePlan::new(b);
    plan.synthetic = Some(synthetic.clone());
    let t = c.f("temperature");
    let loss = mined_moco_info_nce(&q, &k, &queue, &plan, t).unwrap();
    // The logit row [q.k, q.queue, q.h] / T.
    let (qn, kn) = (
        contrast_kernels::l2_normalize(&q).unwrap(),
        contrast_kernels::l2_normalize(&k).unwrap(),
    );
    let logits = Tensor::cat(
        &[
            (&qn * &kn).unwrap().sum_keepdim(1).unwrap(),
            qn.matmul(&queue.t().unwrap()).unwrap(),
            qn.unsqueeze(1)
                .unwrap()
                .broadcast_mul(&synthetic)
                .unwrap()
                .sum(2)
                .unwrap(),
        ],
        1,
    )
    .unwrap();
    let logits_err = max_err(&values(&(logits / t).unwrap()), &flat(c.expected("logits")));
    // The policy's own points, from a seeded generator.
    let batch = QueueBatch::new(
        &q.detach(),
        &k.detach(),
        &queue,
        (0..b as i64).collect(),
        None,
        (0..queue_rows.len() as i64).map(|j| 1000 + j).collect(),
        vec![-1; queue_rows.len()],
    )
    .unwrap();
    let policy = Mochi::new(n_hardest, mixes, query_mixes);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.u("seed") as u64);
    let drawn = Pipeline::new(vec![PolicyConfig::Mochi(policy)])
        .unwrap()
        .plan_queue(&batch, &mut rng)
        .unwrap()
        .synthetic
        .expect("mochi adds synthetic negatives");
    let drawn = values(&drawn);
    let mut documented = true;
    for i in 0..b {
        let hard: Vec<&[f64]> = hardest[i]
            .iter()
            .map(|&j| queue_rows[j as usize].as_slice())
            .collect();
        for p in 0..s {
            let point = &drawn[(i * s + p) * d..(i * s + p + 1) * d];
            documented &= if p < mixes {
                hard.iter().enumerate().any(|(x, hx)| {
                    hard.iter()
                        .enumerate()
                        .any(|(y, hy)| x != y && is_mix(point, hx, hy, false))
                })
            } else {
                hard.iter().any(|hy| is_mix(point, &queries[i], hy, true))
            };
        }
    }
    Outcome {
        loss: Some(loss),
        extras: vec![
            ("mixed logits".into(), logits_err),
            (
                "policy's points mix the hardest entries".into(),
                Case::exact(documented, true),
            ),
        ],
    }
}

/// Checks one case in one dtype.
fn check(case: &Value, dtype: DType, tol: f64) -> Result<Result<String, String>, NotRun> {
    let grads_wanted = case["expected"]["grad"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let vars: BTreeMap<String, Var> = grads_wanted
        .keys()
        .map(|k| {
            let t = tensor(&case["inputs"][k], dtype);
            (k.clone(), Var::from_tensor(&t).unwrap())
        })
        .collect();
    let outcome = compute(&Case {
        v: case,
        dtype,
        vars: &vars,
    })?;
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
            match grads.get(vars[k].as_tensor()) {
                None => problems.push(format!("no gradient reached `{k}`")),
                Some(got) => {
                    let e = max_err(&values(got), &flat(g));
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
    Ok(if problems.is_empty() {
        Ok(format!("{dtype:?} max rel err {worst:.1e}"))
    } else {
        Err(format!("{dtype:?}: {}", problems.join("; ")))
    })
}

/// The reason a case is skipped in this build, if it is.
fn skipped(case: &Value) -> Result<Option<String>, NotRun> {
    let Some(required) = case["params"]["requires"].as_array() else {
        return Ok(None);
    };
    for f in required {
        let name = f.as_str().unwrap_or("?");
        match feature_built(name) {
            None => return Err(NotRun::Unknown(format!("required feature `{name}`"))),
            Some(false) => return Ok(Some(format!("needs feature `{name}`"))),
            Some(true) => {}
        }
    }
    Ok(None)
}

/// Checks every case of one file; returns the number of failures.
fn check_file(path: &Path) -> usize {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read golden file {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(
        doc["format"],
        "contrast-golden/1",
        "{}: unexpected format",
        path.display()
    );
    let (mut passed, mut skips, mut failed) = (0usize, 0usize, 0usize);
    for case in doc["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap_or("?");
        let run = skipped(case).and_then(|skip| match skip {
            Some(reason) => Err(NotRun::Skip(reason)),
            None => Ok([
                check(case, DType::F64, 1e-5)?,
                check(case, DType::F32, 1e-4)?,
            ]),
        });
        match run {
            Err(NotRun::Skip(reason)) => {
                skips += 1;
                println!("skipped {name}: {reason}");
            }
            Err(NotRun::Unknown(what)) => {
                failed += 1;
                println!("FAILED  {name}: unknown {what}");
            }
            Ok(results) if results.iter().all(|r| r.is_ok()) => {
                passed += 1;
                let notes: Vec<String> = results.into_iter().flatten().collect();
                println!("ok      {name}: {}", notes.join(", "));
            }
            Ok(results) => {
                failed += 1;
                let notes: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
                println!("FAILED  {name}: {}", notes.join(" | "));
            }
        }
    }
    println!(
        "golden: {passed} passed, {skips} skipped ({})",
        path.display()
    );
    if failed > 0 {
        eprintln!("golden: {failed} case(s) failed in {}", path.display());
    }
    failed
}

fn main() {
    let failed: usize = golden_files().iter().map(|p| check_file(p)).sum();
    if failed > 0 {
        std::process::exit(1);
    }
}
