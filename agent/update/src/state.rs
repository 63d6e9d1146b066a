//! The OS update's persisted state machine.
//!
//! ```text
//! Idle ─begin─▶ Downloading ─written─▶ Written ─verified─▶ Verified ─pending_reboot─▶ PendingReboot
//!               (↺ progress)                                   │                            │
//!                                                              └─trying─▶ Trying ◀─trying───┘
//!                                                                           │
//!                                                                           └─commit─▶ Committed
//! PendingReboot, Trying ─roll_back─▶ RolledBack
//! Committed, RolledBack ─begin─▶ Downloading              (the next update)
//! any state but Idle and Trying ─abort─▶ Idle             (keeping the error)
//! ```
//!
//! `Verified ─trying─▶ Trying` is the device having rebooted into the
//! target after the bootloader was switched but before `PendingReboot` was
//! recorded.
//!
//! A [`Record`] is the whole state: one small TOML file on the data
//! partition, written by [`Store::apply`] at each transition and at no
//! other time (no periodic writes to flash), atomically: temporary file in
//! the same directory, `fsync`, rename, `fsync` of the directory. An
//! illegal transition is an error and nothing is written.
//!
//! After a restart — a crash, `kill -9`, a power cut, or the reboot the
//! update asked for — the daemon loads the record and asks [`recover`] what
//! to do, given the slot it is running from, this boot's id and what the
//! bootloader says about the target slot. [`recover`] is pure: the daemon
//! does the bootloader and D-Bus calls the [`Action`] names. The rule it
//! keeps above all: a slot is never made bootable before its image is
//! verified, and never written while it is running or while the bootloader
//! could boot it.
//!
//! The file is read by both slots' agents (the new one writes `Trying`,
//! the old one may read `RolledBack` after a fallback), so unknown fields
//! are ignored rather than refused: an older agent must read a newer
//! agent's record.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use containeros_trust::Digest;
use serde::{Deserialize, Serialize};

use crate::slots::Slot;

/// Where an update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// No update under way (the last one's outcome may still be recorded).
    #[default]
    Idle,
    /// The image is being written into the target slot.
    Downloading,
    /// Every byte is in the slot and flushed.
    Written,
    /// The slot's content matches the manifest's size and SHA-256: only now
    /// may the bootloader be pointed at it.
    Verified,
    /// The bootloader will try the target on the next (tryboot: flagged)
    /// reboot; waiting for that reboot.
    PendingReboot,
    /// Running the target slot on trial: health checks decide.
    Trying,
    /// The target slot passed and is the bootloader's default.
    Committed,
    /// The trial failed; the previous slot runs and is the default.
    RolledBack,
}

impl State {
    /// The name used in the file, e.g. `pending-reboot`.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Downloading => "downloading",
            State::Written => "written",
            State::Verified => "verified",
            State::PendingReboot => "pending-reboot",
            State::Trying => "trying",
            State::Committed => "committed",
            State::RolledBack => "rolled-back",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The update a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The slot being written and tried.
    pub target: Slot,
    /// The slot running when the update began, the one to fall back to.
    pub previous: Slot,
    /// The release manifest's version.
    pub version: u64,
    /// The OS image's SHA-256 and size, from the signed manifest.
    pub sha256: Digest,
    pub size: u64,
    /// When the update began, seconds since the Unix epoch.
    pub started: u64,
    /// Bytes of the image in the slot at the last transition.
    #[serde(default)]
    pub written: u64,
    /// The boot id (`/proc/sys/kernel/random/boot_id`) when the reboot into
    /// the trial was asked for: a different one later means that reboot
    /// happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// The persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Record {
    pub state: State,
    /// Transitions so far, over every update: only ever grows, so two
    /// records can be ordered and a stale copy recognised.
    #[serde(default)]
    pub transitions: u64,
    /// The current update, or in `Idle` the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    /// Why the last update was aborted or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What happened, as the daemon reports it to [`Record::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Start writing `update` (its `written` and `boot_id` are reset).
    /// From `Idle`, `Committed` or `RolledBack`.
    Begin(Update),
    /// Bytes written so far, or 0 when the install starts over. From
    /// `Downloading`; persist it rarely (flash wear), e.g. when a download
    /// breaks.
    Progress { written: u64 },
    /// The installer wrote and flushed every byte. From `Downloading`.
    Written,
    /// The slot matches the manifest. From `Written`.
    Verified,
    /// The bootloader now tries the target; `boot_id` is this boot's. From
    /// `Verified`.
    PendingReboot { boot_id: String },
    /// Running the target on trial. From `PendingReboot`, or `Verified`
    /// when the device rebooted into the target before `PendingReboot` was
    /// recorded.
    Trying,
    /// The target passed its health checks and the bootloader commits it.
    /// From `Trying`.
    Commit,
    /// The trial failed. From `PendingReboot` or `Trying`.
    RollBack { reason: String },
    /// Give up; back to `Idle` with `error` as the last error. From any
    /// state but `Idle` and `Trying` (a trial ends in a commit or a
    /// rollback).
    Abort { error: String },
}

