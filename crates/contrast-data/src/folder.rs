//! Image folders: PNG and JPEG files in the torchvision ImageFolder layout (one
//! sub-folder per class), flat and unlabeled, or listed by a CSV/JSONL manifest of
//! `path[,label]`; decoded once into a memory-mapped cache.
//!
//! Every image is decoded, converted to RGB (alpha dropped, as torchvision's
//! `convert("RGB")`) or kept grayscale, resized so that its shorter side is
//! [`FolderOptions::size`] (bilinear, antialiased when shrinking) and centre-cropped
//! to a square. When every image of a set is grayscale the set has one channel,
//! otherwise three (or as [`FolderOptions::channels`] says).
//!
//! The decoded set is written to a cache file whose name is derived from the
//! source's path and the options, and whose header holds a fingerprint of every
//! listed file (path, label, size, modification time). A later load with the same
//! fingerprint maps the file instead of decoding; any added, removed, relabelled or
//! touched file changes the fingerprint and the cache is rebuilt.
//!
//! A file that can't be read or decoded is skipped and reported in
//! [`Loaded::skipped`] (or fails the load with [`OnError::Fail`]); the cache keeps
//! the list, so a reused cache reports the same files.

use crate::dataset::{Dataset, ImageShape, Pixels};
use crate::error::{DataError, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// What a file that can't be read or decoded does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Leave it out, with a warning that names it.
    #[default]
    Skip,
    /// Fail the load with an error that names it.
    Fail,
}

/// How a folder's images become a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderOptions {
    /// Side in pixels of the square images (the shorter side is resized to it, then
    /// the centre is cropped).
    pub size: usize,
    /// 1 (grayscale) or 3 (RGB); `None`: 1 when every image is grayscale, else 3.
    pub channels: Option<usize>,
    pub on_error: OnError,
    /// Directory of the cache files.
    pub cache_dir: PathBuf,
}

impl FolderOptions {
    /// The default cache directory: `$XDG_CACHE_HOME/contrast`, else
    /// `$HOME/.cache/contrast`, else `contrast-cache` in the temporary directory.
    pub fn default_cache_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("contrast");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(h).join(".cache").join("contrast");
        }
        std::env::temp_dir().join("contrast-cache")
    }

    fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.size) {
            return Err(DataError::config(
                "data.size",
                format!("{} must be in 1..=4096 pixels", self.size),
            ));
        }
        if let Some(c) = self.channels
            && c != 1
            && c != 3
        {
            return Err(DataError::config(
                "data.channels",
                format!("{c} must be 1 (grayscale) or 3 (RGB)"),
            ));
        }
        Ok(())
    }
}

/// How the files of a [`Listing`] were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One sub-folder per class (torchvision's ImageFolder); labelled.
    ClassFolders,
    /// Images anywhere under the folder, no classes; unlabeled.
    Flat,
    /// A CSV or JSONL file of `path[,label]` rows.
    Manifest,
}

/// One listed image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    /// Class index into [`Listing::class_names`], when labelled.
    pub label: Option<u32>,
}

/// The image files of a source, in a fixed order, with their classes.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The folder or manifest file listed.
    pub source: PathBuf,
    pub layout: Layout,
    pub entries: Vec<Entry>,
    /// Class names by index (empty when unlabeled).
    pub class_names: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The non-hidden entries of `dir`, sorted by name: (files, sub-folders).
fn read_dir_sorted(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = e.map_err(io_err(dir))?.path();
        if is_hidden(&path) {
            continue;
        }
        // Follows symbolic links; a dangling one is neither and is ignored.
        if path.is_dir() {
            dirs.push(path);
        } else if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    dirs.sort();
    Ok((files, dirs))
}

/// Every image file under `dir`, depth first, sorted by name at each level.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let (files, dirs) = read_dir_sorted(dir)?;
    out.extend(files.into_iter().filter(|f| is_image(f)));
    for d in dirs {
        images_under(&d, out)?;
    }
    Ok(())
}

