//! Configuration parsing: presets load, overrides apply, bad values are named.

use contrast_train::Config;
use std::path::PathBuf;

fn preset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

fn error_of(text: &str, overrides: &[&str]) -> String {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    format!(
        "{:#}",
        Config::from_toml(text, "test.toml", &o).unwrap_err()
    )
}

fn default_text() -> String {
    std::fs::read_to_string(preset("simclr-fmnist.toml")).unwrap()
}

#[test]
fn every_preset_parses() {
    for entry in std::fs::read_dir(preset("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
    }
}

#[test]
fn overrides_set_nested_values() {
    let cfg = Config::from_toml(
        &default_text(),
        "x",
        &[
            "optim.lr=0.05".into(),
            "train.epochs=3".into(),
            "eval.knn.k=10".into(),
            "name=other".into(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.optim.lr(), 0.05);
    assert_eq!(cfg.train.epochs, 3);
    assert_eq!(cfg.eval.knn.k, 10);
    assert_eq!(cfg.name, "other");
}

#[test]
fn unknown_keys_are_named() {
    let e = error_of(&default_text(), &["optim.momentun=0.8"]);
    assert!(e.contains("momentun"), "{e}");
    let e = error_of(&format!("{}\nlearning_rate = 1.0\n", default_text()), &[]);
    assert!(
        e.contains("learning_rate") && e.contains("test.toml"),
        "{e}"
    );
}

#[test]
fn bad_values_are_named() {
    let e = error_of(&default_text(), &["loss.temperature=-0.5"]);
    assert!(e.contains("temperature") && e.contains("-0.5"), "{e}");
    let e = error_of(&default_text(), &["optim.lr=0"]);
    assert!(e.contains("optim.lr"), "{e}");
    let e = error_of(&default_text(), &["data.augment.hflip=2"]);
    assert!(e.contains("hflip"), "{e}");
    let e = error_of(&default_text(), &["data.dataset=imagenet"]);
    assert!(e.contains("imagenet"), "{e}");
    let e = error_of(&default_text(), &["loss.name=nope"]);
    assert!(e.contains("nope"), "{e}");
    let e = error_of(&default_text(), &["optim"]);
    assert!(e.contains("key=value"), "{e}");
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = Config::from_toml(&default_text(), "x", &[]).unwrap();
    let again = Config::from_toml(&cfg.to_toml().unwrap(), "y", &[]).unwrap();
    assert_eq!(cfg, again);
}

#[test]
fn bad_mining_is_named() {
    // Top-level keys must come before the first table.
    let text = |mining: &str| format!("mining = [{mining}]\n{}", default_text());
    let e = error_of(&text(r#"{ name = "ring", outer = 1.5, inner = 0.1 }"#), &[]);
    assert!(e.contains("outer") && e.contains("1.5"), "{e}");
    let e = error_of(&text(r#"{ name = "fnc" }"#), &[]);
    assert!(e.contains("fnc") && e.contains("topk"), "{e}");
    let e = error_of(&text(r#"{ name = "hardest" }"#), &[]);
    assert!(e.contains("hardest"), "{e}");
    let e = error_of(
        &text(r#"{ name = "hcl", beta = 1.0 }"#),
        &["loss.name=supcon"],
    );
    assert!(e.contains("nt_xent") && e.contains("supcon"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moco-supervised.toml");
    let base = preset("moco-fmnist.toml").canonicalize().unwrap();
    std::fs::write(
        &path,
        format!(
            "extends = {:?}\nmining = [{{ name = \"supervised\" }}]\n",
            base.display().to_string()
        ),
    )
    .unwrap();
    let e = format!("{:#}", Config::load(&path, &[]).unwrap_err());
    assert!(e.contains("supervised") && e.contains("queue"), "{e}");
}
