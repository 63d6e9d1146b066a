//! Finding keys in TOML text: byte offset → line/column, byte offset →
//! dotted key, dotted key → position. Uses toml's spanned document parser so
//! dotted keys, inline tables and `[section]` headers are all understood.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// Where a key is set in a file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

/// The dotted key whose name or value contains `offset`, the deepest one.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    if find(doc.get_ref(), offset, &mut path) {
        Some(path.join("."))
    } else {
        None
    }
}

fn find(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        let in_key = key.span().contains(&offset);
        let in_value = value.span().contains(&offset);
        // Children carry absolute spans, so a section's keys are searched
        // even when the section's own span only covers its header.
        if let DeValue::Table(child) = value.get_ref()
            && find(child, offset, path)
        {
            return true;
        }
        if in_key || in_value {
            return true;
        }
        path.pop();
    }
    false
}

/// Where the dotted key `key` is set in `text`, if it is.
pub(crate) fn key_location(path: &Path, text: &str, key: &str) -> Option<Location> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        if parts.peek().is_none() {
            let (line, column) = line_column(text, k.span().start);
            return Some(Location {
                path: path.to_owned(),
                line,
                column,
            });
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    None
}