/// Orders class names: numerically when every name is an integer (`"2" < "10"`),
/// by name otherwise.
fn sort_classes(names: &mut [String]) {
    if names.iter().all(|n| n.parse::<i64>().is_ok()) {
        names.sort_by_key(|n| n.parse::<i64>().unwrap_or(0));
    } else {
        names.sort();
    }
}

/// Splits one CSV line into fields; double quotes may enclose a field (`""` inside
/// is one quote).
fn csv_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                quoted = true
            }
            (false, ',') => fields.push(std::mem::take(&mut cur).trim().to_string()),
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated double quote".into());
    }
    fields.push(cur.trim().to_string());
    Ok(fields)
}

/// One manifest row: a path and maybe a label.
pub type Row = (PathBuf, Option<String>);

/// Parses a manifest's text: JSONL when `path` ends in `.jsonl`, CSV otherwise.
/// Paths are made relative to the manifest's folder; errors name `path` and the
/// line or row.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<Row>> {
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let at = |m: String| DataError::format(path, format!("line {}: {m}", n + 1));
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (file, label) = if jsonl {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct JsonRow {
                path: String,
                #[serde(default)]
                label: Option<serde_json::Value>,
            }
            let row: JsonRow = serde_json::from_str(line).map_err(|e| {
                at(format!(
                    "{e}; expected an object {{\"path\": \"...\", \"label\": ...}}"
                ))
            })?;
            let label = match row.label {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s),
                Some(serde_json::Value::Number(x)) => Some(x.to_string()),
                Some(other) => {
                    return Err(at(format!(
                        "label {other} is neither a string nor a number"
                    )));
                }
            };
            (row.path, label)
        } else {
            let fields = csv_fields(line).map_err(at)?;
            if rows.is_empty() && fields[0].eq_ignore_ascii_case("path") {
                continue; // header
            }
            match fields.as_slice() {
                [p] => (p.clone(), None),
                [p, l] => (p.clone(), Some(l.clone())),
                _ => {
                    return Err(at(format!(
                        "{} fields; expected `path` or `path,label`",
                        fields.len()
                    )));
                }
            }
        };
        if file.is_empty() {
            return Err(at("empty path".into()));
        }
        rows.push((base.join(file), label.filter(|l| !l.is_empty())));
    }
    if let (Some(first), Some((i, _))) = (
        rows.first(),
        rows.iter()
            .enumerate()
            .find(|(_, r)| r.1.is_some() != rows[0].1.is_some()),
    ) {
        return Err(DataError::format(
            path,
            format!(
                "row {} ({}) {} a label but the first row ({}) {}: label every row or none",
                i + 1,
                rows[i].0.display(),
                if rows[i].1.is_some() { "has" } else { "lacks" },
                first.0.display(),
                if first.1.is_some() {
                    "has one"
                } else {
                    "has none"
                },
            ),
        ));
    }
    Ok(rows)
}

