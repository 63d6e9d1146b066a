//! The binary U-Boot environment, read and written like libubootenv.
//!
//! `fw_printenv`/`fw_setenv` (libubootenv) and this module must be able to
//! take turns on the same device, so every rule follows libubootenv:
//!
//! - where: [`FwEnvConfig`] (`fw_env.config`), one copy or a redundant pair;
//! - format: CRC32 (little endian) over the data area, a flags byte after it
//!   in redundant copies, `name=value\0` entries sorted by name and a final
//!   `\0` (see `image`);
//! - which copy: a copy with a bad CRC never counts; of two good copies the
//!   higher flags byte wins, 0 beating 255 after wrap-around;
//! - a write takes the current copy's variables, applies the changes and
//!   writes the *other* copy with the flags byte incremented, so the copy
//!   that was current stays intact until the new one is complete and synced:
//!   a power cut at any byte leaves one valid copy. A single copy has no such
//!   safety net; it is written in place;
//! - the same advisory lock (`flock` on `/var/lock/fw_printenv.lock`) so a
//!   concurrent `fw_setenv` cannot interleave with us.
//!
//! After each write the copy is `fsync`ed, read back and compared byte for
//! byte, and the pair is re-evaluated to check that the new copy is the one
//! U-Boot will pick. The read-back goes through the page cache, so it proves
//! what the kernel will write, not what the medium holds; `fsync` (which on
//! a block device flushes the device's write cache) is the durability step.
//!
//! Limits: regular files and block devices only. MTD (`/dev/mtd*`, erase
//! blocks, NOR "obsolete" flags) and UBI volumes are refused. eMMC hardware
//! boot partitions (`mmcblkXbootY`) must be made writable through their
//! `force_ro` sysfs switch by the caller; libubootenv toggles it itself.

mod config;
mod image;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use config::{EnvLocation, FwEnvConfig};
use image::RawVars;

use crate::{BootEnv, Changes, Vars};

/// Errors of the U-Boot environment, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum UbootError {
    /// The config file could not be read.
    #[error("cannot read U-Boot env config {}: {source}", path.display())]
    ReadConfig {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the config file is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    ParseConfig {
        /// The config file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// The config as a whole is unusable.
    #[error("invalid U-Boot env config {}: {reason}", path.display())]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The device is of a kind this module does not write.
    #[error(
        "U-Boot env device {} is MTD/UBI flash, which is not supported; use fw_setenv",
        device.display()
    )]
    UnsupportedDevice {
        /// The device.
        device: PathBuf,
    },
    /// The lock shared with `fw_setenv` could not be taken.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The device could not be opened.
    #[error("cannot open U-Boot env device {}: {source}", device.display())]
    OpenDevice {
        /// The device.
        device: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading a copy failed (a device shorter than the config says ends here).
    #[error("cannot read U-Boot env copy {location}: {source}")]
    ReadCopy {
        /// The copy.
        location: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Writing a copy failed.
    #[error("cannot write U-Boot env copy {location}: {source}")]
    WriteCopy {
        /// The copy.
        location: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Flushing a written copy to the medium failed.
    #[error("cannot sync U-Boot env copy {location}: {source}")]
    SyncCopy {
        /// The copy.
        location: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No copy has a valid CRC.
    #[error(
        "no valid U-Boot environment in {locations} (CRC mismatch in every copy); \
         the bootloader is using its built-in default, start from a default environment to write one"
    )]
    NoValidEnvironment {
        /// Every copy that was checked.
        locations: String,
    },
    /// A copy has a valid CRC but its entries run past the data area.
    #[error("U-Boot env copy {location} is malformed: entry at data offset {offset} is not terminated")]
    ParseEnvironment {
        /// The copy.
        location: String,
        /// Offset of the bad entry in the data area.
        offset: usize,
    },
    /// A variable name or value cannot be stored.
    #[error("cannot set U-Boot variable {name:?}: {reason}")]
    InvalidVariable {
        /// The variable.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The variables do not fit; nothing was written.
    #[error(
        "U-Boot environment on {device} would need {needed} bytes but holds {available} \
         (copy size {size:#x}); nothing was written"
    )]
    EnvironmentTooLarge {
        /// The device (and offset) of the copy that would have been written.
        device: String,
        /// Bytes of data needed.
        needed: usize,
        /// Bytes of data available.
        available: usize,
        /// Configured copy size.
        size: u64,
    },
    /// The copy read back differs from what was written, or U-Boot would not
    /// pick it.
    #[error("U-Boot env copy {location} failed verification after writing: {reason}")]
    VerifyCopy {
        /// The copy.
        location: String,
        /// What did not match.
        reason: &'static str,
    },
}

