//! Where each configuration value came from, and parse errors that name the exact key
//! path (`loss.temperature`, `mining[0].topk`) and its source (`file:line` or the
//! `--set` argument).
//!
//! A config is a merge of files (`extends`) and `--set` overrides, so serde's own
//! errors point at the wrong place: they know neither the file nor, inside tagged
//! tables such as `[loss]` (whose content serde buffers), the key. [`Origins`] records
//! a source per key path while the tables are read and merged; [`deserialize`] turns a
//! deserialisation error into the key path at fault, with a suggestion for a
//! misspelled key.

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt;
use toml::de::{DeTable, DeValue};

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A config file (or text named like one), at a 1-based line.
    File { name: String, line: usize },
    /// A `--set key=value` override, as given.
    Set(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { name, line } => write!(f, "{name}:{line}"),
            Origin::Set(arg) => write!(f, "--set {arg}"),
        }
    }
}

/// The source of every key path of a merged config (`a.b`, `list[2].c`).
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// The origins of every key in TOML `text`, read from file `name`.
    pub fn from_text(text: &str, name: &str) -> Self {
        let mut out = Self::default();
        // Syntax errors are reported by the caller's own parse; an unparsable text has
        // no origins to give.
        if let Ok(table) = DeTable::parse(text) {
            let lines = LineIndex::new(text);
            out.walk_table(table.get_ref(), "", name, &lines);
        }
        out
    }

    fn walk_table(&mut self, table: &DeTable<'_>, prefix: &str, name: &str, lines: &LineIndex) {
        for (key, value) in table.iter() {
            let path = join(prefix, key.get_ref());
            let origin = Origin::File {
                name: name.to_string(),
                line: lines.line_of(key.span().start),
            };
            self.0.insert(path.clone(), origin);
            self.walk_value(value.get_ref(), &path, name, lines);
        }
    }

    fn walk_value(&mut self, value: &DeValue<'_>, path: &str, name: &str, lines: &LineIndex) {
        match value {
            DeValue::Table(t) => self.walk_table(t, path, name, lines),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    self.0.insert(
                        at.clone(),
                        Origin::File {
                            name: name.to_string(),
                            line: lines.line_of(item.span().start),
                        },
                    );
                    self.walk_value(item.get_ref(), &at, name, lines);
                }
            }
            _ => {}
        }
    }

    /// Lays `top` (a file that extends this one) over these origins: a key `top` sets
    /// takes its origin; a tagged table (one with a `name` key) that `top` replaces
    /// whole drops the base's entries below it, as the merge drops their values.
    pub fn overlay(&mut self, top: Origins) {
        let replaced: Vec<String> = top
            .0
            .keys()
            .filter_map(|k| k.strip_suffix(".name").map(str::to_string))
            .collect();
        for table in replaced {
            self.remove_below(&table);
        }
        // Arrays are replaced whole too.
        for k in top.0.keys().filter(|k| !k.contains('[')) {
            if top.0.keys().any(|c| c.starts_with(&format!("{k}["))) {
                self.remove_below(k);
            }
        }
        self.0.extend(top.0);
    }

    /// Records a `--set path=value` override (`arg` as given); it replaces whatever
    /// stood at or below `path`.
    pub fn set(&mut self, path: &str, arg: &str) {
        self.remove_below(path);
        self.0
            .insert(path.to_string(), Origin::Set(arg.to_string()));
        // Tables the override created (a misspelled `lss` in `lss.temperature`) come
        // from it too; tables that stood before keep their origin.
        let mut prefix = path;
        while let Some(i) = prefix.rfind('.') {
            prefix = &prefix[..i];
            self.0
                .entry(prefix.to_string())
                .or_insert_with(|| Origin::Set(arg.to_string()));
        }
    }

    fn remove_below(&mut self, path: &str) {
        self.0.retain(|k, _| {
            !(k == path || k.starts_with(&format!("{path}.")) || k.starts_with(&format!("{path}[")))
        });
    }

    /// The first dotted key path named in `message` (validation errors write
    /// `optim.lr = ...`) whose first segment is a key of the config, with the origin of
    /// it or of its nearest recorded ancestor.
    pub fn mentioned<'m>(&self, message: &'m str) -> Option<(&'m str, &Origin)> {
        message
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map(|t| t.trim_matches('.'))
            .filter(|t| t.contains('.'))
            .filter(|t| {
                let top = t.split('.').next().unwrap_or_default();
                self.0
                    .keys()
                    .any(|k| k == top || k.starts_with(&format!("{top}.")))
            })
            .find_map(|t| self.of(t).map(|o| (t, o)))
    }

    /// The origin of `path`, or of its nearest recorded ancestor.
    pub fn of(&self, path: &str) -> Option<&Origin> {
        let mut p = path;
        loop {
            if let Some(o) = self.0.get(p) {
                return Some(o);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }
}

/// Byte offset to 1-based line.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        Self(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Deserialises `T` from a merged `table`; an error names the key path at fault, its
/// source in `origins`, and the nearest valid key for an unknown one.
pub fn deserialize<T: DeserializeOwned>(
    table: &toml::Table,
    origins: &Origins,
) -> anyhow::Result<T> {
    let err = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone())) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let message_of = |t: &toml::Table| {
        serde_path_to_error::deserialize::<_, T>(toml::Value::Table(t.clone()))
            .err()
            .map(|e| e.inner().message().trim().to_string())
    };
    let mut path = normalise(&err.path().to_string());
    let message = err.inner().message().trim().to_string();
    let mut hint = String::new();
    if let Some(field) = quoted_after(&message, "unknown field `") {
        // Outside tagged tables the path already ends at the unknown key; inside one it
        // stops at the table, so find the key below it.
        if path.rsplit(['.', ']']).next() != Some(field.as_str()) {
            path = find_key(table, &path, &field).unwrap_or_else(|| join(&path, &field));
        }
        if let Some(best) = nearest(&field, &expected_list(&message)) {
            hint = format!("; did you mean `{}`?", replace_last(&path, &best));
        }
    } else if let Some(field) = quoted_after(&message, "missing field `") {
        // A missing key next to a misspelled one: the misspelling is what to fix.
        match sibling_near(table, &path, &field) {
            Some(typo) => {
                hint = format!("; did you mean `{}`?", join(&path, &field));
                path = join(&path, &typo);
            }
            None => path = join(&path, &field),
        }
    } else if let Some(variant) = quoted_after(&message, "unknown variant `") {
        // An externally tagged choice records the variant as a path segment.
        if let Some(p) = path.strip_suffix(&format!(".{variant}")) {
            path = p.to_string();
        }
        // The value at `path` is the choice itself (`"x"` or `{ x = ... }`), or a key
        // below it holds the choice (a tag or a string field).
        let at = lookup(table, &path);
        let is_choice = at.and_then(|v| v.as_str()) == Some(variant.as_str())
            || at
                .and_then(|v| v.as_table())
                .is_some_and(|t| t.len() == 1 && t.contains_key(&variant));
        if !is_choice {
            path = match child_with_string(table, &path, &variant) {
                Some(child) => join(&path, &child),
                None => culprit(table, &path, &message, &message_of),
            };
            if let Some(p) = path.strip_suffix(&format!(".{variant}")) {
                path = p.to_string();
            }
        }
        if let Some(best) = nearest(&variant, &expected_list(&message)) {
            hint = format!("; did you mean \"{best}\"?");
        }
    } else {
        // Inside a tagged table serde reports only the table: find the key whose
        // removal changes the error.
        path = culprit(table, &path, &message, &message_of);
    }
    let source = origins
        .of(&path)
        .map(|o| format!(" ({o})"))
        .unwrap_or_default();
    Err(anyhow::anyhow!("`{path}`{source}: {message}{hint}"))
}