impl Listing {
    /// Lists `path`: a CSV (`.csv`) or JSONL (`.jsonl`) manifest, a folder with image
    /// files at its top (flat: every image below, unlabeled), or a folder of class
    /// sub-folders. `classes`, when given, fixes the class names and their order (a
    /// test folder takes the training folder's); a class outside it is an error.
    pub fn scan(path: &Path, classes: Option<&[String]>) -> Result<Listing> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let (layout, rows): (Layout, Vec<Row>) = if meta.is_file() {
            let is_manifest = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("jsonl"));
            if !is_manifest {
                return Err(DataError::format(
                    path,
                    "expected a folder of images or a .csv/.jsonl manifest of `path[,label]` rows",
                ));
            }
            let text = std::fs::read_to_string(path).map_err(io_err(path))?;
            (Layout::Manifest, parse_manifest(path, &text)?)
        } else {
            let (files, dirs) = read_dir_sorted(path)?;
            if files.iter().any(|f| is_image(f)) || dirs.is_empty() {
                let mut all = Vec::new();
                images_under(path, &mut all)?;
                (Layout::Flat, all.into_iter().map(|p| (p, None)).collect())
            } else {
                let mut rows = Vec::new();
                for d in &dirs {
                    let name = d
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let mut found = Vec::new();
                    images_under(d, &mut found)?;
                    if found.is_empty() {
                        return Err(DataError::format(
                            d,
                            format!(
                                "class folder `{name}` holds no {} file",
                                IMAGE_EXTENSIONS.join("/")
                            ),
                        ));
                    }
                    rows.extend(found.into_iter().map(|p| (p, Some(name.clone()))));
                }
                (Layout::ClassFolders, rows)
            }
        };
        if rows.is_empty() {
            return Err(DataError::format(
                path,
                format!(
                    "no image files found (looked for {}; hidden files and folders are ignored)",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        let labelled = rows[0].1.is_some();
        let class_names: Vec<String> = match (labelled, classes) {
            (false, _) => Vec::new(),
            (true, Some(c)) => c.to_vec(),
            (true, None) => {
                let mut names: Vec<String> = rows
                    .iter()
                    .filter_map(|r| r.1.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                sort_classes(&mut names);
                names
            }
        };
        let index: BTreeMap<&str, u32> = class_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i as u32))
            .collect();
        let entries = rows
            .iter()
            .map(|(p, l)| {
                let label = l
                    .as_deref()
                    .map(|l| {
                        index.get(l).copied().ok_or_else(|| {
                            DataError::format(
                                p,
                                format!(
                                    "class `{l}` is not one of the training classes ({})",
                                    class_names.join(", ")
                                ),
                            )
                        })
                    })
                    .transpose()?;
                Ok(Entry {
                    path: p.clone(),
                    label,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing {
            source: path.to_path_buf(),
            layout,
            entries,
            class_names,
        })
    }

    /// True when the entries carry labels.
    pub fn is_labelled(&self) -> bool {
        !self.class_names.is_empty()
    }
}

/// A file left out of a dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Whether a load decoded the images or mapped an earlier cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The cache matched the files and was mapped; nothing was decoded.
    Reused,
    /// The images were decoded (no cache, or the files changed) and the cache
    /// written.
    Built,
}

/// A loaded image folder.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub dataset: Dataset,
    pub skipped: Vec<Skipped>,
    /// The cache file read or written.
    pub cache: PathBuf,
    pub cache_use: CacheUse,
}

/// The cache file's header (JSON, after the magic and its length).
#[derive(Debug, Serialize, Deserialize)]
struct CacheHeader {
    fingerprint: String,
    count: usize,
    shape: ImageShape,
    labelled: bool,
    class_names: Vec<String>,
    skipped: Vec<Skipped>,
    /// The file of each cached image, in order.
    paths: Vec<PathBuf>,
}

const CACHE_MAGIC: &[u8; 8] = b"CTRSTIC1";
/// Pixels start at a multiple of this many bytes.
const CACHE_ALIGN: usize = 64;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the cache must match: the options and every file's path, label, length and
/// modification time.
fn fingerprint(listing: &Listing, opts: &FolderOptions) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!(
        "v1 size={} channels={:?}\n",
        opts.size, opts.channels
    ));
    h.update(listing.class_names.join("\n"));
    for e in &listing.entries {
        let meta = std::fs::metadata(&e.path).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let mtime = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(format!(
            "\n{}\t{:?}\t{len}\t{mtime}",
            e.path.display(),
            e.label
        ));
    }
    Ok(hex(&h.finalize()))
}

