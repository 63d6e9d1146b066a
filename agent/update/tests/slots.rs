//! Booted-slot detection by the root device against real block devices
//! (loop devices), and slot devices found through udev-style links. Needs
//! root for losetup; skipped with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use containeros_update::slots::{Detection, DevNum};
use containeros_update::{Booted, Host, Slot, SlotConfig, SlotError, Slots};

/// A loop device over a small file, detached on drop.
struct LoopDev {
    dev: PathBuf,
    _file: tempfile::NamedTempFile,
}

impl LoopDev {
    /// `None` (after saying why) when not root.
    fn new() -> Option<Self> {
        if !is_root() {
            eprintln!("skipped: loop devices need root");
            return None;
        }
        let file = tempfile::NamedTempFile::new().expect("backing file");
        file.as_file().set_len(1 << 20).expect("size");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file.path())
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(Self { dev, _file: file })
    }

    fn num(&self) -> DevNum {
        use std::os::unix::fs::MetadataExt as _;
        DevNum::from_dev_t(std::fs::metadata(&self.dev).expect("stat").rdev())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A fake /proc and /dev: no `containeros.slot=` on the command line, `/`
/// mounted from `root`, and `by-partlabel` links to the loop devices.
fn host(dir: &Path, root: DevNum, links: &[(&str, &Path)]) -> Host {
    std::fs::write(dir.join("cmdline"), "console=ttyS0 rootwait ro\n").expect("cmdline");
    std::fs::write(
        dir.join("mountinfo"),
        format!(
            "21 1 {root} / / ro,relatime shared:1 - ext4 /dev/root ro\n\
             22 21 0:20 / /proc rw,nosuid - proc proc rw\n\
             30 21 0:26 / /data rw - ext4 /dev/mmcblk0p4 rw\n"
        ),
    )
    .expect("mountinfo");
    let by_label = dir.join("dev/disk/by-partlabel");
    std::fs::create_dir_all(&by_label).expect("mkdir");
    for (name, target) in links {
        std::os::unix::fs::symlink(target, by_label.join(name)).expect("link");
    }
    Host::new()
        .with_dev(dir.join("dev"))
        .with_cmdline(dir.join("cmdline"))
        .with_mountinfo(dir.join("mountinfo"))
}

#[test]
fn the_slot_mounted_on_root_is_the_booted_one() {
    let (Some(a), Some(b)) = (LoopDev::new(), LoopDev::new()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), b.num(), &[("rootA", &a.dev), ("rootB", &b.dev)]);
    let slots = Slots::new(
        SlotConfig::parse("A", "PARTLABEL=rootA").expect("A"),
        SlotConfig::parse("B", "PARTLABEL=rootB").expect("B"),
    )
    .expect("slots");
    assert_eq!(slots.device(Slot::B, &host).expect("resolves"), b.dev);
    let booted = slots.booted(&host).expect("detected");
    assert_eq!(
        booted,
        Booted {
            slot: Slot::B,
            detection: Detection::RootDevice(b.num())
        }
    );
    assert_eq!(booted.inactive(), Slot::A);

    // The command line wins over the root device.
    std::fs::write(dir.path().join("cmdline"), "containeros.slot=A\n").expect("cmdline");
    assert_eq!(slots.booted(&host).expect("detected").slot, Slot::A);

    // Device paths work as well as labels.
    std::fs::write(dir.path().join("cmdline"), "quiet\n").expect("cmdline");
    std::fs::write(
        dir.path().join("mountinfo"),
        format!("21 1 {} / / ro - ext4 /dev/root ro\n", a.num()),
    )
    .expect("mountinfo");
    let slots = Slots::new(
        SlotConfig::parse("A", &a.dev.display().to_string()).expect("A"),
        SlotConfig::parse("B", &b.dev.display().to_string()).expect("B"),
    )
    .expect("slots");
    assert_eq!(slots.booted(&host).expect("detected").slot, Slot::A);
}

#[test]
fn a_root_on_neither_slot_names_both_devices() {
    let (Some(a), Some(b), Some(other)) = (LoopDev::new(), LoopDev::new(), LoopDev::new()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), other.num(), &[("rootA", &a.dev), ("rootB", &b.dev)]);
    let slots = Slots::new(
        SlotConfig::parse("A", "PARTLABEL=rootA").expect("A"),
        SlotConfig::parse("B", "PARTLABEL=rootB").expect("B"),
    )
    .expect("slots");
    let err = slots.booted(&host).expect_err("undetected");
    assert!(matches!(err, SlotError::Undetected { .. }), "{err}");
    let message = err.to_string();
    for needle in [
        format!("mounts device {} on /", other.num()),
        format!("slot A is {} ({})", a.dev.display(), a.num()),
        format!("slot B is {} ({})", b.dev.display(), b.num()),
        "has no containeros.slot=".to_owned(),
    ] {
        assert!(message.contains(&needle), "{needle:?} in {message}");
    }
}

#[test]
fn two_slots_on_one_device_are_refused() {
    let Some(a) = LoopDev::new() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let host = host(dir.path(), a.num(), &[("rootA", &a.dev), ("rootB", &a.dev)]);
    let slots = Slots::new(
        SlotConfig::parse("A", "PARTLABEL=rootA").expect("A"),
        SlotConfig::parse("B", "PARTLABEL=rootB").expect("B"),
    )
    .expect("slots");
    let err = slots.booted(&host).expect_err("same device");
    assert!(matches!(err, SlotError::SameDevice { .. }), "{err}");
}
