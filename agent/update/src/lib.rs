//! OS updates. This crate holds the parts that touch a slot:
//!
//! - [`http`]: the one HTTP client the agent uses for updates — rustls with
//!   the `ring` provider (no aws-lc, no OpenSSL: it builds for ARMv5 and
//!   MIPS), per-read timeouts rather than a total one, so a slow satellite
//!   link is fine as long as bytes keep coming.
//! - [`install`](mod@install): streaming a root image from HTTPS or a local file straight
//!   into the inactive slot — no temporary copy — refusing an image larger
//!   than the slot before a byte is written, hashing every byte as it is
//!   written, resuming a broken download with `Range` + `If-Range`, and
//!   verifying size and SHA-256 against the signed manifest before the
//!   caller may ever mark the slot bootable.
//! - [`slots`]: the A/B slot model — slot devices by path, `PARTLABEL=`,
//!   `PARTUUID=` or `LABEL=`, and which slot is running (the kernel command
//!   line, else the device mounted on `/`).
//! - [`state`]: the persisted update state machine (Idle → Downloading →
//!   Written → Verified → PendingReboot → Trying → Committed | RolledBack),
//!   written atomically at each transition, and [`recover`]: the pure
//!   decision of what to do after a restart, crash or power cut in any
//!   state.
//!
//! Bootloader switching is `containeros-bootenv`'s; the daemon wires the
//! two together.

pub mod http;
pub mod install;
pub mod slots;
pub mod state;

pub use install::{Expected, InstallError, Report, Retry, Source, install};
pub use slots::{Booted, DeviceRef, Host, Slot, SlotConfig, SlotError, Slots};
pub use state::{Action, Record, State, StateError, Store, TargetBoot, Transition, Update, recover};