impl Transition {
    fn name(&self) -> &'static str {
        match self {
            Transition::Begin(_) => "begin",
            Transition::Progress { .. } => "progress",
            Transition::Written => "written",
            Transition::Verified => "verified",
            Transition::PendingReboot { .. } => "pending-reboot",
            Transition::Trying => "trying",
            Transition::Commit => "commit",
            Transition::RollBack { .. } => "roll-back",
            Transition::Abort { .. } => "abort",
        }
    }
}

/// Errors of the state file and its transitions.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read update state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "update state {path} is corrupt ({reason}); continuing as if no update were under way — \
         remove the file to silence this"
    )]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write update state {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot rename {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sync directory {path}: {source}")]
    SyncDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("update state {from}: transition {transition} is not allowed; nothing was written")]
    IllegalTransition { from: State, transition: &'static str },
    #[error("update state {state}: {reason}; nothing was written")]
    InvalidTransition { state: State, reason: String },
}

impl Record {
    /// The record after `transition`, or an error when `transition` is not
    /// allowed from this state. Pure: [`Store::apply`] persists.
    pub fn apply(&self, transition: Transition) -> Result<Record, StateError> {
        use State::*;
        let illegal = || StateError::IllegalTransition {
            from: self.state,
            transition: transition.name(),
        };
        let invalid = |reason: String| StateError::InvalidTransition {
            state: self.state,
            reason,
        };
        let mut next = self.clone();
        next.transitions = self.transitions.saturating_add(1);
        // Every state but Idle has an update; a record that breaks this
        // (hand-edited) cannot move on except by Begin or Abort.
        let update = next.update.as_mut();
        match (&transition, self.state, update) {
            (Transition::Begin(u), Idle | Committed | RolledBack, _) => {
                if u.target == u.previous {
                    return Err(invalid(format!(
                        "the target slot {} is the running slot; write the other one",
                        u.target
                    )));
                }
                next.state = Downloading;
                next.update = Some(Update {
                    written: 0,
                    boot_id: None,
                    ..u.clone()
                });
                next.last_error = None;
            }
            (Transition::Progress { written }, Downloading, Some(u)) => {
                if *written > u.size {
                    return Err(invalid(format!(
                        "{written} bytes written is more than the image's {}",
                        u.size
                    )));
                }
                u.written = *written;
            }
            (Transition::Written, Downloading, Some(u)) => {
                u.written = u.size;
                next.state = Written;
            }
            (Transition::Verified, Written, Some(_)) => next.state = Verified,
            (Transition::PendingReboot { boot_id }, Verified, Some(u)) => {
                u.boot_id = Some(boot_id.clone());
                next.state = PendingReboot;
            }
            (Transition::Trying, PendingReboot | Verified, Some(_)) => next.state = Trying,
            (Transition::Commit, Trying, Some(_)) => next.state = Committed,
            (Transition::RollBack { reason }, PendingReboot | Trying, Some(_)) => {
                next.state = RolledBack;
                next.last_error = Some(reason.clone());
            }
            (Transition::Abort { error }, s, _) if s != Idle && s != Trying => {
                next.state = Idle;
                next.last_error = Some(error.clone());
            }
            _ => return Err(illegal()),
        }
        Ok(next)
    }
}

/// The state file.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The record at `path`, e.g. `/data/containeros/update.toml`. Its
    /// directory must exist.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record; a missing file is `Idle`. A file that cannot be parsed
    /// is [`StateError::Parse`] naming it — never a panic.
    pub fn load(&self) -> Result<Record, StateError> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let parse = |reason: String| StateError::Parse {
            path: self.path.clone(),
            reason,
        };
        let text = String::from_utf8(text).map_err(|_| parse("not UTF-8 text".into()))?;
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start].matches('\n').count() + 1);
            parse(match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_owned(),
            })
        })
    }

    /// [`Self::load`], with an unreadable or corrupt file taken as `Idle`
    /// and its error handed back for a warning. The daemon's policy: a lost
    /// record must not stop the device from updating ever again. `Idle`
    /// here means "no update known", not "the running slot is committed":
    /// before writing the other slot, check with the bootloader that the
    /// running slot is its default (it may be on an uncommitted trial).
    pub fn load_or_idle(&self) -> (Record, Option<StateError>) {
        match self.load() {
            Ok(record) => (record, None),
            Err(e) => (Record::default(), Some(e)),
        }
    }

    /// Applies `transition` to `record` and persists the result, which is
    /// returned. On any error nothing changed: the file holds `record` (or
    /// whatever it held), and the caller keeps `record`.
    pub fn apply(&self, record: &Record, transition: Transition) -> Result<Record, StateError> {
        let next = record.apply(transition)?;
        self.save(&next)?;
        Ok(next)
    }

    /// Writes `record` atomically: temporary file, `fsync`, rename,
    /// `fsync` of the directory.
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let text = toml::to_string(record).map_err(|e| StateError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let write_err = |source| StateError::Write {
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
            file.write_all(text.as_bytes()).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
            std::fs::rename(&tmp, &self.path).map_err(|source| StateError::Rename {
                from: tmp.clone(),
                to: self.path.clone(),
                source,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::SyncDir {
                path: dir.to_owned(),
                source,
            })
    }
}

/// What the bootloader says about the target slot, mapped by the daemon
/// from its backend:
///
/// | | U-Boot/GRUB (bootchooser) | Raspberry Pi tryboot |
/// | --- | --- | --- |
/// | `Next` | the primary (first in `BOOT_ORDER` with tries left) | `[tryboot]`, or `[all]`, loads it |
/// | `Fallback` | good, but not the primary | — |
/// | `Disabled` | bad: out of `BOOT_ORDER` or no tries left | neither section loads it |
/// | `Unknown` | variables missing or unreadable | `autoboot.txt` unreadable |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetBoot {
    /// The target is what the bootloader boots next (on a trial reboot).
    Next,
    /// The target is bootable, but only if the other slot fails.
    Fallback,
    /// The bootloader will not boot the target.
    Disabled,
    /// The bootloader's state cannot be read.
    Unknown,
}

