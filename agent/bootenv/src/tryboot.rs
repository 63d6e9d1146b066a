//! Raspberry Pi `tryboot`: A/B boot selection through `autoboot.txt`.
//!
//! The Pi firmware (Pi 4, 400, CM4, Pi 5 bootloaders) reads `autoboot.txt`
//! from the first FAT partition before anything else. With
//!
//! ```text
//! [all]
//! tryboot_a_b=1
//! boot_partition=2
//! [tryboot]
//! boot_partition=3
//! ```
//!
//! a normal boot loads partition 2 (the committed slot) and a boot with the
//! one-shot `tryboot` flag loads partition 3 (the slot on trial). The flag is
//! set by rebooting with the argument [`Tryboot::REBOOT_ARGUMENT`]
//! (`"0 tryboot"`: partition 0 = "as `autoboot.txt` says", then the flag);
//! the daemon passes it to systemd-logind (`SetRebootParameter`, then
//! `Reboot`) — this crate makes no D-Bus calls. The firmware clears the flag
//! before it starts the OS, so a crash, watchdog reset or power cut during
//! the trial comes back up in `[all]`'s slot. Whether the running boot is a
//! trial is read from the device tree ([`Tryboot::is_tryboot`]).
//!
//! Operations (slot names map to partition numbers by configuration; the
//! defaults, A = 2 and B = 3, follow the firmware documentation's example):
//!
//! - [`Tryboot::set_trial`] points `[tryboot]` at the new slot and leaves
//!   `[all]` on the running one;
//! - [`Tryboot::commit`] points `[all]` *and* `[tryboot]` at the slot. The
//!   firmware documentation swaps the two partitions instead; pointing both
//!   at the committed slot means a stray `reboot "0 tryboot"` boots the good
//!   slot rather than the other one, which the next update is about to
//!   overwrite;
//! - [`Tryboot::cancel_trial`] points `[tryboot]` back at `[all]`'s slot.
//!
//! Every write keeps `tryboot_a_b=1` in `[all]` (without it the firmware
//! would look for `tryboot.txt` instead of switching partitions), keeps every
//! other line and comment as it was, refuses files over the firmware's
//! 512-byte limit, and writes nothing when nothing changes (flash wear).
//!
//! # Writing on FAT
//!
//! The new file is written to `autoboot.txt.new` in the same directory,
//! `fsync`ed, renamed over `autoboot.txt`, the directory is `fsync`ed, and
//! the file is read back and compared. FAT has no journal, so the rename is
//! not atomic the way it is on ext4: Linux's vfat points the existing
//! directory entry at the new clusters and then removes the temporary entry,
//! and the FAT, the directory and the freed clusters reach the medium in no
//! guaranteed order. A power cut in that window can leave cross-linked or
//! lost clusters (`fsck.vfat` repairs them) but, as the new content is
//! complete and synced before its name changes, `autoboot.txt` holds either
//! the old or the new text. Both are valid by construction: `[all]` keeps
//! pointing at the running slot until [`Tryboot::commit`], which is called
//! from the slot it names. A new file is laid out with `[all]` first, so even
//! a file cut short keeps the committed slot. If the file disappeared
//! altogether the firmware would boot the first bootable FAT partition.
//!
//! # Why this is not a [`crate::BootEnv`]
//!
//! [`crate::BootEnv`] plus [`crate::Bootchooser`] mean: `set_primary` makes
//! every following *normal* boot try the slot, up to N times, until
//! `mark_good` or the counter runs out. Tryboot has no counter and no
//! persistent "try next": the trial happens once, and only if the reboot
//! carries the flag. Synthesising `BOOT_ORDER`/`BOOT_x_LEFT` from
//! `autoboot.txt` would let a caller believe a plain reboot tries the new
//! slot, and would make `mark_good` (a counter refill) silently not commit.
//! So this backend has its own small API, and the daemon chooses the reboot
//! argument per backend.
//!
//! # The partition layout it needs
//!
//! `boot_partition` names a FAT partition holding the firmware files,
//! `config.txt`, `cmdline.txt` and the kernel: each slot needs its own FAT
//! boot partition (whose `cmdline.txt` names that slot's root and carries
//! `containeros.slot=`), and `autoboot.txt` sits on partition 1. Pointing
//! `boot_partition` at an ext4 root partition does not boot.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The firmware reads at most this many bytes of `autoboot.txt`.
pub const MAX_SIZE: usize = 512;

/// The setting that selects the boot partition.
pub const BOOT_PARTITION: &str = "boot_partition";

/// The setting that makes `tryboot` switch partitions instead of config files.
pub const TRYBOOT_A_B: &str = "tryboot_a_b";

