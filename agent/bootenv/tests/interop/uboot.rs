//! `fw_printenv`/`fw_setenv` and [`UbootEnv`] on the same "device".

use std::path::PathBuf;
use std::process::Command;

use containeros_bootenv::uboot::UbootError;
use containeros_bootenv::{BootEnv, Error, UbootEnv, Vars};

use crate::harness::{run, run_failing, set, tool, vars};

const PACKAGE: &str = "libubootenv-tool";
/// Size of one copy: 0x4000 bytes.
const SIZE: usize = 0x4000;

/// A temporary device file with its `fw_env.config`.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub device: PathBuf,
    pub config: PathBuf,
    /// An empty default environment for `fw_setenv -f`, so it can initialise
    /// a blank device as we do with `with_default_env`.
    defenv: PathBuf,
    /// A default env file that does not exist, for reads that must fail.
    no_defenv: PathBuf,
}

impl Fixture {
    pub fn new(redundant: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("mmcblk0.img");
        std::fs::write(&device, vec![0u8; 3 * SIZE]).expect("create device");
        let config = dir.path().join("fw_env.config");
        let dev = device.display();
        // Written the way board configs are: a comment, a decimal offset
        // and hex sizes without `0x` on the second line, sector fields.
        // Reading `4000` as decimal would put the copy at the wrong bytes
        // and fail the CRC, so this also proves the config is parsed alike.
        let text = if redundant {
            format!("# device offset size\n{dev} 0x0 0x4000\n{dev} 16384 4000 1000 4\n")
        } else {
            format!("# device offset size\n{dev} 0 4000\n")
        };
        std::fs::write(&config, text).expect("write config");
        let defenv = dir.path().join("u-boot-initial-env");
        std::fs::write(&defenv, "").expect("write default env");
        let no_defenv = dir.path().join("no-default-env");
        Self {
            _dir: dir,
            device,
            config,
            defenv,
            no_defenv,
        }
    }

    pub fn fw_setenv(&self, args: &[&str]) {
        tool("fw_printenv", PACKAGE);
        run(Command::new(tool("fw_setenv", PACKAGE))
            .arg("-c")
            .arg(&self.config)
            .arg("-f")
            .arg(&self.defenv)
            .args(args));
    }

