//! A VCDIFF (RFC 3284) decoder for binary patches from the release a
//! device runs to the next one, as `xdelta3 -e -S none` makes them.
//!
//! Each window's copy source is the *seed* (the running slot, read with
//! `pread` at the window's source offset, never loaded whole) or, for
//! `VCD_TARGET` windows, what this patch already wrote to the target. The
//! target is written sequentially with `pwrite`, and hashed (SHA-256) on the
//! way, so the caller compares the result with the signed manifest without
//! reading it back. Memory is one target window plus its three sections:
//! xdelta3's `-W` (8 MiB for published patches); windows larger than
//! [`MAX_WINDOW`] are refused rather than allocated.
//!
//! Supported: the default code table with its near (4) and same (3×256)
//! address caches; ADD, RUN, COPY (overlapping copies included); xdelta3's
//! extensions — the per-window Adler-32 of the target (`VCD_ADLER32`,
//! verified: a wrong seed is caught at the first window it spoils) and the
//! application header (skipped). Refused with [`VcdiffError::Unsupported`]:
//! secondary compression (`VCD_DECOMPRESS`, compressed sections) and custom
//! code tables (`VCD_CODETABLE`) — publishers make patches with `-S none`
//! and compress the patch file as a whole instead.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt as _;

use containeros_trust::Digest;

use crate::medium::ReadAt;

/// The largest target window, and the largest section, accepted: bounds the
/// memory a (corrupt or hostile) patch can make the device allocate.
pub const MAX_WINDOW: u64 = 64 << 20;

const MAGIC: [u8; 3] = [0xd6, 0xc3, 0xc4];

// Hdr_Indicator bits.
const VCD_DECOMPRESS: u8 = 0x01;
const VCD_CODETABLE: u8 = 0x02;
const VCD_APPHEADER: u8 = 0x04;
// Win_Indicator bits.
const VCD_SOURCE: u8 = 0x01;
const VCD_TARGET: u8 = 0x02;
const VCD_ADLER32: u8 = 0x04;

