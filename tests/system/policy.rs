//! The shipped D-Bus policy: anyone may read; only root and the
//! `containeros` group may call methods that change the device.

use std::process::Command;

use crate::device::Device;
use containeros_tests::{cli, run_as};

const NOBODY: u32 = 65534;

/// The `containeros` group's id, creating the group if needed (the image
/// creates it; a test machine may not have it).
fn containeros_gid() -> u32 {
    let lookup = || {
        let out = Command::new("getent")
            .args(["group", "containeros"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)?
            .trim()
            .parse()
            .ok()
    };
    if let Some(gid) = lookup() {
        return gid;
    }
    let status = Command::new("groupadd")
        .args(["--system", "containeros"])
        .status()
        .expect("groupadd");
    assert!(
        status.success() || lookup().is_some(),
        "cannot create group containeros"
    );
    lookup().expect("group containeros")
}

#[tokio::test(flavor = "multi_thread")]
async fn mutating_calls_need_root_or_the_containeros_group() {
    // The bus reads group membership when it loads its policy: create the
    // group before the bus starts.
    let gid = containeros_gid();
    let device = Device::start().await;
    device.engine_up().await;
    let bus = device.bus.address();

    // Anyone may read.
    let out = run_as(cli(bus).arg("status"), NOBODY, NOBODY, &[])
        .output()
        .expect("status as nobody");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Nobody else may change anything: refused by the bus, exit code 4.
    let out = run_as(cli(bus).args(["engine", "restart"]), NOBODY, NOBODY, &[])
        .output()
        .expect("restart as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(device.units.starts("docker.service"), 1, "nothing was restarted");

    // A member of the containeros group may.
    let out = run_as(cli(bus).args(["engine", "restart"]), NOBODY, NOBODY, &[gid])
        .output()
        .expect("restart as group member");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(device.units.starts("docker.service"), 2);
    let status = device.engine_up().await;
    assert_eq!(status["engine_restarts"], 1);
}
