//! `fw_env.config`: where the U-Boot environment lives.
//!
//! The same file is read by libubootenv's `fw_printenv`/`fw_setenv`, so it is
//! parsed the way libubootenv parses it (`sscanf("%s %lli %zx %zx %lx")`):
//!
//! - a line whose first character is `#` is a comment, blank lines are
//!   skipped, and so is anything from a field starting with `#` onwards;
//! - `device offset size [sector-size [sector-count [disable-lock]]]`;
//! - the **offset** is a C integer literal: `0x` hex, a leading `0` octal,
//!   otherwise decimal; a negative offset counts back from the end of the
//!   device;
//! - the **sizes are always hexadecimal**, with or without `0x`: `8192` means
//!   0x8192 bytes to libubootenv, and it must mean the same here, or the two
//!   tools would look for the environment at different bytes;
//! - one device line is a single copy, two lines are the redundant pair and
//!   must have the same size.
//!
//! Deliberately stricter than libubootenv, which silently skips what it
//! cannot scan: a line with fewer than three fields, a malformed number,
//! trailing junk, a zero size or a third device line is an error naming the
//! file and line, because a misread config means writing the environment to
//! the wrong bytes of a boot medium.

use std::path::{Path, PathBuf};

use super::UbootError;

/// One copy of the environment: which device, where, how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLocation {
    /// The device or file holding the copy.
    pub device: PathBuf,
    /// Byte offset of the copy; negative counts back from the device's end.
    pub offset: i64,
    /// Size of the copy in bytes, header included.
    pub size: u64,
    /// Erase sector size; only meaningful on MTD flash, kept for completeness.
    pub sector_size: Option<u64>,
    /// Number of erase sectors; only meaningful on MTD flash.
    pub sectors: Option<u64>,
}

impl EnvLocation {
    /// A copy of `size` bytes at `offset` of `device`.
    pub fn new(device: impl Into<PathBuf>, offset: i64, size: u64) -> Self {
        Self {
            device: device.into(),
            offset,
            size,
            sector_size: None,
            sectors: None,
        }
    }
}

impl std::fmt::Display for EnvLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offset < 0 {
            write!(
                f,
                "{} at -{:#x} from the end",
                self.device.display(),
                self.offset.unsigned_abs()
            )
        } else {
            write!(f, "{} at {:#x}", self.device.display(), self.offset)
        }
    }
}

/// The parsed `fw_env.config`: one copy, or a redundant pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    copies: Vec<EnvLocation>,
}

impl FwEnvConfig {
    /// Where `fw_printenv` looks when not given `-c`.
    pub const DEFAULT_PATH: &str = "/etc/fw_env.config";

    /// A single-copy environment.
    pub fn single(copy: EnvLocation) -> Result<Self, UbootError> {
        Self::from_copies(vec![copy], Path::new("<built-in>"))
    }

    /// A redundant environment: two copies of the same size.
    pub fn redundant(first: EnvLocation, second: EnvLocation) -> Result<Self, UbootError> {
        Self::from_copies(vec![first, second], Path::new("<built-in>"))
    }

    /// Reads and parses the config file at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, UbootError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| UbootError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, UbootError> {
        let mut copies = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let fail = |reason: String| UbootError::ParseConfig {
                path: path.to_owned(),
                line: line_no,
                reason,
            };
            if line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line
                .split_whitespace()
                .take_while(|field| !field.starts_with('#'))
                .collect();
            if fields.is_empty() {
                continue;
            }
            if fields.len() < 3 {
                return Err(fail(
                    "expected `device offset size [sector-size [sectors]]`".into(),
                ));
            }
            if fields.len() > 6 {
                return Err(fail(format!("unexpected field `{}`", fields[6])));
            }
            if copies.len() == 2 {
                return Err(fail(
                    "more than two environment copies; only a single or a redundant pair exists".into(),
                ));
            }
            let offset = parse_c_integer(fields[1])
                .ok_or_else(|| fail(format!("offset `{}` is not a number", fields[1])))?;
            let hex = |field: &str, what: &str| {
                parse_hex(field).ok_or_else(|| {
                    fail(format!(
                        "{what} `{field}` is not a hexadecimal number (sizes are hex in fw_env.config)"
                    ))
                })
            };
            let size = hex(fields[2], "size")?;
            let sector_size = fields.get(3).map(|f| hex(f, "sector size")).transpose()?;
            let sectors = fields.get(4).map(|f| hex(f, "sector count")).transpose()?;
            // The sixth field (disable MTD lock) matters only for MTD, which is
            // refused at open time; it still has to be a number.
            if let Some(field) = fields.get(5)
                && field.parse::<i32>().is_err()
            {
                return Err(fail(format!("lock flag `{field}` is not a number")));
            }
            copies.push(EnvLocation {
                device: PathBuf::from(fields[0]),
                offset,
                size,
                sector_size,
                sectors,
            });
        }
        Self::from_copies(copies, path)
    }

    fn from_copies(copies: Vec<EnvLocation>, path: &Path) -> Result<Self, UbootError> {
        let invalid = |reason: String| UbootError::InvalidConfig {
            path: path.to_owned(),
            reason,
        };
        let Some(first) = copies.first() else {
            return Err(invalid("no environment device configured".into()));
        };
        let header = if copies.len() == 2 {
            super::image::REDUNDANT_HEADER
        } else {
            super::image::SINGLE_HEADER
        };
        // The data area must at least hold the terminating NUL.
        if first.size <= header as u64 {
            return Err(invalid(format!(
                "environment size {:#x} of {first} is too small",
                first.size
            )));
        }
        if usize::try_from(first.size).is_err() {
            return Err(invalid(format!(
                "environment size {:#x} of {first} does not fit in memory",
                first.size
            )));
        }
        if copies.len() > 2 {
            return Err(invalid("more than two environment copies".into()));
        }
        if let Some(second) = copies.get(1)
            && second.size != first.size
        {
            return Err(invalid(format!(
                "redundant copies differ in size: {:#x} ({first}) and {:#x} ({second})",
                first.size, second.size
            )));
        }
        Ok(Self { copies })
    }

    /// The configured copies: one, or two for a redundant environment.
    pub fn copies(&self) -> &[EnvLocation] {
        &self.copies
    }

    /// Whether the environment has two copies (flag byte in the header).
    pub fn is_redundant(&self) -> bool {
        self.copies.len() == 2
    }

    /// Size of each copy in bytes, header included.
    pub fn env_size(&self) -> u64 {
        self.copies[0].size
    }
}

