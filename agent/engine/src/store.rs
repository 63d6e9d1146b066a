//! Engine-store recovery: the last resort when the engine no longer starts
//! because its store (Docker's data-root) is corrupted — a known outcome of
//! a power cut on SD cards. With the engine stopped, the store is moved
//! aside to `<data_root>.broken`, the named volumes (the apps' data) are
//! moved back into an empty data-root, and the engine starts empty; the
//! apps applier then pulls and re-creates the release. Behind the
//! `engine.recover_store` switch, because it re-downloads every image.
//!
//! Docker bind-mounts parts of its data-root onto themselves and can leave
//! overlay mounts behind; everything mounted under the data-root is
//! detached first (lazily: a process still using one keeps it), else the
//! rename fails with EBUSY. A data-root that is a filesystem of its own
//! cannot be renamed: that is refused with what to do.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

/// Volume-store entries that are the engine's metadata, not volumes: the
/// local driver finds volumes from their directories alone.
const NOT_VOLUMES: &[&str] = &["metadata.db", "backingFsBlockDev"];

/// What a recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Where the broken store went (removed later by [`remove_broken`]).
    pub broken: PathBuf,
    /// Named volumes carried over, by name.
    pub volumes: Vec<String>,
}

/// `<data_root>.broken`.
pub fn broken_path(data_root: &Path) -> PathBuf {
    let mut name = data_root.file_name().unwrap_or_default().to_os_string();
    name.push(".broken");
    data_root.with_file_name(name)
}

/// Moves the store at `data_root` aside, keeping its named volumes. The
/// engine must be stopped. On error nothing was moved, or — if moving a
/// volume back failed — the volume is still in the broken store, which the
/// message names.
pub fn move_aside(data_root: &Path) -> Result<Recovered, String> {
    let shown = data_root.display();
    let meta = std::fs::symlink_metadata(data_root)
        .map_err(|e| format!("engine store {shown} (engine.data_root): {e}"))?;
    if !meta.is_dir() {
        return Err(format!(
            "engine store {shown} (engine.data_root) is not a directory"
        ));
    }
    detach_mounts(data_root)?;
    let parent = data_root.parent().unwrap_or(Path::new("/"));
    let parent_dev = std::fs::metadata(parent).map(|m| m.dev()).unwrap_or_default();
    if std::fs::metadata(data_root).map(|m| m.dev()).unwrap_or_default() != parent_dev {
        return Err(format!(
            "engine store {shown} is a filesystem of its own and cannot be moved aside; point \
             engine.data_root (and the engine's data-root) at a directory inside the data partition"
        ));
    }
    let broken = broken_path(data_root);
    if broken.exists() {
        remove_broken(&broken)?;
    }
    std::fs::rename(data_root, &broken).map_err(|e| {
        format!(
            "cannot move the engine store {shown} to {}: {e}",
            broken.display()
        )
    })?;
    let volumes_dir = data_root.join("volumes");
    std::fs::create_dir_all(&volumes_dir)
        .map_err(|e| format!("cannot create {}: {e}", volumes_dir.display()))?;
    let mut volumes = Vec::new();
    if let Ok(entries) = std::fs::read_dir(broken.join("volumes")) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if NOT_VOLUMES.contains(&name.as_str()) || !entry.path().is_dir() {
                continue;
            }
            std::fs::rename(entry.path(), volumes_dir.join(&name)).map_err(|e| {
                format!(
                    "cannot move volume {name} back from {}: {e}; it is still there",
                    entry.path().display()
                )
            })?;
            volumes.push(name);
        }
    }
    volumes.sort();
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", parent.display()))?;
    Ok(Recovered { broken, volumes })
}

/// Deletes a store moved aside by [`move_aside`].
pub fn remove_broken(broken: &Path) -> Result<(), String> {
    detach_mounts(broken)?;
    std::fs::remove_dir_all(broken).map_err(|e| format!("cannot remove {}: {e}", broken.display()))
}

/// Lazily detaches every mount at or under `dir`, deepest first.
fn detach_mounts(dir: &Path) -> Result<(), String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        // EINVAL: already gone (a parent's detach took it along).
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(format!("cannot detach {}: {e}", point.display())),
        }
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
        out,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_the_store_aside_and_keeps_the_volumes() {
        let dir = std::env::temp_dir().join(format!("store-{}", std::process::id()));
        let root = dir.join("docker");
        for d in [
            "image/overlay2",
            "volumes/data/_data",
            "volumes/cache/_data",
            "containers/abc",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("test fixture");
        }
        std::fs::write(root.join("image/overlay2/repositories.json"), "garbage{").expect("test fixture");
        std::fs::write(root.join("volumes/metadata.db"), "db").expect("test fixture");
        std::fs::write(root.join("volumes/data/_data/file"), "kept").expect("test fixture");

        let recovered = move_aside(&root).expect("test fixture");
        assert_eq!(recovered.broken, dir.join("docker.broken"));
        assert_eq!(recovered.volumes, ["cache", "data"]);
        assert_eq!(
            std::fs::read_to_string(root.join("volumes/data/_data/file")).expect("test fixture"),
            "kept"
        );
        assert!(!root.join("image").exists() && !root.join("volumes/metadata.db").exists());
        assert!(recovered.broken.join("image/overlay2/repositories.json").exists());

        // A second recovery replaces the first broken store.
        std::fs::create_dir_all(root.join("image")).expect("test fixture");
        let again = move_aside(&root).expect("test fixture");
        assert!(again.broken.join("image").exists() && !again.broken.join("containers").exists());
        remove_broken(&again.broken).expect("test fixture");
        assert!(!again.broken.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_store_is_refused_by_name() {
        let e = move_aside(Path::new("/nonexistent/docker")).expect_err("must be refused");
        assert!(
            e.contains("/nonexistent/docker") && e.contains("engine.data_root"),
            "{e}"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/data/a\\040b"), PathBuf::from("/data/a b"));
    }
}
