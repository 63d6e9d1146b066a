//! A slot read as it is on the medium, past the page cache.
//!
//! The running root is mounted, and the kernel may change its blocks in
//! memory without ever writing them: jbd2 rewrites the ext4 journal's
//! superblock when it loads the journal of a read-only root, so reading
//! the slot through the page cache gives bytes the release image never
//! had. A binary patch made from that image must read what is on the
//! medium: `O_DIRECT`, in aligned 1 MiB blocks (the patch's copies mostly
//! run forward through the source), a few kept for copies that jump back.
//! Where `O_DIRECT` is refused (a file system without it), the file is
//! read through the page cache.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;

impl std::fmt::Debug for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Medium")
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

/// Reads of exact byte ranges at an offset.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

const BLOCK: usize = 1 << 20;
const ALIGN: usize = 4096;
const KEPT: usize = 4;

struct Block {
    /// Offset of the block on the medium; `u64::MAX`: empty.
    at: u64,
    /// Valid bytes (less than `BLOCK` at the end of the medium).
    len: usize,
    mem: Vec<u8>,
    start: usize,
    used: u64,
}

impl Block {
    fn new() -> Block {
        let mem = vec![0u8; BLOCK + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Block {
            at: u64::MAX,
            len: 0,
            mem,
            start,
            used: 0,
        }
    }
}

/// A slot or image file read past the page cache where the kernel allows.
pub struct Medium {
    file: File,
    direct: bool,
    blocks: RefCell<(Vec<Block>, u64)>,
}

impl Medium {
    pub fn open(path: &Path) -> std::io::Result<Medium> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        match options.clone().custom_flags(nix::libc::O_DIRECT).open(path) {
            Ok(file) => Ok(Medium {
                file,
                direct: true,
                blocks: RefCell::new((Vec::new(), 0)),
            }),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Ok(Medium {
                file: options.open(path)?,
                direct: false,
                blocks: RefCell::new((Vec::new(), 0)),
            }),
            Err(e) => Err(e),
        }
    }

    /// Whether reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    fn fill(&self, block: &mut Block, at: u64) -> std::io::Result<()> {
        let buf = &mut block.mem[block.start..block.start + BLOCK];
        let mut len = 0;
        while len < BLOCK {
            match self.file.read_at(&mut buf[len..], at + len as u64) {
                Ok(0) => break,
                // O_DIRECT reads come in whole sectors; a short one is the end.
                Ok(n) => {
                    len += n;
                    if len % ALIGN != 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        block.at = at;
        block.len = len;
        Ok(())
    }
}

impl ReadAt for Medium {
    fn read_exact_at(&self, buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        if !self.direct {
            return ReadAt::read_exact_at(&self.file, buf, offset);
        }
        let mut cache = self.blocks.borrow_mut();
        let (blocks, clock) = &mut *cache;
        let mut done = 0;
        while done < buf.len() {
            let at = offset / BLOCK as u64 * BLOCK as u64;
            *clock += 1;
            let index = match blocks.iter().position(|b| b.at == at) {
                Some(i) => i,
                None => {
                    let i = if blocks.len() < KEPT {
                        blocks.push(Block::new());
                        blocks.len() - 1
                    } else {
                        // The least recently used.
                        (0..blocks.len()).min_by_key(|&i| blocks[i].used).unwrap_or(0)
                    };
                    if let Err(e) = self.fill(&mut blocks[i], at) {
                        blocks[i].at = u64::MAX;
                        return Err(e);
                    }
                    i
                }
            };
            let block = &mut blocks[index];
            block.used = *clock;
            let inside = usize::try_from(offset - at).unwrap_or(usize::MAX);
            if inside >= block.len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let n = (block.len - inside).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&block.mem[block.start + inside..block.start + inside + n]);
            done += n;
            offset += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_file_holds_at_any_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("slot");
        // Not a whole number of blocks or sectors.
        let data: Vec<u8> = (0..(3 * BLOCK + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let medium = Medium::open(&path).expect("open");
        let cases: &[(u64, usize)] = &[
            (0, 10),
            (BLOCK as u64 - 3, 10),
            (5, 2 * BLOCK + 100),
            (2 * BLOCK as u64 + 1, 10),
            (17, 3),
            (3 * BLOCK as u64, 12345),
            (BLOCK as u64 * 3 + 12340, 5),
        ];
        for &(at, len) in cases {
            let mut buf = vec![0u8; len];
            medium.read_exact_at(&mut buf, at).expect("read");
            let at = usize::try_from(at).expect("offset");
            assert_eq!(buf, data[at..at + len], "at {at}, {len} bytes");
        }
        let mut past = [0u8; 10];
        assert!(
            medium
                .read_exact_at(&mut past, (3 * BLOCK + 12340) as u64)
                .is_err()
        );
    }
}
