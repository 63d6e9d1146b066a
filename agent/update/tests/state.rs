//! The update state machine driven through whole updates by a model daemon
//! on a model device, with a power cut before every single write (slot,
//! bootloader, state file) and a restart that follows [`recover`]: every
//! update must end committed (good image) or rolled back (bad image), and
//! no boot may ever land on a slot that holds a partial image.
//!
//! The bootloader model follows the RAUC counter scheme (`BOOT_ORDER`,
//! `BOOT_x_LEFT`) that `containeros-bootenv`'s bootchooser implements; the
//! state file is the real one, in a temp dir.

use containeros_trust::Digest;
use containeros_update::{Action, Record, Slot, State, Store, TargetBoot, Transition, Update, recover};

const TRIES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Content {
    Good,
    /// Written, but its kernel never comes up.
    NoBoot,
    /// Boots, but fails the health checks.
    Unhealthy,
    Partial,
}

/// The power went out.
#[derive(Debug)]
struct Cut;

#[derive(Debug)]
struct Device {
    order: Vec<Slot>,
    left: [u32; 2],
    slots: [Content; 2],
    booted: Slot,
    boot: u32,
    /// Writes so far, and the one before which the power goes out.
    writes: u32,
    cut_at: Option<u32>,
    /// Content of the image being installed.
    image: Content,
}

fn ix(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Device {
    fn new(image: Content, cut_at: Option<u32>) -> Self {
        Self {
            order: vec![Slot::A, Slot::B],
            left: [TRIES, TRIES],
            slots: [Content::Good, Content::Good],
            booted: Slot::A,
            boot: 1,
            writes: 0,
            cut_at,
            image,
        }
    }

    /// Every write to the medium goes through here.
    fn write(&mut self) -> Result<(), Cut> {
        if self.cut_at == Some(self.writes) {
            self.cut_at = None;
            return Err(Cut);
        }
        self.writes += 1;
        Ok(())
    }

    fn boot_id(&self) -> String {
        format!("boot-{}", self.boot)
    }

    /// What the bootloader says about `slot`.
    fn view(&self, slot: Slot) -> TargetBoot {
        let primary = self.order.iter().find(|s| self.left[ix(**s)] > 0);
        if primary == Some(&slot) {
            TargetBoot::Next
        } else if self.order.contains(&slot) && self.left[ix(slot)] > 0 {
            TargetBoot::Fallback
        } else {
            TargetBoot::Disabled
        }
    }

    fn set_primary(&mut self, slot: Slot) -> Result<(), Cut> {
        self.write()?;
        self.order.retain(|s| *s != slot);
        self.order.insert(0, slot);
        self.left[ix(slot)] = TRIES;
        Ok(())
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), Cut> {
        self.write()?;
        self.order.retain(|s| *s != slot);
        self.left[ix(slot)] = 0;
        Ok(())
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), Cut> {
        self.write()?;
        self.left[ix(slot)] = TRIES;
        Ok(())
    }

    fn write_slot(&mut self, slot: Slot) -> Result<(), Cut> {
        assert_ne!(slot, self.booted, "never write the running slot");
        self.write()?;
        self.slots[ix(slot)] = Content::Partial;
        self.write()?;
        self.slots[ix(slot)] = self.image;
        Ok(())
    }

    /// Power on (again) until a kernel comes up: the boot script's counter
    /// logic, kernels that do not boot reset the board.
    fn power_on(&mut self) {
        for _ in 0..20 {
            self.boot += 1;
            let pick = self.order.iter().copied().find(|s| self.left[ix(*s)] > 0);
            let Some(slot) = pick else {
                self.left = [TRIES, TRIES];
                continue;
            };
            self.left[ix(slot)] -= 1;
            match self.slots[ix(slot)] {
                Content::Partial => panic!("booted slot {slot} holding a partial image: {self:?}"),
                Content::NoBoot => continue,
                Content::Good | Content::Unhealthy => {
                    self.booted = slot;
                    return;
                }
            }
        }
        panic!("the device never came up: {self:?}");
    }
}

/// The daemon: from a (re)start until the update is over or the power
/// goes. Returns `Ok(true)` when it asked for a reboot.
fn run(device: &mut Device, store: &Store) -> Result<bool, Cut> {
    let mut record = store.load().expect("state file");
    let apply = |device: &mut Device, record: &Record, t: Transition| -> Result<Record, Cut> {
        device.write()?;
        Ok(store.apply(record, t).expect("legal transition"))
    };
    // The channel offers version 2 until the device runs it or gave up on it.
    if record.state == State::Idle {
        let update = Update {
            target: device.booted.other(),
            previous: device.booted,
            version: 2,
            sha256: Digest::of(b"v2"),
            size: 100,
            started: 0,
            written: 0,
            boot_id: None,
        };
        record = apply(device, &record, Transition::Begin(update))?;
    }
    loop {
        let target = record.update.as_ref().map_or(Slot::B, |u| u.target);
        let action = recover(&record, device.booted, &device.boot_id(), device.view(target));
        match action {
            Action::Nothing | Action::Finished { .. } => return Ok(false),
            Action::Install {
                slot, disable_first, ..
            } => {
                if disable_first {
                    device.mark_bad(slot)?;
                }
                device.write_slot(slot)?;
                record = apply(device, &record, Transition::Written)?;
            }
            Action::Verify { slot, disable_first } => {
                if disable_first {
                    device.mark_bad(slot)?;
                }
                assert_ne!(device.slots[ix(slot)], Content::Partial);
                record = apply(device, &record, Transition::Verified)?;
            }
            Action::MakeNext { slot } => {
                device.set_primary(slot)?;
                let boot_id = device.boot_id();
                apply(device, &record, Transition::PendingReboot { boot_id })?;
                return Ok(true);
            }
            Action::Reboot { .. } => return Ok(true),
            Action::CheckHealth { slot } => {
                if record.state != State::Trying {
                    record = apply(device, &record, Transition::Trying)?;
                }
                if device.slots[ix(slot)] == Content::Good {
                    device.mark_good(slot)?;
                    record = apply(device, &record, Transition::Commit)?;
                } else {
                    let good = record.update.as_ref().map_or(Slot::A, |u| u.previous);
                    device.mark_bad(slot)?;
                    device.set_primary(good)?;
                    let reason = "health checks failed".to_owned();
                    apply(device, &record, Transition::RollBack { reason })?;
                    return Ok(true);
                }
            }
            Action::RollBack {
                bad,
                good,
                reboot,
                reason,
            } => {
                device.mark_bad(bad)?;
                device.set_primary(good)?;
                if record.state != State::RolledBack {
                    record = apply(device, &record, Transition::RollBack { reason })?;
                }
                if reboot {
                    return Ok(true);
                }
            }
            Action::Abandon { reason, disable } => {
                panic!("no abandon expected in a plain update ({reason}, {disable:?}): {device:?}");
            }
        }
    }
}

/// One update with the power cut before write number `cut_at`; the final
/// record and device.
fn update(image: Content, cut_at: Option<u32>) -> (Record, Device) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::new(dir.path().join("update.toml"));
    let mut device = Device::new(image, cut_at);
    for _ in 0..50 {
        match run(&mut device, &store) {
            Ok(false) => return (store.load().expect("state"), device),
            Ok(true) | Err(Cut) => device.power_on(),
        }
    }
    panic!("the update never settled: {device:?}");
}