/// The U-Boot environment on a device or file.
#[derive(Debug, Clone)]
pub struct UbootEnv {
    config: FwEnvConfig,
    lock_file: Option<PathBuf>,
    default_env: Option<Vars>,
}

impl UbootEnv {
    /// The lock file libubootenv uses.
    pub const DEFAULT_LOCK_FILE: &str = "/var/lock/fw_printenv.lock";

    /// The environment described by `config`, locked like libubootenv and
    /// failing with [`UbootError::NoValidEnvironment`] when no copy is valid.
    pub fn new(config: FwEnvConfig) -> Self {
        Self {
            config,
            lock_file: Some(PathBuf::from(Self::DEFAULT_LOCK_FILE)),
            default_env: None,
        }
    }

    /// The environment described by the `fw_env.config` at `path`.
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self, UbootError> {
        Ok(Self::new(FwEnvConfig::read(path)?))
    }

    /// Uses another lock file, or none.
    #[must_use]
    pub fn with_lock_file(mut self, lock_file: Option<PathBuf>) -> Self {
        self.lock_file = lock_file;
        self
    }

    /// When no copy is valid, reads `defaults` instead of failing, and starts
    /// the next write from them (as `fw_setenv` does with its default env
    /// file). An empty map starts from an empty environment.
    #[must_use]
    pub fn with_default_env(mut self, defaults: Vars) -> Self {
        self.default_env = Some(defaults);
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &FwEnvConfig {
        &self.config
    }

    /// Takes libubootenv's lock, if configured. Like libubootenv, a lock file
    /// that cannot be created (no `/var/lock` in an initramfs, read-only
    /// root) means running unlocked rather than not at all; a lock that
    /// exists but cannot be taken is an error.
    fn lock(&self) -> Result<Option<File>, UbootError> {
        let Some(path) = &self.lock_file else {
            return Ok(None);
        };
        let Ok(file) = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
        else {
            return Ok(None);
        };
        file.lock().map_err(|source| UbootError::Lock {
            path: path.clone(),
            source,
        })?;
        Ok(Some(file))
    }

    /// Reads every copy and picks the current one.
    fn load(&self) -> Result<Loaded, UbootError> {
        let redundant = self.config.is_redundant();
        let mut copies = Vec::with_capacity(2);
        for location in self.config.copies() {
            let bytes = read_copy(location)?;
            copies.push((image::header(&bytes, redundant), bytes));
        }
        let current = match copies.as_slice() {
            [(only, _)] => only.crc_ok.then_some(0),
            [(first, _), (second, _)] => image::select_current(*first, *second),
            _ => None,
        };
        let vars = match current {
            Some(index) => {
                let data = &copies[index].1[image::header_len(redundant)..];
                Some(
                    image::parse_data(data).map_err(|bad| UbootError::ParseEnvironment {
                        location: self.config.copies()[index].to_string(),
                        offset: bad.offset,
                    })?,
                )
            }
            None => None,
        };
        Ok(Loaded {
            flags: copies.iter().map(|(header, _)| header.flags).collect(),
            current,
            vars,
        })
    }

    fn no_valid_environment(&self) -> UbootError {
        let locations: Vec<String> = self.config.copies().iter().map(|c| c.to_string()).collect();
        UbootError::NoValidEnvironment {
            locations: locations.join(" and "),
        }
    }

    /// The variables of the current copy, or the default environment.
    fn current_vars(&self, loaded: Loaded) -> Result<RawVars, UbootError> {
        match (loaded.vars, &self.default_env) {
            (Some(vars), _) => Ok(vars),
            (None, Some(defaults)) => Ok(defaults
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect()),
            (None, None) => Err(self.no_valid_environment()),
        }
    }

    fn write(&self, changes: &Changes) -> Result<(), UbootError> {
        for (name, value) in changes {
            validate(name, value.as_deref())?;
        }
        let _lock = self.lock()?;
        let loaded = self.load()?;
        let current = loaded.current;
        let current_flags = loaded.flags[current.unwrap_or(0)];
        let before = self.current_vars(loaded)?;
        let mut after = before.clone();
        for (name, value) in changes {
            match value {
                Some(value) => after.insert(name.as_bytes().to_vec(), value.as_bytes().to_vec()),
                None => after.remove(name.as_bytes()),
            };
        }
        // Like fw_setenv: nothing to change means nothing written, unless the
        // medium holds no valid copy and the defaults have to be stored.
        if current.is_some() && after == before {
            return Ok(());
        }
        let redundant = self.config.is_redundant();
        // With no valid copy, libubootenv treats copy 0 as current and writes
        // copy 1; doing the same keeps both tools in step.
        let target = if redundant { 1 - current.unwrap_or(0) } else { 0 };
        let location = &self.config.copies()[target];
        let size = self.config.env_size();
        let copy = image::build(
            &after,
            // Checked to fit in memory when the config was built.
            usize::try_from(size).unwrap_or(usize::MAX),
            redundant,
            current_flags.wrapping_add(1),
        )
        .map_err(|too_large| UbootError::EnvironmentTooLarge {
            device: location.to_string(),
            needed: too_large.needed,
            available: too_large.available,
            size,
        })?;
        write_copy(location, &copy)?;

        let verify = |reason| UbootError::VerifyCopy {
            location: location.to_string(),
            reason,
        };
        if read_copy(location)? != copy {
            return Err(verify("read-back differs from the written bytes"));
        }
        let reloaded = self.load()?;
        if reloaded.current != Some(target) {
            return Err(verify("the written copy is not the one U-Boot selects"));
        }
        if reloaded.vars.as_ref() != Some(&after) {
            return Err(verify("variables read back differ from those written"));
        }
        Ok(())
    }
}

impl BootEnv for UbootEnv {
    fn get_all(&self) -> Result<Vars, crate::Error> {
        let _lock = self.lock()?;
        let loaded = self.load()?;
        let vars = self.current_vars(loaded)?;
        Ok(vars
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    fn set(&self, changes: &Changes) -> Result<(), crate::Error> {
        Ok(self.write(changes)?)
    }
}

/// What [`UbootEnv::load`] found.
struct Loaded {
    /// Flags byte of each copy (0 for a single copy).
    flags: Vec<u8>,
    /// Index of the current copy, `None` if no copy is valid.
    current: Option<usize>,
    /// Variables of the current copy.
    vars: Option<RawVars>,
}

/// Rules libubootenv and U-Boot's `setenv` apply.
fn validate(name: &str, value: Option<&str>) -> Result<(), UbootError> {
    let invalid = |reason| UbootError::InvalidVariable {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.contains('=') {
        return Err(invalid("the name contains '='"));
    }
    if name.contains('\0') {
        return Err(invalid("the name contains a NUL byte"));
    }
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(invalid("the value contains a NUL byte"));
    }
    Ok(())
}

fn open_device(location: &EnvLocation, write: bool) -> Result<File, UbootError> {
    let device = &location.device;
    // Decide on the resolved path, as libubootenv does, so that a
    // /dev/disk/by-* link to an MTD device is refused too.
    let resolved = device.canonicalize().unwrap_or_else(|_| device.clone());
    if resolved.starts_with("/dev") {
        let name = resolved.to_string_lossy();
        if name.starts_with("/dev/mtd") || name.starts_with("/dev/ubi") {
            return Err(UbootError::UnsupportedDevice {
                device: device.clone(),
            });
        }
    }
    // Never create or truncate: the "device" may be a whole disk.
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(device)
        .map_err(|source| UbootError::OpenDevice {
            device: device.clone(),
            source,
        })
}

fn seek_to(file: &mut File, location: &EnvLocation) -> std::io::Result<u64> {
    if location.offset < 0 {
        // Counted back from the end, as libubootenv does for block devices.
        file.seek(SeekFrom::End(location.offset))
    } else {
        file.seek(SeekFrom::Start(location.offset.unsigned_abs()))
    }
}

fn read_copy(location: &EnvLocation) -> Result<Vec<u8>, UbootError> {
    let mut file = open_device(location, false)?;
    let mut bytes = vec![0; usize::try_from(location.size).unwrap_or(usize::MAX)];
    seek_to(&mut file, location)
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|source| UbootError::ReadCopy {
            location: location.to_string(),
            source,
        })?;
    Ok(bytes)
}

fn write_copy(location: &EnvLocation, bytes: &[u8]) -> Result<(), UbootError> {
    let mut file = open_device(location, true)?;
    seek_to(&mut file, location)
        .and_then(|_| file.write_all(bytes))
        .map_err(|source| UbootError::WriteCopy {
            location: location.to_string(),
            source,
        })?;
    file.sync_all().map_err(|source| UbootError::SyncCopy {
        location: location.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const SIZE: u64 = 0x400;

    struct Device {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    fn device(len: u64) -> Device {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("env.img");
        File::create(&path)
            .and_then(|f| f.set_len(len))
            .expect("create device");
        Device { _dir: dir, path }
    }

    fn single(dev: &Device) -> UbootEnv {
        let config = FwEnvConfig::single(EnvLocation::new(&dev.path, 0, SIZE)).expect("config");
        UbootEnv::new(config).with_lock_file(None)
    }

    fn redundant(dev: &Device) -> UbootEnv {
        let config = FwEnvConfig::redundant(
            EnvLocation::new(&dev.path, 0, SIZE),
            EnvLocation::new(&dev.path, SIZE as i64, SIZE),
        )
        .expect("config");
        UbootEnv::new(config).with_lock_file(None)
    }

    fn changes(pairs: &[(&str, Option<&str>)]) -> Changes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flags(dev: &Device) -> (u8, u8) {
        let bytes = std::fs::read(&dev.path).expect("read device");
        (bytes[4], bytes[SIZE as usize + 4])
    }

    #[test]
    fn blank_device_is_no_valid_environment_unless_defaults_are_given() {
        let dev = device(2 * SIZE);
        let err = redundant(&dev).get_all().expect_err("blank device");
        let message = err.to_string();
        assert!(message.contains("no valid U-Boot environment"), "{message}");
        assert!(message.contains(&dev.path.display().to_string()), "{message}");
        assert!(redundant(&dev).set(&changes(&[("a", Some("1"))])).is_err());
        assert_eq!(
            std::fs::read(&dev.path).expect("read"),
            vec![0; 2 * SIZE as usize]
        );

        let env = redundant(&dev).with_default_env(vars(&[("bootdelay", "2")]));
        assert_eq!(env.get_all().expect("defaults"), vars(&[("bootdelay", "2")]));
        env.set(&changes(&[("a", Some("1"))])).expect("write");
        // libubootenv: copy 0 counts as current, the new one goes to copy 1.
        assert_eq!(flags(&dev), (0, 1));
        assert_eq!(
            redundant(&dev).get_all().expect("read"),
            vars(&[("a", "1"), ("bootdelay", "2")])
        );
    }

    #[test]
    fn redundant_writes_alternate_copies_and_increment_flags() {
        let dev = device(2 * SIZE);
        let env = redundant(&dev).with_default_env(Vars::new());
        let mut expected = Vec::new();
        for round in 1..=4u8 {
            env.set(&changes(&[("round", Some(&round.to_string()))]))
                .expect("write");
            expected.push(flags(&dev));
            assert_eq!(env.get("round").expect("read"), Some(round.to_string()));
        }
        assert_eq!(expected, [(0, 1), (2, 1), (2, 3), (4, 3)]);
    }

    #[test]
    fn unchanged_values_are_not_written() {
        let dev = device(2 * SIZE);
        let env = redundant(&dev).with_default_env(Vars::new());
        env.set(&changes(&[("a", Some("1")), ("gone", None)]))
            .expect("write");
        let before = std::fs::read(&dev.path).expect("read");
        env.set(&changes(&[("a", Some("1")), ("gone", None)]))
            .expect("no-op");
        assert_eq!(std::fs::read(&dev.path).expect("read"), before);
    }

    #[test]
    fn batch_sets_and_deletes_in_one_write() {
        let dev = device(SIZE);
        let env = single(&dev).with_default_env(Vars::new());
        env.set(&changes(&[("a", Some("1")), ("b", Some("2"))]))
            .expect("write");
        env.set(&changes(&[("a", None), ("c", Some("x=y z"))]))
            .expect("write");
        assert_eq!(
            single(&dev).get_all().expect("read"),
            vars(&[("b", "2"), ("c", "x=y z")])
        );
    }

    #[test]
    fn corrupted_newer_copy_falls_back_to_the_older() {
        let dev = device(2 * SIZE);
        let env = redundant(&dev).with_default_env(Vars::new());
        env.set(&changes(&[("v", Some("old"))])).expect("write");
        env.set(&changes(&[("v", Some("new"))])).expect("write");
        // The newer copy is copy 0 (flags 2); break one of its data bytes.
        let mut bytes = std::fs::read(&dev.path).expect("read");
        bytes[8] ^= 0xff;
        std::fs::write(&dev.path, &bytes).expect("corrupt");
        assert_eq!(redundant(&dev).get("v").expect("read"), Some("old".into()));
    }

    #[test]
    fn corrupted_single_copy_is_a_clear_error() {
        let dev = device(SIZE);
        let env = single(&dev).with_default_env(Vars::new());
        env.set(&changes(&[("v", Some("1"))])).expect("write");
        let mut bytes = std::fs::read(&dev.path).expect("read");
        bytes[SIZE as usize - 1] ^= 1;
        std::fs::write(&dev.path, &bytes).expect("corrupt");
        let err = single(&dev).get_all().expect_err("corrupt");
        assert!(matches!(
            err,
            crate::Error::Uboot(UbootError::NoValidEnvironment { .. })
        ));
    }

    #[test]
    fn oversize_environment_is_refused_without_touching_the_device() {
        let dev = device(2 * SIZE);
        let env = redundant(&dev).with_default_env(Vars::new());
        env.set(&changes(&[("a", Some("1"))])).expect("write");
        let before = std::fs::read(&dev.path).expect("read");
        let big = "x".repeat(SIZE as usize);
        let err = env.set(&changes(&[("big", Some(&big))])).expect_err("too big");
        let message = err.to_string();
        assert!(message.contains(&dev.path.display().to_string()), "{message}");
        assert!(message.contains("0x400"), "{message}");
        assert_eq!(std::fs::read(&dev.path).expect("read"), before);
    }

    #[test]
    fn invalid_names_and_values_are_refused() {
        let dev = device(SIZE);
        let env = single(&dev).with_default_env(Vars::new());
        for (name, value) in [("", "v"), ("a=b", "v"), ("a\0", "v"), ("a", "v\0")] {
            let err = env.set(&changes(&[(name, Some(value))])).expect_err(name);
            assert!(
                matches!(err, crate::Error::Uboot(UbootError::InvalidVariable { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn non_utf8_variables_survive_a_write() {
        let dev = device(SIZE);
        let mut raw = RawVars::new();
        raw.insert(b"bin".to_vec(), vec![0xff, 0xfe]);
        let copy = image::build(&raw, SIZE as usize, false, 0).expect("fits");
        std::fs::write(&dev.path, &copy).expect("write");
        single(&dev).set(&changes(&[("a", Some("1"))])).expect("write");
        let bytes = std::fs::read(&dev.path).expect("read");
        assert_eq!(&bytes[4..16], b"a=1\0bin=\xff\xfe\0\0");
    }

    #[test]
    fn negative_offset_counts_from_the_end() {
        let dev = device(4 * SIZE);
        let config = FwEnvConfig::single(EnvLocation::new(&dev.path, -(SIZE as i64), SIZE)).expect("config");
        let env = UbootEnv::new(config)
            .with_lock_file(None)
            .with_default_env(BTreeMap::new());
        env.set(&changes(&[("a", Some("1"))])).expect("write");
        let bytes = std::fs::read(&dev.path).expect("read");
        assert_eq!(&bytes[3 * SIZE as usize + 4..3 * SIZE as usize + 8], b"a=1\0");
    }

    #[test]
    fn short_device_is_a_read_error_naming_the_copy() {
        let dev = device(SIZE);
        let err = redundant(&dev).get_all().expect_err("short");
        let message = err.to_string();
        assert!(message.contains("cannot read U-Boot env copy"), "{message}");
        assert!(message.contains("at 0x400"), "{message}");
    }

    #[test]
    fn lock_file_is_taken_and_released() {
        let dev = device(SIZE);
        let lock = dev.path.with_file_name("fw_printenv.lock");
        let env = single(&dev)
            .with_lock_file(Some(lock.clone()))
            .with_default_env(Vars::new());
        env.set(&changes(&[("a", Some("1"))])).expect("write");
        // Released: another holder can take it right away.
        let file = File::open(&lock).expect("lock file exists");
        file.try_lock().expect("lock released");
    }
}