/// Errors of the tryboot backend, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum TrybootError {
    /// The slot configuration is unusable.
    #[error("invalid tryboot slot configuration {slots:?}: {reason}")]
    InvalidSlots {
        /// The configured (name, partition) pairs.
        slots: Vec<(String, u32)>,
        /// What is wrong.
        reason: &'static str,
    },
    /// An operation named a slot that is not configured.
    #[error("unknown slot {slot:?}; configured slots: {}", known.join(", "))]
    UnknownSlot {
        /// The slot asked for.
        slot: String,
        /// The configured slots.
        known: Vec<String>,
    },
    /// `autoboot.txt` could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `autoboot.txt` holds something this backend cannot manage safely.
    #[error("{}:{line}: {reason}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0: the file as a whole).
        line: usize,
        /// What is wrong and what to do.
        reason: String,
    },
    /// `boot_partition` names a partition that is no configured slot.
    #[error(
        "{}: boot_partition={partition} is not a slot's partition ({}); \
         fix the file or the slot configuration",
        path.display(),
        known.iter().map(|(s, p)| format!("{s}={p}")).collect::<Vec<_>>().join(", ")
    )]
    UnknownPartition {
        /// The file.
        path: PathBuf,
        /// The partition number found.
        partition: u32,
        /// The configured (name, partition) pairs.
        known: Vec<(String, u32)>,
    },
    /// The new file would be longer than the firmware reads.
    #[error(
        "{} would be {size} bytes, over the firmware's limit of {MAX_SIZE}; nothing was written — \
         remove comments or unused lines",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Size of the new text.
        size: usize,
    },
    /// Writing the new file to its temporary name failed.
    #[error("cannot write {}: {source}", path.display())]
    WriteTemp {
        /// The temporary file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Renaming the new file over the old one failed.
    #[error("cannot rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// `autoboot.txt`.
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
    /// The file read back differs from the one written.
    #[error(
        "{} failed verification after writing (read back {actual} bytes, wrote {expected}); \
         check the boot partition with fsck.vfat",
        path.display()
    )]
    Verify {
        /// The file.
        path: PathBuf,
        /// Bytes written.
        expected: usize,
        /// Bytes read back.
        actual: usize,
    },
    /// A device-tree property of the bootloader could not be read.
    #[error(
        "cannot read {}: {source}; is this a Raspberry Pi whose bootloader supports tryboot?",
        path.display()
    )]
    ReadProperty {
        /// The property file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A device-tree property is not a 32-bit cell.
    #[error("{} holds {len} bytes, expected a 4-byte big-endian number", path.display())]
    InvalidProperty {
        /// The property file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// Which boot a section of `autoboot.txt` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Before any filter, or under `[all]`: every boot.
    All,
    /// Under `[tryboot]`: boots with the tryboot flag.
    Tryboot,
    /// Under `[none]`: no boot.
    None,
}

/// One line of `autoboot.txt`, kept verbatim unless it is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `[filter]`; `None` for a filter other than `[all]`, `[none]` and
    /// `[tryboot]`.
    Section(Option<Scope>),
    /// `key=value` in the given scope.
    Setting {
        scope: Scope,
        key: String,
        value: String,
    },
    /// Comments, blank lines, anything else: preserved, never interpreted.
    Other,
}

/// The parsed text of `autoboot.txt`.
///
/// Parsing keeps every line, so rendering an unchanged file gives the same
/// bytes; edits rewrite or insert only `boot_partition` and `tryboot_a_b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoboot {
    lines: Vec<Line>,
    /// `"\r\n"` when the file uses it, else `"\n"`.
    newline: &'static str,
    /// Whether the last line ended with a newline (kept on render).
    final_newline: bool,
}

