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
    // A misspelled table in the middle of the path still names the override.
    let e = error_of(&default_text(), &["lss.temperature=0.2"]);
    assert!(
        e.contains("`lss`") && e.contains("--set lss.temperature=0.2"),
        "{e}"
    );
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
    // Validation errors name where the value came from: the override, or the line.
    let e = error_of(&default_text(), &["optim.lr=0"]);
    assert!(
        e.contains("optim.lr") && e.contains("--set optim.lr=0"),
        "{e}"
    );
    let text = default_text().replace("lr = 0.3", "lr = 0.0");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("lr = 0.0"))
        .unwrap();
    let e = error_of(&text, &[]);
    assert!(e.contains(&format!("test.toml:{line}")), "{e}");
    // The key a validation message names, not a neighbour in its table.
    let e = error_of(&default_text(), &["eval.knn.k=0"]);
    assert!(e.contains("`eval.knn.k` from --set eval.knn.k=0"), "{e}");
    let e = error_of(&default_text(), &["schedule.warmup_epochs=-1"]);
    assert!(e.contains("--set schedule.warmup_epochs=-1"), "{e}");
    let e = error_of(&default_text(), &["data.augment.hflip=2"]);
    assert!(e.contains("hflip"), "{e}");
    let e = error_of(&default_text(), &["data.dataset=imagenet"]);
    assert!(e.contains("imagenet"), "{e}");
    let e = error_of(&default_text(), &["loss.name=nope"]);
    assert!(e.contains("nope"), "{e}");
    let e = error_of(&default_text(), &["optim"]);
    assert!(e.contains("key=value"), "{e}");
}