/// serde_path_to_error writes `?` for an untracked segment and `[i]` for sequences.
fn normalise(path: &str) -> String {
    let p = path.replace(".?", "");
    match p.as_str() {
        "." | "?" => String::new(),
        _ => p.trim_start_matches("?.").to_string(),
    }
}

fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// The names in serde's "expected `a`" or "expected one of `a`, `b`".
fn expected_list(message: &str) -> Vec<String> {
    let Some(at) = message.find("expected") else {
        return Vec::new();
    };
    message[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn nearest(word: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn replace_last(path: &str, key: &str) -> String {
    match path.rfind('.') {
        Some(i) => format!("{}.{key}", &path[..i]),
        None => key.to_string(),
    }
}

/// The value at a key path of `table`.
fn lookup<'t>(table: &'t toml::Table, path: &str) -> Option<&'t toml::Value> {
    let mut cur: Option<&toml::Value> = None;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let next = match cur {
            None => table.get(key)?,
            Some(v) => v.as_table()?.get(key)?,
        };
        cur = Some(match index {
            Some(i) => next.as_array()?.get(i)?,
            None => next,
        });
    }
    cur
}

/// The path of the first key named `key` at or below the table at `path`.
fn find_key(table: &toml::Table, path: &str, key: &str) -> Option<String> {
    fn search(t: &toml::Table, prefix: &str, key: &str) -> Option<String> {
        if t.contains_key(key) {
            return Some(join(prefix, key));
        }
        t.iter().find_map(|(k, v)| match v {
            toml::Value::Table(inner) => search(inner, &join(prefix, k), key),
            toml::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                search(item.as_table()?, &format!("{}[{i}]", join(prefix, k)), key)
            }),
            _ => None,
        })
    }
    let t = if path.is_empty() {
        table
    } else {
        lookup(table, path)?.as_table()?
    };
    search(t, path, key)
}

