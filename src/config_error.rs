//! Config errors and where they are: the file, the line and the dotted key. A leaf module:
//! `config` and the sections parsed elsewhere (`database::config`, `rotation::config`) use it,
//! it uses none of them.
use std::fmt;
use std::path::{Path, PathBuf};

/// A config problem. Exit code 64 when it stops a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// Dotted key, where known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error in {}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ", key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Ctx<'_> {
    /// An error for `table.key`, with the line where the key is set if it can be found.
    pub(crate) fn err(&self, table: &str, key: &str, message: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: find_line(self.text, table, key),
            key: Some(format!("{table}.{key}")),
            message: message.to_string(),
        }
    }

    /// An error for `array[index].key` (e.g. `roles[2].scopes`).
    pub(crate) fn err_at(
        &self,
        array: &str,
        index: usize,
        key: &str,
        message: impl fmt::Display,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: find_line_array(self.text, array, index, key),
            key: Some(format!("{array}[{index}].{key}")),
            message: message.to_string(),
        }
    }

    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or_else(|| Path::new(".")).join(p)
        }
    }
}

/// The 1-based line where `key` is set inside `[table]`.
fn find_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        if current == table {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

/// The 1-based line where `key` is set in the `index`-th `[[array]]` table (or its header).
fn find_line_array(text: &str, array: &str, index: usize, key: &str) -> Option<usize> {
    let header = format!("[[{array}]]");
    let mut seen = 0usize;
    let mut inside = false;
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            inside = false;
            if l == header {
                seen += 1;
                if seen == index + 1 {
                    inside = true;
                    header_line = Some(i + 1);
                }
            }
            continue;
        }
        if inside {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    header_line
}

/// The dotted key set on a given 1-based line (for parser errors that only give a position).
pub(crate) fn key_at_line(text: &str, line_no: usize) -> Option<String> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = h.trim().trim_matches(['[', ']']).to_string();
        }
        if i + 1 == line_no {
            let (k, _) = l.split_once('=')?;
            let k = k.trim();
            return Some(if current.is_empty() {
                k.to_string()
            } else {
                format!("{current}.{k}")
            });
        }
    }
    None
}
