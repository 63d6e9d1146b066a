//! The GRUB environment block (`grubenv`), compatible with `grub-editenv`.
//!
//! Format: a file starting with `# GRUB Environment Block\n`, then
//! `name=value\n` lines, then `#` padding up to the block size (1024 bytes
//! as `grub-editenv create` makes it). In values, `\` and newline are written
//! as `\\` and `\` + newline. Lines starting with `#` are comments.
//!
//! Edits replay GRUB's own `grub_envblk_set`/`grub_envblk_delete` on the
//! block's bytes: a changed value is rewritten where it stands, a new one is
//! appended before the padding, a deleted line is closed up and the padding
//! grows. So a block edited here is byte-identical to one edited by
//! `grub-editenv` with the same commands, and its size never changes.
//! Two deliberate differences: a block whose lines run off its end is an
//! error (GRUB stops listing silently and we would otherwise rewrite a block
//! we only half read), and setting or deleting a name that occurs more than
//! once acts on every occurrence (GRUB acts on the first, while `load_env`
//! lets the last one win, so the edit would not take effect).
//!
//! # Why write a new file and rename it
//!
//! `grub-editenv set` truncates and rewrites the file in place. A power cut
//! in that window leaves an empty or torn block, and GRUB's `load_env` then
//! fails and the boot script falls back to its defaults, which may name the
//! slot we just marked bad. Here the new block is written to `<name>.new` in
//! the same directory, `fsync`ed, renamed over the old one, and the directory
//! is `fsync`ed: on ext4 the old or the new block survives a power cut,
//! never a mix; on FAT the rename is a directory-entry update in one sector,
//! the closest FAT gets to that. (`grub-editenv create` does the same.)
//!
//! The price is that the file gets new blocks on each write. GRUB's own
//! `save_env` (used by a boot script to count down a try counter) writes
//! in place through the file's block list and refuses a file that is
//! fragmented or not exactly as large as its block: so the size is kept
//! exact (the existing size is preserved, a new block is 1024 bytes), and
//! the block is written with one `write` of the whole buffer, which every
//! filesystem places in one cluster/block whenever the cluster size is at
//! least 1 KiB (FAT and ext4 boot partitions as mkfs makes them).
//! Not covered: FAT with 512-byte clusters, and ext4 `inline_data`, on which
//! `save_env` cannot work whichever tool wrote the file.
//!
//! After the rename the file is read back and compared byte for byte.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{BootEnv, Changes, Vars};

/// The header every environment block starts with.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";

/// Size of a block created by `grub-editenv create` (and by us).
pub const BLOCK_SIZE: usize = 1024;

/// Errors of the GRUB environment block, named after the operation that
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    /// The block file could not be read.
    #[error("cannot read GRUB environment block {}: {source}", path.display())]
    ReadBlock {
        /// The block file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a GRUB environment block.
    #[error("{} is not a GRUB environment block: {reason}", path.display())]
    InvalidBlock {
        /// The block file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A line runs past the end of the block.
    #[error(
        "GRUB environment block {} is corrupt at byte {offset}; recreate it with `grub-editenv create`",
        path.display()
    )]
    CorruptBlock {
        /// The block file.
        path: PathBuf,
        /// Byte offset of the broken line.
        offset: usize,
    },
    /// The variables do not fit in the block; nothing was written.
    #[error(
        "GRUB environment block {} ({size} bytes) has no room for {name:?}; nothing was written",
        path.display()
    )]
    BlockFull {
        /// The block file.
        path: PathBuf,
        /// The variable that did not fit.
        name: String,
        /// Size of the block.
        size: usize,
    },
    /// A variable name or value cannot be stored.
    #[error("cannot set GRUB variable {name:?}: {reason}")]
    InvalidVariable {
        /// The variable.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Writing the new block to its temporary file failed.
    #[error("cannot write {}: {source}", path.display())]
    WriteTemp {
        /// The temporary file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Renaming the new block over the old one failed.
    #[error("cannot rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The block file.
        to: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Syncing the directory after the rename failed.
    #[error("cannot sync directory {}: {source}", path.display())]
    SyncDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The block read back differs from the one written.
    #[error("GRUB environment block {} failed verification after writing", path.display())]
    VerifyBlock {
        /// The block file.
        path: PathBuf,
    },
}

/// A GRUB environment block file.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    path: PathBuf,
}