    /// Every variable as `fw_printenv` prints it (no default env: fails on
    /// an invalid environment instead of printing defaults).
    pub fn fw_printenv(&self) -> Vars {
        let out = run(Command::new(tool("fw_printenv", PACKAGE))
            .arg("-c")
            .arg(&self.config)
            .arg("-f")
            .arg(&self.no_defenv));
        out.lines()
            .map(|line| {
                let (k, v) = line.split_once('=').expect("name=value line");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn fw_printenv_fails(&self) {
        run_failing(
            Command::new(tool("fw_printenv", PACKAGE))
                .arg("-c")
                .arg(&self.config)
                .arg("-f")
                .arg(&self.no_defenv),
        );
    }

    /// Ours, on the same config and the same lock file as libubootenv.
    pub fn ours(&self) -> UbootEnv {
        UbootEnv::from_config_file(&self.config)
            .expect("config parses")
            .with_default_env(Vars::new())
    }

    fn ours_strict(&self) -> UbootEnv {
        UbootEnv::from_config_file(&self.config).expect("config parses")
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.device).expect("read device")
    }

    /// Flags bytes of both copies.
    fn flags(&self) -> (u8, u8) {
        let bytes = self.bytes();
        (bytes[4], bytes[SIZE + 4])
    }
}

fn tricky_values() -> Vars {
    vars(&[
        ("BOOT_ORDER", "B A"),
        ("BOOT_A_LEFT", "3"),
        ("bootargs", "console=ttyS0,115200 root=/dev/mmcblk0p2 rauc.slot=A"),
        ("empty_looking", " "),
        ("eq", "a=b=c"),
    ])
}

fn fw_setenv_writes_are_read_by_us(redundant: bool) {
    let fx = Fixture::new(redundant);
    for (k, v) in &tricky_values() {
        fx.fw_setenv(&[k, v]);
    }
    fx.fw_setenv(&["temp", "x"]);
    fx.fw_setenv(&["temp"]); // deletes
    assert_eq!(fx.ours_strict().get_all().expect("we read it"), tricky_values());
    assert_eq!(fx.fw_printenv(), tricky_values());
}

#[test]
fn uboot_single_fw_setenv_writes_are_read_by_us() {
    fw_setenv_writes_are_read_by_us(false);
}

#[test]
fn uboot_redundant_fw_setenv_writes_are_read_by_us() {
    fw_setenv_writes_are_read_by_us(true);
}

fn our_writes_are_printed_by_fw_printenv(redundant: bool) {
    let fx = Fixture::new(redundant);
    let env = fx.ours();
    env.set(&set(&[("temp", "x"), ("eq", "old")])).expect("write");
    let mut changes = set(&tricky_values()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect::<Vec<_>>());
    changes.insert("temp".into(), None);
    env.set(&changes).expect("write");
    assert_eq!(fx.fw_printenv(), tricky_values());
    // And fw_setenv can carry on from what we wrote.
    fx.fw_setenv(&["after", "us"]);
    let mut expected = tricky_values();
    expected.insert("after".into(), "us".into());
    assert_eq!(env.get_all().expect("read"), expected);
}

#[test]
fn uboot_single_our_writes_are_printed_by_fw_printenv() {
    our_writes_are_printed_by_fw_printenv(false);
}

#[test]
fn uboot_redundant_our_writes_are_printed_by_fw_printenv() {
    our_writes_are_printed_by_fw_printenv(true);
}

/// 300 writes, alternating between fw_setenv and us, take the flags byte
/// across its 255 -> 0 wrap-around; after every write both tools must read
/// the value just written, i.e. agree on which copy is newest, and each write
/// must have gone to the other copy with the flags byte incremented.
#[test]
fn uboot_redundant_alternating_writers_agree_on_the_newest_copy() {
    let fx = Fixture::new(true);
    let env = fx.ours();
    let mut last_flags: Option<(u8, u8)> = None;
    for round in 0..300u32 {
        let value = round.to_string();
        let writer = if round % 2 == 0 { "fw_setenv" } else { "us" };
        if round % 2 == 0 {
            fx.fw_setenv(&["round", &value, "writer", writer]);
        } else {
            env.set(&set(&[("round", &value), ("writer", writer)]))
                .expect("write");
        }
        let expected = vars(&[("round", &value), ("writer", writer)]);
        assert_eq!(env.get_all().expect("read"), expected, "round {round}");
        assert_eq!(fx.fw_printenv(), expected, "round {round}");

        let flags = fx.flags();
        if let Some((old_a, old_b)) = last_flags {
            // Exactly one copy changed: the one that was not current, to the
            // current copy's flags plus one. fw_setenv's first write on the
            // blank device went to copy 1, so even rounds write copy 1.
            let expected = if round % 2 == 0 {
                (old_a, old_a.wrapping_add(1))
            } else {
                (old_b.wrapping_add(1), old_b)
            };
            assert_eq!(flags, expected, "round {round}");
        }
        last_flags = Some(flags);
    }
    let (a, b) = fx.flags();
    assert!(a < 0x40 && b < 0x40, "flags wrapped around: {a:#x} {b:#x}");
}

#[test]
fn uboot_redundant_corrupted_newest_copy_falls_back_to_the_other() {
    let fx = Fixture::new(true);
    fx.fw_setenv(&["v", "old"]);
    fx.ours().set(&set(&[("v", "new")])).expect("write");
    // Our write went to copy 0 (fw_setenv's first write went to copy 1).
    assert_eq!(fx.flags(), (2, 1));
    let mut bytes = fx.bytes();
    bytes[20] ^= 0x55;
    std::fs::write(&fx.device, bytes).expect("corrupt");
    assert_eq!(fx.fw_printenv(), vars(&[("v", "old")]));
    assert_eq!(fx.ours_strict().get_all().expect("read"), vars(&[("v", "old")]));
    // The next write replaces the broken copy and wins again.
    fx.ours().set(&set(&[("v", "newer")])).expect("write");
    assert_eq!(fx.flags(), (2, 1));
    assert_eq!(fx.fw_printenv(), vars(&[("v", "newer")]));
}

#[test]
fn uboot_single_corrupted_copy_is_a_clear_error() {
    let fx = Fixture::new(false);
    fx.fw_setenv(&["v", "1"]);
    let mut bytes = fx.bytes();
    bytes[SIZE - 1] ^= 1;
    std::fs::write(&fx.device, bytes).expect("corrupt");
    fx.fw_printenv_fails();
    let err = fx.ours_strict().get_all().expect_err("corrupt");
    assert!(
        matches!(err, Error::Uboot(UbootError::NoValidEnvironment { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&fx.device.display().to_string()), "{message}");
    assert!(message.contains("CRC"), "{message}");
}

#[test]
fn uboot_oversize_environment_is_refused_without_touching_the_device() {
    for redundant in [false, true] {
        let fx = Fixture::new(redundant);
        fx.fw_setenv(&["keep", "me"]);
        let before = fx.bytes();
        let big = "x".repeat(SIZE);
        let err = fx.ours().set(&set(&[("big", &big)])).expect_err("too big");
        let message = err.to_string();
        assert!(message.contains(&fx.device.display().to_string()), "{message}");
        assert!(message.contains("0x4000"), "{message}");
        assert_eq!(fx.bytes(), before, "device untouched");
        assert_eq!(fx.fw_printenv(), vars(&[("keep", "me")]));
    }
}
