//! Importing the boot partition's provisioning file into the state
//! directory on `/data`.
//!
//! Once per boot, before anything is applied:
//! 1. The file's SHA-256 is compared with the one recorded at the last
//!    import: the same file is never imported twice, an edited one is.
//! 2. The whole file is parsed and checked before anything is written; a
//!    file that is not valid (cut short by a power cut, NUL-filled by a card
//!    pulled out while saving, a typo) is reported with its line and key,
//!    and the configuration imported before stays in force.
//! 3. Secrets the file no longer holds (scrubbed at an earlier import) are
//!    taken from the stored configuration, network by network (by SSID).
//! 4. The result is written to `config.json` (mode 0600, directory 0700)
//!    atomically: temp file, fsync, rename, fsync the directory.
//! 5. Only then are the secrets removed from the boot partition's file,
//!    which is replaced the same atomic way, and the hash of what is now
//!    on the boot partition is recorded.
//!
//! A power cut between any two steps leaves a state the next boot finishes:
//! the stored configuration is always a complete one, and a file whose hash
//! is not recorded is simply imported (again).
//!
//! Limit: a file cut exactly at a line boundary is valid TOML and cannot be
//! told from a shorter file; NUL-filled or mid-line cuts are refused.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Located, Provision, ProvisionError, scrub};

/// The stored configuration (with secrets).
pub const STORED: &str = "config.json";
/// What was imported, from where, when.
pub const RECORD: &str = "record.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The boot partition file, as the device sees it.
    pub source: PathBuf,
    /// SHA-256 (hex) of the file as it was imported.
    pub imported_sha256: String,
    /// SHA-256 (hex) of the file as it is now on the boot partition (after
    /// secrets were removed); the next boot compares against this.
    pub sha256: String,
    /// Seconds since the epoch.
    pub imported_at: u64,
    /// Secrets removed from the boot partition's file.
    pub scrubbed: u32,
}

/// What this boot's import did.
#[derive(Debug)]
pub enum Outcome {
    /// A new or edited file was imported.
    Imported {
        /// Why secrets are still on the boot partition, when they are.
        scrub_error: Option<String>,
    },
    /// The file is the one imported before.
    Unchanged,
    /// There is no provisioning file.
    NoFile,
    /// The file could not be imported; the previous configuration (if any)
    /// stays in force.
    Failed(ProvisionError),
}

#[derive(Debug)]
pub struct Report {
    /// The configuration in force after this boot's import.
    pub in_force: Option<Provision>,
    pub record: Option<Record>,
    pub outcome: Outcome,
}

impl Report {
    /// One line for `containeros status` and the log.
    pub fn summary(&self) -> String {
        let record = self.record.as_ref().map(|r| {
            format!(
                "{} (sha256 {}) of {}",
                r.source.display(),
                &r.imported_sha256[..r.imported_sha256.len().min(12)],
                crate::rfc3339(r.imported_at)
            )
        });
        match (&self.outcome, record) {
            (Outcome::Imported { scrub_error: None }, Some(r)) => format!("imported {r}"),
            (Outcome::Imported { scrub_error: Some(e) }, Some(r)) => format!("imported {r}; {e}"),
            (Outcome::Unchanged, Some(r)) | (Outcome::NoFile, Some(r)) => format!("in force: {r}"),
            (Outcome::NoFile, None) => "not provisioned (no provisioning file)".to_owned(),
            (Outcome::Failed(e), Some(r)) => format!("not imported: {e}; still in force: {r}"),
            (Outcome::Failed(e), None) => format!("not imported: {e}"),
            (_, None) => "not provisioned".to_owned(),
        }
    }
}

