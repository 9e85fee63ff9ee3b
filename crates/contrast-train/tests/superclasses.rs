//! `data.superclasses`: the source's classes merged into named groups in every split,
//! and every malformed grouping refused with the class or group named.

mod common;

use contrast_train::Config;
use contrast_train::data::load_data;
use contrast_train::log::RunLog;

const GROUPS: &str = r#"[{ name = "low", classes = [0, 1, 2, 3, 4] }, { name = "high", classes = [5, 6, 7, 8, 9] }]"#;

fn config(dir: &std::path::Path, groups: &str) -> Config {
    let mut cfg = common::tiny_config(1);
    cfg.data.path = Some(dir.to_path_buf());
    let text = toml::to_string(&cfg).unwrap();
    Config::from_toml(
        &text,
        "tiny",
        &[
            format!("data.superclasses={groups}"),
            "data.validation=40".into(),
        ],
    )
    .unwrap()
}

#[test]
fn every_split_sees_the_groups() {
    let dir = tempfile::tempdir().unwrap();
    common::write_synthetic_mnist(dir.path(), 200, 50);
    let plain = {
        let mut c = config(dir.path(), GROUPS);
        c.data.superclasses = None;
        load_data(&c, None, false, &RunLog::silent()).unwrap()
    };
    let merged = load_data(&config(dir.path(), GROUPS), None, false, &RunLog::silent()).unwrap();
    let validation = merged.validation.as_ref().unwrap();
    let plain_validation = plain.validation.as_ref().unwrap();
    for (m, p) in [
        (&merged.train, &plain.train),
        (validation, plain_validation),
        (&merged.test, &plain.test),
    ] {
        assert_eq!(m.num_classes, 2);
        assert_eq!(m.class_names, ["low", "high"]);
        // The same images, in the same order, with each class mapped to its group.
        assert_eq!(m.len(), p.len());
        for (i, (&g, &c)) in m
            .labels()
            .unwrap()
            .iter()
            .zip(p.labels().unwrap())
            .enumerate()
        {
            assert_eq!(g, u32::from(c >= 5), "image {i} of class {c}");
            assert_eq!(m.image(i), p.image(i));
        }
    }
}

#[test]
fn malformed_groups_are_named() {
    let dir = tempfile::tempdir().unwrap();
    common::write_synthetic_mnist(dir.path(), 200, 50);
    let error = |groups: &str| {
        format!(
            "{:#}",
            load_data(&config(dir.path(), groups), None, false, &RunLog::silent()).unwrap_err()
        )
    };
    let e = error(
        r#"[{ name = "a", classes = [0, 1, 2, 3, 4] }, { name = "b", classes = [5, 6, 7, 8] }]"#,
    );
    assert!(e.contains("class 9 is in no group"), "{e}");
    let e = error(
        r#"[{ name = "a", classes = [0, 1, 2, 3, 4, 5] }, { name = "b", classes = [5, 6, 7, 8, 9] }]"#,
    );
    assert!(e.contains("class 5 is in both `a` and `b`"), "{e}");
    let e = error(
        r#"[{ name = "a", classes = [0, 1, 2, 3, 4, 12] }, { name = "b", classes = [5, 6, 7, 8, 9] }]"#,
    );
    assert!(e.contains("class 12 does not exist"), "{e}");
    let e = error(
        r#"[{ name = "a", classes = [] }, { name = "b", classes = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }]"#,
    );
    assert!(
        e.contains("data.superclasses[0] (`a`) holds no class"),
        "{e}"
    );
    let e = error(
        r#"[{ name = "a", classes = [0, 1, 2, 3, 4] }, { name = "a", classes = [5, 6, 7, 8, 9] }]"#,
    );
    assert!(e.contains("the name `a` is used twice"), "{e}");
}
