//! Compose's value syntaxes for durations, sizes, CPU counts and release
//! versions, parsed into typed values.
//!
//! Durations follow Compose (Go's `time.ParseDuration`): one or more
//! `<number><unit>` pairs, units `us`, `ms`, `s`, `m`, `h` (`"1m30s"`,
//! `"500ms"`, `"1.5s"`). Sizes follow Compose's `mem_limit`: a whole or
//! decimal number with an optional binary unit `b`, `k`, `m`, `g` (also
//! `kb`, `mb`, `gb`, any case), or a plain YAML integer of bytes. Error texts
//! are shown to users as they are.

use std::cmp::Ordering;
use std::fmt;

use serde::Serialize;

/// A span of time written in Compose syntax, kept to the microsecond.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> String {
        d.to_string()
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Duration {
    /// The canonical form, e.g. `1m30s`, `500ms`, `0s`: one spelling per
    /// value, so that the config hash does not change when a user writes
    /// `90s` instead of `1m30s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut us = self.0.as_micros();
        if us == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("h", 3_600_000_000u128),
            ("m", 60_000_000),
            ("s", 1_000_000),
            ("ms", 1000),
        ] {
            if us >= size {
                write!(f, "{}{unit}", us / size)?;
                us %= size;
            }
        }
        if us > 0 {
            write!(f, "{us}us")?;
        }
        Ok(())
    }
}

/// Parses a Compose duration such as `"1m30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint = "write e.g. \"10s\", \"1m30s\" or \"500ms\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty duration: {hint}"));
    }
    let mut rest = t;
    let mut total_us: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let us_per_unit: u128 = match unit {
            "us" | "µs" => 1,
            "ms" => 1000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "" => return Err(format!("duration \"{text}\" has a number without a unit: {hint}")),
            other => return Err(format!("unknown unit `{other}` in duration \"{text}\": {hint}")),
        };
        let us = scaled_decimal(num, us_per_unit)
            .ok_or_else(|| format!("invalid number `{num}` in duration \"{text}\": {hint}"))?;
        total_us = total_us
            .checked_add(us)
            .ok_or_else(|| format!("duration \"{text}\" is too large"))?;
        rest = next;
    }
    let micros = u64::try_from(total_us).map_err(|_| format!("duration \"{text}\" is too large"))?;
    Ok(Duration(std::time::Duration::from_micros(micros)))
}

/// `num` (digits with at most one `.`) times `scale`, truncated to an
/// integer, computed without floating point so that `"0.1s"` is exactly
/// 100 ms.
fn scaled_decimal(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int_value: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int_value.checked_mul(scale)?;
    // Only as many fractional digits as can matter for `scale` (≤ 10^13).
    let frac = &frac[..frac.len().min(15)];
    if !frac.is_empty() {
        let frac_value: u128 = frac.parse().ok()?;
        let denom = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        value = value.checked_add(frac_value.checked_mul(scale)? / denom)?;
    }
    Some(value)
}

/// A number of bytes (`mem_limit`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct Size(pub u64);

impl Size {
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Parses a Compose size such as `"512m"` or `"1.5g"` (binary units).
pub fn parse_size(text: &str) -> Result<Size, String> {
    let hint = "write bytes or a number with b, k, m or g, e.g. \"512m\"";
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u128 = match unit.trim_start() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in size \"{text}\": {hint}")),
    };
    let bytes = scaled_decimal(num, scale).ok_or_else(|| format!("invalid size \"{text}\": {hint}"))?;
    u64::try_from(bytes)
        .map(Size)
        .map_err(|_| format!("size \"{text}\" is too large"))
}

/// A CPU quota (`cpus: 0.5`), in billionths of a CPU as the engine's
/// `NanoCpus` takes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub struct NanoCpus(pub u64);

/// Parses `"1.5"` (YAML numbers are passed in their textual form).
pub fn parse_cpus(text: &str) -> Result<NanoCpus, String> {
    let hint = "write a positive number of CPUs, e.g. 0.5 or 2";
    let n = scaled_decimal(text.trim(), 1_000_000_000)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("invalid CPU count \"{text}\": {hint}"))?;
    if n == 0 {
        return Err(format!("CPU count \"{text}\" is zero: {hint}"));
    }
    Ok(NanoCpus(n))
}

/// A release or OS version: dotted numbers (`1.4.2`), optionally followed by
/// `-` and a pre-release tag (`1.5.0-rc1`). Ordered by the numbers (missing
/// parts count as 0), then a pre-release before the release itself, then the
/// tags as text. Equality follows the ordering: `1.2` equals `1.2.0`.
#[derive(Clone, Debug, Serialize)]
#[serde(into = "String")]
pub struct Version {
    text: String,
    numbers: Vec<u64>,
    pre: Option<String>,
}

impl Version {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.numbers.len().max(other.numbers.len());
        for i in 0..len {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let hint = "write dotted numbers such as \"1.4.2\", optionally with a \"-rc1\" style suffix";
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let numbers = core
            .split('.')
            .map(|part| {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("invalid version \"{text}\": {hint}"));
                }
                part.parse::<u64>()
                    .map_err(|_| format!("version \"{text}\" has a part too large"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(pre) = pre
            && (pre.is_empty()
                || !pre
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            return Err(format!(
                "invalid pre-release suffix in version \"{text}\": {hint}"
            ));
        }
        Ok(Version {
            text: text.to_owned(),
            numbers,
            pre: pre.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |n| Ok(Duration(std::time::Duration::from_millis(n)));
        let table: &[(&str, Result<Duration, String>)] = &[
            ("10s", ms(10_000)),
            ("1m30s", ms(90_000)),
            ("500ms", ms(500)),
            ("1h", ms(3_600_000)),
            ("1.5s", ms(1500)),
            ("0.1s", ms(100)),
            ("2h1m1s", ms(7_261_000)),
            ("0s", ms(0)),
        ];
        for (text, want) in table {
            assert_eq!(&parse_duration(text), want, "{text}");
        }
        for bad in ["", "10", "1x", "s", "1..5s", "abc", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn duration_display_is_canonical() {
        for (text, canon) in [
            ("90s", "1m30s"),
            ("1m30s", "1m30s"),
            ("0.5s", "500ms"),
            ("3600s", "1h"),
            ("0ms", "0s"),
        ] {
            assert_eq!(
                parse_duration(text).map(|d| d.to_string()),
                Ok(canon.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn sizes() {
        let table: &[(&str, u64)] = &[
            ("512m", 512 << 20),
            ("1g", 1 << 30),
            ("1GB", 1 << 30),
            ("100k", 100 << 10),
            ("1024", 1024),
            ("1024b", 1024),
            ("1.5g", 3 << 29),
        ];
        for (text, want) in table {
            assert_eq!(parse_size(text), Ok(Size(*want)), "{text}");
        }
        for bad in ["", "m", "12t", "1,5g", "-1m"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(NanoCpus(500_000_000)));
        assert_eq!(parse_cpus("2"), Ok(NanoCpus(2_000_000_000)));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("-1").is_err());
    }

    #[test]
    fn versions_compare_as_dotted_numbers() {
        let v = |s: &str| s.parse::<Version>().unwrap_or_else(|e| panic!("{e}"));
        let ordered = ["0.9", "1.2", "1.10", "1.10.1-rc1", "1.10.1-rc2", "1.10.1", "2"];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(v("1.2"), v("1.2.0"));
        for bad in ["", "1..2", "v1", "1.x", "1.2-", "1.2-a b"] {
            assert!(bad.parse::<Version>().is_err(), "{bad} accepted");
        }
    }
}
