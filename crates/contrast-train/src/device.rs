//! Where a run computes: the `train.device` and `model.ops` settings, opening the
//! candle device they name, and how a run describes it.
//!
//! `"cpu"`, `"cuda"` (GPU 0), `"cuda:N"`, `"metal"` or `"auto"` (the first GPU the
//! build supports, else the CPU). A GPU that the build was compiled without is one
//! error line that names the feature and the command to build with it.

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use contrast_kernels::OpSet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The device a run asks for (`train.device`, `--device`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// The first GPU this build supports (CUDA, then Metal), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// An NVIDIA GPU by ordinal (`"cuda"` is `"cuda:0"`).
    Cuda(usize),
    /// The default Apple GPU.
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            "metal" => Ok(DeviceChoice::Metal),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?}: expected \"cpu\", \"cuda\", \"cuda:N\" (N a GPU ordinal), \"metal\" or \"auto\""
                )),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceChoice::Metal => f.write_str("metal"),
        }
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

/// A device that this build has no backend for: one line that names the feature to
/// build with and the command. Front ends that know the exact command line (xtask)
/// print it in full from [`MissingBackend::command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingBackend {
    /// The device asked for, as configured (`"cuda:1"`).
    pub device: String,
    /// The cargo feature that adds its backend (`"cuda"`, `"metal"`).
    pub feature: &'static str,
}

impl MissingBackend {
    /// `args` (an xtask command line without the program) run through the alias that
    /// builds with the feature, quoted for a POSIX shell where needed:
    /// `cargo xtask-cuda train --device cuda:1`.
    pub fn command(&self, args: &[String]) -> String {
        let plain = |a: &str| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c))
        };
        let mut line = format!("cargo xtask-{}", self.feature);
        for a in args {
            line.push(' ');
            if plain(a) {
                line.push_str(a);
            } else {
                line.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
            }
        }
        line
    }
}

impl fmt::Display for MissingBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device \"{}\" needs a build with the `{}` feature: run the command through `cargo xtask-{}` instead of `cargo xtask` (or `cargo run --release -p xtask --features {} -- ...`); docs/gpu.md lists what the build needs",
            self.device, self.feature, self.feature, self.feature
        )
    }
}

impl std::error::Error for MissingBackend {}

impl DeviceChoice {
    /// Opens the device. `auto` never fails: without a usable GPU it is the CPU.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(MissingBackend {
                        device: self.to_string(),
                        feature: "cuda",
                    }
                    .into());
                }
                Device::new_cuda(n).map_err(|e| {
                    anyhow::anyhow!("opening CUDA device {n} (train.device = \"cuda:{n}\"): {e}")
                })
            }
            DeviceChoice::Metal => {
                if !cfg!(feature = "metal") {
                    return Err(MissingBackend {
                        device: self.to_string(),
                        feature: "metal",
                    }
                    .into());
                }
                Device::new_metal(0).map_err(|e| {
                    anyhow::anyhow!("opening the Metal device (train.device = \"metal\"): {e}")
                })
            }
            DeviceChoice::Auto => {
                if cfg!(feature = "cuda")
                    && let Ok(d) = Device::new_cuda(0)
                {
                    return Ok(d);
                }
                if cfg!(feature = "metal")
                    && let Ok(d) = Device::new_metal(0)
                {
                    return Ok(d);
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// The encoders' arithmetic (`train.precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// The encoders' activations and matrix products in bf16 (the candle op set);
    /// parameters, optimiser state, BatchNorm statistics, the loss and its
    /// log-sum-exp stay f32 (f64 for the statistics).
    Bf16,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// The dtype of the encoders' activations.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// Which op set the encoders run (`model.ops`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpsChoice {
    /// Fused on the CPU, candle elsewhere.
    #[default]
    Auto,
    /// The fused CPU kernels (CPU only).
    Fused,
    /// The candle tensor-op bodies, on any device (on the CPU: the path a GPU runs).
    Candle,
}

impl OpsChoice {
    /// The op set for `device` at `precision`: the fused ops are CPU and f32 only, so
    /// `auto` takes them there and candle otherwise, and asking for them elsewhere is
    /// an error.
    pub fn resolve(self, device: &Device, precision: Precision) -> Result<OpSet> {
        let fused_fits = device.is_cpu() && precision == Precision::F32;
        match self {
            OpsChoice::Auto if fused_fits => Ok(OpSet::Fused),
            OpsChoice::Auto | OpsChoice::Candle => Ok(OpSet::Candle),
            OpsChoice::Fused if fused_fits => Ok(OpSet::Fused),
            OpsChoice::Fused if precision != Precision::F32 => bail!(
                "model.ops = \"fused\" computes in f32 only, and train.precision is \"{precision}\"; use \"auto\" or \"candle\""
            ),
            OpsChoice::Fused => bail!(
                "model.ops = \"fused\" runs on the CPU only, and the device is {}; use \"auto\" or \"candle\"",
                describe(device)
            ),
        }
    }
}

/// A short name for `device`, as `summary.json` and the first line of a run show it:
/// `cpu (<model name>, family F model M, <SIMD level>, <threads> threads)`,
/// `cuda:N (<GPU name>)` or `metal`. The family and model numbers and the SIMD level
/// tell apart CPUs that share a model name (an "AMD EPYC" Zen 3, AVX2, and Zen 4,
/// AVX-512, differ 1.4x in speed), so that compare counts them as two machines.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => {
            let threads = rayon_threads();
            let simd = contrast_kernels::simd_level();
            let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let mut parts = cpu_identity(&info);
            parts.extend([simd.to_string(), format!("{threads} threads")]);
            format!("cpu ({})", parts.join(", "))
        }
        Device::Cuda(d) => {
            let id = match device.location() {
                candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
                _ => 0,
            };
            match cuda_name(d) {
                Some(name) => format!("cuda:{id} ({name})"),
                None => format!("cuda:{id}"),
            }
        }
        Device::Metal(_) => "metal".to_string(),
    }
}