/// Imports `boot_file` into `store_dir` (see the module docs). Never fails:
/// problems are in the report, with the previous configuration in force.
pub fn import(boot_file: &Path, store_dir: &Path, now: SystemTime) -> Report {
    let previous = read_stored(store_dir);
    let record = read_record(store_dir);
    let (in_force, stored_error) = match previous {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let fail = |error: ProvisionError, in_force: Option<Provision>, record: Option<Record>| Report {
        in_force,
        record,
        outcome: Outcome::Failed(error),
    };
    if let Some(e) = stored_error {
        // The stored file is written atomically and cannot be half there;
        // unreadable means the data partition has a problem of its own.
        tracing::error!("{e}");
    }

    let bytes = match std::fs::read(boot_file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Report {
                in_force,
                record,
                outcome: Outcome::NoFile,
            };
        }
        Err(source) => {
            return fail(
                ProvisionError::Read {
                    path: boot_file.to_owned(),
                    source,
                },
                in_force,
                record,
            );
        }
    };
    let hash = sha256_hex(&bytes);
    if record.as_ref().is_some_and(|r| r.sha256 == hash) && in_force.is_some() {
        return Report {
            in_force,
            record,
            outcome: Outcome::Unchanged,
        };
    }
    let invalid = |located: Located| ProvisionError::Invalid {
        path: boot_file.to_owned(),
        located: Box::new(located),
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.utf8_error().valid_up_to();
            let head = String::from_utf8_lossy(&e.as_bytes()[..offset]).into_owned();
            let (line, column) = crate::locate::line_column(&head, head.len());
            let error = invalid(Located {
                position: Some((line, column)),
                key: None,
                message: "the file is not UTF-8 text (or was not completely written)".into(),
                hint: "save it as UTF-8 text and write it again".into(),
            });
            return fail(error, in_force, record);
        }
    };
    let mut provision = match crate::parse(&text) {
        Ok(p) => p,
        Err(located) => return fail(invalid(located), in_force, record),
    };
    // Secrets scrubbed at an earlier import come from the stored copy.
    for (i, wifi) in provision.wifi.iter_mut().enumerate() {
        if !Provision::needs_stored_secret(wifi) {
            continue;
        }
        let stored = in_force
            .as_ref()
            .and_then(|p| p.wifi.iter().find(|w| w.ssid == wifi.ssid && w.eap == wifi.eap));
        let (key, found) = match wifi.eap {
            Some(_) => (
                "password",
                stored
                    .and_then(|w| w.password.clone())
                    .map(|s| wifi.password = Some(s)),
            ),
            None => (
                "psk",
                stored.and_then(|w| w.psk.clone()).map(|s| wifi.psk = Some(s)),
            ),
        };
        if found.is_none() {
            let at = format!("wifi[{i}]");
            let error = invalid(Located {
                position: crate::locate::key_position(&text, &format!("{at}.ssid")),
                key: Some(at),
                message: format!(
                    "network \"{}\" has no {key}, and none is stored on the device",
                    wifi.ssid.as_str()
                ),
                hint: format!("add {key} = \"...\", or open = true for an open network"),
            });
            return fail(error, in_force, record);
        }
    }

    let stored_path = store_dir.join(STORED);
    let json = match serde_json::to_vec_pretty(&provision) {
        Ok(j) => j,
        Err(e) => {
            return fail(
                ProvisionError::Store {
                    path: stored_path,
                    source: std::io::Error::other(e),
                },
                in_force,
                record,
            );
        }
    };
    if let Err(source) = store_private(store_dir, STORED, &json) {
        return fail(
            ProvisionError::Store {
                path: stored_path,
                source,
            },
            in_force,
            record,
        );
    }

    // The secrets are on /data now: take them off the boot partition.
    let (final_hash, scrubbed, scrub_error) = match scrub::scrub(&text) {
        None => (hash.clone(), 0, None),
        Some(clean) => {
            let secrets = u32::try_from(
                provision
                    .wifi
                    .iter()
                    .filter(|w| w.psk.is_some() || w.password.is_some())
                    .count(),
            )
            .unwrap_or(u32::MAX);
            match crate::parse(&clean) {
                Err(_) => (
                    hash.clone(),
                    0,
                    Some(format!(
                        "secrets left in {}: the file without them would not be valid; remove them by hand",
                        boot_file.display()
                    )),
                ),
                Ok(_) => match replace_file(boot_file, clean.as_bytes()) {
                    Ok(()) => (sha256_hex(clean.as_bytes()), secrets, None),
                    Err(e) => (
                        hash.clone(),
                        0,
                        Some(format!(
                            "cannot remove the secrets from {} ({e}): is the boot partition mounted read-only?",
                            boot_file.display()
                        )),
                    ),
                },
            }
        }
    };
    let new_record = Record {
        source: boot_file.to_owned(),
        imported_sha256: hash,
        sha256: final_hash,
        imported_at: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        scrubbed,
    };
    let record_json = serde_json::to_vec_pretty(&new_record).unwrap_or_default();
    if let Err(source) = store_private(store_dir, RECORD, &record_json) {
        // The configuration is stored; without the record the same file is
        // imported again next boot, which is harmless.
        tracing::warn!(
            "cannot record the import in {}: {source}",
            store_dir.join(RECORD).display()
        );
    }
    Report {
        in_force: Some(provision),
        record: Some(new_record),
        outcome: Outcome::Imported { scrub_error },
    }
}

/// The configuration stored by the last import, if any.
pub fn read_stored(store_dir: &Path) -> Result<Option<Provision>, ProvisionError> {
    let path = store_dir.join(STORED);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProvisionError::Store {
                path,
                source: std::io::Error::other(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProvisionError::Store { path, source }),
    }
}