/// What the daemon should do after a restart; see [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No update is under way.
    Nothing,
    /// Write the image into `slot` again. When `disable_first`, first make
    /// sure the bootloader cannot boot `slot` (bootchooser: mark it bad;
    /// tryboot: cancel the trial): it is about to hold a partial image.
    /// `resume_from` is what the interrupted attempt had recorded as
    /// written; start over from 0 unless those bytes are re-hashed from the
    /// slot first.
    Install {
        slot: Slot,
        disable_first: bool,
        resume_from: u64,
    },
    /// Check `slot` against the record's size and SHA-256 (re-reading it),
    /// disabling it in the bootloader first as for `Install`; then record
    /// `Verified`, or start over.
    Verify { slot: Slot, disable_first: bool },
    /// Make `slot` the bootloader's next (trial) boot, record
    /// `PendingReboot`, and reboot.
    MakeNext { slot: Slot },
    /// The bootloader already tries `slot` next: ask for the reboot (again;
    /// with tryboot, with its reboot argument).
    Reboot { slot: Slot },
    /// `slot` is running on trial: record `Trying` if not yet, run the
    /// health checks, then commit it (record `Committed`) or roll back.
    CheckHealth { slot: Slot },
    /// The trial of `bad` failed: make sure the bootloader boots `good` and
    /// never `bad`, record `RolledBack` if not yet, and reboot when
    /// `reboot` (`bad` is the running slot).
    RollBack {
        bad: Slot,
        good: Slot,
        reboot: bool,
        reason: String,
    },
    /// The update is over (`Committed` or `RolledBack`) and the running slot
    /// is the one it should be: report it, nothing else.
    Finished { state: State },
    /// The record does not fit this boot: make `disable` unbootable (if
    /// any, best effort), then record `Abort` with `reason`.
    Abandon { reason: String, disable: Option<Slot> },
}