fn writes_of_an_uninterrupted(image: Content) -> u32 {
    update(image, None).1.writes
}

#[test]
fn a_good_image_is_committed_whatever_write_the_power_cut_interrupted() {
    let total = writes_of_an_uninterrupted(Content::Good);
    assert!(total >= 8, "{total} writes");
    println!("good image: {total} writes, each one cut in turn");
    for cut in 0..=total {
        let (record, device) = update(Content::Good, Some(cut));
        let case = format!("cut before write {cut}: {record:?} {device:?}");
        assert_eq!(record.state, State::Committed, "{case}");
        assert_eq!(device.booted, Slot::B, "{case}");
        assert_eq!(device.view(Slot::B), TargetBoot::Next, "{case}");
    }
}

#[test]
fn a_bad_image_is_rolled_back_whatever_write_the_power_cut_interrupted() {
    for image in [Content::NoBoot, Content::Unhealthy] {
        let total = writes_of_an_uninterrupted(image);
        for cut in 0..=total {
            let (record, device) = update(image, Some(cut));
            let case = format!("{image:?}, cut before write {cut}: {record:?} {device:?}");
            assert_eq!(record.state, State::RolledBack, "{case}");
            assert_eq!(device.booted, Slot::A, "{case}");
            assert_eq!(device.view(Slot::B), TargetBoot::Disabled, "{case}");
            assert!(record.last_error.is_some(), "{case}");
        }
    }
}
