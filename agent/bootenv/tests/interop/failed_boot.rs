//! A failed update, end to end on real environments: the agent makes the
//! new slot primary, the new slot never comes up, the boot script spends its
//! tries (simulated, writing the env as its `saveenv` would) and falls back
//! to the old slot; the tools agree on every step.

use containeros_bootenv::{BootAttempt, BootEnv, Bootchooser, GrubEnv, SlotState, simulate_boot_attempt};

use crate::harness::diff;

/// One power-on: the script reads the env, picks a slot, saves the env.
fn power_on(env: &dyn BootEnv, chooser: &Bootchooser) -> BootAttempt {
    let before = env.get_all().expect("script reads env");
    let mut after = before.clone();
    let attempt = simulate_boot_attempt(chooser, &mut after);
    env.set(&diff(&before, &after)).expect("script saves env");
    attempt
}

/// The scenario; `tool_view` reads the env with the other tool.
fn failed_update_falls_back(env: &dyn BootEnv, tool_view: &dyn Fn() -> containeros_bootenv::Vars) {
    let chooser = Bootchooser::new(["A", "B"], Bootchooser::DEFAULT_ATTEMPTS).expect("slots");

    // Factory state: first boot on A, committed.
    assert_eq!(power_on(env, &chooser), BootAttempt::Booted("A".into()));
    let vars = env.get_all().expect("read");
    env.set(&chooser.mark_good(&vars, "A").expect("slot"))
        .expect("commit A");

    // The update: B written, made primary in one env write.
    let vars = env.get_all().expect("read");
    env.set(&chooser.set_primary(&vars, "B").expect("slot"))
        .expect("switch to B");
    assert_eq!(chooser.primary(&tool_view()), Some("B"));

    // B never becomes healthy: each boot spends one try on it.
    for left in (0..Bootchooser::DEFAULT_ATTEMPTS).rev() {
        assert_eq!(power_on(env, &chooser), BootAttempt::Booted("B".into()));
        assert_eq!(tool_view()["BOOT_B_LEFT"], format!("{left:x}"));
    }
    let vars = tool_view();
    assert_eq!(chooser.state(&vars, "B").expect("slot"), SlotState::Bad);
    assert_eq!(chooser.primary(&vars), Some("A"));

    // Tries exhausted: the next power-on selects A.
    assert_eq!(power_on(env, &chooser), BootAttempt::Booted("A".into()));

    // Back on A the agent marks B bad and commits A again.
    let vars = env.get_all().expect("read");
    env.set(&chooser.mark_bad(&vars, "B").expect("slot"))
        .expect("mark B bad");
    let vars = env.get_all().expect("read");
    env.set(&chooser.mark_good(&vars, "A").expect("slot"))
        .expect("commit A");
    let vars = tool_view();
    assert_eq!(vars["BOOT_ORDER"], "A");
    assert_eq!(chooser.state(&vars, "A").expect("slot"), SlotState::Good);
    assert_eq!(chooser.state(&vars, "B").expect("slot"), SlotState::Bad);
    assert_eq!(power_on(env, &chooser), BootAttempt::Booted("A".into()));
}

#[test]
fn uboot_exhausted_primary_falls_back_to_the_other_slot() {
    let fx = crate::uboot::Fixture::new(true);
    failed_update_falls_back(&fx.ours(), &|| fx.fw_printenv());
}

#[test]
fn grub_exhausted_primary_falls_back_to_the_other_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grubenv");
    crate::grub::grub_editenv(&path, &["create"]);
    let env = GrubEnv::new(&path);
    failed_update_falls_back(&env, &|| {
        crate::grub::list(&path)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    });
}