/// A key of the table at `path` that looks like a misspelling of `field`.
fn sibling_near(table: &toml::Table, path: &str, field: &str) -> Option<String> {
    let t = if path.is_empty() {
        table
    } else {
        lookup(table, path)?.as_table()?
    };
    let keys: Vec<String> = t.keys().filter(|k| k.as_str() != field).cloned().collect();
    let wanted = [field.to_string()];
    keys.into_iter().find(|k| nearest(k, &wanted).is_some())
}

fn child_with_string(table: &toml::Table, path: &str, value: &str) -> Option<String> {
    let t = if path.is_empty() {
        table
    } else {
        lookup(table, path)?.as_table()?
    };
    t.iter()
        .find(|(_, v)| v.as_str() == Some(value))
        .map(|(k, _)| k.clone())
}

/// Keys that select a variant (`[loss] name = ...`, `encoder = { kind = ... }`).
const TAGS: [&str; 2] = ["name", "kind"];

/// The key below `path` whose removal changes the error `message` (depth first), or
/// `path` itself; `message_of` deserialises a probe. Tags are probed last and never
/// removed: without its tag every tagged table fails alike, so when no other key is
/// at fault, the tag is.
fn culprit(
    table: &toml::Table,
    path: &str,
    message: &str,
    message_of: &dyn Fn(&toml::Table) -> Option<String>,
) -> String {
    let Some(toml::Value::Table(inner)) = lookup(table, path) else {
        return path.to_string();
    };
    for key in inner.keys().filter(|k| !TAGS.contains(&k.as_str())) {
        let mut probe = table.clone();
        remove(&mut probe, path, key);
        if message_of(&probe).as_deref() != Some(message) {
            return culprit(table, &join(path, key), message, message_of);
        }
    }
    match TAGS.iter().find(|t| inner.contains_key(**t)) {
        Some(tag) => join(path, tag),
        None => path.to_string(),
    }
}

fn remove(table: &mut toml::Table, path: &str, key: &str) {
    let target = if path.is_empty() {
        Some(table)
    } else {
        lookup_mut(table, path).and_then(|v| v.as_table_mut())
    };
    if let Some(t) = target {
        t.remove(key);
    }
}

fn lookup_mut<'t>(table: &'t mut toml::Table, path: &str) -> Option<&'t mut toml::Value> {
    let mut parts = path.split('.').filter(|p| !p.is_empty());
    let first = parts.next()?;
    let mut cur = index_mut(table.get_mut(first.split('[').next()?)?, first)?;
    for part in parts {
        let key = part.split('[').next()?;
        cur = index_mut(cur.as_table_mut()?.get_mut(key)?, part)?;
    }
    Some(cur)
}

fn index_mut<'v>(value: &'v mut toml::Value, part: &str) -> Option<&'v mut toml::Value> {
    match part.split_once('[') {
        Some((_, rest)) => value
            .as_array_mut()?
            .get_mut(rest.trim_end_matches(']').parse::<usize>().ok()?),
        None => Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_follow_lines_overlays_and_overrides() {
        let base =
            "name = \"a\"\n[loss]\nname = \"nt_xent\"\ntemperature = 0.2\n[optim]\nlr = 0.1\n";
        let top = "[loss]\nname = \"supcon\"\n[optim]\nlr = 0.3\n";
        let mut o = Origins::from_text(base, "base.toml");
        assert_eq!(o.of("loss.temperature").unwrap().to_string(), "base.toml:4");
        o.overlay(Origins::from_text(top, "top.toml"));
        // The tagged [loss] was replaced whole: its temperature no longer comes from base.
        assert_eq!(o.of("loss.temperature").unwrap().to_string(), "top.toml:1");
        assert_eq!(o.of("optim.lr").unwrap().to_string(), "top.toml:4");
        o.set("optim.lr", "optim.lr=abc");
        assert_eq!(o.of("optim.lr").unwrap().to_string(), "--set optim.lr=abc");
        assert_eq!(o.of("name").unwrap().to_string(), "base.toml:1");
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let list = vec!["temperature".to_string(), "name".to_string()];
        assert_eq!(nearest("temprature", &list).as_deref(), Some("temperature"));
        assert_eq!(nearest("batch", &list), None);
        assert_eq!(
            expected_list("unknown field `x`, expected one of `a`, `bb`"),
            vec!["a", "bb"]
        );
    }
}
