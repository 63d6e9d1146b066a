//! The channel: the agent polls `<channel>/manifest.json`, a signed
//! release envelope, and applies a newer release by itself.
//!
//! - Polls every `channel.interval`, varied by ±25 % per device so a fleet
//!   does not poll in step; after a failure the next poll comes after 1 min,
//!   doubling up to the interval.
//! - Conditional requests: the last `ETag` (`If-None-Match`) and
//!   `Last-Modified` (`If-Modified-Since`); a 304 costs a few hundred bytes.
//! - A manifest that does not verify (signature, key, expiry) or is not
//!   newer than the last one acted on is ignored with one log line; nothing
//!   changes.
//! - Staged rollout: a device takes a release when a stable hash of its
//!   device id and the channel name, as a number 0–99, is below the
//!   manifest's `rollout` percentage.
//! - What it applies: an OS image whose `os.version` differs from the
//!   running OS is installed through the OS updater (with the release's
//!   apps, which start on the trial boot); otherwise the release's apps are
//!   applied at once. `auto` reboots into a new OS inside the maintenance
//!   window, `download-only` leaves the reboot to a person, `manual` only
//!   logs that a release is there.
//! - A directory instead of a URL is an offline channel (a USB stick): the
//!   same layout, read from disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containeros_config::{ChannelMode, ChannelSection, maintenance_window};
use containeros_trust::{Checks, Digest, Manifest, PublicKey};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::os;
use crate::store;

/// What the poller needs from the rest of the agent.
pub struct Channel {
    pub config: ChannelSection,
    pub keys: Vec<PublicKey>,
    pub state_dir: PathBuf,
    /// The running OS version (os-release VERSION_ID).
    pub os_version: String,
    /// The device's UUID (kept on /data): the staged-rollout key.
    pub device_id: String,
    pub os: Option<mpsc::Sender<os::Request>>,
    pub apps: Arc<dyn os::AppsTarget>,
}

/// Where the manifest is and how it was last seen.
struct Poll {
    etag: Option<String>,
    last_modified: Option<String>,
}

enum Fetched {
    NotModified,
    Manifest(Vec<u8>),
}

const MANIFEST: &str = "manifest.json";
const RETRY_FIRST: Duration = Duration::from_secs(60);

impl Channel {
    fn is_url(&self) -> bool {
        self.config.url.starts_with("https://") || self.config.url.starts_with("http://")
    }

    /// The manifest's location: `<url>/manifest.json`, or the file in the
    /// directory.
    fn manifest_location(&self) -> String {
        if self.is_url() {
            format!("{}/{MANIFEST}", self.config.url.trim_end_matches('/'))
        } else {
            Path::new(&self.config.url).join(MANIFEST).display().to_string()
        }
    }

    fn applied_file(&self) -> PathBuf {
        self.state_dir.join("channel").join("applied-version")
    }

    fn applied(&self) -> u64 {
        std::fs::read_to_string(self.applied_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// This device's place in a staged rollout, 0–99: stable per device
    /// and channel.
    fn bucket(&self, channel: &str) -> u8 {
        let digest = Digest::of(format!("{}\n{channel}", self.device_id.trim()).as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.0[..8]);
        u8::try_from(u64::from_be_bytes(first) % 100).unwrap_or(0)
    }

    async fn fetch(&self, client: &reqwest::Client, poll: &mut Poll) -> Result<Fetched, String> {
        let location = self.manifest_location();
        if !self.is_url() {
            return std::fs::read(&location)
                .map(Fetched::Manifest)
                .map_err(|e| format!("cannot read {location}: {e}"));
        }
        let mut request = client.get(&location);
        if let Some(etag) = &poll.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(modified) = &poll.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, modified);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("cannot fetch {location}: {e}"))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        let response = response
            .error_for_status()
            .map_err(|e| format!("cannot fetch {location}: {e}"))?;
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        poll.etag = header(reqwest::header::ETAG);
        poll.last_modified = header(reqwest::header::LAST_MODIFIED);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot fetch {location}: {e}"))?;
        Ok(Fetched::Manifest(bytes.to_vec()))
    }

