//! `cargo xtask fuzz`: the parsers of untrusted input must never panic or abort.
//!
//! A mutation fuzzer on stable Rust (cargo-fuzz needs a nightly sanitizer toolchain
//! and libFuzzer). Each target starts from valid inputs built in code (IDX arrays,
//! CIFAR records, PNG and JPEG files as the image-folder reader decodes them, CSV and
//! JSONL manifests, every preset config, a real checkpoint's files) plus the
//! regression corpus in `xtask/fuzz/<target>/`, and feeds the parser mutated copies:
//! bit flips, interesting bytes and big-endian words (0, 1, 2^31 - 1, 2^32 - 1, the
//! input's length), inserted, deleted, duplicated and truncated ranges, splices of
//! two inputs, and, for text, TOML tokens. A panic is a failure: the input is saved
//! into the regression corpus, which the test suite replays on every run
//! (`replays_the_regression_corpus`). Every rejection must be an error value naming
//! the file and the problem.

use anyhow::{Context, Result, bail};
use candle_core::Device;
use contrast_data::cifar::{CifarKind, parse_cifar};
use contrast_data::idx::{encode_idx, parse_idx};
use contrast_train::checkpoint::{self, TrainState};
use contrast_train::model::{ContrastiveModel, ModelParts};
use contrast_train::optim::Optimizer;
use contrast_train::{Config, config};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A parser under test: takes arbitrary bytes, returns whether it accepted them.
/// It may fail with an error, never panic.
type Target = Box<dyn Fn(&[u8]) -> bool>;

