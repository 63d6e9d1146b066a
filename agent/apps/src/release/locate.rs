//! Finds the line of a key path (`services`, `web`, `healthcheck`) in
//! block-style YAML, for error messages about documents that parsed fine.
//!
//! The YAML value tree carries no positions, so this looks the keys up in
//! the text: each key is searched among the direct children of the previous
//! one (lines indented exactly as the block's first child). Flow style,
//! multi-line keys or keys that come from an anchor are not found; the
//! deepest key found is returned, or `None`.

pub fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut end = lines.len();
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for key in path {
        // The indentation of this block's children: that of its first
        // content line.
        let child_indent = lines[start..end]
            .iter()
            .find(|l| is_content(l))
            .map(|l| indent(l))?;
        if parent_indent.is_some_and(|p| child_indent <= p) {
            return found;
        }
        let Some(offset) = lines[start..end]
            .iter()
            .position(|l| is_content(l) && indent(l) == child_indent && key_of(l) == Some(key))
        else {
            return found;
        };
        let at = start + offset;
        found = Some(at + 1);
        // The key's block: the following lines indented deeper than it.
        let block_end = lines[at + 1..end]
            .iter()
            .position(|l| is_content(l) && indent(l) <= child_indent)
            .map_or(end, |p| at + 1 + p);
        start = at + 1;
        end = block_end;
        parent_indent = Some(child_indent);
    }
    found
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The key of a `key: ...` line, without quotes.
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let (key, _) = t.split_once(':')?;
    let key = key.trim();
    Some(
        key.strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
            .unwrap_or(key),
    )
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const DOC: &str = "\
name: app
services:
  # the web front
  web:
    image: x
    healthcheck:
      interval: 5s
  \"db\":
    depends_on:
      web:
        condition: service_started
    build: .
volumes:
  data:
";

    #[test]
    fn finds_nested_keys() {
        let table: &[(&[&str], Option<usize>)] = &[
            (&["name"], Some(1)),
            (&["services", "web"], Some(4)),
            (&["services", "web", "healthcheck", "interval"], Some(7)),
            (&["services", "db", "build"], Some(12)),
            (&["services", "db", "depends_on", "web", "condition"], Some(11)),
            (&["services", "web", "build"], Some(4)),
            (&["volumes", "data"], Some(14)),
            (&["services", "nope"], Some(2)),
            (&["missing"], None),
        ];
        for (path, want) in table {
            assert_eq!(line_of(DOC, path), *want, "{path:?}");
        }
    }
}
