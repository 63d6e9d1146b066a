//! Keys and positions in the provisioning file's text. Keys are dotted with
//! `[i]` for array items (`wifi[1].psk`), as the README names them.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}

/// One key/value pair of the document: its dotted key, the key's span and
/// the value's span.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value_span: Range<usize>,
}

/// Every key/value pair, depth first, tables and array items included.
pub(crate) fn entries(text: &str) -> Option<Vec<Entry>> {
    let doc = DeTable::parse(text).ok()?;
    let mut out = Vec::new();
    walk_table(doc.get_ref(), "", &mut out);
    Some(out)
}

fn walk_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (key, value) in table.iter() {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.push(Entry {
            key: name.clone(),
            key_span: key.span(),
            value_span: value.span(),
        });
        walk_value(value.get_ref(), &name, out);
    }
}

fn walk_value(value: &DeValue<'_>, name: &str, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => walk_table(t, name, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_name = format!("{name}[{i}]");
                out.push(Entry {
                    key: item_name.clone(),
                    key_span: item.span(),
                    value_span: item.span(),
                });
                walk_value(item.get_ref(), &item_name, out);
            }
        }
        _ => {}
    }
}

/// The deepest key whose name or value contains `offset`.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    entries(text)?
        .into_iter()
        .filter(|e| e.key_span.contains(&offset) || e.value_span.contains(&offset))
        .max_by_key(|e| e.key.len())
        .map(|e| e.key)
}

/// Where `key` is set (its name's position), if it is.
pub(crate) fn key_position(text: &str, key: &str) -> Option<(usize, usize)> {
    let entry = entries(text)?.into_iter().find(|e| e.key == key)?;
    Some(line_column(text, entry.key_span.start))
}