impl Autoboot {
    /// Parses the file's text. `path` is only used in errors.
    ///
    /// Refused: a section other than `[all]`, `[none]` and `[tryboot]` (the
    /// only filters the firmware supports here) that holds `boot_partition`
    /// or `tryboot_a_b`, and values of those that are not numbers. Other
    /// unknown lines are kept as they are.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TrybootError> {
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let final_newline = text.is_empty() || text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut lines = Vec::new();
        // `Some(scope)` for a filter we understand, `None` for another one.
        let mut scope = Some(Scope::All);
        if !text.is_empty() {
            for (i, raw) in body.split('\n').enumerate() {
                let raw = raw.strip_suffix('\r').unwrap_or(raw);
                let invalid = |reason: String| TrybootError::InvalidFile {
                    path: path.to_owned(),
                    line: i + 1,
                    reason,
                };
                let trimmed = raw.trim();
                let kind = if let Some(filter) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                    scope = match filter.trim() {
                        "all" => Some(Scope::All),
                        "tryboot" => Some(Scope::Tryboot),
                        "none" => Some(Scope::None),
                        _ => None,
                    };
                    Kind::Section(scope)
                } else if trimmed.is_empty() || trimmed.starts_with('#') {
                    Kind::Other
                } else if let Some((key, value)) = trimmed.split_once('=') {
                    let (key, value) = (key.trim(), value.trim());
                    let managed = key == BOOT_PARTITION || key == TRYBOOT_A_B;
                    match scope {
                        _ if !managed => Kind::Other,
                        None => {
                            return Err(invalid(format!(
                                "{key} under a filter other than [all], [none] or [tryboot]; \
                                 the firmware supports only those in autoboot.txt"
                            )));
                        }
                        Some(scope) => {
                            if value.parse::<u32>().is_err() {
                                return Err(invalid(format!("{key}={value} is not a number")));
                            }
                            Kind::Setting {
                                scope,
                                key: key.to_owned(),
                                value: value.to_owned(),
                            }
                        }
                    }
                } else {
                    Kind::Other
                };
                lines.push(Line {
                    text: raw.to_owned(),
                    kind,
                });
            }
        }
        Ok(Self {
            lines,
            newline,
            final_newline,
        })
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = self
            .lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join(self.newline);
        if self.final_newline && !self.lines.is_empty() {
            out.push_str(self.newline);
        }
        out
    }

    /// The value of `key` in effect on a normal boot (`tryboot == false`)
    /// or a boot with the tryboot flag: the last one in a section that
    /// applies, as the firmware reads the file top to bottom.
    fn effective(&self, key: &str, tryboot: bool) -> Option<u32> {
        self.lines
            .iter()
            .filter_map(|l| match &l.kind {
                Kind::Setting { scope, key: k, value }
                    if k == key && (*scope == Scope::All || (tryboot && *scope == Scope::Tryboot)) =>
                {
                    value.parse().ok()
                }
                _ => None,
            })
            .next_back()
    }

    /// The partition a normal boot loads.
    pub fn default_partition(&self) -> Option<u32> {
        self.effective(BOOT_PARTITION, false)
    }

    /// The partition a boot with the tryboot flag loads.
    pub fn tryboot_partition(&self) -> Option<u32> {
        self.effective(BOOT_PARTITION, true)
    }

    /// Whether `tryboot_a_b=1` is in effect.
    pub fn tryboot_a_b(&self) -> bool {
        self.effective(TRYBOOT_A_B, false) == Some(1)
    }

    /// Sets `key` in `scope`: every existing line of it there is rewritten
    /// (so no earlier, overridden copy is left to mislead a reader); with
    /// none, a line goes right after the scope's first section header, and
    /// without one a header and the line are added (`[all]` at the top,
    /// `[tryboot]` at the end).
    fn set(&mut self, scope: Scope, key: &str, value: u32) {
        let text = format!("{key}={value}");
        let mut found = false;
        for line in &mut self.lines {
            if let Kind::Setting {
                scope: s,
                key: k,
                value: v,
            } = &mut line.kind
                && *s == scope
                && k == key
            {
                found = true;
                *v = value.to_string();
                line.text.clone_from(&text);
            }
        }
        if found {
            return;
        }
        let setting = Line {
            text,
            kind: Kind::Setting {
                scope,
                key: key.to_owned(),
                value: value.to_string(),
            },
        };
        let header = |scope: Scope| Line {
            text: match scope {
                Scope::All => "[all]",
                Scope::Tryboot => "[tryboot]",
                Scope::None => "[none]",
            }
            .to_owned(),
            kind: Kind::Section(Some(scope)),
        };
        match self
            .lines
            .iter()
            .position(|l| l.kind == Kind::Section(Some(scope)))
        {
            Some(header) => {
                // After the section's last line that says something, so
                // settings stay in the order they were added and a comment
                // introducing the next section stays with it.
                let mut at = header + 1;
                for (i, line) in self.lines.iter().enumerate().skip(header + 1) {
                    if matches!(line.kind, Kind::Section(_)) {
                        break;
                    }
                    let text = line.text.trim();
                    if !text.is_empty() && !text.starts_with('#') {
                        at = i + 1;
                    }
                }
                self.lines.insert(at, setting);
            }
            None if scope == Scope::All => {
                self.lines.splice(0..0, [header(Scope::All), setting]);
            }
            None => self.lines.extend([header(scope), setting]),
        }
    }
}

/// A new `autoboot.txt`: `[all]` first, every boot on partition `default`.
fn fresh(default: u32) -> Autoboot {
    let mut file = Autoboot {
        lines: Vec::new(),
        newline: "\n",
        final_newline: true,
    };
    file.set(Scope::All, TRYBOOT_A_B, 1);
    file.set(Scope::All, BOOT_PARTITION, default);
    file.set(Scope::Tryboot, BOOT_PARTITION, default);
    file
}

/// `autoboot.txt` on the boot partition, and the bootloader's device-tree
/// properties.
#[derive(Debug, Clone)]
pub struct Tryboot {
    path: PathBuf,
    bootloader_dir: PathBuf,
    slots: Vec<(String, u32)>,
}

