//! The two root filesystem slots: their names, their devices, and which one
//! is running.
//!
//! A slot's device is configured as a path (`/dev/mmcblk0p2`) or, so that
//! the configuration survives a disk showing up under another name (SD card
//! vs. USB boot), as `PARTLABEL=`, `PARTUUID=` or `LABEL=`, resolved through
//! udev's `/dev/disk/by-partlabel`, `by-partuuid` and `by-label` links.
//! `UUID=` is refused: both slots hold the same reproducible filesystem
//! image, so they carry the same filesystem UUID.
//!
//! The booted slot is what the boot script says on the kernel command line
//! (`containeros.slot=A|B`), else the slot whose block device is the one
//! mounted on `/` (its major:minor in `/proc/self/mountinfo` against each
//! slot device's `st_rdev`). Where those facts are read from ([`Host`]) is
//! injectable, so all of this is tested on temp dirs and loop devices.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The kernel command-line parameter the boot scripts set.
pub const CMDLINE_PARAM: &str = "containeros.slot";

/// One of the two root slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot that is not this one.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `"A"` or `"B"`: the name in the bootloader's variables and on the
    /// kernel command line.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Slot {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Self, SlotError> {
        match s {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(SlotError::InvalidSlotName { name: s.to_owned() }),
        }
    }
}

/// How a slot's block device is named in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    /// An absolute path, e.g. `/dev/mmcblk0p2`.
    Path(PathBuf),
    /// `PARTLABEL=rootA`: the GPT partition name.
    PartLabel(String),
    /// `PARTUUID=...`: the GPT partition UUID, or `<disk id>-<nn>` on MBR.
    PartUuid(String),
    /// `LABEL=...`: the filesystem label.
    Label(String),
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Path(p) => write!(f, "{}", p.display()),
            DeviceRef::PartLabel(l) => write!(f, "PARTLABEL={l}"),
            DeviceRef::PartUuid(u) => write!(f, "PARTUUID={u}"),
            DeviceRef::Label(l) => write!(f, "LABEL={l}"),
        }
    }
}

impl std::str::FromStr for DeviceRef {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Self, SlotError> {
        let invalid = |reason: &'static str| SlotError::InvalidDevice {
            device: s.to_owned(),
            reason,
        };
        let named = |value: &str, make: fn(String) -> DeviceRef| {
            if value.is_empty() {
                Err(invalid("the name after '=' is empty"))
            } else {
                Ok(make(value.to_owned()))
            }
        };
        if let Some(v) = s.strip_prefix("PARTLABEL=") {
            named(v, DeviceRef::PartLabel)
        } else if let Some(v) = s.strip_prefix("PARTUUID=") {
            named(v, DeviceRef::PartUuid)
        } else if let Some(v) = s.strip_prefix("LABEL=") {
            named(v, DeviceRef::Label)
        } else if s.starts_with("UUID=") {
            Err(invalid(
                "both slots hold the same filesystem image and so the same UUID; \
                 use PARTLABEL=, PARTUUID= or a device path",
            ))
        } else if s.starts_with('/') {
            Ok(DeviceRef::Path(PathBuf::from(s)))
        } else {
            Err(invalid(
                "use an absolute device path or PARTLABEL=, PARTUUID=, LABEL=",
            ))
        }
    }
}

/// udev's encoding of a name in a `/dev/disk/by-*` link
/// (`encode_devnode_name`): ASCII letters, digits and `#+-.:=@_` and any
/// non-ASCII UTF-8 stay, every other byte becomes `\xHH`.
fn udev_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
    }
    out
}

/// One slot: its name and device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    pub name: Slot,
    pub device: DeviceRef,
}

impl SlotConfig {
    /// `name` ("A" or "B") and `device` as written in the configuration.
    pub fn parse(name: &str, device: &str) -> Result<Self, SlotError> {
        Ok(Self {
            name: name.parse()?,
            device: device.parse()?,
        })
    }
}

