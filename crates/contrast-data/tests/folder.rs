//! Image folders on real PNG and JPEG files: the three layouts, decoding of mixed
//! sizes and modes, corrupt files, the cache's reuse and invalidation, and held-out
//! splits.

use contrast_data::folder::{self, CacheUse, FolderOptions, Layout, Listing, OnError};
use contrast_data::{Holdout, HoldoutPart, carve};
use contrast_testing::images::{flat_folder, labelled_folder};
use std::path::Path;

fn opts(cache: &Path) -> FolderOptions {
    FolderOptions {
        size: 16,
        channels: None,
        on_error: OnError::Skip,
        cache_dir: cache.to_path_buf(),
    }
}

fn quiet(_: usize) {}

#[test]
fn class_folders_decode_skip_corrupt_files_and_reuse_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let corrupt = labelled_folder(dir.path(), 3, 10, true, 1);
    let listing = Listing::scan(dir.path(), None).unwrap();
    assert_eq!(listing.layout, Layout::ClassFolders);
    assert_eq!(listing.class_names, ["class0", "class1", "class2"]);
    assert_eq!(listing.entries.len(), 32);

    let first = folder::load(&listing, "pics", &opts(cache.path()), &quiet).unwrap();
    assert_eq!(first.cache_use, CacheUse::Built);
    let skipped: Vec<_> = first.skipped.iter().map(|s| s.path.clone()).collect();
    assert_eq!(skipped.len(), 2);
    for c in &corrupt {
        assert!(skipped.contains(c), "{} not reported", c.display());
    }
    let d = &first.dataset;
    assert_eq!(d.len(), 30);
    // Gray, RGB and RGBA sources mixed: three channels.
    assert_eq!(
        (d.shape.height, d.shape.width, d.shape.channels),
        (16, 16, 3)
    );
    let labels = d.labels().unwrap();
    assert_eq!(labels.iter().filter(|&&l| l == 2).count(), 10);
    assert!(d.path(0).unwrap().starts_with(dir.path().join("class0")));

    // Same files: mapped, not decoded, and identical.
    let again = folder::load(&listing, "pics", &opts(cache.path()), &quiet).unwrap();
    assert_eq!(again.cache_use, CacheUse::Reused);
    assert_eq!(again.skipped, first.skipped);
    assert_eq!(again.dataset.labels(), d.labels());
    for i in 0..d.len() {
        assert_eq!(again.dataset.image(i), d.image(i));
        assert_eq!(again.dataset.path(i), d.path(i));
    }

    // A file changes (new content, new length): the cache is rebuilt.
    let victim = d.path(3).unwrap().to_path_buf();
    let bytes = std::fs::read(d.path(4).unwrap()).unwrap();
    std::fs::write(&victim, bytes).unwrap();
    let listing = Listing::scan(dir.path(), None).unwrap();
    let rebuilt = folder::load(&listing, "pics", &opts(cache.path()), &quiet).unwrap();
    assert_eq!(rebuilt.cache_use, CacheUse::Built);
    assert_eq!(rebuilt.dataset.len(), 30);

    // A file added: rebuilt too.
    let extra = dir
        .path()
        .join("class2/extra")
        .with_extension(victim.extension().unwrap());
    std::fs::copy(&victim, extra).unwrap();
    let listing = Listing::scan(dir.path(), None).unwrap();
    let grown = folder::load(&listing, "pics", &opts(cache.path()), &quiet).unwrap();
    assert_eq!(grown.cache_use, CacheUse::Built);
    assert_eq!(grown.dataset.len(), 31);
}

#[test]
fn on_error_fail_names_the_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(dir.path(), 2, 3, true, 2);
    let listing = Listing::scan(dir.path(), None).unwrap();
    let fail = FolderOptions {
        on_error: OnError::Fail,
        ..opts(cache.path())
    };
    let err = folder::load(&listing, "pics", &fail, &quiet)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("notes.jpg") || err.contains("truncated.png"),
        "{err}"
    );
    assert!(err.contains("on_error"), "{err}");
    // The same holds when the skip list comes from the cache.
    folder::load(&listing, "pics", &opts(cache.path()), &quiet).unwrap();
    assert!(folder::load(&listing, "pics", &fail, &quiet).is_err());
}

#[test]
fn flat_folders_are_unlabeled_and_gray_sources_give_one_channel() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    flat_folder(dir.path(), 2, 12, false, 3);
    let listing = Listing::scan(dir.path(), None).unwrap();
    assert_eq!(listing.layout, Layout::Flat);
    assert!(!listing.is_labelled());
    let loaded = folder::load(&listing, "flat", &opts(cache.path()), &quiet).unwrap();
    assert!(loaded.dataset.labels().is_none());
    assert_eq!(loaded.dataset.num_classes, 0);
    assert_eq!(loaded.dataset.shape.channels, 3);

    // Only grayscale files (image k with k % 3 == 0 is saved gray): one channel.
    let gray = tempfile::tempdir().unwrap();
    for e in listing.entries.iter().step_by(3) {
        std::fs::copy(&e.path, gray.path().join(e.path.file_name().unwrap())).unwrap();
    }
    let listing = Listing::scan(gray.path(), None).unwrap();
    let loaded = folder::load(&listing, "gray", &opts(cache.path()), &quiet).unwrap();
    assert_eq!(loaded.dataset.shape.channels, 1);
    // Forcing three channels repeats the gray value.
    let rgb = FolderOptions {
        channels: Some(3),
        ..opts(cache.path())
    };
    let loaded = folder::load(&listing, "gray", &rgb, &quiet).unwrap();
    let px = loaded.dataset.image(0);
    assert!(px.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
}