impl Tryboot {
    /// The reboot argument that sets the one-shot tryboot flag: partition 0
    /// (as `autoboot.txt` says), then `tryboot`. Give it to logind's
    /// `SetRebootParameter` before `Reboot`, or to `systemctl reboot`.
    pub const REBOOT_ARGUMENT: &str = "0 tryboot";

    /// Where the firmware publishes its boot properties.
    pub const DEFAULT_BOOTLOADER_DIR: &str = "/proc/device-tree/chosen/bootloader";

    /// Slot A on partition 2, B on 3: the firmware documentation's layout
    /// (partition 1 holds `autoboot.txt`).
    pub const DEFAULT_SLOTS: [(&str, u32); 2] = [("A", 2), ("B", 3)];

    /// `autoboot.txt` at `path` (e.g. `/boot/firmware/autoboot.txt`) with the
    /// [default slots](Self::DEFAULT_SLOTS).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            bootloader_dir: PathBuf::from(Self::DEFAULT_BOOTLOADER_DIR),
            slots: Self::DEFAULT_SLOTS
                .iter()
                .map(|(name, part)| ((*name).to_owned(), *part))
                .collect(),
        }
    }

    /// Other slot names and partition numbers: each name and partition once,
    /// partitions from 1 (0 means "the first bootable FAT partition").
    pub fn with_slots<I, S>(mut self, slots: I) -> Result<Self, TrybootError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let slots: Vec<(String, u32)> = slots.into_iter().map(|(s, p)| (s.into(), p)).collect();
        let invalid = |reason| TrybootError::InvalidSlots {
            slots: slots.clone(),
            reason,
        };
        if slots.len() < 2 {
            return Err(invalid("configure at least two slots"));
        }
        for (i, (name, part)) in slots.iter().enumerate() {
            if name.is_empty() {
                return Err(invalid("a slot name is empty"));
            }
            if *part == 0 {
                return Err(invalid("partition numbers start at 1"));
            }
            if slots[..i].iter().any(|(n, p)| n == name || p == part) {
                return Err(invalid("give each slot name and partition once"));
            }
        }
        self.slots = slots;
        Ok(self)
    }

    /// Reads the bootloader's properties from `dir` instead of
    /// [`Self::DEFAULT_BOOTLOADER_DIR`] (tests).
    #[must_use]
    pub fn with_bootloader_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bootloader_dir = dir.into();
        self
    }

    /// The `autoboot.txt` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The reboot argument for a trial boot, [`Self::REBOOT_ARGUMENT`].
    pub fn reboot_argument(&self) -> &'static str {
        Self::REBOOT_ARGUMENT
    }

    fn partition_of(&self, slot: &str) -> Result<u32, TrybootError> {
        self.slots
            .iter()
            .find(|(name, _)| name == slot)
            .map(|(_, part)| *part)
            .ok_or_else(|| TrybootError::UnknownSlot {
                slot: slot.to_owned(),
                known: self.slots.iter().map(|(n, _)| n.clone()).collect(),
            })
    }

    fn slot_of(&self, partition: Option<u32>) -> Result<Option<String>, TrybootError> {
        let Some(partition) = partition else {
            return Ok(None);
        };
        self.slots
            .iter()
            .find(|(_, part)| *part == partition)
            .map(|(name, _)| Some(name.clone()))
            .ok_or_else(|| TrybootError::UnknownPartition {
                path: self.path.clone(),
                partition,
                known: self.slots.clone(),
            })
    }

    /// The parsed file; `None` if it does not exist.
    pub fn read(&self) -> Result<Option<Autoboot>, TrybootError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TrybootError::ReadFile {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if bytes.len() > MAX_SIZE {
            // The firmware would act on the first 512 bytes only, so what we
            // read could differ from what it boots.
            return Err(TrybootError::InvalidFile {
                path: self.path.clone(),
                line: 0,
                reason: format!(
                    "{} bytes, but the firmware reads only the first {MAX_SIZE}; shorten it",
                    bytes.len()
                ),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| TrybootError::InvalidFile {
            path: self.path.clone(),
            line: 0,
            reason: "not UTF-8 text".into(),
        })?;
        Autoboot::parse(&text, &self.path).map(Some)
    }

    /// The slot a normal boot loads (`[all]`'s `boot_partition`); `None`
    /// when the file or the setting is missing.
    pub fn default_slot(&self) -> Result<Option<String>, TrybootError> {
        let file = self.read()?;
        self.slot_of(file.and_then(|f| f.default_partition()))
    }

    /// The slot a reboot with [`Self::REBOOT_ARGUMENT`] would try, when it
    /// differs from [`Self::default_slot`]; `None` when no trial is set up.
    pub fn trial_slot(&self) -> Result<Option<String>, TrybootError> {
        let Some(file) = self.read()? else {
            return Ok(None);
        };
        if !file.tryboot_a_b() || file.tryboot_partition() == file.default_partition() {
            return Ok(None);
        }
        self.slot_of(file.tryboot_partition())
    }

    /// Makes the next reboot with the tryboot flag load `slot`; normal boots
    /// stay on `[all]`'s slot. A missing file is created with `[all]` on the
    /// other slot — the one running, as the trial slot was just written —
    /// when there are two slots; with more, a missing file is an error.
    pub fn set_trial(&self, slot: &str) -> Result<(), TrybootError> {
        let partition = self.partition_of(slot)?;
        let no_default = |what: &str| TrybootError::InvalidFile {
            path: self.path.clone(),
            line: 0,
            reason: format!(
                "{what}: the committed slot is unknown, so no trial is set up; \
                 commit the running slot first"
            ),
        };
        let mut file = match self.read()? {
            Some(file) => file,
            None => fresh(
                self.other_partition(slot)
                    .ok_or_else(|| no_default("the file is missing"))?,
            ),
        };
        let default = file
            .default_partition()
            .ok_or_else(|| no_default(&format!("no {BOOT_PARTITION} under [all]")))?;
        file.set(Scope::All, TRYBOOT_A_B, 1);
        file.set(Scope::Tryboot, BOOT_PARTITION, partition);
        self.check(&file, default, partition)?;
        self.write(&file)
    }

    /// Makes `slot` the one every boot loads, tryboot or not (see the module
    /// docs for why `[tryboot]` follows).
    pub fn commit(&self, slot: &str) -> Result<(), TrybootError> {
        let partition = self.partition_of(slot)?;
        let mut file = self.read()?.unwrap_or_else(|| fresh(partition));
        file.set(Scope::All, TRYBOOT_A_B, 1);
        file.set(Scope::All, BOOT_PARTITION, partition);
        file.set(Scope::Tryboot, BOOT_PARTITION, partition);
        self.check(&file, partition, partition)?;
        self.write(&file)
    }

    /// Withdraws a trial: `[tryboot]` back on `[all]`'s slot.
    pub fn cancel_trial(&self) -> Result<(), TrybootError> {
        let Some(mut file) = self.read()? else {
            return Ok(());
        };
        let Some(default) = file.default_partition() else {
            return Err(TrybootError::InvalidFile {
                path: self.path.clone(),
                line: 0,
                reason: format!("no {BOOT_PARTITION} under [all]; commit a slot first"),
            });
        };
        file.set(Scope::All, TRYBOOT_A_B, 1);
        file.set(Scope::Tryboot, BOOT_PARTITION, default);
        self.check(&file, default, default)?;
        self.write(&file)
    }

    /// The partition of the slot that is not `slot`, when there are two.
    fn other_partition(&self, slot: &str) -> Option<u32> {
        match self.slots.as_slice() {
            [(a, _), (_, pb)] if a == slot => Some(*pb),
            [(_, pa), (b, _)] if b == slot => Some(*pa),
            _ => None,
        }
    }

    /// Checks that `file` boots `default` normally and `tryboot` with the
    /// flag: a section order this backend did not foresee (say `[tryboot]`
    /// followed by another `[all]` with `boot_partition`) could otherwise
    /// undo an edit that looked right.
    fn check(&self, file: &Autoboot, default: u32, tryboot: u32) -> Result<(), TrybootError> {
        if file.default_partition() == Some(default)
            && file.tryboot_partition() == Some(tryboot)
            && file.tryboot_a_b()
        {
            return Ok(());
        }
        Err(TrybootError::InvalidFile {
            path: self.path.clone(),
            line: 0,
            reason: format!(
                "after the edit a normal boot would load partition {:?} (wanted {default}) and a \
                 tryboot {:?} (wanted {tryboot}); nothing was written — keep [all] first and \
                 [tryboot] last",
                file.default_partition(),
                file.tryboot_partition()
            ),
        })
    }

    /// Whether the running boot was started with the tryboot flag
    /// (`<bootloader dir>/tryboot`, a big-endian 32-bit cell, 1 = yes).
    pub fn is_tryboot(&self) -> Result<bool, TrybootError> {
        Ok(self.property("tryboot")? == 1)
    }

    /// The partition the firmware booted from (`<bootloader dir>/partition`).
    pub fn booted_partition(&self) -> Result<u32, TrybootError> {
        self.property("partition")
    }

    /// The slot the firmware booted from, by [`Self::booted_partition`].
    pub fn booted_slot(&self) -> Result<Option<String>, TrybootError> {
        let partition = self.booted_partition()?;
        Ok(self
            .slots
            .iter()
            .find(|(_, part)| *part == partition)
            .map(|(name, _)| name.clone()))
    }

    fn property(&self, name: &str) -> Result<u32, TrybootError> {
        let path = self.bootloader_dir.join(name);
        let bytes = std::fs::read(&path).map_err(|source| TrybootError::ReadProperty {
            path: path.clone(),
            source,
        })?;
        let cell: [u8; 4] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| TrybootError::InvalidProperty {
                path,
                len: bytes.len(),
            })?;
        Ok(u32::from_be_bytes(cell))
    }

    /// Writes `file` unless the file already holds exactly this text.
    fn write(&self, file: &Autoboot) -> Result<(), TrybootError> {
        let text = file.render();
        if text.len() > MAX_SIZE {
            return Err(TrybootError::TooLarge {
                path: self.path.clone(),
                size: text.len(),
            });
        }
        match std::fs::read(&self.path) {
            Ok(old) if old == text.as_bytes() => return Ok(()),
            _ => {}
        }
        replace(&self.path, text.as_bytes())?;
        verify(&self.path, text.as_bytes())
    }
}

