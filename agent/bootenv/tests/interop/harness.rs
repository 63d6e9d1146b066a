//! Finding the tools, running them, and small helpers over env maps.

use std::path::PathBuf;
use std::process::Command;

use containeros_bootenv::{Changes, Vars};

/// The path of `name`, or a panic naming the Debian package that ships it.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not in PATH; install the Debian package `{package}` \
             (apt-get install {package}) to run the bootloader interop tests"
        )
    })
}

/// Runs `command`, requires success, returns its stdout.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("tool output is UTF-8")
}

/// Runs `command` and requires it to fail.
pub fn run_failing(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        !output.status.success(),
        "{command:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

pub fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn set(pairs: &[(&str, &str)]) -> Changes {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

/// What turns `old` into `new` in one write.
pub fn diff(old: &Vars, new: &Vars) -> Changes {
    let mut changes: Changes = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| (k.clone(), None))
        .collect();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            changes.insert(k.clone(), Some(v.clone()));
        }
    }
    changes
}