/// Where the facts about the running system are read: `/dev`,
/// `/proc/cmdline`, `/proc/self/mountinfo`, or stand-ins for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    dev: PathBuf,
    cmdline: PathBuf,
    mountinfo: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            dev: PathBuf::from("/dev"),
            cmdline: PathBuf::from("/proc/cmdline"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

impl Host {
    /// The real system.
    pub fn new() -> Self {
        Self::default()
    }

    /// `/dev` elsewhere (its `disk/by-*` links are what is read).
    #[must_use]
    pub fn with_dev(mut self, dev: impl Into<PathBuf>) -> Self {
        self.dev = dev.into();
        self
    }

    /// `/proc/cmdline` elsewhere.
    #[must_use]
    pub fn with_cmdline(mut self, path: impl Into<PathBuf>) -> Self {
        self.cmdline = path.into();
        self
    }

    /// `/proc/self/mountinfo` elsewhere.
    #[must_use]
    pub fn with_mountinfo(mut self, path: impl Into<PathBuf>) -> Self {
        self.mountinfo = path.into();
        self
    }
}

/// A device number, as `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    /// Splits a Linux `dev_t` (glibc's `gnu_dev_major`/`gnu_dev_minor`).
    pub fn from_dev_t(dev: u64) -> Self {
        Self {
            major: (((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000)) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xffff_ff00)) as u32,
        }
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// How the booted slot was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// `containeros.slot=` on the kernel command line.
    KernelCmdline,
    /// The device mounted on `/` is the slot's device.
    RootDevice(DevNum),
}

/// The running slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    pub slot: Slot,
    pub detection: Detection,
}

impl Booted {
    /// The slot an update is written to: the other one.
    pub fn inactive(&self) -> Slot {
        self.slot.other()
    }
}

/// Errors of slot configuration and detection; each names what was
/// checked and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("invalid slot name {name:?}: slots are named \"A\" and \"B\"")]
    InvalidSlotName { name: String },
    #[error("invalid slot device {device:?}: {reason}")]
    InvalidDevice { device: String, reason: &'static str },
    #[error("configure slot A and slot B once each (got {got})")]
    InvalidSlots { got: String },
    #[error(
        "cannot find slot {slot}'s device {device}: {} does not resolve ({source}); \
         check the partition with `lsblk -o NAME,PARTLABEL,PARTUUID,LABEL` and the slot's device in the configuration",
        link.display()
    )]
    Resolve {
        slot: Slot,
        device: DeviceRef,
        link: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("slot {slot}'s device {device} ({}) is not usable: {reason}", path.display())]
    NotABlockDevice {
        slot: Slot,
        device: DeviceRef,
        path: PathBuf,
        reason: String,
    },
    #[error("slots A and B are the same device {}: fix the slot devices in the configuration", path.display())]
    SameDevice { path: PathBuf },
    #[error(
        "{}: {CMDLINE_PARAM}={value:?} is neither A nor B; the boot script must pass {CMDLINE_PARAM}=A or {CMDLINE_PARAM}=B",
        path.display()
    )]
    InvalidCmdline { path: PathBuf, value: String },
    #[error("cannot tell the booted slot: {}", checked.join("; "))]
    Undetected {
        /// Every source that was checked and what it said.
        checked: Vec<String>,
    },
}

/// The two slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    a: SlotConfig,
    b: SlotConfig,
}

impl Slots {
    /// Slot A and slot B, in either order.
    pub fn new(first: SlotConfig, second: SlotConfig) -> Result<Self, SlotError> {
        match (first.name, second.name) {
            (Slot::A, Slot::B) => Ok(Self { a: first, b: second }),
            (Slot::B, Slot::A) => Ok(Self { a: second, b: first }),
            (x, y) => Err(SlotError::InvalidSlots {
                got: format!("{x} and {y}"),
            }),
        }
    }

