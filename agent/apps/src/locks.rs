//! Update locks as files, the way an app holds one.
//!
//! Every container of a service gets the host directory
//! `<lock_dir>/<release>/<service>/` mounted at [`MOUNT`], and
//! [`ENV`] set to the lock file's path inside it. While that file exists,
//! the agent does not replace the service's running container — for at most
//! the lock timeout, counted from when an update first waited on the lock
//! (a lock held for days defers a new update by the timeout, not by zero).
//! An app takes the lock with `touch "$CONTAINEROS_UPDATE_LOCK"` before
//! work it must not lose and removes it after.
//!
//! `lock_dir` is meant to be on tmpfs: a reboot releases every lock. The
//! wait clock ([`LockClock`]) is the agent's memory; an agent restart starts
//! it again, which can only defer longer, never replace a locked container
//! early.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::plan::{Deferred, UpdateLocks};

/// Where the service's lock directory appears in its containers.
pub const MOUNT: &str = "/run/containeros";
/// The lock file's name in that directory.
pub const FILE: &str = "update.lock";
/// The environment variable that holds the lock file's path in a container.
pub const ENV: &str = "CONTAINEROS_UPDATE_LOCK";

/// The host directory mounted into `service`'s containers.
pub fn service_dir(lock_dir: &Path, release: &str, service: &str) -> PathBuf {
    lock_dir.join(release).join(service)
}

/// The services of `release` whose lock file exists now.
pub fn held(lock_dir: &Path, release: &str) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(lock_dir.join(release)) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(FILE).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Since when each update has been waiting on a lock.
#[derive(Debug, Default, Clone)]
pub struct LockClock {
    since: BTreeMap<String, SystemTime>,
}

impl LockClock {
    /// The planner's view of the locks `held` now: an update already
    /// waiting keeps its start; any other held lock starts waiting `now`.
    pub fn locks(&self, held: &BTreeSet<String>, timeout: Duration, now: SystemTime) -> UpdateLocks {
        UpdateLocks {
            held: held
                .iter()
                .map(|s| (s.clone(), self.since.get(s).copied().unwrap_or(now)))
                .collect(),
            default_timeout: timeout,
        }
    }

    /// Whether an update of `service` was already waiting on its lock.
    pub fn waiting(&self, service: &str) -> bool {
        self.since.contains_key(service)
    }

    /// Remembers the updates the last apply left waiting, forgets the rest.
    pub fn settle(&mut self, deferred: &[Deferred]) {
        self.since = deferred
            .iter()
            .map(|d| (d.service.clone(), d.held_since))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lists_services_whose_lock_file_exists() {
        let dir = tempfile::tempdir().expect("test fixture");
        for service in ["web", "db", "api"] {
            std::fs::create_dir_all(service_dir(dir.path(), "app", service)).expect("test fixture");
        }
        std::fs::write(service_dir(dir.path(), "app", "web").join(FILE), "").expect("test fixture");
        std::fs::write(service_dir(dir.path(), "app", "api").join("other"), "").expect("test fixture");
        assert_eq!(held(dir.path(), "app"), BTreeSet::from(["web".to_owned()]));
        assert!(held(dir.path(), "missing").is_empty());
    }

    #[test]
    fn the_wait_starts_when_an_update_first_waits() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let web = BTreeSet::from(["web".to_owned()]);
        let mut clock = LockClock::default();
        let timeout = Duration::from_secs(60);
        assert_eq!(clock.locks(&web, timeout, t(10)).held["web"], t(10));
        clock.settle(&[Deferred {
            service: "web".into(),
            held_since: t(10),
            expires_at: t(70),
        }]);
        assert_eq!(clock.locks(&web, timeout, t(40)).held["web"], t(10));
        // The update went through (or the lock went away): forgotten.
        clock.settle(&[]);
        assert_eq!(clock.locks(&web, timeout, t(90)).held["web"], t(90));
    }
}