impl GrubEnv {
    /// The block at `path` (for instance `/boot/grub/grubenv`). The file need
    /// not exist: it reads as empty and the first write creates it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The block file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The block's bytes, `None` if the file does not exist.
    fn read(&self) -> Result<Option<Block>, GrubError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(GrubError::ReadBlock {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        Block::open(bytes)
            .map(Some)
            .map_err(|reason| GrubError::InvalidBlock {
                path: self.path.clone(),
                reason,
            })
    }

    fn corrupt(&self, broken: Broken) -> GrubError {
        GrubError::CorruptBlock {
            path: self.path.clone(),
            offset: broken.offset,
        }
    }

    fn vars(&self, block: &Block) -> Result<Vars, GrubError> {
        // Later duplicates win, as they do for GRUB's load_env.
        Ok(block
            .entries()
            .map_err(|b| self.corrupt(b))?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    fn write(&self, changes: &Changes) -> Result<(), GrubError> {
        for (name, value) in changes {
            validate(name, value.as_deref())?;
        }
        let existing = self.read()?;
        let existed = existing.is_some();
        let original = existing.unwrap_or_else(|| Block::blank(BLOCK_SIZE));
        let mut block = original.clone();
        // Refuse a block we cannot fully read before touching it.
        block.entries().map_err(|b| self.corrupt(b))?;
        for (name, value) in changes {
            let name_bytes = name.as_bytes();
            let occurrences = block
                .entries()
                .map_err(|b| self.corrupt(b))?
                .iter()
                .filter(|(k, _)| k == name_bytes)
                .count();
            if value.is_none() || occurrences > 1 {
                for _ in 0..occurrences {
                    block.delete(name_bytes).map_err(|b| self.corrupt(b))?;
                }
            }
            if let Some(value) = value {
                block
                    .set(name_bytes, value.as_bytes())
                    .map_err(|failure| match failure {
                        SetFailure::Broken(b) => self.corrupt(b),
                        SetFailure::NoSpace => GrubError::BlockFull {
                            path: self.path.clone(),
                            name: name.clone(),
                            size: block.0.len(),
                        },
                    })?;
            }
        }
        if existed && block == original {
            return Ok(());
        }
        self.replace(&block.0)?;
        let written = std::fs::read(&self.path).map_err(|source| GrubError::ReadBlock {
            path: self.path.clone(),
            source,
        })?;
        if written != block.0 {
            return Err(GrubError::VerifyBlock {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Replaces the file atomically (see the module docs for why).
    fn replace(&self, bytes: &[u8]) -> Result<(), GrubError> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".new");
        let tmp = dir.join(tmp_name);
        let write_err = |source| GrubError::WriteTemp {
            path: tmp.clone(),
            source,
        };
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(write_err)?;
            // Keep the mode of the file being replaced (grubenv is often
            // 0644 while a new file would follow the umask).
            if let Ok(meta) = std::fs::metadata(&self.path) {
                file.set_permissions(meta.permissions())
                    .map_err(write_err)?;
            }
            file.write_all(bytes).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
            std::fs::rename(&tmp, &self.path).map_err(|source| GrubError::Rename {
                from: tmp.clone(),
                to: self.path.clone(),
                source,
            })
        })();
        if result.is_err() {
            // Best effort: a leftover `.new` file is harmless to GRUB.
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| GrubError::SyncDir {
                path: dir.to_owned(),
                source,
            })
    }
}

impl BootEnv for GrubEnv {
    fn get_all(&self) -> Result<Vars, crate::Error> {
        match self.read()? {
            Some(block) => Ok(self.vars(&block)?),
            None => Ok(Vars::new()),
        }
    }

    fn set(&self, changes: &Changes) -> Result<(), crate::Error> {
        Ok(self.write(changes)?)
    }
}

/// What `grub-editenv set NAME=VALUE` and GRUB's parser can carry.
fn validate(name: &str, value: Option<&str>) -> Result<(), GrubError> {
    let invalid = |reason| GrubError::InvalidVariable {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.starts_with('#') {
        return Err(invalid(
            "a name starting with '#' would be read as a comment",
        ));
    }
    if name.contains(['=', '\n', '\0']) {
        return Err(invalid("the name contains '=', a newline or a NUL byte"));
    }
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(invalid("the value contains a NUL byte"));
    }
    Ok(())
}

/// One `name=value` of a block, raw bytes, value unescaped.
type Entry = (Vec<u8>, Vec<u8>);

/// A line runs past the end of the block.
#[derive(Debug, PartialEq, Eq)]
struct Broken {
    offset: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum SetFailure {
    Broken(Broken),
    NoSpace,
}

/// The bytes of an environment block and GRUB's operations on them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block(Vec<u8>);

impl Block {
    /// What `grub-editenv create` writes.
    fn blank(size: usize) -> Self {
        let mut bytes = vec![b'#'; size];
        bytes[..SIGNATURE.len()].copy_from_slice(SIGNATURE);
        Self(bytes)
    }

    /// Accepts what `grub_envblk_open` accepts: the signature and room for
    /// its terminating NUL.
    fn open(bytes: Vec<u8>) -> Result<Self, &'static str> {
        if bytes.len() <= SIGNATURE.len() {
            return Err("shorter than its header");
        }
        if !bytes.starts_with(SIGNATURE) {
            return Err("missing the `# GRUB Environment Block` header");
        }
        Ok(Self(bytes))
    }

    /// Start of the line after the one containing `pos`, honouring escapes.
    fn next_line(&self, mut pos: usize) -> usize {
        let buf = &self.0;
        while pos < buf.len() {
            match buf[pos] {
                b'\\' => pos += 2,
                b'\n' => break,
                _ => pos += 1,
            }
        }
        pos + 1
    }

    /// Length of the escaped value starting at `pos`, up to its newline;
    /// `None` if the newline is missing.
    fn value_len(&self, pos: usize) -> Option<usize> {
        let buf = &self.0;
        let mut len = 0;
        while pos + len < buf.len() && buf[pos + len] != b'\n' {
            len += if buf[pos + len] == b'\\' { 2 } else { 1 };
        }
        (pos + len < buf.len()).then_some(len)
    }

    /// Every `name=value` in block order, values unescaped
    /// (`grub_envblk_iterate`).
    fn entries(&self) -> Result<Vec<Entry>, Broken> {
        let buf = &self.0;
        let mut entries = Vec::new();
        let mut pos = SIGNATURE.len();
        while pos < buf.len() {
            if buf[pos] != b'#' {
                let start = pos;
                let Some(eq) = buf[pos..].iter().position(|&b| b == b'=') else {
                    return Err(Broken { offset: start });
                };
                let value_start = pos + eq + 1;
                let Some(len) = self.value_len(value_start) else {
                    return Err(Broken { offset: start });
                };
                let mut value = Vec::with_capacity(len);
                let mut escaped = false;
                for &b in &buf[value_start..value_start + len] {
                    if escaped || b != b'\\' {
                        value.push(b);
                        escaped = false;
                    } else {
                        escaped = true;
                    }
                }
                entries.push((buf[start..pos + eq].to_vec(), value));
                pos = value_start + len;
            }
            pos = self.next_line(pos);
        }
        Ok(entries)
    }

    /// Offset of the first line `name=...`, searching lines that start
    /// before `end`.
    fn find(&self, name: &[u8], end: usize) -> Option<usize> {
        let buf = &self.0;
        let mut pos = SIGNATURE.len();
        while pos + name.len() + 1 < end {
            if buf[pos..].starts_with(name) && buf[pos + name.len()] == b'=' {
                return Some(pos);
            }
            pos = self.next_line(pos);
        }
        None
    }

    /// Sets `name` like `grub_envblk_set`: in place if present, else
    /// appended before the padding.
    fn set(&mut self, name: &[u8], value: &[u8]) -> Result<(), SetFailure> {
        let end = self.0.len();
        let escaped: Vec<u8> = value
            .iter()
            .flat_map(|&b| {
                let escape = (b == b'\\' || b == b'\n').then_some(b'\\');
                escape.into_iter().chain([b])
            })
            .collect();
        let vl = escaped.len();
        // Free space is the `#` run at the end; a newline must precede it.
        let content_end = self.0.iter().rposition(|&b| b != b'#').unwrap_or(0);
        if self.0[content_end] != b'\n' {
            return Err(SetFailure::Broken(Broken {
                offset: content_end,
            }));
        }
        let space = content_end + 1;
        let free = end - space;
        let value_at = match self.find(name, space) {
            Some(line) => {
                let at = line + name.len() + 1;
                let len = self
                    .value_len(at)
                    .ok_or(SetFailure::Broken(Broken { offset: line }))?;
                if vl > len && vl - len > free {
                    return Err(SetFailure::NoSpace);
                }
                if vl < len {
                    self.0.copy_within(at + len..end, at + vl);
                    let shrink = len - vl;
                    self.0[space - shrink..space].fill(b'#');
                } else {
                    self.0.copy_within(at + len..end - (vl - len), at + vl);
                }
                at
            }
            None => {
                if free < name.len() + 1 + vl + 1 {
                    return Err(SetFailure::NoSpace);
                }
                self.0[space..space + name.len()].copy_from_slice(name);
                self.0[space + name.len()] = b'=';
                space + name.len() + 1
            }
        };
        self.0[value_at..value_at + vl].copy_from_slice(&escaped);
        self.0[value_at + vl] = b'\n';
        Ok(())
    }

    /// Deletes the first `name=...` line like `grub_envblk_delete`, growing
    /// the padding.
    fn delete(&mut self, name: &[u8]) -> Result<(), Broken> {
        let end = self.0.len();
        let Some(line) = self.find(name, end) else {
            return Ok(());
        };
        let len = self
            .value_len(line + name.len() + 1)
            .ok_or(Broken { offset: line })?;
        let len = name.len() + 1 + len + 1;
        self.0.copy_within(line + len..end, line);
        self.0[end - len..].fill(b'#');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_with(lines: &[u8], size: usize) -> Block {
        let mut block = Block::blank(size);
        block.0[SIGNATURE.len()..SIGNATURE.len() + lines.len()].copy_from_slice(lines);
        block
    }

    fn body(block: &Block) -> &[u8] {
        let buf = &block.0[SIGNATURE.len()..];
        let end = buf.iter().rposition(|&b| b != b'#').map_or(0, |p| p + 1);
        &buf[..end]
    }

    fn entries(block: &Block) -> Vec<(String, String)> {
        block
            .entries()
            .expect("valid")
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8(k).expect("utf8"),
                    String::from_utf8(v).expect("utf8"),
                )
            })
            .collect()
    }

    #[test]
    fn blank_block_is_header_and_padding() {
        let block = Block::blank(BLOCK_SIZE);
        assert_eq!(block.0.len(), 1024);
        assert!(block.0.starts_with(SIGNATURE));
        assert!(block.0[SIGNATURE.len()..].iter().all(|&b| b == b'#'));
        assert_eq!(block.entries(), Ok(vec![]));
    }

    #[test]
    fn values_are_escaped_like_grub_editenv() {
        let mut block = Block::blank(BLOCK_SIZE);
        block.set(b"a", b"x=y z").expect("set");
        block.set(b"b", b"line1\nline2\\end").expect("set");
        assert_eq!(body(&block), b"a=x=y z\nb=line1\\\nline2\\\\end\n");
        assert_eq!(
            entries(&block),
            [
                ("a".into(), "x=y z".into()),
                ("b".into(), "line1\nline2\\end".into())
            ]
        );
        assert_eq!(block.0.len(), BLOCK_SIZE);
    }

    #[test]
    fn set_rewrites_in_place_and_keeps_the_size() {
        let mut block = block_with(b"a=1\nb=22\nc=3\n", BLOCK_SIZE);
        block.set(b"b", b"longer").expect("grow");
        assert_eq!(body(&block), b"a=1\nb=longer\nc=3\n");
        block.set(b"b", b"").expect("shrink");
        assert_eq!(body(&block), b"a=1\nb=\nc=3\n");
        assert_eq!(block.0.len(), BLOCK_SIZE);
        assert_eq!(block.0[BLOCK_SIZE - 1], b'#');
    }

    #[test]
    fn delete_closes_the_gap_with_padding() {
        let mut block = block_with(b"a=1\nb=x\\\ny\nc=3\n", BLOCK_SIZE);
        block.delete(b"b").expect("delete");
        assert_eq!(body(&block), b"a=1\nc=3\n");
        block.delete(b"missing").expect("no-op");
        assert_eq!(body(&block), b"a=1\nc=3\n");
    }

    #[test]
    fn names_match_whole_names_only_and_comments_are_skipped() {
        let mut block = block_with(b"# note=x\nab=1\na=2\n", BLOCK_SIZE);
        block.set(b"a", b"9").expect("set");
        assert_eq!(body(&block), b"# note=x\nab=1\na=9\n");
        assert_eq!(
            entries(&block),
            [("ab".into(), "1".into()), ("a".into(), "9".into())]
        );
    }

    #[test]
    fn a_full_block_refuses_more() {
        let size = SIGNATURE.len() + 8;
        let mut block = Block::blank(size);
        block.set(b"a", b"123").expect("fits: a=123\\n is 6 bytes");
        assert_eq!(block.set(b"b", b"1"), Err(SetFailure::NoSpace));
        block.set(b"a", b"12345").expect("exactly fills the block");
        assert_eq!(block.set(b"a", b"123456"), Err(SetFailure::NoSpace));
        assert_eq!(entries(&block), [("a".into(), "12345".into())]);
    }

    #[test]
    fn broken_blocks_are_detected() {
        assert!(Block::open(b"# GRUB Environment Block\n".to_vec()).is_err());
        assert!(Block::open(b"# grub environment block\n###".to_vec()).is_err());
        let unterminated =
            Block::open(b"# GRUB Environment Block\nfoo=bar".to_vec()).expect("header is fine");
        assert_eq!(
            unterminated.entries(),
            Err(Broken {
                offset: SIGNATURE.len()
            })
        );
        let no_equals =
            Block::open(b"# GRUB Environment Block\nfoo\n".to_vec()).expect("header is fine");
        assert!(no_equals.entries().is_err());
    }

    fn changes(pairs: &[(&str, Option<&str>)]) -> Changes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn missing_file_reads_empty_and_is_created_on_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = GrubEnv::new(dir.path().join("grubenv"));
        assert_eq!(env.get_all().expect("empty"), Vars::new());
        env.set(&changes(&[("BOOT_ORDER", Some("A B"))]))
            .expect("create");
        let bytes = std::fs::read(env.path()).expect("read");
        assert_eq!(bytes.len(), BLOCK_SIZE);
        assert_eq!(env.get("BOOT_ORDER").expect("read"), Some("A B".into()));
        assert!(!dir.path().join("grubenv.new").exists());
    }