/// A named target and its seed inputs.
type Named = (&'static str, Target, Vec<Vec<u8>>);

/// The fuzz targets by name, with their seed inputs.
fn targets(root: &Path, scratch: &Path) -> Result<Vec<Named>> {
    Ok(vec![
        ("idx", Box::new(idx_target) as Target, idx_seeds()),
        ("cifar", Box::new(cifar_target), cifar_seeds()),
        ("config", Box::new(config_target), config_seeds(root)?),
        ("image", Box::new(image_target), image_seeds()),
        ("manifest", Box::new(manifest_target), manifest_seeds()),
        checkpoint_target("checkpoint-state", "state.json", scratch)?,
        checkpoint_target("checkpoint-model", "model.safetensors", scratch)?,
    ])
}

fn idx_target(bytes: &[u8]) -> bool {
    parse_idx(bytes, Path::new("fuzz.idx")).is_ok()
}

fn idx_seeds() -> Vec<Vec<u8>> {
    vec![
        encode_idx(&[3, 4, 4], &[7; 48]),
        encode_idx(&[5], &[0, 1, 2, 3, 4]),
        encode_idx(&[2, 2, 2, 2], &[9; 16]),
    ]
}

/// The first byte picks the variant, the rest is the file.
fn cifar_target(bytes: &[u8]) -> bool {
    let Some((&kind, rest)) = bytes.split_first() else {
        return false;
    };
    let kind = if kind % 2 == 0 {
        CifarKind::Cifar10
    } else {
        CifarKind::Cifar100
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    parse_cifar(rest, kind, Path::new("fuzz.bin"), &mut images, &mut labels).is_ok()
}

fn cifar_seeds() -> Vec<Vec<u8>> {
    let record = |label_bytes: &[u8]| {
        let mut r = label_bytes.to_vec();
        r.extend((0..3072).map(|i| (i % 251) as u8));
        r
    };
    let mut ten = vec![0u8];
    ten.extend(record(&[3]));
    ten.extend(record(&[9]));
    let mut hundred = vec![1u8];
    hundred.extend(record(&[2, 77]));
    vec![ten, hundred]
}

/// An image file as the folder reader decodes it (to 8 x 8 pixels).
fn image_target(bytes: &[u8]) -> bool {
    contrast_data::folder::decode_image(bytes, 8).is_ok()
}

fn image_seeds() -> Vec<Vec<u8>> {
    contrast_testing::images::encoded_samples()
}

/// The first byte picks the manifest format (even: CSV, odd: JSONL), the rest is
/// the file's text.
fn manifest_target(bytes: &[u8]) -> bool {
    let Some((&kind, rest)) = bytes.split_first() else {
        return false;
    };
    let path = Path::new(if kind % 2 == 0 {
        "fuzz.csv"
    } else {
        "fuzz.jsonl"
    });
    contrast_data::folder::parse_manifest(path, &String::from_utf8_lossy(rest)).is_ok()
}

fn manifest_seeds() -> Vec<Vec<u8>> {
    let csv = "path,label\n\"a, b.png\",cat\nimgs/c.jpg,dog\n# comment\nd.png,\"say \"\"hi\"\"\"\n";
    let unlabeled = "x.png\ny/z.jpeg\n";
    let jsonl = "{\"path\": \"a.png\", \"label\": 3}\n{\"path\": \"b.png\", \"label\": \"3\"}\n";
    [(0u8, csv), (2, unlabeled), (1, jsonl)]
        .into_iter()
        .map(|(k, t)| {
            let mut v = vec![k];
            v.extend(t.as_bytes());
            v
        })
        .collect()
}

fn config_target(bytes: &[u8]) -> bool {
    Config::from_toml(&String::from_utf8_lossy(bytes), "fuzz.toml", &[]).is_ok()
}

/// Every preset, merged (`extends` resolved), as TOML text.
fn config_seeds(root: &Path) -> Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(root.join("configs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (table, _) = config::read_table(&path, 0)?;
            seeds.push(toml::to_string(&table)?.into_bytes());
        }
    }
    seeds.sort();
    Ok(seeds)
}

/// A checkpoint of a small model written for real into `scratch`; the target
/// replaces `file` with the input and loads the checkpoint.
fn checkpoint_target(name: &'static str, file: &'static str, scratch: &Path) -> Result<Named> {
    let cfg = Config::from_toml(
        r#"
name = "fuzz"
[data]
dataset = "mnist"
batch_size = 4
augment = {}
[model]
encoder = { kind = "mlp", hidden = [8] }
head = { hidden = 8, out = 4 }
[loss]
name = "nt_xent"
temperature = 0.5
[optim]
name = "sgd"
lr = 0.1
[train]
epochs = 1
"#,
        "fuzz",
        &[],
    )?;
    let input = contrast_encoders::InputShape {
        height: 4,
        width: 4,
        channels: 1,
    };
    let build = move || -> Result<(ContrastiveModel, Optimizer)> {
        let model = ContrastiveModel::new(
            &cfg.model,
            input,
            ModelParts::default(),
            &Device::Cpu,
            0,
            cfg.train.precision,
        )?;
        let opt = Optimizer::new(cfg.optim.clone(), model.params());
        Ok((model, opt))
    };
    let root = scratch.join(name);
    let (model, opt) = build()?;
    let dir = checkpoint::save(
        &root,
        &model,
        &opt,
        &TrainState::new(String::new()),
        &Vec::new(),
        1,
    )?;
    let seed = std::fs::read(dir.join(file))?;
    let target = move |bytes: &[u8]| {
        let (mut model, mut opt) = build().expect("the fuzz model builds");
        std::fs::write(dir.join(file), bytes).expect("scratch is writable");
        checkpoint::load(&dir, &mut model, &mut opt).is_ok()
    };
    Ok((name, Box::new(target), vec![seed]))
}

const TOKENS: [&str; 16] = [
    "=",
    "[",
    "]",
    "\"",
    "{",
    "}",
    ",",
    ".",
    "nan",
    "inf",
    "-1",
    "1e309",
    "true",
    "name",
    "extends",
    "\n[loss]\n",
];

/// One mutated copy of `base` (`other` for splices).
fn mutate(base: &[u8], other: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        let at = |rng: &mut ChaCha8Rng| rng.random_range(0..=len);
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = [0, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
            }
            2 if len >= 4 => {
                let i = rng.random_range(0..=len - 4);
                let word: u32 =
                    [0, 1, 0x7fff_ffff, u32::MAX, len as u32, 0x0100_0000][rng.random_range(0..6)];
                v[i..i + 4].copy_from_slice(&word.to_be_bytes());
            }
            3 => {
                let i = at(rng);
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(i..=len.min(i + 64));
                v.drain(i..j);
            }
            5 => {
                let i = at(rng);
                v.truncate(i);
            }
            6 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(i..=len.min(i + 64));
                let chunk = v[i..j].to_vec();
                let k = at(rng);
                v.splice(k..k, chunk);
            }
            7 => {
                let cut = rng.random_range(0..=other.len());
                let i = at(rng);
                v.truncate(i);
                v.extend_from_slice(&other[cut..]);
            }
            _ => {
                let i = at(rng);
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                v.splice(i..i, token.bytes());
            }
        }
    }
    v
}

