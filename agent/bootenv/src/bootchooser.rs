//! RAUC-compatible A/B slot selection over `BOOT_ORDER` and `BOOT_<slot>_LEFT`.
//!
//! The boot script (RAUC's U-Boot integration, e.g. meta-rauc-community's
//! `boot.cmd`) walks `BOOT_ORDER` ("A B": slot names separated by spaces),
//! boots the first slot whose `BOOT_<slot>_LEFT` is above 0 after decrementing
//! it, and, when every counter is 0, resets them all and reboots. The agent
//! moves a slot first with [`Bootchooser::set_primary`], confirms a healthy
//! boot with [`Bootchooser::mark_good`] (refilling the counter), and gives up
//! on a slot with [`Bootchooser::mark_bad`]. Every operation is a pure
//! function from the current variables to the [`Changes`] to write, applied
//! with one [`crate::BootEnv::set`].
//!
//! Semantics follow RAUC's U-Boot backend (`src/bootloaders/uboot.c`):
//!
//! - counters are hexadecimal (`%x`, parsed base 16), as U-Boot's `setexpr`
//!   and `itest` treat them;
//! - a slot is good when it is in `BOOT_ORDER` and its counter is above 0,
//!   bad otherwise; the primary is the first slot of `BOOT_ORDER` with a
//!   counter above 0;
//! - `mark_good` sets the counter to the maximum and leaves `BOOT_ORDER`
//!   alone (a slot marked bad earlier stays out of the order until it is made
//!   primary again);
//! - `mark_bad` removes the slot from `BOOT_ORDER` and sets its counter to 0;
//! - `set_primary` puts the slot first (keeping the rest of the order) and
//!   sets its counter to the maximum.
//!
//! Deviations, all on purpose:
//!
//! - RAUC's GRUB backend uses other variables (`ORDER`, `<slot>_OK`,
//!   `<slot>_TRY`); here both bootloaders use the U-Boot scheme so that one
//!   logic and one boot-script contract cover every board. A GRUB script
//!   has no arithmetic, so it counts down with string comparisons; with the
//!   default maximum of 3 hex and decimal spell the same digits;
//! - RAUC sets the order and the counter with two `fw_setenv` calls; here
//!   they go in one write, so a power cut cannot leave one without the other;
//! - a missing `BOOT_ORDER` or counter makes [`SlotState::Unknown`] (RAUC
//!   reports an error or, via libubootenv's empty output, "bad"), and
//!   `mark_bad`/`set_primary` then start from the order the boot script
//!   would default to (every configured slot, in configured order) instead of
//!   an empty one: otherwise the script's default would bring a slot marked
//!   bad straight back.

use crate::{Changes, Vars};

/// The name of the variable holding the boot order.
pub const BOOT_ORDER: &str = "BOOT_ORDER";

/// Errors of the slot selection logic.
#[derive(Debug, thiserror::Error)]
pub enum BootchooserError {
    /// A configured slot name cannot be used in `BOOT_ORDER` or a variable
    /// name.
    #[error("invalid slot name {name:?}: use letters, digits, '_' or '-'")]
    InvalidSlotName {
        /// The name.
        name: String,
    },
    /// The same slot was configured twice, or none was.
    #[error("invalid slot list {slots:?}: give each slot once, at least one")]
    InvalidSlotList {
        /// The configured names.
        slots: Vec<String>,
    },
    /// The try-counter maximum is zero.
    #[error("the number of boot attempts must be at least 1")]
    InvalidAttempts,
    /// An operation named a slot that is not configured.
    #[error("unknown slot {slot:?}; configured slots: {}", known.join(", "))]
    UnknownSlot {
        /// The slot asked for.
        slot: String,
        /// The configured slots.
        known: Vec<String>,
    },
}

/// The boot state of one slot, as RAUC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// In `BOOT_ORDER` with tries left.
    Good,
    /// Not in `BOOT_ORDER`, or no tries left.
    Bad,
    /// The environment does not say (missing or unreadable variables).
    Unknown,
}