    /// One poll: `Ok` when the channel answered (whatever it said).
    async fn poll(
        &self,
        client: &reqwest::Client,
        poll: &mut Poll,
        last_ignored: &mut String,
    ) -> Result<(), String> {
        let bytes = match self.fetch(client, poll).await? {
            Fetched::NotModified => return Ok(()),
            Fetched::Manifest(bytes) => bytes,
        };
        let location = self.manifest_location();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let applied = self.applied();
        let verified = containeros_trust::verify(
            &bytes,
            &self.keys,
            &Checks {
                now,
                installed_version: (applied > 0).then_some(applied),
                allow_downgrade: false,
            },
        );
        let manifest: Manifest = match verified {
            Ok(v) => v.manifest,
            // The release this device already took: nothing new (a server
            // that ignores If-None-Match, or the first poll of a boot).
            Err(containeros_trust::TrustError::NotNewer { offered, installed }) if offered == installed => {
                debug!(
                    version = offered,
                    "the channel still offers release {offered}, already applied"
                );
                last_ignored.clear();
                return Ok(());
            }
            Err(e) => {
                // Once per distinct problem, not at every poll.
                let problem = e.to_string();
                if *last_ignored != problem {
                    warn!(channel = %location, "ignoring the channel's release: {problem}");
                    *last_ignored = problem;
                }
                return Ok(());
            }
        };
        last_ignored.clear();
        if let Some(rollout) = manifest.rollout {
            let bucket = self.bucket(&manifest.channel);
            if bucket >= rollout.min(100) {
                info!(
                    version = manifest.version,
                    rollout,
                    bucket,
                    "release {} is rolled out to {rollout} % of devices; not yet to this one",
                    manifest.version
                );
                return Ok(());
            }
        }
        let os_change = manifest.os.as_ref().filter(|os| os.version != self.os_version);
        if self.config.mode == ChannelMode::Manual {
            info!(
                version = manifest.version,
                name = %manifest.name,
                "release {} is available on the channel (channel.mode = \"manual\")",
                manifest.version
            );
            return Ok(());
        }
        if os_change.is_some() {
            let Some(os) = &self.os else {
                warn!(
                    "release {} updates the OS, but OS updates are unavailable here",
                    manifest.version
                );
                return Ok(());
            };
            let reboot = self.config.mode == ChannelMode::Auto && self.in_window(now);
            let (reply, answer) = oneshot::channel();
            os.send(os::Request::Install {
                source: location.clone(),
                force_downgrade: false,
                reboot,
                reply,
            })
            .await
            .map_err(|_| "the OS updater has stopped".to_owned())?;
            match answer.await {
                Ok(Ok(())) => info!(
                    version = manifest.version,
                    reboot, "installing release {} from the channel", manifest.version
                ),
                Ok(Err(e)) => {
                    warn!(
                        "the channel's release {} was not installed: {e}",
                        manifest.version
                    );
                    return Err(e);
                }
                Err(_) => return Err("the OS updater has stopped".to_owned()),
            }
        } else if let Some(apps) = &manifest.apps {
            let compose = self.fetch_apps(client, apps).await?;
            let path = self.state_dir.join("channel").join("apps.yml");
            store::write_atomic(&path, &compose).map_err(|e| format!("cannot keep the apps release: {e}"))?;
            self.apps.set(&path)?;
            info!(
                version = manifest.version,
                "applying the apps of release {} from the channel", manifest.version
            );
        } else {
            info!(
                version = manifest.version,
                "release {} changes nothing here", manifest.version
            );
        }
        store::write_atomic(&self.applied_file(), manifest.version.to_string().as_bytes())
            .map_err(|e| format!("cannot record the applied release: {e}"))?;
        Ok(())
    }

    async fn fetch_apps(
        &self,
        client: &reqwest::Client,
        apps: &containeros_trust::AppsRef,
    ) -> Result<Vec<u8>, String> {
        let location = if self.is_url() {
            format!(
                "{}/{}",
                self.config.url.trim_end_matches('/'),
                apps.path.trim_start_matches('/')
            )
        } else {
            Path::new(&self.config.url).join(&apps.path).display().to_string()
        };
        let bytes = if self.is_url() {
            client
                .get(&location)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("cannot fetch {location}: {e}"))?
                .bytes()
                .await
                .map_err(|e| format!("cannot fetch {location}: {e}"))?
                .to_vec()
        } else {
            std::fs::read(&location).map_err(|e| format!("cannot read {location}: {e}"))?
        };
        if bytes.len() as u64 != apps.size || Digest::of(&bytes) != apps.sha256 {
            return Err(format!(
                "the apps release {location} is not the one the manifest signs"
            ));
        }
        Ok(bytes)
    }

    fn in_window(&self, now: u64) -> bool {
        let Some((start, end)) = maintenance_window(&self.config.maintenance_window) else {
            return true;
        };
        let minute = u32::try_from((now / 60) % (24 * 60)).unwrap_or(0);
        if start < end {
            (start..end).contains(&minute)
        } else {
            minute >= start || minute < end
        }
    }
}

/// Polls until `shutdown`.
pub async fn run(channel: Channel, mut shutdown: watch::Receiver<bool>) {
    let ca = (!channel.config.ca_file.is_empty()).then(|| PathBuf::from(&channel.config.ca_file));
    let client = match containeros_update::http::client(ca.as_deref(), false, Default::default()) {
        Ok(c) => c,
        Err(e) => {
            warn!("the channel is off: {e}; check channel.ca_file");
            return;
        }
    };
    info!(channel = %channel.manifest_location(), mode = ?channel.config.mode, "polling the release channel");
    let mut poll = Poll {
        etag: None,
        last_modified: None,
    };
    let mut last_ignored = String::new();
    let mut retry = RETRY_FIRST;
    // The first poll soon after start, spread over a few seconds.
    let mut wait = Duration::from_millis(500 + u64::from(channel.bucket("start")) * 30);
    loop {
        tokio::select! {
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = match channel.poll(&client, &mut poll, &mut last_ignored).await {
            Ok(()) => {
                retry = RETRY_FIRST;
                jittered(channel.config.interval.get(), channel.bucket("interval"))
            }
            Err(e) => {
                warn!(channel = %channel.manifest_location(), "channel poll failed: {e}; next try in {retry:?}");
                // Fetch the manifest again next time: a release whose install
                // failed (the network, the server) is tried again, not
                // skipped because the channel answers 304.
                poll.etag = None;
                poll.last_modified = None;
                let w = retry;
                retry = (retry * 2).min(channel.config.interval.get());
                w
            }
        };
    }
}

/// `interval` varied by ±25 % by `bucket` (0–99).
fn jittered(interval: Duration, bucket: u8) -> Duration {
    let factor = 0.75 + f64::from(bucket) / 200.0;
    interval.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        let hour = Duration::from_secs(3600);
        assert_eq!(jittered(hour, 0), Duration::from_secs(2700));
        assert!(jittered(hour, 99) < Duration::from_secs(4500));
    }
}