/// The cache file for `listing` under `opts`.
pub fn cache_path(listing: &Listing, opts: &FolderOptions) -> PathBuf {
    let source = std::fs::canonicalize(&listing.source).unwrap_or(listing.source.clone());
    let key = Sha256::digest(format!(
        "{}\n{}\n{:?}",
        source.display(),
        opts.size,
        opts.channels
    ));
    let stem = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    opts.cache_dir.join(format!(
        "{}-{}px-{}.bin",
        stem.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_"
        ),
        opts.size,
        &hex(&key)[..16]
    ))
}

/// Decodes one file to `size x size` pixels: (RGB bytes, whether the source was
/// grayscale).
fn decode(path: &Path, size: u32) -> std::result::Result<(Vec<u8>, bool), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    decode_image(&bytes, size)
}

/// Decodes PNG or JPEG bytes (the format read from the content) to `size x size`
/// RGB pixels, as the folder reader does: (pixels `[size, size, 3]`, whether the
/// source was grayscale). Any other input is an error message, never a panic.
pub fn decode_image(bytes: &[u8], size: u32) -> std::result::Result<(Vec<u8>, bool), String> {
    if size == 0 {
        return Err("size 0".into());
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    let gray = !img.color().has_color();
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    // The shorter side to `size`, the other in proportion (at least `size`).
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size),
        ((h as f64 * scale).round() as u32).max(size),
    );
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::Triangle)
    };
    let (x, y) = ((nw - size) / 2, (nh - size) / 2);
    let square = image::imageops::crop_imm(&resized, x, y, size, size).to_image();
    Ok((square.into_raw(), gray))
}

fn read_cache(path: &Path, fingerprint: &str) -> Option<(CacheHeader, memmap2::Mmap, usize)> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: the cache is only ever replaced by renaming a complete new file over
    // it, never written in place, so the mapped bytes don't change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    if map.len() < 16 || &map[..8] != CACHE_MAGIC {
        return None;
    }
    let hlen = u64::from_le_bytes(map[8..16].try_into().ok()?) as usize;
    let header: CacheHeader =
        serde_json::from_slice(map.get(16..16usize.checked_add(hlen)?)?).ok()?;
    if header.fingerprint != fingerprint {
        return None;
    }
    let offset = (16 + hlen).next_multiple_of(CACHE_ALIGN);
    let pixels = header.count.checked_mul(header.shape.numel())?;
    let labels = if header.labelled { 4 * header.count } else { 0 };
    (map.len() == offset + pixels + labels).then_some((header, map, offset))
}

