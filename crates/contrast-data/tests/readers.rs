//! IDX and CIFAR readers on well-formed and corrupt files.

use contrast_data::cifar::{CifarKind, load_cifar_dir, parse_cifar};
use contrast_data::idx::{encode_idx, load_mnist_dir, parse_idx, read_idx};
use contrast_data::{DataError, DatasetId};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn message(e: DataError) -> String {
    e.to_string()
}

/// Writes a small MNIST-layout dataset: `n` 4x3 images per split.
fn write_mnist(dir: &Path, n: usize, gz: bool) {
    for (prefix, count) in [("train", n), ("t10k", n / 2)] {
        let images: Vec<u8> = (0..count * 12).map(|i| (i * 7 % 256) as u8).collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        for (name, bytes) in [
            (
                format!("{prefix}-images-idx3-ubyte"),
                encode_idx(&[count, 4, 3], &images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                encode_idx(&[count], &labels),
            ),
        ] {
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}

#[test]
fn idx_round_trips_raw_and_gzip() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_mnist(dir.path(), 10, gz);
        let split = load_mnist_dir("toy", dir.path()).unwrap();
        assert_eq!(split.train.len(), 10);
        assert_eq!(split.test.len(), 5);
        assert_eq!(
            (
                split.train.shape.height,
                split.train.shape.width,
                split.train.shape.channels
            ),
            (4, 3, 1)
        );
        // Image 1 starts at byte 12, whose value is 12 * 7.
        assert_eq!(split.train.image(1)[0], 84);
        assert_eq!(split.train.labels().unwrap()[3], 3);
    }
}

#[test]
fn idx_rejects_bad_magic() {
    let mut bytes = encode_idx(&[2], &[0, 1]);
    bytes[0] = 0x12;
    let msg = message(parse_idx(&bytes, Path::new("x.idx")).unwrap_err());
    assert!(
        msg.contains("x.idx") && msg.contains("bad IDX magic"),
        "{msg}"
    );
}

#[test]
fn idx_rejects_unsupported_type() {
    let mut bytes = encode_idx(&[2], &[0, 1]);
    bytes[2] = 0x0D;
    let msg = message(parse_idx(&bytes, Path::new("f")).unwrap_err());
    assert!(msg.contains("element type 0x0d"), "{msg}");
}

#[test]
fn idx_rejects_truncated_and_oversized_data() {
    let bytes = encode_idx(&[3, 2, 2], &[0; 12]);
    let msg = message(parse_idx(&bytes[..bytes.len() - 1], Path::new("t")).unwrap_err());
    assert!(
        msg.contains("truncated IDX data") && msg.contains("need 12 bytes, found 11"),
        "{msg}"
    );
    let mut long = bytes.clone();
    long.push(0);
    assert!(message(parse_idx(&long, Path::new("t")).unwrap_err()).contains("oversized"));
    let msg = message(parse_idx(&bytes[..6], Path::new("t")).unwrap_err());
    assert!(msg.contains("truncated IDX header"), "{msg}");
}

#[test]
fn truncated_gzip_is_reported_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let full = gzip(&encode_idx(&[100], &[1; 100]));
    let path = dir.path().join("labels.gz");
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let msg = message(read_idx(&path).unwrap_err());
    assert!(msg.contains("labels.gz") && msg.contains("gzip"), "{msg}");
}

#[test]
fn labels_out_of_range_and_count_mismatch_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), 10, false);
    let mut labels = vec![0u8; 10];
    labels[7] = 10;
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        encode_idx(&[10], &labels),
    )
    .unwrap();
    let msg = message(load_mnist_dir("toy", dir.path()).unwrap_err());
    assert!(msg.contains("label 10 at index 7 is out of range"), "{msg}");
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        encode_idx(&[9], &[0; 9]),
    )
    .unwrap();
    let msg = message(load_mnist_dir("toy", dir.path()).unwrap_err());
    assert!(msg.contains("9 labels for 10 images"), "{msg}");
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let msg = message(load_mnist_dir("toy", dir.path()).unwrap_err());
    assert!(
        msg.contains("train-images-idx3-ubyte") && msg.contains("missing file"),
        "{msg}"
    );
}

fn cifar_record(label: u8, coarse: Option<u8>) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend(coarse);
    r.push(label);
    for ch in 0..3u8 {
        r.extend((0..1024).map(|p| (p as u8).wrapping_add(ch * 50)));
    }
    r
}

#[test]
fn cifar_records_become_channels_last() {
    let bytes: Vec<u8> = [cifar_record(3, None), cifar_record(9, None)].concat();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    parse_cifar(
        &bytes,
        CifarKind::Cifar10,
        Path::new("b"),
        &mut images,
        &mut labels,
    )
    .unwrap();
    assert_eq!(labels, vec![3, 9]);
    assert_eq!(images.len(), 2 * 3072);
    // Pixel 5 of the first image: red 5, green 55, blue 105.
    assert_eq!(&images[15..18], &[5, 55, 105]);
}

#[test]
fn cifar100_uses_the_fine_label() {
    let bytes = cifar_record(87, Some(4));
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    parse_cifar(
        &bytes,
        CifarKind::Cifar100,
        Path::new("b"),
        &mut images,
        &mut labels,
    )
    .unwrap();
    assert_eq!(labels, vec![87]);
}

#[test]
fn cifar_rejects_truncation_and_bad_labels() {
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let bytes = cifar_record(1, None);
    let msg = message(
        parse_cifar(
            &bytes[..3000],
            CifarKind::Cifar10,
            Path::new("data_batch_1.bin"),
            &mut images,
            &mut labels,
        )
        .unwrap_err(),
    );
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("3073-byte"),
        "{msg}"
    );
    let msg = message(
        parse_cifar(
            &cifar_record(10, None),
            CifarKind::Cifar10,
            Path::new("b"),
            &mut images,
            &mut labels,
        )
        .unwrap_err(),
    );
    assert!(
        msg.contains("label 10 in record 0 is out of range"),
        "{msg}"
    );
}

#[test]
fn cifar_directory_layout_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&sub).unwrap();
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        std::fs::write(sub.join(format!("{name}.bin")), cifar_record(2, None)).unwrap();
    }
    let split = load_cifar_dir("cifar-10", CifarKind::Cifar10, dir.path()).unwrap();
    assert_eq!((split.train.len(), split.test.len()), (5, 1));
    assert_eq!(split.train.shape.channels, 3);
}

#[test]
fn explicit_data_dir_must_hold_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let msg = message(DatasetId::Mnist.resolve(Some(dir.path())).unwrap_err());
    assert!(
        msg.contains("dataset `mnist` not found") && msg.contains("data fetch mnist"),
        "{msg}"
    );
    let sub = dir.path().join("mnist");
    std::fs::create_dir(&sub).unwrap();
    write_mnist(&sub, 4, true);
    assert_eq!(DatasetId::Mnist.resolve(Some(dir.path())).unwrap(), sub);
}

#[test]
fn dataset_names_parse() {
    assert_eq!(
        "fashion-mnist".parse::<DatasetId>().unwrap(),
        DatasetId::FashionMnist
    );
    assert_eq!("CIFAR10".parse::<DatasetId>().unwrap(), DatasetId::Cifar10);
    let msg = message("imagenet".parse::<DatasetId>().unwrap_err());
    assert!(msg.contains("unknown dataset `imagenet`"), "{msg}");
}