#[derive(Debug, thiserror::Error)]
pub enum VcdiffError {
    #[error("cannot read the patch: {0}")]
    Read(#[source] std::io::Error),
    #[error("the patch is not valid VCDIFF (at byte {offset} of the patch): {reason}")]
    Format { offset: u64, reason: String },
    #[error("the patch uses {0}, which this agent does not decode; publish patches with `xdelta3 -S none`")]
    Unsupported(&'static str),
    #[error(
        "window {window} (target bytes from {target_offset}) has Adler-32 {actual:08x}, the patch says \
         {expected:08x}: the seed is not the release the patch was made from, or the patch is corrupt"
    )]
    Checksum {
        window: u64,
        target_offset: u64,
        expected: u32,
        actual: u32,
    },
    #[error("cannot read the seed at byte {offset}: {source}")]
    ReadSeed {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read back the target at byte {offset}: {source}")]
    ReadTarget {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the target at byte {offset}: {source}")]
    WriteTarget {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the patch makes more than the {limit} bytes expected")]
    TooLong { limit: u64 },
}

/// What a patch produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written to the target.
    pub written: u64,
    /// SHA-256 of those bytes.
    pub sha256: Digest,
    pub windows: u64,
}

/// Decodes the VCDIFF stream `patch` against `seed`, writing the result to
/// `target` from offset 0 (never more than `limit` bytes). `progress` is
/// called with the bytes written after each window. The target is not
/// flushed: the caller syncs it once the result is checked.
pub fn apply(
    patch: impl Read,
    seed: &dyn ReadAt,
    target: &File,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Applied, VcdiffError> {
    let mut input = Input {
        inner: patch,
        offset: 0,
    };
    let mut magic = [0u8; 4];
    input.exact(&mut magic)?;
    if magic[..3] != MAGIC {
        return Err(input.bad("no VCDIFF magic (D6 C3 C4) at the start"));
    }
    if magic[3] != 0 {
        return Err(input.bad(format!("VCDIFF version {} (only 0 is defined)", magic[3])));
    }
    let header = input
        .byte()?
        .ok_or_else(|| input.bad("the patch ends in its header"))?;
    if header & VCD_DECOMPRESS != 0 {
        return Err(VcdiffError::Unsupported("secondary compression (VCD_DECOMPRESS)"));
    }
    if header & VCD_CODETABLE != 0 {
        return Err(VcdiffError::Unsupported("a custom code table (VCD_CODETABLE)"));
    }
    if header & !(VCD_DECOMPRESS | VCD_CODETABLE | VCD_APPHEADER) != 0 {
        return Err(input.bad(format!("unknown header indicator bits {header:#04x}")));
    }
    if header & VCD_APPHEADER != 0 {
        // xdelta3's application header (file names): of no use here.
        let len = input.varint()?;
        input.skip(len)?;
    }

    let code_table = default_code_table();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut written = 0u64;
    let mut windows = 0u64;
    let mut window = Window::default();
    while let Some(indicator) = input.byte()? {
        if indicator & !(VCD_SOURCE | VCD_TARGET | VCD_ADLER32) != 0 {
            return Err(input.bad(format!("unknown window indicator bits {indicator:#04x}")));
        }
        let copy_from = match (indicator & VCD_SOURCE != 0, indicator & VCD_TARGET != 0) {
            (true, true) => return Err(input.bad("a window with both VCD_SOURCE and VCD_TARGET")),
            (true, false) => CopyFrom::Seed,
            (false, true) => CopyFrom::Target,
            (false, false) => CopyFrom::Nothing,
        };
        let (source_len, source_pos) = if copy_from == CopyFrom::Nothing {
            (0, 0)
        } else {
            let len = input.varint()?;
            let pos = input.varint()?;
            if copy_from == CopyFrom::Target && pos.checked_add(len).is_none_or(|end| end > written) {
                return Err(input.bad("a VCD_TARGET window copies from beyond what was written"));
            }
            (len, pos)
        };
        let encoding_len = input.varint()?;
        let encoding_start = input.offset;
        let target_len = input.varint()?;
        if target_len > MAX_WINDOW {
            return Err(input.bad(format!(
                "a target window of {target_len} bytes (at most {MAX_WINDOW})"
            )));
        }
        if written + target_len > limit {
            return Err(VcdiffError::TooLong { limit });
        }
        let delta_indicator = input
            .byte()?
            .ok_or_else(|| input.bad("the patch ends in a window"))?;
        if delta_indicator != 0 {
            return Err(VcdiffError::Unsupported(
                "compressed sections (secondary compression)",
            ));
        }
        let data_len = input.section_len()?;
        let inst_len = input.section_len()?;
        let addr_len = input.section_len()?;
        let checksum = if indicator & VCD_ADLER32 != 0 {
            let mut b = [0u8; 4];
            input.exact(&mut b)?;
            Some(u32::from_be_bytes(b))
        } else {
            None
        };
        if input.offset - encoding_start + data_len + inst_len + addr_len != encoding_len {
            return Err(input.bad("the window's length does not add up to its sections"));
        }
        window.load(&mut input, data_len, inst_len, addr_len)?;
        let start = input.offset;
        window.target.clear();
        window.target.reserve(usize_of(target_len));
        let ctx = Decode {
            seed,
            target_file: target,
            copy_from,
            source_len,
            source_pos,
            target_len,
        };
        ctx.run(&code_table, &mut window)
            .map_err(|e| e.at(start, &input))?;
        if let Some(expected) = checksum {
            let actual = adler32(&window.target);
            if actual != expected {
                return Err(VcdiffError::Checksum {
                    window: windows,
                    target_offset: written,
                    expected,
                    actual,
                });
            }
        }
        target
            .write_all_at(&window.target, written)
            .map_err(|source| VcdiffError::WriteTarget {
                offset: written,
                source,
            })?;
        hash.update(&window.target);
        written += target_len;
        windows += 1;
        progress(written);
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hash.finish().as_ref());
    Ok(Applied {
        written,
        sha256: Digest(sha256),
        windows,
    })
}

fn usize_of(n: u64) -> usize {
    // Bounded by MAX_WINDOW wherever it is used.
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The patch stream, with its position for error messages.
struct Input<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Input<R> {
    fn bad(&self, reason: impl Into<String>) -> VcdiffError {
        VcdiffError::Format {
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// The next byte, or `None` at the end of the patch.
    fn byte(&mut self) -> Result<Option<u8>, VcdiffError> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.offset += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(VcdiffError::Read(e)),
            }
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), VcdiffError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.bad("the patch is truncated"))
            }
            Err(e) => Err(VcdiffError::Read(e)),
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<(), VcdiffError> {
        let mut buf = [0u8; 4096];
        while n > 0 {
            let k = usize_of(n.min(buf.len() as u64));
            self.exact(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, VcdiffError> {
        let mut value = 0u64;
        for _ in 0..10 {
            let b = self.byte()?.ok_or_else(|| self.bad("the patch is truncated"))?;
            if value > u64::MAX >> 7 {
                return Err(self.bad("an integer overflows 64 bits"));
            }
            value = (value << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.bad("an integer longer than 10 bytes"))
    }

    fn section_len(&mut self) -> Result<u64, VcdiffError> {
        let n = self.varint()?;
        if n > MAX_WINDOW {
            return Err(self.bad(format!("a section of {n} bytes (at most {MAX_WINDOW})")));
        }
        Ok(n)
    }
}

/// A window's sections and decoded target, reused from window to window.
#[derive(Default)]
struct Window {
    data: Vec<u8>,
    inst: Vec<u8>,
    addr: Vec<u8>,
    target: Vec<u8>,
}

impl Window {
    fn load<R: Read>(
        &mut self,
        input: &mut Input<R>,
        data: u64,
        inst: u64,
        addr: u64,
    ) -> Result<(), VcdiffError> {
        for (buf, len) in [
            (&mut self.data, data),
            (&mut self.inst, inst),
            (&mut self.addr, addr),
        ] {
            buf.resize(usize_of(len), 0);
            input.exact(buf)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyFrom {
    Nothing,
    Seed,
    Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Noop,
    Add,
    Run,
    Copy,
}

#[derive(Debug, Clone, Copy)]
struct Inst {
    kind: Kind,
    size: u8,
    mode: u8,
}

const NOOP: Inst = Inst {
    kind: Kind::Noop,
    size: 0,
    mode: 0,
};

/// RFC 3284 section 5.6: the default instruction code table.
fn default_code_table() -> [[Inst; 2]; 256] {
    let mut t = [[NOOP; 2]; 256];
    let inst = |kind, size, mode| Inst { kind, size, mode };
    t[0][0] = inst(Kind::Run, 0, 0);
    let mut i = 1;
    for size in 0..=17 {
        t[i][0] = inst(Kind::Add, size, 0);
        i += 1;
    }
    for mode in 0..9 {
        t[i][0] = inst(Kind::Copy, 0, mode);
        i += 1;
        for size in 4..=18 {
            t[i][0] = inst(Kind::Copy, size, mode);
            i += 1;
        }
    }
    for mode in 0..6 {
        for add in 1..=4 {
            for copy in 4..=6 {
                t[i] = [inst(Kind::Add, add, 0), inst(Kind::Copy, copy, mode)];
                i += 1;
            }
        }
    }
    for mode in 6..9 {
        for add in 1..=4 {
            t[i] = [inst(Kind::Add, add, 0), inst(Kind::Copy, 4, mode)];
            i += 1;
        }
    }
    for mode in 0..9 {
        t[i] = [inst(Kind::Copy, 4, mode), inst(Kind::Add, 1, 0)];
        i += 1;
    }
    debug_assert_eq!(i, 256);
    t
}

/// A failure inside a window, placed in the patch once the window is done.
enum WindowError {
    Format(String),
    Other(VcdiffError),
}

impl WindowError {
    fn at<R: Read>(self, window_start: u64, input: &Input<R>) -> VcdiffError {
        match self {
            WindowError::Format(reason) => VcdiffError::Format {
                offset: window_start,
                reason: format!("in the window ending at byte {}: {reason}", input.offset),
            },
            WindowError::Other(e) => e,
        }
    }
}

fn bad(reason: &str) -> WindowError {
    WindowError::Format(reason.to_owned())
}

/// A cursor over one of a window's sections.
struct Section<'a> {
    bytes: &'a [u8],
    at: usize,
    name: &'static str,
}

impl Section<'_> {
    fn byte(&mut self) -> Result<u8, WindowError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| WindowError::Format(format!("the {} section ends early", self.name)))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, WindowError> {
        let mut value = 0u64;
        for _ in 0..10 {
            let b = self.byte()?;
            if value > u64::MAX >> 7 {
                return Err(bad("an integer overflows 64 bits"));
            }
            value = (value << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("an integer longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&[u8], WindowError> {
        let n = usize::try_from(n).map_err(|_| bad("a size beyond memory"))?;
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| WindowError::Format(format!("the {} section ends early", self.name)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
}

/// RFC 3284 section 5.1: the address caches, reset at each window.
struct Cache {
    near: [u64; 4],
    next: usize,
    same: Vec<u64>,
}

impl Cache {
    fn new() -> Cache {
        Cache {
            near: [0; 4],
            next: 0,
            same: vec![0; 3 * 256],
        }
    }

    fn decode(&mut self, here: u64, mode: u8, addr: &mut Section<'_>) -> Result<u64, WindowError> {
        let mode = usize::from(mode);
        let value = match mode {
            0 => addr.varint()?,
            1 => here
                .checked_sub(addr.varint()?)
                .ok_or_else(|| bad("a VCD_HERE address before the window"))?,
            2..=5 => self.near[mode - 2]
                .checked_add(addr.varint()?)
                .ok_or_else(|| bad("a near address overflows"))?,
            6..=8 => self.same[(mode - 6) * 256 + usize::from(addr.byte()?)],
            _ => return Err(bad("an address mode beyond the default table")),
        };
        self.near[self.next] = value;
        self.next = (self.next + 1) % 4;
        let slot = usize::try_from(value % (3 * 256)).unwrap_or(0);
        self.same[slot] = value;
        Ok(value)
    }
}

/// What one window decodes against.
struct Decode<'a> {
    seed: &'a dyn ReadAt,
    target_file: &'a File,
    copy_from: CopyFrom,
    source_len: u64,
    source_pos: u64,
    target_len: u64,
}

impl Decode<'_> {
    fn run(&self, table: &[[Inst; 2]; 256], window: &mut Window) -> Result<(), WindowError> {
        let mut data = Section {
            bytes: &window.data,
            at: 0,
            name: "data",
        };
        let mut inst = Section {
            bytes: &window.inst,
            at: 0,
            name: "instructions",
        };
        let mut addr = Section {
            bytes: &window.addr,
            at: 0,
            name: "addresses",
        };
        let target = &mut window.target;
        let mut cache = Cache::new();
        while inst.at < inst.bytes.len() {
            let code = inst.byte()?;
            for one in table[usize::from(code)] {
                if one.kind == Kind::Noop {
                    continue;
                }
                let size = match one.size {
                    0 => inst.varint()?,
                    n => u64::from(n),
                };
                if target.len() as u64 + size > self.target_len {
                    return Err(bad("instructions make more than the window's target size"));
                }
                match one.kind {
                    Kind::Noop => {}
                    Kind::Add => target.extend_from_slice(data.take(size)?),
                    Kind::Run => {
                        let b = data.byte()?;
                        target.resize(target.len() + usize_of(size), b);
                    }
                    Kind::Copy => {
                        let here = self.source_len + target.len() as u64;
                        let at = cache.decode(here, one.mode, &mut addr)?;
                        if at >= here {
                            return Err(bad("a COPY from an address not decoded yet"));
                        }
                        self.copy(target, at, size)?;
                    }
                }
            }
        }
        if target.len() as u64 != self.target_len {
            return Err(bad("instructions make less than the window's target size"));
        }
        if data.at != data.bytes.len() || addr.at != addr.bytes.len() {
            return Err(bad("the data or address section has bytes left over"));
        }
        Ok(())
    }

    /// Appends `size` bytes from address `at` of the window's address space:
    /// the source segment, then the target decoded so far (possibly
    /// overlapping what is being appended: a repeating pattern).
    fn copy(&self, target: &mut Vec<u8>, mut at: u64, mut size: u64) -> Result<(), WindowError> {
        if at < self.source_len {
            let n = size.min(self.source_len - at);
            let from = self.source_pos + at;
            let start = target.len();
            target.resize(start + usize_of(n), 0);
            let (file, read_err): (&dyn ReadAt, fn(u64, std::io::Error) -> VcdiffError) = match self.copy_from
            {
                CopyFrom::Seed => (self.seed, |offset, source| VcdiffError::ReadSeed {
                    offset,
                    source,
                }),
                CopyFrom::Target => (self.target_file, |offset, source| VcdiffError::ReadTarget {
                    offset,
                    source,
                }),
                CopyFrom::Nothing => return Err(bad("a COPY from a source the window does not have")),
            };
            file.read_exact_at(&mut target[start..], from)
                .map_err(|e| WindowError::Other(read_err(from, e)))?;
            at += n;
            size -= n;
            if size == 0 {
                return Ok(());
            }
        }
        let from = usize_of(at - self.source_len);
        let n = usize_of(size);
        if from + n <= target.len() {
            target.extend_from_within(from..from + n);
        } else {
            // Overlapping: each byte may be one this copy just appended.
            for i in from..from + n {
                let b = target[i];
                target.push(b);
            }
        }
        Ok(())
    }
}

/// Adler-32 (RFC 1950), as xdelta3 computes it over each target window.
pub fn adler32(bytes: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes is the most that cannot overflow `b` before reducing.
    for block in bytes.chunks(5552) {
        for &x in block {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;
    use std::process::Command;

    use super::*;

    /// Deterministic bytes that compress like a filesystem image would not:
    /// xorshift noise, with text-like runs between.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(7) {
                out.extend_from_slice(b"libexample.so.1 /usr/lib/ ");
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// v2: v1 with a changed "library" in the middle, a shifted tail, a
    /// run of zeros (RUN) and a repeated block (an overlapping COPY).
    fn versions() -> (Vec<u8>, Vec<u8>) {
        let v1 = noise(3 << 20, 1);
        let mut v2 = v1[..1 << 20].to_vec();
        v2.extend_from_slice(&noise(200_000, 2));
        v2.extend_from_slice(&v1[(1 << 20) + 100_000..(2 << 20)]);
        v2.extend(std::iter::repeat_n(0u8, 70_000));
        v2.extend(b"abcabcabc".repeat(5000));
        v2.extend_from_slice(&v1[(2 << 20) + 12_345..]);
        (v1, v2)
    }

    fn xdelta3(args: &[&str], dir: &Path) {
        let status = Command::new("xdelta3")
            .args(args)
            .current_dir(dir)
            .status()
            .expect("run xdelta3 (Debian package xdelta3)");
        assert!(status.success(), "xdelta3 {args:?} failed");
    }

    /// Makes v1, v2 and `patch` = the xdelta3 patch from v1 to v2 with
    /// `extra` options; returns the directory.
    fn setup(extra: &[&str]) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (v1, v2) = versions();
        std::fs::write(dir.path().join("v1"), &v1).expect("write v1");
        std::fs::write(dir.path().join("v2"), &v2).expect("write v2");
        let mut args = vec!["-e", "-9", "-f", "-B", "4194304", "-W", "262144"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-s", "v1", "v2", "patch"]);
        xdelta3(&args, dir.path());
        (dir, v2)
    }

    fn decode(patch: &[u8], seed: &Path, limit: u64) -> (Result<Applied, VcdiffError>, Vec<u8>) {
        let seed = File::open(seed).expect("open seed");
        let out = tempfile::tempfile().expect("target");
        let mut seen = 0;
        let result = apply(patch, &seed, &out, limit, &mut |n| seen = n);
        if let Ok(a) = &result {
            assert_eq!(seen, a.written, "progress reports the last byte");
        }
        let mut bytes = Vec::new();
        let mut out = out;
        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(0)).expect("rewind");
        std::io::Read::read_to_end(&mut out, &mut bytes).expect("read target");
        (result, bytes)
    }

    #[test]
    fn decodes_xdelta3_patches_with_many_windows() {
        let (dir, v2) = setup(&["-S", "none"]);
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        assert!(patch.len() < v2.len() / 5, "a real delta: {} bytes", patch.len());
        let (result, out) = decode(&patch, &dir.path().join("v1"), 1 << 30);
        let applied = result.expect("apply the patch");
        assert_eq!(out, v2);
        assert_eq!(applied.written, v2.len() as u64);
        assert_eq!(applied.sha256, Digest::of(&v2));
        assert!(applied.windows > 4, "{} windows", applied.windows);
    }

    #[test]
    fn decodes_a_patch_without_a_source_and_without_checksums() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, v2) = versions();
        std::fs::write(dir.path().join("v2"), &v2).expect("write v2");
        xdelta3(&["-e", "-9", "-f", "-S", "none", "-n", "v2", "patch"], dir.path());
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        let (result, out) = decode(&patch, &dir.path().join("v2"), 1 << 30);
        result.expect("apply the patch");
        assert_eq!(out, v2);
    }

    #[test]
    fn a_wrong_seed_fails_its_window_checksum() {
        let (dir, _) = setup(&["-S", "none"]);
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        let mut seed = std::fs::read(dir.path().join("v1")).expect("read v1");
        for b in &mut seed[2_500_000..2_500_100] {
            *b ^= 0x5a;
        }
        std::fs::write(dir.path().join("other"), &seed).expect("write seed");
        let (result, _) = decode(&patch, &dir.path().join("other"), 1 << 30);
        let err = result.expect_err("a wrong seed is refused");
        assert!(matches!(err, VcdiffError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("seed is not the release"), "{err}");
    }

    #[test]
    fn a_corrupt_patch_is_refused_not_written_past() {
        let (dir, _) = setup(&["-S", "none"]);
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        // Every byte position of the first part, flipped in turn: never a
        // panic, never an `Ok` with other bytes.
        let (_, v2) = versions();
        for at in (5..patch.len()).step_by(patch.len() / 97) {
            let mut bad = patch.clone();
            bad[at] ^= 0x41;
            let (result, out) = decode(&bad, &dir.path().join("v1"), 8 << 20);
            if result.is_ok() {
                assert_eq!(out, v2, "a flip at {at} went unnoticed");
            }
        }
        let (result, _) = decode(&patch[..patch.len() / 2], &dir.path().join("v1"), 1 << 30);
        let err = result.expect_err("a truncated patch is refused");
        assert!(matches!(err, VcdiffError::Format { .. }), "{err}");
        let (result, _) = decode(b"PK\x03\x04", &dir.path().join("v1"), 1 << 30);
        assert!(result.expect_err("not VCDIFF").to_string().contains("magic"));
    }

    #[test]
    fn refuses_more_than_the_limit() {
        let (dir, _) = setup(&["-S", "none"]);
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        let (result, _) = decode(&patch, &dir.path().join("v1"), 1 << 20);
        assert!(matches!(result, Err(VcdiffError::TooLong { .. })));
    }

    #[test]
    fn refuses_secondary_compression_by_name() {
        let (dir, _) = setup(&["-S", "djw"]);
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        let (result, _) = decode(&patch, &dir.path().join("v1"), 1 << 30);
        let err = result.expect_err("secondary compression is refused");
        assert!(matches!(err, VcdiffError::Unsupported(_)), "{err}");
        assert!(err.to_string().contains("-S none"), "{err}");
    }

    #[test]
    fn decodes_a_brotli_compressed_patch_into_a_slot() {
        let (dir, v2) = setup(&["-S", "none"]);
        let patch = std::fs::read(dir.path().join("patch")).expect("read patch");
        let mut compressed = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut compressed, 1 << 16, 9, 22);
            w.write_all(&patch).expect("compress");
        }
        let patch_file = dir.path().join("patch.br");
        std::fs::write(&patch_file, &compressed).expect("write patch");
        let slot = dir.path().join("slot");
        std::fs::write(&slot, vec![0xffu8; v2.len() + 4096]).expect("make slot");
        let expected = crate::Expected {
            size: v2.len() as u64,
            sha256: Digest::of(&v2),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut last = 0;
        let report = runtime
            .block_on(crate::apply_patch(
                &patch_file,
                &dir.path().join("v1"),
                &slot,
                &expected,
                &mut |n| last = n,
            ))
            .expect("apply the patch");
        assert_eq!(report.written, v2.len() as u64);
        assert_eq!(last, v2.len() as u64);
        let written = std::fs::read(&slot).expect("read slot");
        assert_eq!(&written[..v2.len()], &v2[..]);

        // The same patch on another seed: refused, naming the patch.
        let other = dir.path().join("v2");
        let err = runtime
            .block_on(crate::apply_patch(
                &patch_file,
                &other,
                &slot,
                &expected,
                &mut |_| {},
            ))
            .expect_err("another seed is refused");
        assert!(err.to_string().contains("patch.br"), "{err}");
    }

    #[test]
    fn adler32_matches_the_reference() {
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        assert_eq!(adler32(b""), 1);
        let big = vec![0xffu8; 100_000];
        // zlib's adler32 of 100000 0xff bytes.
        let (mut a, mut b) = (1u64, 0u64);
        for &x in &big {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(u64::from(adler32(&big)), (b << 16) | a);
    }
}
