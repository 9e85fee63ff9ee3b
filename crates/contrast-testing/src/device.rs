//! A device against the CPU: the comparisons that `cargo xtask gpu-check` reports and
//! the GPU tests assert, on the same inputs on both sides.
//!
//! - [`streaming_against_cpu`]: the similarity hot path, `streaming_info_nce` on the
//!   device (its CUDA kernels on CUDA) against the CPU kernel: plain, keyed and
//!   every-rule candidate specs, a small odd shape and one of 70,001 candidates that
//!   crosses many tiles; loss and the gradients to anchors and candidates.
//! - [`cnn_against_cpu`]: the encoders' candle op set on the device against the fused
//!   CPU ops: a pooled conv block, a conv block with a residual, and a ResNet basic
//!   block with a projection; output and the gradients to the input and every
//!   parameter.
//!
//! Each returns one [`Check`] per compared tensor: f32 must agree to 1e-5 relative to
//! the CPU's largest magnitude, f64 to 1e-9. These functions return errors instead of
//! panicking, so a failing device is reported, not aborted on.

use crate::{max_rel_with_floor, uniform_tensor};
use candle_core::{DType, Device, Result, Tensor, Var};
use contrast_kernels::{
    BatchNormMode, BlockSpec, Candidates, ConvBn, OpSet, Positive, l2_normalize,
    streaming_info_nce, tiled_info_nce,
};

/// One compared tensor: its name, the relative error of the device's result against
/// the CPU's, and the bound it must stay under.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub error: f64,
    pub tolerance: f64,
}

impl Check {
    /// Whether the device agreed with the CPU.
    pub fn passed(&self) -> bool {
        self.error < self.tolerance
    }
}

/// The agreement required of `dtype`: 1e-9 in f64, 1e-5 otherwise.
pub fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-9 } else { 1e-5 }
}

/// The float types `device` is compared in: f32 everywhere, f64 too where the device
/// has it (not Metal).
pub fn dtypes(device: &Device) -> Vec<DType> {
    if device.is_metal() {
        vec![DType::F32]
    } else {
        vec![DType::F32, DType::F64]
    }
}

/// A candidate spec that uses every rule: a column positive, the anchor itself, label
/// keys, a dot-product window per anchor, removed columns and always-kept columns.
pub fn every_rule(b: usize, n: usize) -> Candidates {
    let lists = |mul: usize, add: usize, len: usize| -> Vec<Vec<u32>> {
        (0..b)
            .map(|i| {
                let mut l: Vec<u32> = (0..len)
                    .map(|k| ((i * mul + k * 101 + add) % n) as u32)
                    .collect();
                l.sort_unstable();
                l.dedup();
                l
            })
            .collect()
    };
    Candidates {
        positive: Positive::Column((0..b as u32).map(|i| 40 + 7 * i).collect()),
        exclude_self: true,
        keys: Some((
            (0..b as i64)
                .map(|i| if i % 6 == 0 { -1 } else { i % 4 })
                .collect(),
            (0..n as i64)
                .map(|j| if j % 13 == 0 { -1 } else { j % 5 })
                .collect(),
        )),
        window: Some(
            (0..b)
                .map(|i| (-0.6 + 0.02 * i as f32, 0.8 - 0.01 * i as f32))
                .collect(),
        ),
        excluded: Some(lists(37, 3, 40)),
        always_kept: Some(lists(53, 11, 25)),
    }
}

/// Unit anchors `[b, d]`, unit candidates `[n, d]` and extra logits `[b]` of `dtype`,
/// the same on every call.
pub fn streaming_inputs(b: usize, n: usize, d: usize, dtype: DType) -> Result<[Tensor; 3]> {
    let rand = |seed, r, c| uniform_tensor(seed, (r, c), -0.5, 0.5).to_dtype(dtype);
    Ok([
        l2_normalize(&rand(61, b, d)?)?,
        l2_normalize(&rand(62, n, d)?)?,
        (rand(63, b, 1)?.squeeze(1)? * 4.0)?,
    ])
}