/// Values out of range name the key, the value and the allowed range; conflicting
/// options name both keys. All before any data is read, including the settings only
/// the final evaluation uses.
#[test]
fn ranges_and_conflicts_are_named_before_training() {
    for (set, wanted) in [
        (
            &["train.keep_checkpoints=0"][..],
            &["train.keep_checkpoints", "at least 1"][..],
        ),
        (
            &["train.checkpoint_every=0"],
            &["train.checkpoint_every", "at least 1"],
        ),
        (
            &["eval.probe.epochs=0"],
            &["eval.probe.epochs", "at least 1"],
        ),
        (&["eval.probe.lr=-1"], &["eval.probe.lr", "> 0"]),
        (
            &["eval.probe.weight_decay=-0.1"],
            &["eval.probe.weight_decay", ">= 0"],
        ),
        (&["eval.monitor_bank=0"], &["eval.monitor_bank"]),
        (&["eval.batch_size=0"], &["eval.batch_size"]),
        (&["data.test_subset=0"], &["data.test_subset"]),
        (
            &["data.train_subset=100"],
            &["data.train_subset = 100", "data.batch_size = 256"],
        ),
        (&["loss.temperature=0"], &["temperature"]),
        (&["optim.momentum=1.5"], &["optim.momentum", "[0, 1)"]),
        (
            &["data.augment.hflip=-0.5"],
            &[
                "data.augment.hflip",
                "(`data.augment.hflip` from --set data.augment.hflip=-0.5)",
            ],
        ),
        (
            &["data.augment.crop.scale=[0.5, 0.2]"],
            &[
                "data.augment.crop.scale",
                "from --set data.augment.crop.scale",
            ],
        ),
        (
            &["model.head.out=0"],
            &["model.head.out = 0", "from --set model.head.out=0"],
        ),
        (
            &["model.encoder.channels=[32, 0]"],
            &["model.encoder.channels", "width 1 is 0"],
        ),
        (
            &["model.encoder.pool=\"avg\""],
            &["model.head.conv", "pool = \"flatten\""],
        ),
        (&["mining=[{name=\"fnc\", topk=0}]"], &["topk", ">= 1"]),
        (
            &["mining=[{name=\"fnc\", threshold=nan}]"],
            &["threshold", "finite"],
        ),
    ] {
        let e = error_of(&default_text(), set);
        for w in wanted {
            assert!(e.contains(w), "{set:?}: {e}");
        }
    }
    // A nested key named by its leaf, and its source.
    let e = format!(
        "{:#}",
        Config::load(
            &preset("moco-fmnist.toml"),
            &["method.momentum.base=2".into()]
        )
        .unwrap_err()
    );
    assert!(
        e.contains("method.momentum.base = 2") && e.contains("from --set method.momentum.base=2"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        Config::load(
            &preset("moco-fmnist.toml"),
            &[
                "method.queue_size=64".to_string(),
                "data.batch_size=128".to_string()
            ]
        )
        .unwrap_err()
    );
    assert!(
        e.contains("method.queue_size = 64") && e.contains("data.batch_size = 128"),
        "{e}"
    );
    // Views past the key are FNC's support views: refused without an fnc policy.
    let e = format!(
        "{:#}",
        Config::load(&preset("moco-fmnist.toml"), &["data.views=3".to_string()]).unwrap_err()
    );
    assert!(
        e.contains("data.views = 3") && e.contains("support views"),
        "{e}"
    );
    Config::load(
        &preset("moco-fnc-fmnist.toml"),
        &["data.views=3".to_string()],
    )
    .unwrap();
}

/// The in-batch losses that pair two views refuse more, naming the loss and the
/// count; NT-Xent takes any number.
#[test]
fn only_multi_view_losses_take_more_than_two_views() {
    let four = ["data.views=4".to_string()];
    let e = format!(
        "{:#}",
        Config::load(&preset("dcl-fmnist.toml"), &four).unwrap_err()
    );
    assert!(
        e.contains("data.views = 4") && e.contains("\"decoupled\""),
        "{e}"
    );
    Config::load(&preset("simclr-fmnist.toml"), &four).unwrap();
}

/// LooC's loss, families and views must agree, and each mistake is named.
#[test]
fn looc_settings_are_checked_together() {
    let looc = preset("looc-fmnist.toml");
    Config::load(&looc, &[]).unwrap();
    for (set, wanted) in [
        (
            &["method.families=[]"][..],
            &["method.families", "looc"][..],
        ),
        (&["data.views=3"], &["data.views = 4", "not 3"]),
        (
            &["method.families=[\"color\", \"color\"]"],
            &["`color` twice"],
        ),
        (&["method.families=[\"colour\"]"], &["colour"]),
    ] {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let e = format!("{:#}", Config::load(&looc, &set).unwrap_err());
        for w in wanted {
            assert!(e.contains(w), "{set:?}: {e}");
        }
    }
    // Families without the looc loss.
    let e = format!(
        "{:#}",
        Config::load(
            &preset("moco-fmnist.toml"),
            &["method.families=[\"color\"]".to_string()]
        )
        .unwrap_err()
    );
    assert!(e.contains("method.families"), "{e}");
}

/// The fnc loss and the fnc policy cancel the same way unless told otherwise.
#[test]
fn fnc_loss_and_policy_default_to_the_same_cancellation() {
    let policy = contrast_mining::PolicyConfig::Fnc(
        toml::from_str(r#"topk = 5"#).expect("an fnc policy with defaults"),
    );
    let contrast_mining::PolicyConfig::Fnc(p) = policy else {
        unreachable!()
    };
    let loss: contrast_losses::FncConfig =
        toml::from_str("temperature = 0.1").expect("an fnc loss with defaults");
    assert_eq!(p.cancellation, loss.cancellation);
    assert_eq!(p.aggregation, loss.aggregation);
    assert_eq!(
        loss.cancellation,
        contrast_losses::FncConfig::default().cancellation
    );
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

/// Every leaf key path of a table (`a.b`, `list[0].c`) with its value.
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => leaves(t, &path, out),
            toml::Value::Array(items)
                if items.iter().all(|i| i.is_table()) && !items.is_empty() =>
            {
                for (i, item) in items.iter().enumerate() {
                    leaves(item.as_table().unwrap(), &format!("{path}[{i}]"), out);
                }
            }
            _ => out.push(path),
        }
    }
}

/// The table holding `path`'s last key, and that key.
fn parent_mut<'t>(table: &'t mut toml::Table, path: &str) -> (&'t mut toml::Table, String) {
    let (parent, key) = match path.rsplit_once('.') {
        Some((p, k)) => (Some(p), k.to_string()),
        None => (None, path.to_string()),
    };
    let mut cur = table;
    for part in parent.into_iter().flat_map(|p| p.split('.')) {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        let v = cur.get_mut(name).unwrap();
        cur = match index {
            Some(i) => v.as_array_mut().unwrap()[i].as_table_mut().unwrap(),
            None => v.as_table_mut().unwrap(),
        };
    }
    (cur, key)
}