#[test]
fn manifests_list_paths_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(&dir.path().join("imgs"), 2, 3, false, 4);
    let csv = dir.path().join("list.csv");
    std::fs::write(
        &csv,
        "path,label\n\"imgs/class0/img0000.png\",10\nimgs/class1/img0001.jpg,2\n# a comment\nimgs/class1/img0002.png,2\n",
    )
    .unwrap();
    let listing = Listing::scan(&csv, None).unwrap();
    assert_eq!(listing.layout, Layout::Manifest);
    // Integer labels sort numerically: "2" before "10".
    assert_eq!(listing.class_names, ["2", "10"]);
    let labels: Vec<_> = listing.entries.iter().map(|e| e.label.unwrap()).collect();
    assert_eq!(labels, [1, 0, 0]);
    let loaded = folder::load(&listing, "csv", &opts(cache.path()), &quiet).unwrap();
    assert_eq!(loaded.dataset.len(), 3);

    let jsonl = dir.path().join("list.jsonl");
    std::fs::write(
        &jsonl,
        "{\"path\": \"imgs/class0/img0000.png\", \"label\": \"cat\"}\n{\"path\": \"imgs/class1/img0001.jpg\", \"label\": \"dog\"}\n",
    )
    .unwrap();
    let listing = Listing::scan(&jsonl, None).unwrap();
    assert_eq!(listing.class_names, ["cat", "dog"]);

    // Errors name the file and the line or row.
    std::fs::write(&csv, "imgs/class0/img0000.png,a\nimgs/class1/img0001.jpg\n").unwrap();
    let err = Listing::scan(&csv, None).unwrap_err().to_string();
    assert!(err.contains("list.csv") && err.contains("row 2"), "{err}");
    std::fs::write(&jsonl, "{\"path\": 3}\n").unwrap();
    let err = Listing::scan(&jsonl, None).unwrap_err().to_string();
    assert!(
        err.contains("list.jsonl") && err.contains("line 1"),
        "{err}"
    );
    std::fs::write(&csv, "a.png,x,y\n").unwrap();
    let err = Listing::scan(&csv, None).unwrap_err().to_string();
    assert!(err.contains("3 fields"), "{err}");
}

#[test]
fn bad_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Listing::scan(&missing, None).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    let err = Listing::scan(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("no image files"), "{err}");
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    labelled_folder(&dir.path().join("a"), 1, 1, false, 5);
    let err = Listing::scan(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("class folder `b`"), "{err}");
    // A test folder with a class the training folder lacks.
    let train = tempfile::tempdir().unwrap();
    labelled_folder(train.path(), 2, 1, false, 6);
    let test = tempfile::tempdir().unwrap();
    labelled_folder(test.path(), 3, 1, false, 7);
    let classes = ["class0".to_string(), "class1".to_string()];
    let err = Listing::scan(test.path(), Some(&classes))
        .unwrap_err()
        .to_string();
    assert!(err.contains("class `class2`"), "{err}");
}

#[test]
fn carving_is_seeded_disjoint_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(dir.path(), 2, 10, false, 8);
    let listing = Listing::scan(dir.path(), None).unwrap();
    let d = folder::load(&listing, "pics", &opts(cache.path()), &quiet)
        .unwrap()
        .dataset;
    let n = Holdout::Fraction(0.25)
        .count(d.len(), HoldoutPart::Validation)
        .unwrap()
        .unwrap();
    assert_eq!(n, 5);
    let (rest, held) = carve(&d, n, 0, HoldoutPart::Validation);
    assert_eq!((rest.len(), held.len()), (15, 5));
    let key = |x: &contrast_data::Dataset| -> Vec<_> {
        (0..x.len())
            .map(|i| x.path(i).unwrap().to_path_buf())
            .collect()
    };
    let (r, h) = (key(&rest), key(&held));
    assert!(h.iter().all(|p| !r.contains(p)));
    assert!(r.windows(2).all(|w| w[0] < w[1]) && h.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(key(&carve(&d, n, 0, HoldoutPart::Validation).1), h);
    assert_ne!(key(&carve(&d, n, 1, HoldoutPart::Validation).1), h);
    assert_ne!(key(&carve(&d, n, 0, HoldoutPart::Test).1), h);
    // Out of range.
    for bad in [
        Holdout::Count(0),
        Holdout::Count(20),
        Holdout::Fraction(0.01),
    ] {
        let err = bad.count(20, HoldoutPart::Test).unwrap_err().to_string();
        assert!(err.contains("data.test"), "{err}");
    }
}

#[test]
fn holdouts_parse_from_toml() {
    #[derive(serde::Deserialize)]
    struct T {
        v: Holdout,
    }
    let parse = |s: &str| toml::from_str::<T>(&format!("v = {s}")).map(|t| t.v);
    assert_eq!(parse("5000").unwrap(), Holdout::Count(5000));
    assert_eq!(parse("0.1").unwrap(), Holdout::Fraction(0.1));
    assert_eq!(
        parse("\"data/val\"").unwrap(),
        Holdout::Folder("data/val".into())
    );
    for bad in ["1.5", "-3", "\"\"", "true"] {
        let err = parse(bad).unwrap_err().to_string();
        assert!(err.contains("a count of images"), "{bad}: {err}");
    }
}