/// The loss and the gradients to anchors and candidates of the streaming InfoNCE (or,
/// with `tiled`, its tensor-op path) at temperature `t` on `device`, on the CPU.
pub fn streaming_on(
    device: &Device,
    tensors: [&Tensor; 3],
    spec: &Candidates,
    t: f64,
    tiled: bool,
) -> Result<Vec<Tensor>> {
    let vars = tensors
        .iter()
        .map(|x| Var::from_tensor(&x.to_device(device)?))
        .collect::<Result<Vec<_>>>()?;
    let (a, c, e) = (
        vars[0].as_tensor(),
        vars[1].as_tensor(),
        vars[2].as_tensor(),
    );
    let loss = if tiled {
        tiled_info_nce(a, c, e, spec, t)?
    } else {
        streaming_info_nce(a, c, e, spec.clone(), t)?
    };
    let grads = loss.backward()?;
    let mut out = vec![loss.to_device(&Device::Cpu)?];
    for v in [a, c] {
        let g = grads
            .get(v)
            .ok_or_else(|| candle_core::Error::Msg("an input got no gradient".into()))?;
        out.push(g.to_device(&Device::Cpu)?);
    }
    Ok(out)
}

/// Relative error of `got` against the CPU's `want`, with no practical floor.
fn rel(got: &Tensor, want: &Tensor) -> f64 {
    max_rel_with_floor(got, want, 1e-30)
}

/// `streaming_info_nce` on `device` against the CPU kernel (see the module doc).
pub fn streaming_against_cpu(device: &Device) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for dtype in dtypes(device) {
        for (b, n, d) in [(7usize, 333usize, 3usize), (130, 70_001, 128)] {
            let x = streaming_inputs(b, n, d, dtype)?;
            let x = [&x[0], &x[1], &x[2]];
            let keyed = Candidates {
                keys: every_rule(b, n).keys,
                ..Default::default()
            };
            let specs = [
                ("plain", Candidates::default()),
                ("keyed", keyed),
                ("every rule", every_rule(b, n)),
            ];
            for (spec_name, spec) in specs {
                let cpu = streaming_on(&Device::Cpu, x, &spec, 0.1, false)?;
                let dev = streaming_on(device, x, &spec, 0.1, false)?;
                for (what, (p, q)) in ["loss", "anchor grad", "candidate grad"]
                    .iter()
                    .zip(dev.iter().zip(&cpu))
                {
                    checks.push(Check {
                        name: format!(
                            "streaming_info_nce {dtype:?} {b}x{n}x{d} {spec_name}: {what}"
                        ),
                        error: rel(p, q),
                        tolerance: tolerance(dtype),
                    });
                }
            }
        }
    }
    Ok(checks)
}

/// A seeded variable of `shape` on the CPU: normal-ish values `mean + std * u`,
/// `u` uniform in `[-sqrt 3, sqrt 3)` (unit variance).
fn param(seed: u64, shape: &[usize], mean: f64, std: f64, dtype: DType) -> Result<Tensor> {
    let s = 3f64.sqrt();
    (uniform_tensor(seed, shape, -s, s).to_dtype(dtype)? * std)? + mean
}

/// Runs `f` on `inputs` moved to `device` as variables; returns its output and the
/// gradient of `sum(output * up)` to every input, all on the CPU.
fn run_with_grads(
    device: &Device,
    inputs: &[Tensor],
    up: &Tensor,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device)?))
        .collect::<Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors)?;
    let grads = (&y * up.to_device(device)?)?.sum_all()?.backward()?;
    let mut out = vec![y.to_device(&Device::Cpu)?];
    for t in &tensors {
        let g = grads
            .get(t)
            .ok_or_else(|| candle_core::Error::Msg("an input got no gradient".into()))?;
        out.push(g.to_device(&Device::Cpu)?);
    }
    Ok(out)
}

