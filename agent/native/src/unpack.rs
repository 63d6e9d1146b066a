//! Unpacking one layer archive into its own directory, in the form
//! overlayfs reads as a lower layer:
//!
//! - `.wh.<name>` (the file `<name>` of a lower layer is deleted) becomes a
//!   character device 0:0 named `<name>`: overlayfs's whiteout;
//! - `.wh..wh..opq` (the directory hides everything lower layers have in
//!   it) becomes the xattr `trusted.overlay.opaque=y` on the directory.
//!
//! So a layer directory depends only on its own archive and is shared by
//! every image that has the layer, whatever is below it.
//!
//! The archive may be gzip-compressed or plain (sniffed, not trusted from
//! the media type); the uncompressed stream is hashed and must equal the
//! diff ID the image config lists. Entries that would land outside the
//! directory (`..`, absolute paths, through symlinks) are refused by the
//! `tar` crate's `unpack_in`. Needs root (owners, device nodes, trusted
//! xattrs), as the agent runs.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, Hasher, HashingReader};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks `archive` into `dest` (an empty directory); the error text says
/// what went wrong with which entry.
pub fn unpack(archive: &Path, dest: &Path, diff_id: &Digest) -> Result<(), String> {
    let file = File::open(archive).map_err(|e| format!("opening {}: {e}", archive.display()))?;
    let mut file = BufReader::with_capacity(64 << 10, file);
    let mut magic = [0u8; 4];
    let n = read_full(&mut file, &mut magic).map_err(|e| format!("reading {}: {e}", archive.display()))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let raw = head.chain(file);
    let decoder: Box<dyn Read> = match magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err(
                "zstd-compressed layers are not supported: push the image with gzip layers".to_owned(),
            );
        }
        _ => Box::new(raw),
    };
    let mut reader = HashingReader {
        inner: decoder,
        hasher: Hasher::new(),
        bytes: 0,
    };
    {
        let mut tar = tar::Archive::new(&mut reader);
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(true);
        tar.set_preserve_mtime(true);
        tar.set_unpack_xattrs(true);
        tar.set_overwrite(true);
        for entry in tar.entries().map_err(|e| format!("reading the archive: {e}"))? {
            let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
            let path = entry
                .path()
                .map_err(|e| format!("entry with a bad path: {e}"))?
                .into_owned();
            let rel =
                relative(&path).ok_or_else(|| format!("entry `{}` leaves the layer", path.display()))?;
            let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                // The root directory itself.
                continue;
            };
            let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
            if name == OPAQUE {
                ensure_dir(dest, &parent)?;
                rustix::fs::setxattr(&parent, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
                    .map_err(|e| format!("marking {} opaque: {e}", parent.display()))?;
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                    return Err(format!("entry `{}` is a whiteout of nothing", path.display()));
                }
                ensure_dir(dest, &parent)?;
                let target = parent.join(hidden);
                if let Ok(meta) = std::fs::symlink_metadata(&target) {
                    let removed = if meta.is_dir() {
                        std::fs::remove_dir_all(&target)
                    } else {
                        std::fs::remove_file(&target)
                    };
                    removed.map_err(|e| format!("replacing {} by a whiteout: {e}", target.display()))?;
                }
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| format!("writing the whiteout {}: {e}", target.display()))?;
            } else {
                // A directory may replace a file of the same layer and vice versa.
                let target = dest.join(&rel);
                if let Ok(meta) = std::fs::symlink_metadata(&target) {
                    let is_dir_entry = entry.header().entry_type().is_dir();
                    if meta.is_dir() != is_dir_entry || (!meta.is_dir() && !meta.is_file()) {
                        let removed = if meta.is_dir() {
                            std::fs::remove_dir_all(&target)
                        } else {
                            std::fs::remove_file(&target)
                        };
                        removed.map_err(|e| format!("replacing {}: {e}", target.display()))?;
                    }
                }
                let unpacked = entry
                    .unpack_in(dest)
                    .map_err(|e| format!("unpacking `{}`: {e}", path.display()))?;
                if !unpacked {
                    return Err(format!("entry `{}` leaves the layer", path.display()));
                }
            }
        }
    }
    // Trailing zero blocks after the end-of-archive marker are part of the
    // stream the diff ID covers.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| format!("reading the archive: {e}"))?;
    let actual = reader.hasher.finish();
    if &actual != diff_id {
        return Err(format!(
            "the uncompressed layer is {actual}, the image config says {diff_id}: the image is corrupt, push it again"
        ));
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The entry's path relative to the layer root, or `None` when it would leave it.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates `dir` (inside `root`) when missing, refusing symlinked parents
/// that would point outside.
fn ensure_dir(root: &Path, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let real = dir
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", dir.display()))?;
    let root = root
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", root.display()))?;
    if !real.starts_with(&root) {
        return Err(format!("{} leaves the layer through a symlink", dir.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside_the_layer() {
        assert_eq!(
            relative(Path::new("./etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(
            relative(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(relative(Path::new("etc/../../x")), None);
    }
}