/// For every key path of every preset: a wrong value or a misspelled key, set on the
/// command line or written in a file, gives an error that names that exact path and
/// where it came from (`--set ...` or `file:line`).
#[test]
fn every_key_path_of_every_preset_names_itself_and_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(preset("")).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let (table, _) = contrast_train::config::read_table(&file, 0).unwrap();
        let mut paths = Vec::new();
        leaves(&table, "", &mut paths);
        for path in &paths {
            // A doubled last letter: the kind of typo a suggestion should catch.
            let last = path.chars().last().unwrap();
            let misspelled = format!("{path}{last}");
            if !path.contains('[') {
                // On the command line: a value no key accepts, and a misspelled key.
                for arg in [format!("{path}={{bogus = 1}}"), format!("{misspelled}=1")] {
                    let e = format!(
                        "{:#}",
                        Config::load(&file, std::slice::from_ref(&arg)).unwrap_err()
                    );
                    let named = if arg.starts_with(&misspelled) {
                        &misspelled
                    } else {
                        path
                    };
                    assert!(
                        e.contains(&format!("`{named}`")) && e.contains(&format!("--set {arg}")),
                        "{}: --set {arg}: {e}",
                        file.display()
                    );
                    checked += 1;
                }
            }
            // In a file: the key misspelled where it stands.
            let mut bad = table.clone();
            let (parent, key) = parent_mut(&mut bad, path);
            let value = parent.remove(&key).unwrap();
            let typo = format!("{key}{last}");
            parent.insert(typo.clone(), value);
            let text = toml::to_string(&bad).unwrap();
            let written = dir.path().join("bad.toml");
            std::fs::write(&written, &text).unwrap();
            let line = 1 + text
                .lines()
                .position(|l| {
                    l.trim_start().starts_with(&format!("{typo} ="))
                        || l.contains(&format!(" {typo} ="))
                })
                .unwrap();
            let e = format!("{:#}", Config::load(&written, &[]).unwrap_err());
            let at = format!("{}:{line}", written.display());
            assert!(
                e.contains(&format!("`{misspelled}`")) && e.contains(&at),
                "{}: {misspelled} in a file (expected {at}): {e}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} cases");
}

#[test]
fn a_new_encoder_kind_from_the_command_line_takes_the_default_head() {
    let set = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let file = Config::load(&preset("simclr-fmnist.toml"), &[]).unwrap();
    assert!(
        !file.model.head.conv.is_empty(),
        "the preset's head has conv stages"
    );
    // The preset's conv head needs a flattened map; a ResNet-18 gets an MLP head.
    let resnet = Config::load(
        &preset("simclr-fmnist.toml"),
        &set(&["model.encoder={kind=\"resnet18\"}"]),
    )
    .unwrap();
    assert_eq!(resnet.model.head, contrast_encoders::HeadConfig::default());
    // Set together, the head is the user's: the file's conv stages stay, and a
    // ResNet-18 can't feed them, which is said before any data are read.
    let e = Config::load(
        &preset("simclr-fmnist.toml"),
        &set(&["model.encoder={kind=\"resnet18\"}", "model.head.hidden=64"]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.head.conv = [128, 256]"), "{e}");
    let both = Config::load(
        &preset("simclr-fmnist.toml"),
        &set(&[
            "model.encoder={kind=\"resnet18\"}",
            "model.head={hidden=64, out=32}",
        ]),
    )
    .unwrap();
    assert_eq!((both.model.head.hidden, both.model.head.out), (64, 32));
    // The same kind with other widths keeps the file's head.
    let wider = Config::load(
        &preset("simclr-fmnist.toml"),
        &set(&["model.encoder.channels=[32, 128]"]),
    )
    .unwrap();
    assert_eq!(wider.model.head, file.model.head);
}

/// `cargo xtask train`'s configuration is the SimCLR preset with fewer epochs (to fit
/// the 15-minute budget): nothing else may drift between the two, or the default run
/// would stop being the comparisons' baseline at a shorter budget.
#[test]
fn the_default_is_the_simclr_preset_for_fewer_epochs() {
    let default = Config::load(&preset("default.toml"), &[]).unwrap();
    let mut simclr = Config::load(&preset("simclr-fmnist.toml"), &[]).unwrap();
    assert_eq!((simclr.train.epochs, default.train.epochs), (12, 9));
    assert_ne!(default.name, simclr.name, "runs of the two are told apart");
    simclr.name = default.name.clone();
    simclr.train.epochs = default.train.epochs;
    assert_eq!(default, simclr);
}