/// The encoders' candle op set on `device` against the fused CPU ops (see the module
/// doc). Batch statistics (training mode) throughout.
pub fn cnn_against_cpu(device: &Device) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for dtype in dtypes(device) {
        let (b, h, cin, c) = (4usize, 10usize, 3usize, 8usize);
        let x = param(1, &[b, h, h, cin], 0.0, 1.0, dtype)?;
        let layer = |seed: u64, rows: usize| -> Result<[Tensor; 3]> {
            Ok([
                param(seed, &[rows, c], 0.0, 0.4, dtype)?,
                param(seed + 1, &[c], 1.0, 0.2, dtype)?,
                param(seed + 2, &[c], 0.0, 0.3, dtype)?,
            ])
        };
        let block = |relu, pool| BlockSpec {
            kernel: 3,
            stride: 1,
            padding: 1,
            eps: 1e-5,
            relu,
            pool,
            recompute: false,
        };
        // Pooled block: (x, w, gamma, beta).
        let [w, g, bt] = layer(10, 9 * cin)?;
        let pooled = [x.clone(), w, g, bt];
        // Block with a residual: (x, w, gamma, beta, residual).
        let [w, g, bt] = layer(20, 9 * cin)?;
        let r = param(30, &[b, h, h, c], 0.0, 1.0, dtype)?;
        let with_residual = [x.clone(), w, g, bt, r];
        // Basic block with a stride-2 projection: x and three layers.
        let mut basic = vec![x.clone()];
        for (seed, rows) in [(40, 9 * cin), (50, 9 * c), (60, cin)] {
            basic.extend(layer(seed, rows)?);
        }
        // A conv block pools without a residual input and adds one when given.
        let conv = move |t: &[Tensor], ops: OpSet| -> Result<Tensor> {
            let spec = block(true, t.len() == 4);
            let r = t.get(4);
            Ok(ops
                .conv_block(&t[0], &t[1], &t[2], &t[3], r, spec, BatchNormMode::Batch)?
                .y)
        };
        let basic_block = |t: &[Tensor], ops: OpSet| -> Result<Tensor> {
            let l = |i: usize| ConvBn {
                w: &t[i],
                gamma: &t[i + 1],
                beta: &t[i + 2],
                mode: BatchNormMode::Batch,
            };
            let (first, second, short) = (l(1), l(4), l(7));
            let out = ops.residual_block(&t[0], &first, &second, Some(&short), 2, 1e-5, false)?;
            Ok(out.y)
        };
        type Case<'a> = (
            &'a str,
            &'a [Tensor],
            &'a dyn Fn(&[Tensor], OpSet) -> Result<Tensor>,
        );
        let cases: [Case; 3] = [
            ("conv block + pool", &pooled, &conv),
            ("conv block + residual", &with_residual, &conv),
            ("residual block, projection", &basic, &basic_block),
        ];
        for (name, inputs, f) in cases {
            let shape = f(inputs, OpSet::Fused)?.dims().to_vec();
            let up = param(99, &shape, 0.0, 1.0, dtype)?;
            let cpu = run_with_grads(&Device::Cpu, inputs, &up, &|t| f(t, OpSet::Fused))?;
            let dev = run_with_grads(device, inputs, &up, &|t| f(t, OpSet::Candle))?;
            for (k, (p, q)) in dev.iter().zip(&cpu).enumerate() {
                let what = if k == 0 {
                    "output".to_string()
                } else {
                    format!("grad of input {}", k - 1)
                };
                checks.push(Check {
                    name: format!("{name} {dtype:?}: {what}"),
                    error: rel(p, q),
                    tolerance: tolerance(dtype),
                });
            }
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU itself both comparisons run end to end, and the candle op set
    /// agrees with the fused one (the property a GPU run checks for its device).
    #[test]
    fn the_comparisons_pass_on_the_cpu() {
        let cnn = cnn_against_cpu(&Device::Cpu).unwrap();
        assert_eq!(cnn.len(), 2 * (5 + 6 + 11));
        for c in &cnn {
            assert!(c.passed(), "{c:?}");
        }
    }
}
