//! The on-medium format of one U-Boot environment copy, as pure functions.
//!
//! ```text
//! single:     crc32 (LE u32) | data
//! redundant:  crc32 (LE u32) | flags (u8) | data
//! data:       "name=value\0" ... "\0" then padding up to the copy size
//! ```
//!
//! The CRC covers the whole data area, padding included. Entries are written
//! sorted by name (byte order), as libubootenv does, so the same variables
//! give the same bytes whichever tool wrote them; the padding is zeros (U-Boot
//! clears its export buffer; libubootenv leaves whatever `malloc` returned,
//! which is why only the bytes up to the double NUL are ever compared).

use std::collections::BTreeMap;

/// Header of a single copy: the CRC.
pub(crate) const SINGLE_HEADER: usize = 4;
/// Header of a redundant copy: the CRC and the flags byte.
pub(crate) const REDUNDANT_HEADER: usize = 5;

/// Variables as raw bytes, sorted like libubootenv sorts them (`strcmp`).
///
/// Raw because nothing forces an environment to be UTF-8: a variable this
/// crate does not touch must be written back exactly as it was read.
pub(crate) type RawVars = BTreeMap<Vec<u8>, Vec<u8>>;

/// What one copy's header says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyHeader {
    /// The stored CRC matches the data area.
    pub crc_ok: bool,
    /// The flags byte (redundant copies only; 0 otherwise).
    pub flags: u8,
}

/// Checks the CRC of one copy and reads its flags byte.
pub(crate) fn header(copy: &[u8], redundant: bool) -> CopyHeader {
    let header_len = header_len(redundant);
    let (Some(crc), Some(data)) = (copy.first_chunk::<4>(), copy.get(header_len..)) else {
        return CopyHeader {
            crc_ok: false,
            flags: 0,
        };
    };
    CopyHeader {
        crc_ok: crc32fast::hash(data) == u32::from_le_bytes(*crc),
        flags: if redundant { copy[4] } else { 0 },
    }
}

pub(crate) fn header_len(redundant: bool) -> usize {
    if redundant {
        REDUNDANT_HEADER
    } else {
        SINGLE_HEADER
    }
}

/// Which copy of a redundant pair is current, by libubootenv's rules (which
/// are U-Boot's `env_import_redund` rules for incremental flags):
/// a copy with a bad CRC never wins; of two good copies the higher flags byte
/// wins, except that 0 beats 255 (the counter wrapped); equal flags pick the
/// first copy. `None` when neither copy is valid.
pub(crate) fn select_current(first: CopyHeader, second: CopyHeader) -> Option<usize> {
    match (first.crc_ok, second.crc_ok) {
        (false, false) => None,
        (true, false) => Some(0),
        (false, true) => Some(1),
        (true, true) => Some(match (first.flags, second.flags) {
            (0xff, 0) => 1,
            (0, 0xff) => 0,
            (a, b) if b > a => 1,
            _ => 0,
        }),
    }
}

/// The data area did not end in a NUL-terminated entry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unterminated {
    /// Offset of the entry inside the data area.
    pub offset: usize,
}

/// Parses the data area: entries up to the first empty one. An entry without
/// `=` is skipped and a repeated name replaces the earlier value, both as
/// libubootenv loads them.
pub(crate) fn parse_data(data: &[u8]) -> Result<RawVars, Unterminated> {
    let mut vars = RawVars::new();
    let mut pos = 0;
    while pos < data.len() && data[pos] != 0 {
        let Some(len) = data[pos..].iter().position(|&b| b == 0) else {
            return Err(Unterminated { offset: pos });
        };
        let entry = &data[pos..pos + len];
        if let Some(eq) = entry.iter().position(|&b| b == b'=') {
            vars.insert(entry[..eq].to_vec(), entry[eq + 1..].to_vec());
        }
        pos += len + 1;
    }
    Ok(vars)
}

/// The variables need `needed` bytes but the data area has only `available`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLarge {
    pub needed: usize,
    pub available: usize,
}

/// Bytes the serialized data needs: every `name=value\0`, then the final NUL.
pub(crate) fn data_len(vars: &RawVars) -> usize {
    vars.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>() + 1
}