/// Runs `input` through `target`; `Err` carries the panic message.
fn run_one(target: &Target, input: &[u8]) -> std::result::Result<bool, String> {
    catch_unwind(AssertUnwindSafe(|| target(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".to_string())
    })
}

/// The regression corpus of `target`: every file in `xtask/fuzz/<target>/`.
fn corpus(root: &Path, target: &str) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let dir = root.join("xtask/fuzz").join(target);
    let mut out = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            out.push((path.clone(), std::fs::read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

/// `cargo xtask fuzz`: `runs` mutated inputs per target (or only `only`), seeded by
/// `seed`. Prints per target the inputs run, how many parsed, the crashes, and the
/// time; exits with an error if any input panicked (saved to the regression corpus).
pub fn fuzz(root: &Path, runs: usize, seed: u64, only: Option<&str>) -> Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    // Panics are expected findings here: keep their messages out of the output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashed = 0;
    for (name, target, mut inputs) in targets(root, scratch.path())? {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        inputs.extend(corpus(root, name)?.into_iter().map(|(_, b)| b));
        let started = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut accepted, mut crashes) = (0usize, Vec::new());
        for i in 0..runs {
            let base = &inputs[i % inputs.len()];
            let other = &inputs[rng.random_range(0..inputs.len())];
            let input = mutate(base, other, &mut rng);
            match run_one(&target, &input) {
                Ok(ok) => accepted += ok as usize,
                Err(message) => crashes.push((input, message)),
            }
        }
        println!(
            "{name:<17} {runs:>8} inputs  {accepted:>7} accepted  {:>3} crashes  {:.1} s",
            crashes.len(),
            started.elapsed().as_secs_f64()
        );
        if !crashes.is_empty() {
            let dir = root.join("xtask/fuzz").join(name);
            std::fs::create_dir_all(&dir)?;
            for (n, (input, message)) in crashes.iter().enumerate().take(5) {
                let path = dir.join(format!("crash-{seed}-{n}"));
                std::fs::write(&path, input)?;
                println!("  panic: {message}\n  input saved to {}", path.display());
            }
            crashed += crashes.len();
        }
    }
    std::panic::set_hook(hook);
    if crashed > 0 {
        bail!("{crashed} inputs panicked; they are in xtask/fuzz/ for the regression test");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every seed parses; every input of the regression corpus goes through its parser
    /// without a panic, and the hand-made `edge-*` inputs (overflowing IDX
    /// dimensions, out-of-range labels, 5,000-deep TOML arrays, a NaN temperature,
    /// safetensors headers claiming 2^80 elements or data past the end, ...) are
    /// rejected with an error.
    #[test]
    fn replays_the_regression_corpus() {
        let scratch = tempfile::tempdir().unwrap();
        for (name, target, seeds) in targets(&root(), scratch.path()).unwrap() {
            for (i, input) in seeds.iter().enumerate() {
                assert_eq!(
                    run_one(&target, input),
                    Ok(true),
                    "{name} seed {i} must parse"
                );
            }
            for (path, input) in corpus(&root(), name).unwrap() {
                let outcome = run_one(&target, &input);
                assert!(outcome.is_ok(), "{} panics again", path.display());
                let edge = path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("edge-"));
                if edge {
                    assert_eq!(outcome, Ok(false), "{} was accepted", path.display());
                }
            }
        }
    }

    #[test]
    fn mutations_are_seeded_and_change_the_input() {
        let base = b"name = \"x\"\n[loss]\ntemperature = 0.5\n".to_vec();
        let a = mutate(&base, &base, &mut ChaCha8Rng::seed_from_u64(3));
        let b = mutate(&base, &base, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(a, b);
        let changed = (0..50)
            .filter(|&s| mutate(&base, &base, &mut ChaCha8Rng::seed_from_u64(s)) != base)
            .count();
        assert!(changed >= 45, "{changed}");
    }
}