/// Replaces `path` with `bytes`: temporary file, `fsync`, rename, `fsync`
/// of the directory (see the module docs for what that buys on FAT).
fn replace(path: &Path, bytes: &[u8]) -> Result<(), TrybootError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".new");
    let tmp = dir.join(tmp_name);
    let write_err = |source| TrybootError::WriteTemp {
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
        file.write_all(bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(|source| TrybootError::Rename {
            from: tmp.clone(),
            to: path.to_owned(),
            source,
        })
    })();
    if result.is_err() {
        // Best effort: the firmware never reads the leftover.
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| TrybootError::SyncDir {
            path: dir.to_owned(),
            source,
        })
}

/// Reads `path` back and compares it with what was written.
fn verify(path: &Path, expected: &[u8]) -> Result<(), TrybootError> {
    let actual = std::fs::read(path).map_err(|source| TrybootError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    if actual != expected {
        return Err(TrybootError::Verify {
            path: path.to_owned(),
            expected: expected.len(),
            actual: actual.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

    fn parse(text: &str) -> Autoboot {
        Autoboot::parse(text, Path::new("autoboot.txt")).expect("valid")
    }

    struct Fixture {
        dir: tempfile::TempDir,
        tryboot: Tryboot,
    }

    impl Fixture {
        fn new(content: Option<&str>) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("autoboot.txt");
            if let Some(content) = content {
                std::fs::write(&path, content).expect("write");
            }
            let tryboot = Tryboot::new(&path).with_bootloader_dir(dir.path().join("bootloader"));
            Self { dir, tryboot }
        }

        fn text(&self) -> String {
            std::fs::read_to_string(self.tryboot.path()).expect("read")
        }

        fn property(&self, name: &str, bytes: &[u8]) {
            let dir = self.dir.path().join("bootloader");
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(name), bytes).expect("write");
        }
    }

    #[test]
    fn the_documented_file_reads_as_a_pending_trial() {
        let file = parse(DOC_EXAMPLE);
        assert_eq!(file.default_partition(), Some(2));
        assert_eq!(file.tryboot_partition(), Some(3));
        assert!(file.tryboot_a_b());
        assert_eq!(file.render(), DOC_EXAMPLE);

        let f = Fixture::new(Some(DOC_EXAMPLE));
        assert_eq!(f.tryboot.default_slot().expect("read"), Some("A".into()));
        assert_eq!(f.tryboot.trial_slot().expect("read"), Some("B".into()));
    }

    #[test]
    fn sections_follow_the_firmwares_rules() {
        // Lines before any filter apply to every boot; the last value wins;
        // [none] never applies; [tryboot] only with the flag.
        let file = parse("boot_partition=2\n[none]\nboot_partition=9\n[tryboot]\nboot_partition=3\n[all]\n");
        assert_eq!(file.default_partition(), Some(2));
        assert_eq!(file.tryboot_partition(), Some(3));
        assert!(!file.tryboot_a_b());
        let file = parse("[tryboot]\nboot_partition=3\n[all]\nboot_partition=2\n");
        assert_eq!(
            file.tryboot_partition(),
            Some(2),
            "a later [all] overrides [tryboot]"
        );
    }

    #[test]
    fn unknown_lines_and_comments_survive_edits() {
        let original = "# managed by containeros\n[all]\ntryboot_a_b=1\nsome_future_option=7\n\n\
                        boot_partition=2\n[tryboot]\n  # trial\nboot_partition=2\n";
        let f = Fixture::new(Some(original));
        f.tryboot.set_trial("B").expect("trial");
        assert_eq!(
            f.text(),
            "# managed by containeros\n[all]\ntryboot_a_b=1\nsome_future_option=7\n\n\
             boot_partition=2\n[tryboot]\n  # trial\nboot_partition=3\n"
        );
        f.tryboot.commit("B").expect("commit");
        assert_eq!(
            f.text(),
            "# managed by containeros\n[all]\ntryboot_a_b=1\nsome_future_option=7\n\n\
             boot_partition=3\n[tryboot]\n  # trial\nboot_partition=3\n"
        );
    }

    #[test]
    fn crlf_files_and_missing_final_newlines_are_kept() {
        let f = Fixture::new(Some(
            "[all]\r\ntryboot_a_b=1\r\nboot_partition=2\r\n[tryboot]\r\nboot_partition=2",
        ));
        f.tryboot.set_trial("B").expect("trial");
        assert_eq!(
            f.text(),
            "[all]\r\ntryboot_a_b=1\r\nboot_partition=2\r\n[tryboot]\r\nboot_partition=3"
        );
    }

    #[test]
    fn a_trial_leaves_the_committed_slot_alone_and_adds_what_is_missing() {
        // No tryboot_a_b, no [tryboot] section yet.
        let f = Fixture::new(Some("[all]\nboot_partition=2\n"));
        assert_eq!(f.tryboot.trial_slot().expect("read"), None);
        f.tryboot.set_trial("B").expect("trial");
        assert_eq!(
            f.text(),
            "[all]\nboot_partition=2\ntryboot_a_b=1\n[tryboot]\nboot_partition=3\n"
        );
        assert_eq!(f.tryboot.default_slot().expect("read"), Some("A".into()));
        assert_eq!(f.tryboot.trial_slot().expect("read"), Some("B".into()));
        f.tryboot.cancel_trial().expect("cancel");
        assert_eq!(f.tryboot.trial_slot().expect("read"), None);
        assert_eq!(f.tryboot.default_slot().expect("read"), Some("A".into()));
    }

    #[test]
    fn commit_points_every_boot_at_the_slot() {
        let f = Fixture::new(Some(DOC_EXAMPLE));
        f.tryboot.commit("B").expect("commit");
        assert_eq!(
            f.text(),
            "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=3\n"
        );
        assert_eq!(f.tryboot.default_slot().expect("read"), Some("B".into()));
        assert_eq!(f.tryboot.trial_slot().expect("read"), None);
        // The next update tries A.
        f.tryboot.set_trial("A").expect("trial");
        assert_eq!(f.tryboot.trial_slot().expect("read"), Some("A".into()));
        assert_eq!(f.tryboot.default_slot().expect("read"), Some("B".into()));
    }

    #[test]
    fn a_missing_file_is_created_with_all_first() {
        let f = Fixture::new(None);
        assert_eq!(f.tryboot.default_slot().expect("read"), None);
        f.tryboot.set_trial("B").expect("trial");
        assert_eq!(f.text(), DOC_EXAMPLE);
        let f = Fixture::new(None);
        f.tryboot.commit("A").expect("commit");
        assert_eq!(
            f.text(),
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n"
        );
        assert!(!f.dir.path().join("autoboot.txt.new").exists());
    }

    #[test]
    fn unchanged_files_are_not_rewritten() {
        let f = Fixture::new(Some(DOC_EXAMPLE));
        let before = std::fs::metadata(f.tryboot.path()).expect("stat");
        // A blocker on the temporary name makes any write fail: so success
        // proves nothing was written.
        std::fs::create_dir(f.dir.path().join("autoboot.txt.new")).expect("mkdir");
        f.tryboot.set_trial("B").expect("no-op");
        let after = std::fs::metadata(f.tryboot.path()).expect("stat");
        assert_eq!(before.modified().ok(), after.modified().ok());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let f = Fixture::new(Some(DOC_EXAMPLE));
        // As root a read-only directory does not stop a write; a directory
        // where the temporary file goes does.
        std::fs::create_dir(f.dir.path().join("autoboot.txt.new")).expect("mkdir");
        let err = f.tryboot.commit("B").expect_err("blocked");
        assert!(matches!(err, TrybootError::WriteTemp { .. }), "{err}");
        assert!(err.to_string().contains("autoboot.txt.new"), "{err}");
        assert_eq!(f.text(), DOC_EXAMPLE);
    }

    #[test]
    fn verification_catches_a_file_that_differs() {
        let f = Fixture::new(Some(DOC_EXAMPLE));
        let err = verify(f.tryboot.path(), b"[all]\nboot_partition=3\n").expect_err("differs");
        assert!(
            matches!(
                err,
                TrybootError::Verify {
                    expected: 23,
                    actual: 64,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("fsck.vfat"), "{err}");
        verify(f.tryboot.path(), DOC_EXAMPLE.as_bytes()).expect("same");
    }

    #[test]
    fn oversize_files_are_refused_without_writing() {
        // An edit that would push the file past what the firmware reads.
        let short = "[all]\nboot_partition=2\n";
        let fits = format!("{}\n{short}", "#".repeat(MAX_SIZE - 1 - short.len()));
        assert_eq!(fits.len(), MAX_SIZE);
        let f = Fixture::new(Some(&fits));
        assert_eq!(f.tryboot.default_slot().expect("fits"), Some("A".into()));
        let err = f.tryboot.set_trial("B").expect_err("too large");
        assert!(matches!(err, TrybootError::TooLarge { .. }), "{err}");
        assert_eq!(f.text(), fits);
        // A file already too long is not trusted: the firmware ignores its tail.
        let big = format!("#{fits}");
        let f = Fixture::new(Some(&big));
        let err = f.tryboot.default_slot().expect_err("too long");
        assert!(err.to_string().contains("first 512"), "{err}");
        assert!(f.tryboot.commit("A").is_err());
        assert_eq!(f.text(), big);
    }

    #[test]
    fn files_this_backend_cannot_manage_are_refused() {
        for (text, line, needle) in [
            ("[all]\nboot_partition=two\n", 2, "not a number"),
            ("[pi4]\nboot_partition=3\n", 2, "other than [all]"),
        ] {
            let f = Fixture::new(Some(text));
            let err = f.tryboot.set_trial("B").expect_err(text);
            match &err {
                TrybootError::InvalidFile { line: l, reason, .. } => {
                    assert_eq!(*l, line, "{err}");
                    assert!(reason.contains(needle), "{err}");
                }
                other => panic!("unexpected {other}"),
            }
            assert_eq!(f.text(), text);
        }
        // Other options under other filters are none of our business.
        parse("[pi4]\narm_boost=1\n[all]\nboot_partition=2\n");

        // boot_partition on an unconfigured partition names the mapping.
        let f = Fixture::new(Some("[all]\nboot_partition=5\n"));
        let err = f.tryboot.default_slot().expect_err("unknown");
        assert!(err.to_string().contains("boot_partition=5"), "{err}");
        assert!(err.to_string().contains("A=2, B=3"), "{err}");
        // A section order whose edit would not take effect.
        let text = "[tryboot]\nboot_partition=3\n[all]\ntryboot_a_b=1\nboot_partition=2\n";
        let f = Fixture::new(Some(text));
        let err = f.tryboot.set_trial("B").expect_err("overridden");
        assert!(err.to_string().contains("nothing was written"), "{err}");
        assert_eq!(f.text(), text);
        // No committed slot: no trial can be set up safely.
        let f = Fixture::new(Some("# empty\n"));
        assert!(f.tryboot.set_trial("B").is_err());
        assert!(matches!(
            f.tryboot.set_trial("C"),
            Err(TrybootError::UnknownSlot { .. })
        ));
    }

    #[test]
    fn slots_are_configurable_and_validated() {
        let f = Fixture::new(Some("[all]\nboot_partition=5\n"));
        let tryboot = f.tryboot.clone().with_slots([("A", 5), ("B", 6)]).expect("valid");
        assert_eq!(tryboot.default_slot().expect("read"), Some("A".into()));
        tryboot.set_trial("B").expect("trial");
        assert_eq!(
            f.text(),
            "[all]\nboot_partition=5\ntryboot_a_b=1\n[tryboot]\nboot_partition=6\n"
        );
        for slots in [
            vec![("A", 2)],
            vec![("A", 2), ("A", 3)],
            vec![("A", 2), ("B", 2)],
            vec![("A", 0), ("B", 2)],
            vec![("", 2), ("B", 3)],
        ] {
            assert!(Tryboot::new("x").with_slots(slots).is_err());
        }
    }

    #[test]
    fn the_tryboot_flag_and_boot_partition_come_from_the_device_tree() {
        let f = Fixture::new(Some(DOC_EXAMPLE));
        let err = f.tryboot.is_tryboot().expect_err("missing");
        assert!(err.to_string().contains("bootloader/tryboot"), "{err}");
        f.property("tryboot", &[0, 0, 0, 1]);
        f.property("partition", &[0, 0, 0, 3]);
        assert!(f.tryboot.is_tryboot().expect("flag"));
        assert_eq!(f.tryboot.booted_partition().expect("partition"), 3);
        assert_eq!(f.tryboot.booted_slot().expect("slot"), Some("B".into()));
        f.property("tryboot", &[0, 0, 0, 0]);
        assert!(!f.tryboot.is_tryboot().expect("flag"));
        // Big-endian: 1 << 24 is not 1.
        f.property("tryboot", &[1, 0, 0, 0]);
        assert!(!f.tryboot.is_tryboot().expect("flag"));
        f.property("tryboot", &[1]);
        assert!(matches!(
            f.tryboot.is_tryboot(),
            Err(TrybootError::InvalidProperty { len: 1, .. })
        ));
        f.property("partition", &[0, 0, 0, 1]);
        assert_eq!(f.tryboot.booted_slot().expect("slot"), None);
        assert_eq!(Tryboot::REBOOT_ARGUMENT, "0 tryboot");
        assert_eq!(f.tryboot.reboot_argument(), "0 tryboot");
    }
}
