//! Bootloader environments and A/B boot selection.
//!
//! The OS updater flips the device to a new root filesystem slot by writing a
//! few variables into the bootloader's environment; the boot script then picks
//! the slot and counts down its remaining tries. This crate is that boundary:
//!
//! - [`uboot`]: the binary U-Boot environment (CRC32, single or redundant
//!   copies), read and written byte-compatibly with libubootenv's
//!   `fw_printenv`/`fw_setenv`, configured by the same `fw_env.config`.
//! - [`grub`]: the 1024-byte GRUB environment block, compatible with
//!   `grub-editenv` and GRUB's own `load_env`/`save_env`.
//! - [`bootchooser`]: RAUC-compatible `BOOT_ORDER`/`BOOT_<slot>_LEFT` logic as
//!   pure functions over a variable map, plus [`simulate_boot_attempt`], a
//!   model of what the boot script does on every boot.
//! - [`tryboot`]: the Raspberry Pi firmware's `autoboot.txt` and one-shot
//!   `tryboot` reboot flag.
//!
//! The U-Boot and GRUB backends implement [`BootEnv`]: read every variable,
//! or change a batch of them in a single write that is synced, read back and
//! verified before the call returns. Either the change is on the medium or
//! the caller gets an error and the old boot default stays:
//!
//! ```no_run
//! use containeros_bootenv::{BootEnv, Bootchooser, UbootEnv};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env: Box<dyn BootEnv> = Box::new(UbootEnv::from_config_file("/etc/fw_env.config")?);
//! let chooser = Bootchooser::new(["A", "B"], Bootchooser::DEFAULT_ATTEMPTS)?;
//! // After writing slot B: boot it next, with three tries.
//! env.set(&chooser.set_primary(&env.get_all()?, "B")?)?;
//! // After a healthy boot of B: commit it.
//! env.set(&chooser.mark_good(&env.get_all()?, "B")?)?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Tryboot`] gives the same guarantees for its file but not that trait:
//! its trial is one boot long and needs a reboot argument
//! ([`Tryboot::REBOOT_ARGUMENT`]), which counters cannot express (the
//! module docs say why):
//!
//! ```no_run
//! use containeros_bootenv::Tryboot;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tryboot = Tryboot::new("/boot/firmware/autoboot.txt");
//! // After writing slot B: the next reboot with the flag tries it, once.
//! tryboot.set_trial("B")?;
//! // ... reboot with `Tryboot::REBOOT_ARGUMENT` through logind ...
//! // Running B with the flag, healthy: every boot loads B from now on.
//! if tryboot.is_tryboot()? {
//!     tryboot.commit("B")?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Not here: MTD/UBI flash devices (erase blocks, NOR obsolete flags) are
//! refused rather than half-supported.

pub mod bootchooser;
pub mod grub;
pub mod tryboot;
pub mod uboot;

use std::collections::BTreeMap;

pub use bootchooser::{BootAttempt, Bootchooser, BootchooserError, SlotState, simulate_boot_attempt};
pub use grub::{GrubEnv, GrubError};
pub use tryboot::{Autoboot, Tryboot, TrybootError};
pub use uboot::{FwEnvConfig, UbootEnv, UbootError};

/// Every variable of an environment, by name.
pub type Vars = BTreeMap<String, String>;

/// A batch of changes: `Some(value)` sets a variable, `None` deletes it.
pub type Changes = BTreeMap<String, Option<String>>;

/// An error of either backend.
///
/// Kept as one enum so that [`BootEnv`] is object safe and a caller can hold a
/// `Box<dyn BootEnv>` chosen from configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The U-Boot environment failed.
    #[error(transparent)]
    Uboot(#[from] UbootError),
    /// The GRUB environment block failed.
    #[error(transparent)]
    Grub(#[from] GrubError),
}

/// A bootloader environment that can be read and changed atomically.
pub trait BootEnv: std::fmt::Debug {
    /// Reads every variable.
    fn get_all(&self) -> Result<Vars, Error>;

    /// Applies `changes` in one write: all of them reach the medium or none
    /// do. The write is synced and read back before this returns. When the
    /// changes would not alter anything, nothing is written (flash wear).
    fn set(&self, changes: &Changes) -> Result<(), Error>;

    /// Reads one variable.
    fn get(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.get_all()?.remove(name))
    }
}