/// Builds a complete copy of `copy_size` bytes: header, entries, zero padding.
pub(crate) fn build(
    vars: &RawVars,
    copy_size: usize,
    redundant: bool,
    flags: u8,
) -> Result<Vec<u8>, TooLarge> {
    let header_len = header_len(redundant);
    let available = copy_size.saturating_sub(header_len);
    let needed = data_len(vars);
    if needed > available {
        return Err(TooLarge { needed, available });
    }
    let mut copy = vec![0u8; copy_size];
    let mut pos = header_len;
    for (name, value) in vars {
        for part in [name.as_slice(), b"=", value.as_slice()] {
            copy[pos..pos + part.len()].copy_from_slice(part);
            pos += part.len();
        }
        // The NUL terminator is already there: the buffer starts zeroed.
        pos += 1;
    }
    let crc = crc32fast::hash(&copy[header_len..]);
    copy[..4].copy_from_slice(&crc.to_le_bytes());
    if redundant {
        copy[4] = flags;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> RawVars {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn ok(flags: u8) -> CopyHeader {
        CopyHeader { crc_ok: true, flags }
    }

    fn bad(flags: u8) -> CopyHeader {
        CopyHeader { crc_ok: false, flags }
    }

    #[test]
    fn single_copy_layout_is_crc_le_then_sorted_entries() {
        let copy = build(&vars(&[("foo", "bar"), ("a", "x y=z")]), 32, false, 0).expect("fits");
        let data = b"a=x y=z\0foo=bar\0\0";
        assert_eq!(&copy[4..4 + data.len()], data);
        assert!(copy[4 + data.len()..].iter().all(|&b| b == 0));
        let crc = crc32fast::hash(&copy[4..]);
        assert_eq!(copy[..4], crc.to_le_bytes());
        assert_eq!(header(&copy, false), ok(0));
    }

    #[test]
    fn redundant_layout_has_flags_byte_before_data() {
        // `foo=bar` in a 0x2000-byte copy with flags 1; the CRC is Python's
        // `zlib.crc32` of the zero-padded data area, packed `<I`.
        let copy = build(&vars(&[("foo", "bar")]), 0x2000, true, 1).expect("fits");
        assert_eq!(&copy[..13], b"\x3c\xc5\x77\xcf\x01foo=bar\0");
        assert_eq!(header(&copy, true), ok(1));
        assert_eq!(parse_data(&copy[5..]), Ok(vars(&[("foo", "bar")])));
    }

    #[test]
    fn corrupted_byte_fails_the_crc() {
        let mut copy = build(&vars(&[("foo", "bar")]), 64, true, 7).expect("fits");
        copy[40] ^= 1;
        assert_eq!(header(&copy, true), bad(7));
    }

    #[test]
    fn current_copy_selection_matches_libubootenv() {
        let table = [
            (ok(1), ok(2), Some(1)),
            (ok(2), ok(1), Some(0)),
            (ok(5), ok(5), Some(0)),
            (ok(0xff), ok(0), Some(1)),
            (ok(0), ok(0xff), Some(0)),
            (ok(0xfe), ok(0xff), Some(1)),
            (ok(0xff), ok(1), Some(0)),
            (ok(9), bad(10), Some(0)),
            (bad(10), ok(9), Some(1)),
            (bad(1), bad(2), None),
        ];
        for (first, second, expected) in table {
            assert_eq!(select_current(first, second), expected, "{first:?} {second:?}");
        }
    }

    #[test]
    fn parse_stops_at_double_nul_skips_junk_and_keeps_last_duplicate() {
        let data = b"b=1\0junk\0a=\0b=2\0\0c=ignored\0";
        assert_eq!(parse_data(data), Ok(vars(&[("a", ""), ("b", "2")])));
        assert_eq!(parse_data(b"\0"), Ok(RawVars::new()));
        // A full area without the final NUL still ends at the area's end.
        assert_eq!(parse_data(b"a=1\0"), Ok(vars(&[("a", "1")])));
        assert_eq!(parse_data(b"a=1\0b=2"), Err(Unterminated { offset: 4 }));
    }

    #[test]
    fn overflow_is_refused_at_the_exact_boundary() {
        let v = vars(&[("k", "vv")]);
        // "k=vv\0" + "\0" = 6 data bytes.
        assert_eq!(data_len(&v), 6);
        assert!(build(&v, 4 + 6, false, 0).is_ok());
        assert_eq!(
            build(&v, 4 + 5, false, 0),
            Err(TooLarge {
                needed: 6,
                available: 5
            })
        );
        assert!(build(&v, 5 + 6, true, 0).is_ok());
        assert!(build(&v, 5 + 5, true, 0).is_err());
    }
}