    /// The configuration of `slot`.
    pub fn get(&self, slot: Slot) -> &SlotConfig {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// The device path of `slot`: the configured path, or where its udev
    /// link points. Nothing checks here that the device exists; the
    /// installer's open says so if it does not.
    pub fn device(&self, slot: Slot, host: &Host) -> Result<PathBuf, SlotError> {
        let config = self.get(slot);
        let (dir, name) = match &config.device {
            DeviceRef::Path(path) => return Ok(path.clone()),
            DeviceRef::PartLabel(l) => ("by-partlabel", udev_encode(l)),
            // blkid reports partition UUIDs in lower case.
            DeviceRef::PartUuid(u) => ("by-partuuid", udev_encode(&u.to_ascii_lowercase())),
            DeviceRef::Label(l) => ("by-label", udev_encode(l)),
        };
        let link = host.dev.join("disk").join(dir).join(name);
        std::fs::canonicalize(&link).map_err(|source| SlotError::Resolve {
            slot,
            device: config.device.clone(),
            link,
            source,
        })
    }

    /// The block device number of `slot`'s device.
    fn dev_num(&self, slot: Slot, host: &Host) -> Result<(PathBuf, DevNum), SlotError> {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
        let path = self.device(slot, host)?;
        let not_usable = |reason: String| SlotError::NotABlockDevice {
            slot,
            device: self.get(slot).device.clone(),
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(&path).map_err(|e| not_usable(e.to_string()))?;
        if !meta.file_type().is_block_device() {
            return Err(not_usable("not a block device".into()));
        }
        Ok((path.clone(), DevNum::from_dev_t(meta.rdev())))
    }

    /// The running slot: `containeros.slot=` from the kernel command line,
    /// else the slot whose device is mounted on `/`.
    pub fn booted(&self, host: &Host) -> Result<Booted, SlotError> {
        let mut checked = Vec::new();
        match std::fs::read_to_string(&host.cmdline) {
            Ok(cmdline) => match cmdline_slot(&cmdline) {
                Some(value) => {
                    return value
                        .parse()
                        .map(|slot| Booted {
                            slot,
                            detection: Detection::KernelCmdline,
                        })
                        .map_err(|_| SlotError::InvalidCmdline {
                            path: host.cmdline.clone(),
                            value: value.to_owned(),
                        });
                }
                None => checked.push(format!("{} has no {CMDLINE_PARAM}=", host.cmdline.display())),
            },
            Err(e) => checked.push(format!("cannot read {}: {e}", host.cmdline.display())),
        }

        let root = match std::fs::read_to_string(&host.mountinfo) {
            Ok(text) => match root_device(&text) {
                Some(root) => root,
                None => {
                    checked.push(format!("{} lists no mount on /", host.mountinfo.display()));
                    return Err(SlotError::Undetected { checked });
                }
            },
            Err(e) => {
                checked.push(format!("cannot read {}: {e}", host.mountinfo.display()));
                return Err(SlotError::Undetected { checked });
            }
        };
        let mut found = Vec::new();
        let mut devices = Vec::new();
        for slot in Slot::ALL {
            match self.dev_num(slot, host) {
                Ok((path, num)) => {
                    devices.push(format!("slot {slot} is {} ({num})", path.display()));
                    if num == root {
                        found.push((slot, path));
                    }
                }
                Err(e) => devices.push(e.to_string()),
            }
        }
        match found.as_slice() {
            [(slot, _)] => Ok(Booted {
                slot: *slot,
                detection: Detection::RootDevice(root),
            }),
            [(_, path), _] => Err(SlotError::SameDevice { path: path.clone() }),
            _ => {
                checked.push(format!(
                    "{} mounts device {root} on /, which is no slot's device ({}); \
                     add {CMDLINE_PARAM}=A|B to the kernel command line or fix the slot devices \
                     in the configuration",
                    host.mountinfo.display(),
                    devices.join(", ")
                ));
                Err(SlotError::Undetected { checked })
            }
        }
    }
}

/// The value of the last `containeros.slot=` on a kernel command line (the
/// kernel, too, lets a later parameter override an earlier one).
fn cmdline_slot(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix(CMDLINE_PARAM)?.strip_prefix('='))
        .next_back()
}

/// The device of the mount on `/` that is on top (the last listed).
///
/// A mountinfo line is `id parent major:minor root mountpoint ...`.
fn root_device(mountinfo: &str) -> Option<DevNum> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let devnum = fields.nth(2)?;
            let mountpoint = fields.nth(1)?;
            if mountpoint != "/" {
                return None;
            }
            let (major, minor) = devnum.split_once(':')?;
            Some(DevNum {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            })
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn slot_names_round_trip_and_the_other_slot_is_the_other() {
        for slot in Slot::ALL {
            assert_eq!(slot.to_string().parse::<Slot>().expect("valid"), slot);
            assert_eq!(slot.other().other(), slot);
            assert_ne!(slot.other(), slot);
        }
        for bad in ["", "a", "C", " A"] {
            let err = bad.parse::<Slot>().expect_err(bad);
            assert!(err.to_string().contains("\"A\" and \"B\""), "{err}");
        }
        let booted = Booted {
            slot: Slot::B,
            detection: Detection::KernelCmdline,
        };
        assert_eq!(booted.inactive(), Slot::A);
    }

