//! Human durations in configuration files: `"500ms"`, `"10s"`, `"5m"`,
//! `"1h"`, `"1d"`. One number and one unit: compound forms (`"1m30s"`) are
//! refused rather than half-understood.

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (n, unit) = if ms.is_multiple_of(86_400_000) && ms > 0 {
            (ms / 86_400_000, "d")
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            (ms / 3_600_000, "h")
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            (ms / 60_000, "m")
        } else if ms.is_multiple_of(1000) {
            (ms / 1000, "s")
        } else {
            (ms, "ms")
        };
        write!(f, "{n}{unit}")
    }
}

/// Parses `<digits><unit>`; the error text is shown to users as is.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let hint = "write a whole number followed by ms, s, m, h or d, e.g. \"10s\" or \"5m\"";
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\": {hint}"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("duration \"{text}\" has no unit: {hint}")),
        _ => return Err(format!("invalid duration unit in \"{text}\": {hint}")),
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .ok_or_else(|| format!("duration \"{text}\" is too large"))?;
    Ok(Duration(std::time::Duration::from_millis(ms)))
}

impl<'de> serde::Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let cases = [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("2d", 172_800_000),
            (" 3s ", 3000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text).map(|d| d.0.as_millis()), Ok(ms), "{text}");
        }
    }

    #[test]
    fn refuses_nonsense() {
        for text in [
            "",
            "s",
            "10",
            "10x",
            "1m30s",
            "-5s",
            "1.5s",
            "99999999999999999999d",
        ] {
            assert!(parse(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn displays_in_largest_whole_unit() {
        for text in ["500ms", "10s", "5m", "1h", "2d", "0s", "90s"] {
            assert_eq!(parse(text).map(|d| d.to_string()).as_deref(), Ok(text));
        }
    }
}