#[cfg(feature = "cuda")]
fn cuda_name(d: &candle_core::CudaDevice) -> Option<String> {
    d.cuda_stream().context().name().ok()
}

#[cfg(not(feature = "cuda"))]
fn cuda_name(_: &candle_core::CudaDevice) -> Option<String> {
    None
}

/// Threads the CPU kernels use (`RAYON_NUM_THREADS`, else the cores).
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The first processor's model name and its `family F model M` from the text of
/// `/proc/cpuinfo` (Linux), each where present: empty where the file is unreadable.
fn cpu_identity(cpuinfo: &str) -> Vec<String> {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
    };
    let mut parts: Vec<String> = field("model name").into_iter().collect();
    if let (Some(family), Some(model)) = (field("cpu family"), field("model")) {
        parts.push(format!("family {family} model {model}"));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for s in ["auto", "cpu", "cuda:0", "cuda:3", "metal"] {
            let d: DeviceChoice = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceChoice>(), Ok(DeviceChoice::Cuda(0)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(e.contains("cuda:N"), "{e}");
        }
    }

    #[test]
    fn a_gpu_missing_from_the_build_names_the_feature_and_command() {
        if cfg!(feature = "cuda") {
            return;
        }
        let e = DeviceChoice::Cuda(1).open().unwrap_err();
        let line = e.to_string();
        assert!(line.contains("`cuda` feature"), "{line}");
        assert!(line.contains("cargo xtask-cuda"), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
        let missing = e.downcast_ref::<MissingBackend>().unwrap();
        let args = ["train".to_string(), "--device".into(), "cuda:1".into()];
        assert_eq!(
            missing.command(&args),
            "cargo xtask-cuda train --device cuda:1"
        );
        let quoted = ["--set".to_string(), "name=\"it's\"".into()];
        assert_eq!(
            missing.command(&quoted),
            "cargo xtask-cuda --set 'name=\"it'\\''s\"'"
        );
        assert!(DeviceChoice::Auto.open().is_ok());
    }

    #[test]
    fn fused_ops_need_the_cpu_in_f32_and_auto_picks_them_there() {
        let (cpu, f32, bf16) = (&Device::Cpu, Precision::F32, Precision::Bf16);
        assert_eq!(OpsChoice::Auto.resolve(cpu, f32).unwrap(), OpSet::Fused);
        assert_eq!(OpsChoice::Candle.resolve(cpu, f32).unwrap(), OpSet::Candle);
        assert_eq!(OpsChoice::Auto.resolve(cpu, bf16).unwrap(), OpSet::Candle);
        let e = OpsChoice::Fused.resolve(cpu, bf16).unwrap_err().to_string();
        assert!(e.contains("train.precision"), "{e}");
        assert!(describe(&Device::Cpu).starts_with("cpu ("));
    }

    #[test]
    fn the_cpu_is_named_by_model_name_family_and_model() {
        let zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                    model\t\t: 17\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\n\
                    cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_identity(zen4), ["AMD EPYC", "family 25 model 17"]);
        let xeon = "cpu family\t: 6\nmodel\t\t: 143\n\
                    model name\t: Intel(R) Xeon(R)   Processor\n";
        assert_eq!(
            cpu_identity(xeon),
            ["Intel(R) Xeon(R) Processor", "family 6 model 143"]
        );
        assert!(cpu_identity("").is_empty());
        assert_eq!(cpu_identity("model name : Neoverse-N1\n"), ["Neoverse-N1"]);
        let cpu = describe(&Device::Cpu);
        let simd = contrast_kernels::simd_level();
        assert!(
            cpu.ends_with(&format!(", {simd}, {} threads)", rayon_threads())),
            "{cpu}"
        );
    }
}