    #[test]
    fn existing_size_is_preserved_and_duplicates_are_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grubenv");
        std::fs::write(&path, block_with(b"x=1\ny=2\nx=3\n", 2048).0).expect("write");
        let env = GrubEnv::new(&path);
        assert_eq!(env.get("x").expect("read"), Some("3".into()));
        env.set(&changes(&[("x", Some("4"))])).expect("write");
        let block = Block::open(std::fs::read(&path).expect("read")).expect("valid");
        assert_eq!(block.0.len(), 2048);
        assert_eq!(body(&block), b"y=2\nx=4\n");
        env.set(&changes(&[("x", None)])).expect("delete");
        assert_eq!(env.get_all().expect("read").len(), 1);
    }

    #[test]
    fn non_blocks_and_oversize_values_are_refused_without_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("grubenv");
        std::fs::write(&path, b"not an env block").expect("write");
        let env = GrubEnv::new(&path);
        assert!(env.get_all().is_err());
        assert!(env.set(&changes(&[("a", Some("1"))])).is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"not an env block");

        std::fs::write(&path, Block::blank(BLOCK_SIZE).0).expect("write");
        let before = std::fs::read(&path).expect("read");
        let big = "v".repeat(BLOCK_SIZE);
        let err = env
            .set(&changes(&[("a", Some("1")), ("big", Some(&big))]))
            .expect_err("too big");
        let message = err.to_string();
        assert!(message.contains("no room for \"big\""), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert_eq!(std::fs::read(&path).expect("read"), before);
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = GrubEnv::new(dir.path().join("grubenv"));
        for name in ["", "#a", "a=b", "a\nb", "a\0"] {
            assert!(env.set(&changes(&[(name, Some("1"))])).is_err(), "{name:?}");
        }
        assert!(!env.path().exists());
    }
}