/// The configured slots and try-counter maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootchooser {
    slots: Vec<String>,
    attempts: u32,
}

impl Bootchooser {
    /// RAUC's default number of boot attempts.
    pub const DEFAULT_ATTEMPTS: u32 = 3;

    /// Slots by boot name (e.g. `["A", "B"]`, in their default order) and the
    /// counter value that `mark_good`/`set_primary` write.
    pub fn new<I, S>(slots: I, attempts: u32) -> Result<Self, BootchooserError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let slots: Vec<String> = slots.into_iter().map(Into::into).collect();
        for name in &slots {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(BootchooserError::InvalidSlotName { name: name.clone() });
            }
        }
        let distinct = slots
            .iter()
            .enumerate()
            .all(|(i, name)| !slots[..i].contains(name));
        if slots.is_empty() || !distinct {
            return Err(BootchooserError::InvalidSlotList { slots });
        }
        if attempts == 0 {
            return Err(BootchooserError::InvalidAttempts);
        }
        Ok(Self { slots, attempts })
    }

    /// The configured slots, in default order.
    pub fn slots(&self) -> &[String] {
        &self.slots
    }

    /// The counter value written by `mark_good` and `set_primary`.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The name of a slot's try counter, `BOOT_<slot>_LEFT`.
    pub fn counter_name(slot: &str) -> String {
        format!("BOOT_{slot}_LEFT")
    }

    fn check(&self, slot: &str) -> Result<(), BootchooserError> {
        if self.slots.iter().any(|s| s == slot) {
            Ok(())
        } else {
            Err(BootchooserError::UnknownSlot {
                slot: slot.to_owned(),
                known: self.slots.clone(),
            })
        }
    }

    /// Tries left for `slot`; `None` if the counter is missing or not hex.
    fn tries_left(vars: &Vars, slot: &str) -> Option<u64> {
        parse_counter(vars.get(&Self::counter_name(slot))?)
    }

    /// `BOOT_ORDER` as written, or the default order if it is missing.
    fn order_or_default(&self, vars: &Vars) -> Vec<String> {
        match vars.get(BOOT_ORDER) {
            Some(order) => order
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(Into::into)
                .collect(),
            None => self.slots.clone(),
        }
    }

    fn format_counter(value: u32) -> String {
        format!("{value:x}")
    }

    /// The slot the bootloader will try next: the first configured slot of
    /// `BOOT_ORDER` with tries left. `None` when there is none (the boot
    /// script then resets all counters).
    pub fn primary<'a>(&'a self, vars: &Vars) -> Option<&'a str> {
        let order = vars.get(BOOT_ORDER)?;
        order
            .split(' ')
            .filter_map(|name| self.slots.iter().find(|s| *s == name))
            .find(|slot| Self::tries_left(vars, slot).is_some_and(|n| n > 0))
            .map(String::as_str)
    }

    /// Good, bad or unknown by RAUC's rules (see the module docs).
    pub fn state(&self, vars: &Vars, slot: &str) -> Result<SlotState, BootchooserError> {
        self.check(slot)?;
        let Some(order) = vars.get(BOOT_ORDER) else {
            return Ok(SlotState::Unknown);
        };
        if !order.split(' ').any(|name| name == slot) {
            return Ok(SlotState::Bad);
        }
        Ok(match Self::tries_left(vars, slot) {
            None => SlotState::Unknown,
            Some(0) => SlotState::Bad,
            Some(_) => SlotState::Good,
        })
    }

    /// Confirms `slot` booted well: its counter back to the maximum.
    /// (`vars` is not needed, as RAUC's mark-good only refills the counter;
    /// it is taken so that every operation is called the same way.)
    pub fn mark_good(&self, _vars: &Vars, slot: &str) -> Result<Changes, BootchooserError> {
        self.check(slot)?;
        Ok(Changes::from([(
            Self::counter_name(slot),
            Some(Self::format_counter(self.attempts)),
        )]))
    }

    /// Gives up on `slot`: out of `BOOT_ORDER`, counter 0.
    pub fn mark_bad(&self, vars: &Vars, slot: &str) -> Result<Changes, BootchooserError> {
        self.check(slot)?;
        let order: Vec<String> = self
            .order_or_default(vars)
            .into_iter()
            .filter(|name| name != slot)
            .collect();
        Ok(Changes::from([
            (BOOT_ORDER.to_owned(), Some(order.join(" "))),
            (Self::counter_name(slot), Some(Self::format_counter(0))),
        ]))
    }

    /// Makes `slot` the one booted next: first in `BOOT_ORDER`, counter at
    /// the maximum.
    pub fn set_primary(&self, vars: &Vars, slot: &str) -> Result<Changes, BootchooserError> {
        self.check(slot)?;
        let order: Vec<String> = std::iter::once(slot.to_owned())
            .chain(
                self.order_or_default(vars)
                    .into_iter()
                    .filter(|name| name != slot),
            )
            .collect();
        Ok(Changes::from([
            (BOOT_ORDER.to_owned(), Some(order.join(" "))),
            (
                Self::counter_name(slot),
                Some(Self::format_counter(self.attempts)),
            ),
        ]))
    }
}