/// `strtoll(s, _, 0)` without the partial parse: sign, then `0x` hex, leading
/// `0` octal, or decimal, and nothing after.
fn parse_c_integer(field: &str) -> Option<i64> {
    let (negative, digits) = match field.as_bytes().first()? {
        b'-' => (true, &field[1..]),
        b'+' => (false, &field[1..]),
        _ => (false, field),
    };
    let magnitude = if let Some(hex) = strip_hex_prefix(digits) {
        parse_radix(hex, 16)?
    } else if digits.len() > 1 && digits.starts_with('0') {
        parse_radix(&digits[1..], 8)?
    } else {
        parse_radix(digits, 10)?
    };
    let value = i64::try_from(magnitude).ok()?;
    Some(if negative { -value } else { value })
}

/// `%x`: hexadecimal with an optional `0x`, nothing after.
fn parse_hex(field: &str) -> Option<u64> {
    parse_radix(strip_hex_prefix(field).unwrap_or(field), 16)
}

/// Digits only: `from_str_radix` alone would also take a sign.
fn parse_radix(digits: &str, radix: u32) -> Option<u64> {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn strip_hex_prefix(field: &str) -> Option<&str> {
    field.strip_prefix("0x").or_else(|| field.strip_prefix("0X"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FwEnvConfig, UbootError> {
        FwEnvConfig::parse(text, Path::new("/etc/fw_env.config"))
    }

    #[test]
    fn single_copy_with_comments_and_blank_lines() {
        let config =
            parse("# MTD device name\tDevice offset\tEnv. size\n\n/boot/uboot.env 0x0000  0x20000\n")
                .expect("valid config");
        assert!(!config.is_redundant());
        assert_eq!(
            config.copies(),
            &[EnvLocation::new("/boot/uboot.env", 0, 0x20000)]
        );
    }

    #[test]
    fn redundant_copies_with_sector_fields_and_inline_comment() {
        let config = parse(
            "/dev/mmcblk0 0x400000 0x4000 0x200 0x20 # primary\n\
             /dev/mmcblk0 0x404000 4000 200 20\n",
        )
        .expect("valid config");
        assert!(config.is_redundant());
        assert_eq!(config.env_size(), 0x4000);
        let second = &config.copies()[1];
        assert_eq!(second.offset, 0x404000);
        assert_eq!(second.sector_size, Some(0x200));
        assert_eq!(second.sectors, Some(0x20));
    }

    #[test]
    fn offsets_follow_c_literal_rules_and_sizes_are_hex() {
        let table = [
            ("4096", 4096),
            ("0x1000", 0x1000),
            ("0X1000", 0x1000),
            ("010", 8),
            ("0", 0),
            ("-0x4000", -0x4000),
            ("-16384", -16384),
        ];
        for (text, expected) in table {
            let config = parse(&format!("/dev/sda {text} 8192\n")).expect(text);
            assert_eq!(config.copies()[0].offset, expected, "offset {text}");
            // `8192` is hex to libubootenv, so it is hex here too.
            assert_eq!(config.env_size(), 0x8192);
        }
    }

    #[test]
    fn malformed_lines_are_errors_naming_file_and_line() {
        let table = [
            ("/dev/sda 0x0\n", 1, "expected"),
            ("# c\n/dev/sda zero 0x2000\n", 2, "offset"),
            ("/dev/sda 0 0x2000junk\n", 1, "size"),
            ("/dev/sda 08 0x2000\n", 1, "offset"),
            ("/dev/sda 0x+5 0x2000\n", 1, "offset"),
            ("/dev/sda 0 +2000\n", 1, "size"),
            ("/dev/sda 0 0x2000 0x200 1 0 extra\n", 1, "unexpected"),
            (
                "/dev/sda 0 0x2000\n/dev/sda 0x2000 0x2000\n/dev/sda 0x4000 0x2000\n",
                3,
                "more than two",
            ),
        ];
        for (text, line, needle) in table {
            let err = parse(text).expect_err(text);
            let UbootError::ParseConfig { line: got, .. } = &err else {
                panic!("{text:?}: unexpected {err:?}");
            };
            assert_eq!(*got, line, "{text:?}");
            let message = err.to_string();
            assert!(message.contains("/etc/fw_env.config"), "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        for text in [
            "",
            "# only comments\n",
            "/dev/sda 0 0\n",
            "/dev/sda 0 4\n",
            "/dev/sda 0 0x2000\n/dev/sda 0x2000 0x4000\n",
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                matches!(err, UbootError::InvalidConfig { .. }),
                "{text:?}: {err:?}"
            );
        }
    }
}
