//! Removing secrets from the provisioning file's text once they are stored on
//! the data partition, keeping everything else (comments, order, layout) so
//! the file stays the user's file.
//!
//! A secret on a line of its own (`psk = "..."`) is replaced by a comment
//! saying where it went; a secret inside an inline table
//! (`{ ssid = "x", psk = "..." }`) is cut out of it and the comment goes on
//! the line above.

use crate::locate;

/// The secret keys of `[[wifi]]` entries.
const SECRET_KEYS: [&str; 2] = ["psk", "password"];

/// `text` without its secrets, or `None` when it has none.
pub fn scrub(text: &str) -> Option<String> {
    let entries = locate::entries(text)?;
    let mut secrets: Vec<_> = entries
        .into_iter()
        .filter(|e| {
            e.key.starts_with("wifi[")
                && e.key
                    .rsplit_once('.')
                    .is_some_and(|(item, k)| !item.contains('.') && SECRET_KEYS.contains(&k))
        })
        .collect();
    if secrets.is_empty() {
        return None;
    }
    // From the end, so earlier offsets stay valid.
    secrets.sort_by_key(|e| std::cmp::Reverse(e.key_span.start));
    let mut out = text.to_owned();
    for e in secrets {
        let name = e.key.rsplit_once('.').map_or("psk", |(_, k)| k);
        let comment = format!(
            "# {name}: stored on the device and removed from this file; to change it, write {name} = \"...\" here again"
        );
        let start = e.key_span.start;
        let end = e.value_span.end;
        let line_start = out[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = out[end..].find('\n').map_or(out.len(), |i| end + i);
        let before = &out[line_start..start];
        let after = out[end..line_end].trim_start();
        if before.trim().is_empty() && (after.is_empty() || after.starts_with('#')) {
            let indent = before.to_owned();
            out.replace_range(line_start..line_end, &format!("{indent}{comment}"));
        } else {
            // Inside an inline table: cut `key = value` and one comma.
            let rest = &out[end..];
            let trailing_comma = rest.len() - rest.trim_start().len();
            let (cut_start, cut_end) = if rest.trim_start().starts_with(',') {
                let after_comma = &rest[trailing_comma + 1..];
                let spaces = after_comma.len() - after_comma.trim_start_matches([' ', '\t']).len();
                (start, end + trailing_comma + 1 + spaces)
            } else {
                let head = out[..start].trim_end_matches([' ', '\t']);
                match head.strip_suffix(',') {
                    Some(h) => (h.len(), end),
                    None => (start, end),
                }
            };
            out.replace_range(cut_start..cut_end, "");
            let indent: String = out[line_start..]
                .chars()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect();
            out.insert_str(line_start, &format!("{indent}{comment}\n"));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_on_their_own_lines_become_comments() {
        let text = "[device]\nhostname = \"kiosk\"\n\n[[wifi]]\nssid = \"Shop\"\npsk = \"correct horse\" # the shop's\n\n[[wifi]]\nssid = \"Corp\"\neap = \"peap\"\nidentity = \"me\"\n  password = \"hunter22\"\n";
        let out = scrub(text).expect("has secrets");
        assert_eq!(
            out,
            "[device]\nhostname = \"kiosk\"\n\n[[wifi]]\nssid = \"Shop\"\n# psk: stored on the device and removed from this file; to change it, write psk = \"...\" here again\n\n[[wifi]]\nssid = \"Corp\"\neap = \"peap\"\nidentity = \"me\"\n  # password: stored on the device and removed from this file; to change it, write password = \"...\" here again\n"
        );
        assert!(!out.contains("correct horse") && !out.contains("hunter22"));
        let p = crate::parse(&out).expect("still valid");
        assert!(!p.has_secrets());
        assert_eq!(scrub(&out), None);
    }

    #[test]
    fn secrets_in_inline_tables_are_cut_out() {
        let text =
            "wifi = [\n  { ssid = \"A\", psk = \"aaaaaaaa\" },\n  { psk = \"bbbbbbbb\", ssid = \"B\" },\n]\n";
        let out = scrub(text).expect("has secrets");
        assert!(!out.contains("aaaaaaaa") && !out.contains("bbbbbbbb"), "{out}");
        let p = crate::parse(&out).expect("still valid");
        assert_eq!(p.wifi.len(), 2);
        assert!(!p.has_secrets());
    }

    #[test]
    fn a_file_without_secrets_is_left_alone() {
        assert_eq!(scrub("[device]\nhostname = \"a\"\n"), None);
        assert_eq!(scrub("[[wifi]]\nssid = \"x\"\nopen = true\n"), None);
    }
}
