//! The datasets Contrast knows by name, where their files are looked for, and how
//! they are loaded.
//!
//! Resolution order (first hit wins): an explicit directory (`--data-dir`), the
//! `CONTRAST_DATA_DIR` environment variable, Debian's dataset location
//! `/usr/share/datasets/<name>`, then `./data/<name>`. A directory counts when it holds
//! the dataset's files directly or in a `<name>` sub-directory.

use crate::cifar::{CifarKind, load_cifar_dir};
use crate::dataset::Split;
use crate::error::{DataError, Result};
use crate::idx::load_mnist_dir;
use crate::read::find_file;
use std::path::{Path, PathBuf};

/// A dataset known by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetId {
    FashionMnist,
    Mnist,
    Cifar10,
    Cifar100,
}

/// Environment variable that points at a data root.
pub const DATA_DIR_ENV: &str = "CONTRAST_DATA_DIR";
/// Debian's dataset packages install under this root.
pub const DEBIAN_ROOT: &str = "/usr/share/datasets";

impl DatasetId {
    /// Every known dataset.
    pub const ALL: [DatasetId; 4] = [
        DatasetId::FashionMnist,
        DatasetId::Mnist,
        DatasetId::Cifar10,
        DatasetId::Cifar100,
    ];

    /// The canonical name, also the directory name under a data root.
    pub fn name(self) -> &'static str {
        match self {
            DatasetId::FashionMnist => "fashion-mnist",
            DatasetId::Mnist => "mnist",
            DatasetId::Cifar10 => "cifar-10",
            DatasetId::Cifar100 => "cifar-100",
        }
    }

    /// The Debian package that installs the dataset, where one exists.
    pub fn debian_package(self) -> Option<&'static str> {
        match self {
            DatasetId::FashionMnist => Some("dataset-fashion-mnist"),
            _ => None,
        }
    }

    /// A file whose presence marks a directory as holding this dataset.
    fn marker(self) -> &'static str {
        match self {
            DatasetId::FashionMnist | DatasetId::Mnist => "train-images-idx3-ubyte",
            DatasetId::Cifar10 => "data_batch_1.bin",
            DatasetId::Cifar100 => "train.bin",
        }
    }

    fn holds(self, dir: &Path) -> bool {
        let subs: &[&str] = match self {
            DatasetId::Cifar10 => &["", "cifar-10-batches-bin"],
            DatasetId::Cifar100 => &["", "cifar-100-binary"],
            _ => &[""],
        };
        subs.iter()
            .any(|s| find_file(&dir.join(s), self.marker()).is_some())
    }

    /// Loads the train and test splits from a directory that holds the files, with
    /// the class names where the dataset defines them ([`DatasetId::class_names`]).
    pub fn load_from(self, dir: &Path) -> Result<Split> {
        let split = match self {
            DatasetId::FashionMnist | DatasetId::Mnist => load_mnist_dir(self.name(), dir)?,
            DatasetId::Cifar10 => load_cifar_dir(self.name(), CifarKind::Cifar10, dir)?,
            DatasetId::Cifar100 => load_cifar_dir(self.name(), CifarKind::Cifar100, dir)?,
        };
        let Some(names) = self.class_names() else {
            return Ok(split);
        };
        let names = || names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        Ok(Split {
            train: split.train.with_class_names(names())?,
            test: split.test.with_class_names(names())?,
        })
    }

    /// The class names by label, as the dataset's authors give them (none for
    /// CIFAR-100, whose 100 names are not in its binary release's files read here).
    pub fn class_names(self) -> Option<&'static [&'static str]> {
        match self {
            DatasetId::FashionMnist => Some(&[
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]),
            DatasetId::Mnist => Some(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
            DatasetId::Cifar10 => Some(&[
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]),
            DatasetId::Cifar100 => None,
        }
    }

    /// Candidate directories in resolution order.
    pub fn search_path(self, explicit: Option<&Path>) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        if let Some(d) = explicit {
            roots.push(d.to_path_buf());
        }
        if let Some(d) = std::env::var_os(DATA_DIR_ENV) {
            roots.push(PathBuf::from(d));
        }
        roots.push(PathBuf::from(DEBIAN_ROOT));
        roots.push(PathBuf::from("data"));
        let mut out = Vec::new();
        for r in roots {
            out.push(r.join(self.name()));
            out.push(r);
        }
        out
    }

    /// The first directory of the search path that holds the dataset.
    ///
    /// When `explicit` is given it must hold the dataset: a wrong `--data-dir` is an
    /// error, not a silent fallback.
    pub fn resolve(self, explicit: Option<&Path>) -> Result<PathBuf> {
        let candidates = if explicit.is_some() {
            self.search_path(explicit).into_iter().take(2).collect()
        } else {
            self.search_path(None)
        };
        candidates
            .iter()
            .find(|d| self.holds(d))
            .cloned()
            .ok_or_else(|| DataError::NotFound {
                name: self.name().to_string(),
                searched: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Resolves the directory and loads the dataset.
    pub fn load(self, explicit: Option<&Path>) -> Result<Split> {
        self.load_from(&self.resolve(explicit)?)
    }
}

impl std::str::FromStr for DatasetId {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        DatasetId::ALL
            .into_iter()
            .find(|d| d.name() == norm || d.name().replace('-', "") == norm)
            .ok_or_else(|| {
                DataError::config(
                    "dataset",
                    format!(
                        "unknown dataset `{s}`: expected one of {}",
                        DatasetId::ALL.map(|d| d.name()).join(", ")
                    ),
                )
            })
    }
}

impl std::fmt::Display for DatasetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `data.dataset` names: a dataset known by name, or an image folder (or
/// manifest) given by `data.path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetChoice {
    Named(DatasetId),
    Folder,
}

impl DatasetChoice {
    /// The name written in configs: a dataset's name, or `folder`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetChoice::Named(id) => id.name(),
            DatasetChoice::Folder => "folder",
        }
    }
}

impl std::str::FromStr for DatasetChoice {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("folder") {
            return Ok(DatasetChoice::Folder);
        }
        s.parse().map(DatasetChoice::Named).map_err(|_| {
            DataError::config(
                "dataset",
                format!(
                    "unknown dataset `{s}`: expected one of {}, or folder (with data.path)",
                    DatasetId::ALL.map(|d| d.name()).join(", ")
                ),
            )
        })
    }
}

impl std::fmt::Display for DatasetChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for DatasetChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for DatasetChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: DataError| match e {
            DataError::Config { message, .. } => serde::de::Error::custom(message),
            other => serde::de::Error::custom(other),
        })
    }
}