/// Decides what to do with `record` on a (re)start, running from `booted`
/// in the boot with id `boot_id`, the bootloader saying `target` about the
/// record's target slot.
pub fn recover(record: &Record, booted: Slot, boot_id: &str, target: TargetBoot) -> Action {
    use State::*;
    if record.state == Idle {
        return Action::Nothing;
    }
    let Some(update) = &record.update else {
        return Action::Abandon {
            reason: format!("the update state says {} but names no update", record.state),
            disable: None,
        };
    };
    let (new, old) = (update.target, update.previous);
    if new == old {
        return Action::Abandon {
            reason: format!("the update state names slot {new} as both target and previous"),
            disable: None,
        };
    }
    let on_target = booted == new;
    let roll_back = |reboot: bool, reason: String| Action::RollBack {
        bad: new,
        good: old,
        reboot,
        reason,
    };
    match record.state {
        Idle => Action::Nothing,
        Downloading | Written if on_target => Action::Abandon {
            reason: format!(
                "slot {new} is running although its image was never verified ({}); \
                 the update is abandoned and the next one writes slot {old}",
                record.state
            ),
            disable: None,
        },
        Downloading => Action::Install {
            slot: new,
            disable_first: target != TargetBoot::Disabled,
            resume_from: update.written,
        },
        Written => Action::Verify {
            slot: new,
            disable_first: target != TargetBoot::Disabled,
        },
        // The bootloader was pointed at the target and the device rebooted
        // into it before PendingReboot was recorded: that is the trial.
        Verified if on_target => Action::CheckHealth { slot: new },
        Verified => Action::MakeNext { slot: new },
        PendingReboot | Trying if on_target => Action::CheckHealth { slot: new },
        PendingReboot => {
            let rebooted = match &update.boot_id {
                Some(id) => id != boot_id,
                // No boot id recorded: trust the bootloader.
                None => target != TargetBoot::Next,
            };
            match (rebooted, target) {
                (false, TargetBoot::Next) => Action::Reboot { slot: new },
                (false, view) => Action::Abandon {
                    reason: format!(
                        "the bootloader no longer tries slot {new} next ({view:?}) and the device \
                         has not rebooted: the trial was withdrawn outside the agent"
                    ),
                    disable: Some(new),
                },
                (true, _) => roll_back(
                    false,
                    format!(
                        "the device rebooted into slot {old} instead of trying slot {new}: \
                         slot {new} did not come up (or the trial reboot was lost)"
                    ),
                ),
            }
        }
        Trying => roll_back(
            false,
            format!("the trial boot of slot {new} ended without a commit; slot {old} is running again"),
        ),
        Committed if on_target => Action::Finished { state: Committed },
        Committed => Action::Abandon {
            reason: format!(
                "slot {new} was committed but slot {old} is running: the bootloader fell back after the commit"
            ),
            disable: None,
        },
        RolledBack if on_target => {
            roll_back(true, format!("slot {new} was rolled back but is still running"))
        }
        RolledBack => match target {
            TargetBoot::Next | TargetBoot::Fallback => roll_back(
                false,
                format!("slot {new} was rolled back but the bootloader would still boot it"),
            ),
            TargetBoot::Disabled | TargetBoot::Unknown => Action::Finished { state: RolledBack },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT_1: &str = "boot-1";
    const BOOT_2: &str = "boot-2";

    fn update() -> Update {
        Update {
            target: Slot::B,
            previous: Slot::A,
            version: 42,
            sha256: Digest::of(b"image"),
            size: 1000,
            started: 1_700_000_000,
            written: 0,
            boot_id: None,
        }
    }

    fn record(state: State) -> Record {
        Record {
            state,
            transitions: 7,
            update: (state != State::Idle).then(|| Update {
                boot_id: Some(BOOT_1.into()),
                written: 400,
                ..update()
            }),
            last_error: None,
        }
    }

    #[test]
    fn a_whole_update_walks_the_states() {
        let steps = [
            (Transition::Begin(update()), State::Downloading),
            (Transition::Progress { written: 500 }, State::Downloading),
            (Transition::Written, State::Written),
            (Transition::Verified, State::Verified),
            (
                Transition::PendingReboot {
                    boot_id: BOOT_1.into(),
                },
                State::PendingReboot,
            ),
            (Transition::Trying, State::Trying),
            (Transition::Commit, State::Committed),
            (Transition::Begin(update()), State::Downloading),
            (
                Transition::Abort {
                    error: "disk full".into(),
                },
                State::Idle,
            ),
        ];
        let mut r = Record::default();
        for (i, (t, expected)) in steps.into_iter().enumerate() {
            r = r.apply(t).expect("legal");
            assert_eq!(r.state, expected);
            assert_eq!(r.transitions, i as u64 + 1);
        }
        assert_eq!(r.last_error.as_deref(), Some("disk full"));
        let u = r.update.as_ref().expect("kept for reporting");
        assert_eq!((u.written, u.target), (0, Slot::B));
    }

    #[test]
    fn illegal_transitions_are_refused() {
        use State::*;
        let states = [
            Idle,
            Downloading,
            Written,
            Verified,
            PendingReboot,
            Trying,
            Committed,
            RolledBack,
        ];
        let transitions = [
            Transition::Begin(update()),
            Transition::Progress { written: 1 },
            Transition::Written,
            Transition::Verified,
            Transition::PendingReboot { boot_id: "x".into() },
            Transition::Trying,
            Transition::Commit,
            Transition::RollBack { reason: "r".into() },
            Transition::Abort { error: "e".into() },
        ];
        let allowed: &[(State, &str)] = &[
            (Idle, "begin"),
            (Committed, "begin"),
            (RolledBack, "begin"),
            (Downloading, "progress"),
            (Downloading, "written"),
            (Written, "verified"),
            (Verified, "pending-reboot"),
            (Verified, "trying"),
            (PendingReboot, "trying"),
            (Trying, "commit"),
            (PendingReboot, "roll-back"),
            (Trying, "roll-back"),
            (Downloading, "abort"),
            (Written, "abort"),
            (Verified, "abort"),
            (PendingReboot, "abort"),
            (Committed, "abort"),
            (RolledBack, "abort"),
        ];
        for state in states {
            for t in &transitions {
                let result = record(state).apply(t.clone());
                let legal = allowed.contains(&(state, t.name()));
                assert_eq!(result.is_ok(), legal, "{state} --{}-->: {result:?}", t.name());
                if let Err(e) = result {
                    assert!(e.to_string().contains("nothing was written"), "{e}");
                }
            }
        }
        // Legal in principle, invalid in its data.
        let same = Update {
            target: Slot::A,
            ..update()
        };
        assert!(matches!(
            Record::default().apply(Transition::Begin(same)),
            Err(StateError::InvalidTransition { .. })
        ));
        assert!(
            record(Downloading)
                .apply(Transition::Progress { written: 1001 })
                .is_err()
        );
    }

    fn scratch() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("update.toml"));
        (dir, store)
    }

    #[test]
    fn records_persist_and_a_missing_file_is_idle() {
        let (dir, store) = scratch();
        assert_eq!(store.load().expect("missing"), Record::default());
        let r = store
            .apply(&Record::default(), Transition::Begin(update()))
            .expect("begin");
        let r = store
            .apply(&r, Transition::Progress { written: 250 })
            .expect("progress");
        assert_eq!(store.load().expect("load"), r);
        let text = std::fs::read_to_string(store.path()).expect("read");
        assert!(text.contains("state = \"downloading\""), "{text}");
        assert!(
            text.contains(&format!("sha256 = \"{}\"", Digest::of(b"image"))),
            "{text}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, ["update.toml"]);
    }

    #[test]
    fn an_illegal_transition_writes_nothing() {
        let (_dir, store) = scratch();
        let r = store
            .apply(&Record::default(), Transition::Begin(update()))
            .expect("begin");
        let before = std::fs::read(store.path()).expect("read");
        assert!(store.apply(&r, Transition::Commit).is_err());
        assert_eq!(std::fs::read(store.path()).expect("read"), before);
    }

    #[test]
    fn a_failed_write_keeps_the_old_record() {
        let (dir, store) = scratch();
        let r = store
            .apply(&Record::default(), Transition::Begin(update()))
            .expect("begin");
        let before = std::fs::read(store.path()).expect("read");
        // Root ignores directory permissions; a directory where the
        // temporary file goes stops the write.
        std::fs::create_dir(dir.path().join("update.toml.tmp")).expect("mkdir");
        let err = store.apply(&r, Transition::Written).expect_err("blocked");
        assert!(err.to_string().contains("update.toml.tmp"), "{err}");
        assert_eq!(std::fs::read(store.path()).expect("read"), before);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_loads_as_idle() {
        let (_dir, store) = scratch();
        for junk in [
            &b"state = \"downloading\"\ntransitions = "[..],
            b"state = \"exploded\"\n",
            b"\xff\xfe",
            b"state = \"downloading\"\n[update]\ntarget = \"C\"\n",
        ] {
            std::fs::write(store.path(), junk).expect("write");
            let err = store.load().expect_err("corrupt");
            assert!(matches!(err, StateError::Parse { .. }), "{err}");
            assert!(err.to_string().contains("update.toml"), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
            let (record, warning) = store.load_or_idle();
            assert_eq!(record, Record::default());
            assert!(warning.is_some());
        }
    }

    #[test]
    fn unknown_fields_from_a_newer_agent_are_ignored() {
        let (_dir, store) = scratch();
        let text = format!(
            "state = \"trying\"\ntransitions = 9\nfuture = 1\n[update]\ntarget = \"B\"\nprevious = \"A\"\n\
             version = 3\nsha256 = \"{}\"\nsize = 10\nstarted = 5\ndelta = true\n",
            Digest::of(b"x")
        );
        std::fs::write(store.path(), text).expect("write");
        let r = store.load().expect("tolerated");
        assert_eq!(r.state, State::Trying);
        assert_eq!(r.update.expect("update").written, 0);
    }

    /// Which slot runs in a recovery case, relative to the record.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Running {
        Target,
        Previous,
    }

    /// One row: the state, which slot runs, the bootloader's view (`None`:
    /// any), whether this is the boot in which PendingReboot was recorded
    /// (`None`: either), and what to do.
    type Row = (State, Running, Option<TargetBoot>, Option<bool>, Action);

    #[test]
    fn recovery_covers_every_state_slot_and_bootloader_view() {
        use Running::*;
        use State::*;
        use TargetBoot::*;
        let (b, a) = (Slot::B, Slot::A);
        let install = |disable_first| Action::Install {
            slot: b,
            disable_first,
            resume_from: 400,
        };
        let verify = |disable_first| Action::Verify {
            slot: b,
            disable_first,
        };
        let check = Action::CheckHealth { slot: b };
        let roll_back = |reboot| Action::RollBack {
            bad: b,
            good: a,
            reboot,
            reason: String::new(),
        };
        let abandon = |disable| Action::Abandon {
            reason: String::new(),
            disable,
        };
        let rows: Vec<Row> = vec![
            (Idle, Target, None, None, Action::Nothing),
            (Idle, Previous, None, None, Action::Nothing),
            // Never write or verify a running slot.
            (Downloading, Target, None, None, abandon(None)),
            (Written, Target, None, None, abandon(None)),
            // Not bootable before it is verified: disable unless it is.
            (Downloading, Previous, Some(Next), None, install(true)),
            (Downloading, Previous, Some(Fallback), None, install(true)),
            (Downloading, Previous, Some(Unknown), None, install(true)),
            (Downloading, Previous, Some(Disabled), None, install(false)),
            (Written, Previous, Some(Next), None, verify(true)),
            (Written, Previous, Some(Fallback), None, verify(true)),
            (Written, Previous, Some(Unknown), None, verify(true)),
            (Written, Previous, Some(Disabled), None, verify(false)),
            (Verified, Previous, None, None, Action::MakeNext { slot: b }),
            (Verified, Target, None, None, check.clone()),
            (PendingReboot, Target, None, None, check.clone()),
            (
                PendingReboot,
                Previous,
                Some(Next),
                Some(true),
                Action::Reboot { slot: b },
            ),
            (
                PendingReboot,
                Previous,
                Some(Fallback),
                Some(true),
                abandon(Some(b)),
            ),
            (
                PendingReboot,
                Previous,
                Some(Disabled),
                Some(true),
                abandon(Some(b)),
            ),
            (
                PendingReboot,
                Previous,
                Some(Unknown),
                Some(true),
                abandon(Some(b)),
            ),
            (PendingReboot, Previous, None, Some(false), roll_back(false)),
            (Trying, Target, None, None, check.clone()),
            (Trying, Previous, None, None, roll_back(false)),
            (
                Committed,
                Target,
                None,
                None,
                Action::Finished { state: Committed },
            ),
            (Committed, Previous, None, None, abandon(None)),
            (RolledBack, Target, None, None, roll_back(true)),
            (RolledBack, Previous, Some(Next), None, roll_back(false)),
            (RolledBack, Previous, Some(Fallback), None, roll_back(false)),
            (
                RolledBack,
                Previous,
                Some(Disabled),
                None,
                Action::Finished { state: RolledBack },
            ),
            (
                RolledBack,
                Previous,
                Some(Unknown),
                None,
                Action::Finished { state: RolledBack },
            ),
        ];
        let states = [
            Idle,
            Downloading,
            Written,
            Verified,
            PendingReboot,
            Trying,
            Committed,
            RolledBack,
        ];
        let mut used = vec![0; rows.len()];
        for state in states {
            for running in [Target, Previous] {
                for view in [Next, Fallback, Disabled, Unknown] {
                    for same_boot in [true, false] {
                        let matching: Vec<usize> = rows
                            .iter()
                            .enumerate()
                            .filter(|(_, (s, r, v, sb, _))| {
                                *s == state
                                    && *r == running
                                    && v.is_none_or(|v| v == view)
                                    && sb.is_none_or(|sb| sb == same_boot)
                            })
                            .map(|(i, _)| i)
                            .collect();
                        let case = format!("{state} running {running:?} view {view:?} same boot {same_boot}");
                        assert_eq!(matching.len(), 1, "{case}: rows {matching:?}");
                        used[matching[0]] += 1;
                        let booted = match running {
                            Target => b,
                            Previous => a,
                        };
                        let boot_id = if same_boot { BOOT_1 } else { BOOT_2 };
                        let action = recover(&record(state), booted, boot_id, view);
                        assert_eq!(
                            without_reason(action),
                            without_reason(rows[matching[0]].4.clone()),
                            "{case}"
                        );
                    }
                }
            }
        }
        assert!(used.iter().all(|n| *n > 0), "every row is reachable: {used:?}");
    }

    /// Reasons are for people; the table compares the decisions.
    fn without_reason(action: Action) -> Action {
        match action {
            Action::RollBack {
                bad, good, reboot, ..
            } => Action::RollBack {
                bad,
                good,
                reboot,
                reason: String::new(),
            },
            Action::Abandon { disable, .. } => Action::Abandon {
                reason: String::new(),
                disable,
            },
            other => other,
        }
    }

    #[test]
    fn without_a_boot_id_the_bootloader_decides_whether_the_reboot_happened() {
        let mut r = record(State::PendingReboot);
        if let Some(u) = r.update.as_mut() {
            u.boot_id = None;
        }
        assert_eq!(
            recover(&r, Slot::A, BOOT_2, TargetBoot::Next),
            Action::Reboot { slot: Slot::B }
        );
        assert!(matches!(
            recover(&r, Slot::A, BOOT_2, TargetBoot::Disabled),
            Action::RollBack { reboot: false, .. }
        ));
    }

    #[test]
    fn inconsistent_records_are_abandoned_with_a_reason() {
        let mut r = record(State::Trying);
        r.update = None;
        let Action::Abandon { reason, .. } = recover(&r, Slot::A, BOOT_1, TargetBoot::Next) else {
            panic!("abandon");
        };
        assert!(reason.contains("names no update"), "{reason}");
        let mut r = record(State::Downloading);
        if let Some(u) = r.update.as_mut() {
            u.previous = Slot::B;
        }
        assert!(matches!(
            recover(&r, Slot::A, BOOT_1, TargetBoot::Next),
            Action::Abandon { .. }
        ));
        let reason = match recover(&record(State::Trying), Slot::A, BOOT_2, TargetBoot::Disabled) {
            Action::RollBack { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason.contains("slot B") && reason.contains("slot A"), "{reason}");
    }
}
