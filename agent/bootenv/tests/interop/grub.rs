//! `grub-editenv` and [`GrubEnv`] on the same block file.

use std::path::{Path, PathBuf};
use std::process::Command;

use containeros_bootenv::{BootEnv, Changes, GrubEnv, Vars};

use crate::harness::{run, set, tool, vars};

const PACKAGE: &str = "grub-common";

pub fn grub_editenv(file: &Path, args: &[&str]) -> String {
    run(Command::new(tool("grub-editenv", PACKAGE)).arg(file).args(args))
}

/// `grub-editenv FILE list`, verbatim.
pub fn list(file: &Path) -> String {
    grub_editenv(file, &["list"])
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    Fixture { _dir: dir, path }
}

/// Values `grub-editenv` has to escape, and some it does not.
fn tricky() -> Vars {
    vars(&[
        ("BOOT_ORDER", "B A"),
        ("BOOT_B_LEFT", "3"),
        ("backslash", "C:\\path\\"),
        ("eq", "a=b=c"),
        ("multi", "line1\nline2\\\nline3"),
        ("spaces", " two  spaces "),
    ])
}

#[test]
fn grub_editenv_create_and_set_are_read_by_us() {
    let fx = fixture();
    grub_editenv(&fx.path, &["create"]);
    let mut args = vec!["set".to_owned()];
    args.extend(tricky().iter().map(|(k, v)| format!("{k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    grub_editenv(&fx.path, &args);
    grub_editenv(&fx.path, &["set", "gone=soon"]);
    grub_editenv(&fx.path, &["unset", "gone"]);
    assert_eq!(GrubEnv::new(&fx.path).get_all().expect("we read it"), tricky());
}

#[test]
fn our_writes_are_listed_by_grub_editenv() {
    let fx = fixture();
    let env = GrubEnv::new(&fx.path);
    // The first write creates the file; grub-editenv must accept it as is.
    env.set(&set(&[("gone", "soon"), ("eq", "old")])).expect("write");
    let mut changes: Changes = tricky().into_iter().map(|(k, v)| (k, Some(v))).collect();
    changes.insert("gone".into(), None);
    env.set(&changes).expect("write");
    // `eq` was rewritten in place (first line), the rest appended in name
    // order; list prints unescaped values.
    let expected: String = ["eq", "BOOT_B_LEFT", "BOOT_ORDER", "backslash", "multi", "spaces"]
        .iter()
        .map(|k| format!("{k}={}\n", tricky()[*k]))
        .collect();
    assert_eq!(list(&fx.path), expected);
    assert_eq!(std::fs::metadata(&fx.path).expect("stat").len(), 1024);
    // And grub-editenv can carry on from what we wrote.
    grub_editenv(&fx.path, &["set", "after=us"]);
    let mut after = tricky();
    after.insert("after".into(), "us".into());
    assert_eq!(env.get_all().expect("read"), after);
}

/// The same edits through both tools give the same bytes: sets that grow,
/// shrink and append, deletes, escapes.
#[test]
fn edits_are_byte_identical_to_grub_editenv() {
    let theirs = fixture();
    let ours = fixture();
    grub_editenv(&theirs.path, &["create"]);
    let env = GrubEnv::new(&ours.path);
    let steps: [(&str, Option<&str>); 9] = [
        ("BOOT_ORDER", Some("A B")),
        ("BOOT_A_LEFT", Some("3")),
        ("BOOT_B_LEFT", Some("3")),
        ("BOOT_ORDER", Some("B A")),
        ("BOOT_A_LEFT", Some("0")),
        ("multi", Some("x\ny\\z")),
        ("BOOT_ORDER", Some("A")),
        ("BOOT_A_LEFT", None),
        ("multi", Some("")),
    ];
    for (step, (name, value)) in steps.into_iter().enumerate() {
        match value {
            Some(value) => grub_editenv(&theirs.path, &["set", &format!("{name}={value}")]),
            None => grub_editenv(&theirs.path, &["unset", name]),
        };
        env.set(&Changes::from([(name.to_owned(), value.map(str::to_owned))]))
            .expect("write");
        assert_eq!(
            std::fs::read(&ours.path).expect("read"),
            std::fs::read(&theirs.path).expect("read"),
            "after step {step}: {name}={value:?}"
        );
    }
}

#[test]
fn grub_oversize_and_broken_blocks_are_refused_without_writing() {
    let fx = fixture();
    grub_editenv(&fx.path, &["create"]);
    grub_editenv(&fx.path, &["set", "keep=me"]);
    let before = std::fs::read(&fx.path).expect("read");
    let env = GrubEnv::new(&fx.path);
    let err = env.set(&set(&[("big", &"v".repeat(1024))])).expect_err("too big");
    assert!(err.to_string().contains("no room"), "{err}");
    assert_eq!(std::fs::read(&fx.path).expect("read"), before);
    assert_eq!(list(&fx.path), "keep=me\n");

    // A block whose last line lost its newline and padding (torn write).
    let mut torn = before.clone();
    let end = torn.iter().rposition(|&b| b != b'#').expect("content");
    torn.truncate(end);
    std::fs::write(&fx.path, &torn).expect("tear");
    let err = env.get_all().expect_err("torn");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(env.set(&set(&[("a", "1")])).is_err());
    assert_eq!(std::fs::read(&fx.path).expect("read"), torn);
}