fn write_cache(path: &Path, header: &CacheHeader, pixels: &[u8], labels: &[u32]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let json = serde_json::to_vec(header).expect("the header serialises");
    let offset = (16 + json.len()).next_multiple_of(CACHE_ALIGN);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(CACHE_MAGIC)?;
        f.write_all(&(json.len() as u64).to_le_bytes())?;
        f.write_all(&json)?;
        f.write_all(&vec![0u8; offset - 16 - json.len()])?;
        f.write_all(pixels)?;
        for l in labels {
            f.write_all(&l.to_le_bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// Loads a listing through its cache: maps the cache when it matches the files,
/// otherwise decodes every image in parallel (calling `progress` with the count
/// decoded so far) and writes the cache. `name` names the dataset in messages.
pub fn load(
    listing: &Listing,
    name: &str,
    opts: &FolderOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Loaded> {
    opts.validate()?;
    let fp = fingerprint(listing, opts)?;
    let cache = cache_path(listing, opts);
    let fail_on = |skipped: &[Skipped]| match (opts.on_error, skipped.first()) {
        (OnError::Fail, Some(s)) => Err(DataError::format(
            &s.path,
            format!(
                "{} (data.on_error = \"fail\"; \"skip\" leaves such files out)",
                s.reason
            ),
        )),
        _ => Ok(()),
    };
    if let Some((header, map, offset)) = read_cache(&cache, &fp) {
        fail_on(&header.skipped)?;
        let len = header.count * header.shape.numel();
        let labels = header.labelled.then(|| {
            map[offset + len..]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect()
        });
        let pixels = Pixels::Mapped { map, offset, len };
        let classes = header.class_names.len();
        let dataset = Dataset::from_pixels(name, pixels, labels, header.shape, classes)?
            .with_class_names(if header.labelled {
                header.class_names
            } else {
                Vec::new()
            })?
            .with_paths(header.paths)?;
        return Ok(Loaded {
            dataset,
            skipped: header.skipped,
            cache,
            cache_use: CacheUse::Reused,
        });
    }

    let size = opts.size as u32;
    let done = AtomicUsize::new(0);
    let decoded: Vec<std::result::Result<(Vec<u8>, bool), String>> = listing
        .entries
        .par_iter()
        .map(|e| {
            let r = decode(&e.path, size);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            r
        })
        .collect();
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    let mut paths = Vec::new();
    for (e, r) in listing.entries.iter().zip(decoded) {
        match r {
            Ok(img) => {
                kept.push((e.label, img));
                paths.push(e.path.clone());
            }
            Err(reason) => skipped.push(Skipped {
                path: e.path.clone(),
                reason: format!("not a readable PNG or JPEG image: {reason}"),
            }),
        }
    }
    fail_on(&skipped)?;
    if kept.is_empty() {
        return Err(DataError::format(
            &listing.source,
            format!(
                "none of the {} listed images could be decoded (first: {})",
                listing.entries.len(),
                skipped[0].reason
            ),
        ));
    }
    let channels = opts
        .channels
        .unwrap_or(if kept.iter().all(|(_, (_, gray))| *gray) {
            1
        } else {
            3
        });
    let shape = ImageShape {
        height: opts.size,
        width: opts.size,
        channels,
    };
    let mut pixels = Vec::with_capacity(kept.len() * shape.numel());
    for (_, (rgb, _)) in &kept {
        if channels == 3 {
            pixels.extend_from_slice(rgb);
        } else {
            // ITU-R BT.601 luma, as PIL's `convert("L")`; exact for gray sources.
            pixels.extend(rgb.chunks_exact(3).map(|p| {
                ((299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32 + 500) / 1000) as u8
            }));
        }
    }
    let labels: Option<Vec<u32>> = listing
        .is_labelled()
        .then(|| kept.iter().map(|(l, _)| l.unwrap_or(0)).collect());
    let header = CacheHeader {
        fingerprint: fp,
        count: kept.len(),
        shape,
        labelled: labels.is_some(),
        class_names: listing.class_names.clone(),
        skipped: skipped.clone(),
        paths,
    };
    write_cache(&cache, &header, &pixels, labels.as_deref().unwrap_or(&[]))?;
    let dataset = Dataset::from_pixels(
        name,
        Pixels::Owned(pixels),
        labels,
        shape,
        listing.class_names.len(),
    )?
    .with_class_names(listing.class_names.clone())?
    .with_paths(header.paths)?;
    Ok(Loaded {
        dataset,
        skipped,
        cache,
        cache_use: CacheUse::Built,
    })
}

/// The parts of an image-folder source: `train/` (required when any split folder
/// exists), `val/` or `validation/`, and `test/` sub-folders when the folder has
/// them, else the whole source as the training part.
#[derive(Debug, Clone)]
pub struct FolderParts {
    pub train: PathBuf,
    pub validation: Option<PathBuf>,
    pub test: Option<PathBuf>,
}

impl FolderParts {
    /// Finds the split sub-folders of `path` (none for a manifest).
    pub fn find(path: &Path) -> FolderParts {
        let sub = |names: &[&str]| {
            names
                .iter()
                .map(|n| path.join(n))
                .find(|p| path.is_dir() && p.is_dir())
        };
        match sub(&["train"]) {
            Some(train) => FolderParts {
                train,
                validation: sub(&["val", "validation"]),
                test: sub(&["test"]),
            },
            None => FolderParts {
                train: path.to_path_buf(),
                validation: None,
                test: None,
            },
        }
    }
}