pub fn read_record(store_dir: &Path) -> Option<Record> {
    let bytes = std::fs::read(store_dir.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `dir/name` readable by root only, atomically; `dir` is created
/// (mode 0700) if needed.
pub(crate) fn store_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    write_atomic(&dir.join(name), bytes, 0o600)
}

/// Temp file beside the target, fsync, rename over, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given at creation is masked by the umask; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces a file on the FAT boot partition: the same steps, without
/// modes (FAT has none). vfat renames over an existing file in one step.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join("config.new");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    const FILE: &str =
        "[device]\nhostname = \"kiosk\"\n\n[[wifi]]\nssid = \"Shop\"\npsk = \"correct horse\"\n";

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot = dir.path().join("boot/containeros/config.toml");
        std::fs::create_dir_all(boot.parent().expect("parent")).expect("mkdir");
        let store = dir.path().join("data/provision");
        (dir, boot, store)
    }

    #[test]
    fn imports_once_scrubs_and_keeps_secrets_private() {
        let (_dir, boot, store) = setup();
        std::fs::write(&boot, FILE).expect("write");
        let report = import(&boot, &store, SystemTime::now());
        assert!(
            matches!(report.outcome, Outcome::Imported { scrub_error: None }),
            "{report:?}"
        );
        let on_boot = std::fs::read_to_string(&boot).expect("read");
        assert!(!on_boot.contains("correct horse"), "{on_boot}");
        let stored = std::fs::read_to_string(store.join(STORED)).expect("stored");
        assert!(stored.contains("correct horse"));
        assert_eq!(
            std::fs::metadata(store.join(STORED)).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::metadata(&store).expect("meta").mode() & 0o777, 0o700);
        let record = report.record.expect("record");
        assert_eq!(record.scrubbed, 1);
        assert_eq!(record.sha256, sha256_hex(on_boot.as_bytes()));

        let again = import(&boot, &store, SystemTime::now());
        assert!(matches!(again.outcome, Outcome::Unchanged), "{again:?}");
        assert_eq!(again.in_force, report.in_force);
    }

    #[test]
    fn an_edit_keeps_the_stored_secret_and_a_bad_edit_changes_nothing() {
        let (_dir, boot, store) = setup();
        std::fs::write(&boot, FILE).expect("write");
        let first = import(&boot, &store, SystemTime::now());
        let scrubbed = std::fs::read_to_string(&boot).expect("read");

        std::fs::write(&boot, scrubbed.replace("kiosk", "kiosk-2")).expect("write");
        let edited = import(&boot, &store, SystemTime::now());
        assert!(matches!(edited.outcome, Outcome::Imported { .. }), "{edited:?}");
        let p = edited.in_force.expect("in force");
        assert_eq!(p.device.hostname.as_ref().map(|h| h.as_str()), Some("kiosk-2"));
        assert_eq!(p.wifi[0].psk.as_ref().map(|k| k.as_str()), Some("correct horse"));

        let before = std::fs::read(store.join(STORED)).expect("stored");
        std::fs::write(
            &boot,
            "[device]\nhostname = \"kiosk-3\"\n[[wifi]]\nssid = \"Shop\"\npsk = \"x",
        )
        .expect("write");
        let bad = import(&boot, &store, SystemTime::now());
        let Outcome::Failed(e) = &bad.outcome else {
            panic!("{bad:?}")
        };
        assert!(e.to_string().contains(":5:"), "{e}");
        assert_eq!(std::fs::read(store.join(STORED)).expect("stored"), before);
        assert_eq!(
            bad.in_force
                .as_ref()
                .and_then(|p| p.device.hostname.clone())
                .map(|h| h.0),
            Some("kiosk-2".into())
        );
        assert!(bad.summary().starts_with("not imported: "), "{}", bad.summary());
        let _ = first;
    }

    #[test]
    fn a_network_without_psk_and_nothing_stored_is_refused() {
        let (_dir, boot, store) = setup();
        std::fs::write(&boot, "[[wifi]]\nssid = \"Shop\"\n").expect("write");
        let report = import(&boot, &store, SystemTime::now());
        let Outcome::Failed(e) = &report.outcome else {
            panic!("{report:?}")
        };
        assert!(
            e.to_string()
                .ends_with(":2:1: wifi[0]: network \"Shop\" has no psk, and none is stored on the device; add psk = \"...\", or open = true for an open network"),
            "{e}"
        );
        assert!(!store.join(STORED).exists());
    }

    #[test]
    fn no_file_is_not_an_error() {
        let (_dir, boot, store) = setup();
        let report = import(&boot, &store, SystemTime::now());
        assert!(matches!(report.outcome, Outcome::NoFile));
        assert_eq!(report.summary(), "not provisioned (no provisioning file)");
    }
}