/// `g_ascii_strtoull(s, NULL, 16)` as RAUC calls it, minus the leniency: an
/// optional `0x` and hex digits, nothing else.
fn parse_counter(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// What one simulated power-on did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAttempt {
    /// The script picked this slot and booted it.
    Booted(String),
    /// No slot had tries left: the script reset every counter to the
    /// maximum and rebooted (`reset`) without booting anything.
    CountersReset,
}

/// One power-on as the boot script sees it, applied to `vars` the way the
/// script's `saveenv` would leave the environment.
///
/// Modeled on meta-rauc-community's U-Boot `boot.cmd`: missing `BOOT_ORDER`
/// and counters default to the configured order and the maximum; the first
/// slot of `BOOT_ORDER` with a counter above 0 has it decremented and is
/// booted; with none left, all configured counters go back to the maximum and
/// the board resets. A counter that is not a number counts as 0, as U-Boot's
/// `itest` reads it.
pub fn simulate_boot_attempt(chooser: &Bootchooser, vars: &mut Vars) -> BootAttempt {
    vars.entry(BOOT_ORDER.to_owned())
        .or_insert_with(|| chooser.slots.join(" "));
    for slot in &chooser.slots {
        vars.entry(Bootchooser::counter_name(slot))
            .or_insert_with(|| Bootchooser::format_counter(chooser.attempts));
    }
    let order: Vec<String> = vars
        .get(BOOT_ORDER)
        .map(|o| o.split(' ').map(str::to_owned).collect())
        .unwrap_or_default();
    for name in order {
        if !chooser.slots.contains(&name) {
            continue;
        }
        let key = Bootchooser::counter_name(&name);
        let left = vars.get(&key).and_then(|v| parse_counter(v)).unwrap_or(0);
        if left > 0 {
            vars.insert(key, format!("{:x}", left - 1));
            return BootAttempt::Booted(name);
        }
    }
    for slot in &chooser.slots {
        vars.insert(
            Bootchooser::counter_name(slot),
            Bootchooser::format_counter(chooser.attempts),
        );
    }
    BootAttempt::CountersReset
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment in a test table.
    type Env<'a> = &'a [(&'a str, &'a str)];

    fn ab() -> Bootchooser {
        Bootchooser::new(["A", "B"], 3).expect("valid")
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn apply(vars: &mut Vars, changes: &Changes) {
        for (k, v) in changes {
            match v {
                Some(v) => vars.insert(k.clone(), v.clone()),
                None => vars.remove(k),
            };
        }
    }

    #[test]
    fn configuration_is_validated() {
        assert!(Bootchooser::new(["A", "B"], 3).is_ok());
        assert!(Bootchooser::new(["rootfs_0", "rootfs-1"], 5).is_ok());
        for slots in [vec![], vec!["A", "A"]] {
            assert!(matches!(
                Bootchooser::new(slots, 3),
                Err(BootchooserError::InvalidSlotList { .. })
            ));
        }
        for bad in ["", "A B", "A=B", "ä"] {
            assert!(matches!(
                Bootchooser::new([bad], 3),
                Err(BootchooserError::InvalidSlotName { .. })
            ));
        }
        assert!(matches!(
            Bootchooser::new(["A"], 0),
            Err(BootchooserError::InvalidAttempts)
        ));
    }

    #[test]
    fn primary_is_first_slot_in_order_with_tries_left() {
        let c = ab();
        let table: [(Env, Option<&str>); 9] = [
            (
                &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")],
                Some("A"),
            ),
            (
                &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "1")],
                Some("B"),
            ),
            (
                &[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "0")],
                Some("A"),
            ),
            (
                &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "0"), ("BOOT_B_LEFT", "0")],
                None,
            ),
            (
                &[("BOOT_ORDER", "B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "0")],
                None,
            ),
            // Unknown names in the order are skipped, as RAUC skips them.
            (
                &[("BOOT_ORDER", "C A"), ("BOOT_A_LEFT", "1"), ("BOOT_C_LEFT", "3")],
                Some("A"),
            ),
            // Extra spaces are tolerated; counters are hex.
            (&[("BOOT_ORDER", " B  A "), ("BOOT_B_LEFT", "0xa")], Some("B")),
            (
                &[
                    ("BOOT_ORDER", "A B"),
                    ("BOOT_A_LEFT", "junk"),
                    ("BOOT_B_LEFT", "2"),
                ],
                Some("B"),
            ),
            (&[("BOOT_A_LEFT", "3")], None),
        ];
        for (env, expected) in table {
            assert_eq!(c.primary(&vars(env)), expected, "{env:?}");
        }
    }

    #[test]
    fn state_follows_raucs_rules() {
        let c = ab();
        use SlotState::*;
        let table: [(Env, &str, SlotState); 8] = [
            (&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3")], "A", Good),
            (&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "1")], "A", Good),
            (&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "0")], "A", Bad),
            (&[("BOOT_ORDER", "A"), ("BOOT_B_LEFT", "3")], "B", Bad),
            (&[("BOOT_ORDER", "A B")], "B", Unknown),
            (&[("BOOT_ORDER", "A B"), ("BOOT_B_LEFT", "x")], "B", Unknown),
            (&[("BOOT_B_LEFT", "3")], "B", Unknown),
            (&[("BOOT_ORDER", ""), ("BOOT_B_LEFT", "3")], "B", Bad),
        ];
        for (env, slot, expected) in table {
            assert_eq!(
                c.state(&vars(env), slot).expect("known slot"),
                expected,
                "{env:?} {slot}"
            );
        }
        assert!(matches!(
            c.state(&Vars::new(), "C"),
            Err(BootchooserError::UnknownSlot { .. })
        ));
    }

    #[test]
    fn operations_write_raucs_variables() {
        let c = ab();
        type Case<'a> = (Env<'a>, &'a str, &'a str, Env<'a>);
        let table: [Case; 9] = [
            (&[("BOOT_ORDER", "A B")], "good", "B", &[("BOOT_B_LEFT", "3")]),
            // mark_good does not bring a removed slot back into the order.
            (&[("BOOT_ORDER", "A")], "good", "B", &[("BOOT_B_LEFT", "3")]),
            (
                &[("BOOT_ORDER", "B A")],
                "bad",
                "B",
                &[("BOOT_ORDER", "A"), ("BOOT_B_LEFT", "0")],
            ),
            (
                &[("BOOT_ORDER", "A")],
                "bad",
                "B",
                &[("BOOT_ORDER", "A"), ("BOOT_B_LEFT", "0")],
            ),
            // Missing order: start from the default the boot script uses.
            (&[], "bad", "A", &[("BOOT_ORDER", "B"), ("BOOT_A_LEFT", "0")]),
            (
                &[("BOOT_ORDER", "A B")],
                "primary",
                "B",
                &[("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "3")],
            ),
            (
                &[("BOOT_ORDER", "A")],
                "primary",
                "B",
                &[("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "3")],
            ),
            (
                &[("BOOT_ORDER", "B")],
                "primary",
                "A",
                &[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3")],
            ),
            (
                &[],
                "primary",
                "B",
                &[("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "3")],
            ),
        ];
        for (env, op, slot, expected) in table {
            let env = vars(env);
            let changes = match op {
                "good" => c.mark_good(&env, slot),
                "bad" => c.mark_bad(&env, slot),
                _ => c.set_primary(&env, slot),
            }
            .expect("known slot");
            let expected: Changes = expected
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect();
            assert_eq!(changes, expected, "{op} {slot} on {env:?}");
        }
        assert!(c.set_primary(&Vars::new(), "C").is_err());
    }

    #[test]
    fn counters_are_written_in_hex() {
        let c = Bootchooser::new(["A", "B"], 12).expect("valid");
        let changes = c.mark_good(&Vars::new(), "A").expect("known");
        assert_eq!(changes["BOOT_A_LEFT"].as_deref(), Some("c"));
    }

    #[test]
    fn simulated_boots_count_down_and_fall_back() {
        let c = ab();
        let mut env = vars(&[("BOOT_ORDER", "B A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "2")]);
        let boots: Vec<BootAttempt> = (0..3).map(|_| simulate_boot_attempt(&c, &mut env)).collect();
        assert_eq!(
            boots,
            [
                BootAttempt::Booted("B".into()),
                BootAttempt::Booted("B".into()),
                BootAttempt::Booted("A".into())
            ]
        );
        assert_eq!(env["BOOT_B_LEFT"], "0");
        assert_eq!(env["BOOT_A_LEFT"], "2");
    }

    #[test]
    fn simulated_boot_fills_defaults_and_resets_when_all_are_spent() {
        let c = ab();
        let mut env = Vars::new();
        assert_eq!(
            simulate_boot_attempt(&c, &mut env),
            BootAttempt::Booted("A".into())
        );
        assert_eq!(
            env,
            vars(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "2"), ("BOOT_B_LEFT", "3")])
        );

        let mut env = vars(&[("BOOT_ORDER", "A"), ("BOOT_A_LEFT", "0"), ("BOOT_B_LEFT", "0")]);
        assert_eq!(simulate_boot_attempt(&c, &mut env), BootAttempt::CountersReset);
        assert_eq!(env["BOOT_A_LEFT"], "3");
        assert_eq!(env["BOOT_B_LEFT"], "3");
        // B was marked bad (out of the order): the reset does not revive it.
        assert_eq!(
            simulate_boot_attempt(&c, &mut env),
            BootAttempt::Booted("A".into())
        );
    }

    #[test]
    fn exhausting_a_fresh_primary_selects_the_other_slot() {
        let c = ab();
        // Running from A, both committed; the update makes B primary.
        let mut env = vars(&[("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "3")]);
        let changes = c.set_primary(&env, "B").expect("known");
        apply(&mut env, &changes);
        assert_eq!(c.primary(&env), Some("B"));
        // B never comes up healthy: every try is spent on it.
        for _ in 0..c.attempts() {
            assert_eq!(
                simulate_boot_attempt(&c, &mut env),
                BootAttempt::Booted("B".into())
            );
        }
        assert_eq!(c.state(&env, "B").expect("known"), SlotState::Bad);
        assert_eq!(c.primary(&env), Some("A"));
        assert_eq!(
            simulate_boot_attempt(&c, &mut env),
            BootAttempt::Booted("A".into())
        );
        // The agent, back on A, marks B bad and A good.
        let changes = c.mark_bad(&env, "B").expect("known");
        apply(&mut env, &changes);
        let changes = c.mark_good(&env, "A").expect("known");
        apply(&mut env, &changes);
        assert_eq!(
            env,
            vars(&[("BOOT_ORDER", "A"), ("BOOT_A_LEFT", "3"), ("BOOT_B_LEFT", "0")])
        );
    }
}