    #[test]
    fn device_references_parse_and_print_back() {
        for text in [
            "/dev/mmcblk0p2",
            "PARTLABEL=rootA",
            "PARTUUID=6c586e13-02",
            "LABEL=root A",
        ] {
            let device: DeviceRef = text.parse().expect(text);
            assert_eq!(device.to_string(), text);
        }
        for (text, needle) in [
            ("UUID=1234", "same UUID"),
            ("PARTLABEL=", "empty"),
            ("mmcblk0p2", "absolute"),
            ("", "absolute"),
        ] {
            let err = text.parse::<DeviceRef>().expect_err(text);
            assert!(err.to_string().contains(needle), "{err}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn names_are_encoded_like_udev_links() {
        assert_eq!(udev_encode("rootA"), "rootA");
        assert_eq!(udev_encode("root A/1"), "root\\x20A\\x2f1");
        assert_eq!(udev_encode("a#+-.:=@_z"), "a#+-.:=@_z");
        assert_eq!(udev_encode("bööt"), "bööt");
    }

    fn slots(a: &str, b: &str) -> Slots {
        Slots::new(
            SlotConfig::parse("A", a).expect("A"),
            SlotConfig::parse("B", b).expect("B"),
        )
        .expect("slots")
    }

    #[test]
    fn slots_are_one_a_and_one_b() {
        let a = SlotConfig::parse("A", "/dev/sda2").expect("A");
        let b = SlotConfig::parse("B", "/dev/sda3").expect("B");
        let s = Slots::new(b.clone(), a.clone()).expect("either order");
        assert_eq!(s.get(Slot::A), &a);
        assert!(Slots::new(a.clone(), a).is_err());
        assert!(SlotConfig::parse("C", "/dev/sda2").is_err());
    }

    #[test]
    fn labels_resolve_through_the_udev_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = dir.path();
        std::fs::write(dev.join("mmcblk0p2"), b"").expect("node");
        std::fs::write(dev.join("mmcblk0p3"), b"").expect("node");
        for (sub, name, target) in [
            ("by-partlabel", "rootA", "mmcblk0p2"),
            ("by-partuuid", "6c586e13-03", "mmcblk0p3"),
            ("by-label", "my\\x20root", "mmcblk0p3"),
        ] {
            let links = dev.join("disk").join(sub);
            std::fs::create_dir_all(&links).expect("mkdir");
            std::os::unix::fs::symlink(Path::new("../..").join(target), links.join(name)).expect("link");
        }
        let host = Host::new().with_dev(dev);
        let real = |name: &str| std::fs::canonicalize(dev.join(name)).expect("canonical");

        let s = slots("PARTLABEL=rootA", "PARTUUID=6C586E13-03");
        assert_eq!(s.device(Slot::A, &host).expect("A"), real("mmcblk0p2"));
        assert_eq!(s.device(Slot::B, &host).expect("B"), real("mmcblk0p3"));
        let s = slots("/dev/sda2", "LABEL=my root");
        assert_eq!(s.device(Slot::A, &host).expect("A"), Path::new("/dev/sda2"));
        assert_eq!(s.device(Slot::B, &host).expect("B"), real("mmcblk0p3"));

        let s = slots("PARTLABEL=rootX", "PARTLABEL=rootA");
        let err = s.device(Slot::A, &host).expect_err("missing");
        let message = err.to_string();
        assert!(message.contains("slot A's device PARTLABEL=rootX"), "{message}");
        assert!(message.contains("by-partlabel/rootX"), "{message}");
        assert!(message.contains("lsblk"), "{message}");
    }

    #[test]
    fn the_kernel_command_line_names_the_slot() {
        assert_eq!(cmdline_slot("root=/dev/x containeros.slot=B quiet\n"), Some("B"));
        assert_eq!(cmdline_slot("containeros.slot=A containeros.slot=B"), Some("B"));
        assert_eq!(cmdline_slot("containeros.slotx=A containeros.slot"), None);
        assert_eq!(cmdline_slot(""), None);

        let dir = tempfile::tempdir().expect("tempdir");
        let cmdline = dir.path().join("cmdline");
        let host = Host::new()
            .with_cmdline(&cmdline)
            .with_mountinfo(dir.path().join("none"));
        let s = slots("/dev/sda2", "/dev/sda3");
        std::fs::write(&cmdline, "console=ttyS0 containeros.slot=B rootwait\n").expect("write");
        assert_eq!(
            s.booted(&host).expect("booted"),
            Booted {
                slot: Slot::B,
                detection: Detection::KernelCmdline
            }
        );
        std::fs::write(&cmdline, "containeros.slot=b\n").expect("write");
        let err = s.booted(&host).expect_err("invalid");
        assert!(matches!(err, SlotError::InvalidCmdline { .. }), "{err}");
        assert!(err.to_string().contains("containeros.slot=\"b\""), "{err}");
    }

    #[test]
    fn the_root_mount_is_the_last_one_on_slash() {
        let mountinfo = "\
22 1 8:2 / / ro,relatime shared:1 - ext4 /dev/root ro
23 22 0:21 / /proc rw - proc proc rw
30 22 0:26 / /mnt\\040x rw - tmpfs tmpfs rw
";
        assert_eq!(root_device(mountinfo), Some(DevNum { major: 8, minor: 2 }));
        let overlaid = format!("{mountinfo}40 22 0:35 / / rw - overlay overlay rw\n");
        assert_eq!(root_device(&overlaid), Some(DevNum { major: 0, minor: 35 }));
        assert_eq!(root_device("23 22 0:21 / /proc rw - proc proc rw\n"), None);
        assert_eq!(root_device("garbage\n\n"), None);
    }

    #[test]
    fn dev_t_splits_like_glibc() {
        assert_eq!(DevNum::from_dev_t(0x0803), DevNum { major: 8, minor: 3 });
        assert_eq!(DevNum::from_dev_t(0xb302), DevNum { major: 179, minor: 2 });
        // Numbers past 8 bits of minor / 12 bits of major use the high bits.
        assert_eq!(
            DevNum::from_dev_t(0x1231_0345),
            DevNum {
                major: 259,
                minor: 0x12345
            }
        );
    }

    #[test]
    fn nothing_to_go_by_is_an_error_naming_what_was_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmdline = dir.path().join("cmdline");
        let mountinfo = dir.path().join("mountinfo");
        std::fs::write(&cmdline, "console=ttyS0 root=/dev/vda2\n").expect("write");
        std::fs::write(&mountinfo, "22 1 0:35 / / rw - overlay overlay rw\n").expect("write");
        let host = Host::new().with_cmdline(&cmdline).with_mountinfo(&mountinfo);
        let s = slots("/dev/null", "PARTLABEL=rootB");
        let err = s.booted(&host).expect_err("undetected");
        let message = err.to_string();
        for needle in [
            "has no containeros.slot=",
            "mounts device 0:35 on /",
            "/dev/null",
            "not a block device",
            "PARTLABEL=rootB",
            "add containeros.slot=A|B",
        ] {
            assert!(message.contains(needle), "{needle:?} in {message}");
        }
        let host = Host::new()
            .with_cmdline(dir.path().join("missing"))
            .with_mountinfo(dir.path().join("missing"));
        let message = s.booted(&host).expect_err("undetected").to_string();
        assert!(message.matches("cannot read").count() == 2, "{message}");
    }
}
