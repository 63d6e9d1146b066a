//! `containeros os ...`: OS updates into the other A/B slot, through the
//! agent's `org.containeros.Agent1.Installer` interface.
//!
//! `os install` follows the update by its signals, subscribed before the
//! call so a quick install's end is not missed: a progress line on stderr
//! for people (redrawn in place on a terminal, one line per state or 10 %
//! step otherwise, so logs stay readable), or one JSON object per event on
//! stdout with `--json`.

use std::io::{IsTerminal as _, Write as _};

use containeros_api::{AgentProxy, ClientError, InstallOptions, InstallerProxy, InstallerStatus, Status};
use futures_util::StreamExt as _;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Install the OS release whose signed manifest is at SOURCE into the
    /// other slot and follow it until it is written and verified: a
    /// progress line for people, JSON lines with --json (root or the
    /// `containeros` group).
    Install {
        /// The release envelope: an https:// URL, or a file on this device.
        source: String,
        /// Accept a release older than the installed one.
        #[arg(long)]
        force_downgrade: bool,
        /// Reboot into the new slot once it is written and verified.
        #[arg(long)]
        reboot: bool,
        /// Print one JSON object per event instead of a progress line.
        #[arg(long)]
        json: bool,
        /// Return once the install is accepted, without following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show the OS update's state, the booted slot and the OS version.
    Status {
        /// Print one JSON object (snake_case field names) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mark the booted slot good: commit the update running now (root or the
    /// `containeros` group).
    MarkGood,
    /// Mark the booted slot bad, so the bootloader leaves it (root or the
    /// `containeros` group).
    MarkBad,
    /// Make the other slot the boot default again; it must hold a verified,
    /// committed OS (root or the `containeros` group).
    Rollback,
    /// Reboot now, into the slot the bootloader will pick (root or the
    /// `containeros` group).
    Reboot,
}

pub async fn run(agent: &AgentProxy<'_>, command: Command) -> Result<(), ClientError> {
    let installer = InstallerProxy::builder(agent.inner().connection())
        .destination(containeros_api::BUS_NAME)?
        .build()
        .await?;
    match command {
        Command::Install {
            source,
            force_downgrade,
            reboot,
            json,
            no_wait,
        } => {
            let options = InstallOptions {
                force_downgrade,
                reboot,
            };
            install(&installer, &source, &options, json, no_wait).await
        }
        Command::Status { json } => {
            let installer = containeros_api::installer_status(&installer).await?;
            let agent = containeros_api::status(agent).await?;
            if json {
                let json =
                    status_json(&agent, &installer).map_err(|e| ClientError::Refused(e.to_string()))?;
                println!("{json}");
            } else {
                print!("{}", human(&agent, &installer));
            }
            Ok(())
        }
        Command::MarkGood => {
            println!("{}", installer.mark_good().await?);
            Ok(())
        }
        Command::MarkBad => {
            println!("{}", installer.mark_bad().await?);
            Ok(())
        }
        Command::Rollback => {
            println!("{}", installer.rollback().await?);
            Ok(())
        }
        Command::Reboot => {
            installer.reboot().await?;
            println!("rebooting");
            Ok(())
        }
    }
}

async fn install(
    installer: &InstallerProxy<'_>,
    source: &str,
    options: &InstallOptions,
    json: bool,
    no_wait: bool,
) -> Result<(), ClientError> {
    let source = resolve_source(source).map_err(|e| ClientError::Refused(format!("{source}: {e}")))?;
    // Subscribe before asking, or a quick install's signals are missed.
    let mut progress = installer.receive_progress().await?;
    let mut completed = installer.receive_completed().await?;
    installer.install(&source, options.to_dbus()).await?;
    if no_wait {
        println!("install accepted: {source}");
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    let mut view = ProgressView::new(stderr.is_terminal());
    loop {
        tokio::select! {
            Some(signal) = progress.next() => {
                let Ok(a) = signal.args() else { continue };
                if json {
                    println!("{}", serde_json::json!({
                        "event": "progress", "state": a.state, "done": a.done, "total": a.total,
                    }));
                } else if let Some(text) = view.render(&a.state, a.done, a.total) {
                    let _ = write!(stderr, "{text}");
                }
            }
            Some(signal) = completed.next() => {
                let Ok(a) = signal.args() else { continue };
                if json {
                    println!("{}", serde_json::json!({
                        "event": "completed", "success": a.success, "state": a.state, "message": a.message,
                    }));
                } else if let Some(text) = view.finish() {
                    let _ = write!(stderr, "{text}");
                }
                if !a.success {
                    return Err(ClientError::Refused(format!("OS update failed ({}): {}", a.state, a.message)));
                }
                if !json {
                    println!("{}", if a.message.is_empty() { &a.state } else { &a.message });
                }
                return Ok(());
            }
            else => return Err(ClientError::Refused("lost the agent's signals".into())),
        }
    }
}

/// A URL goes to the agent as it is; a file is made absolute, since the
/// agent reads it itself from its own working directory.
fn resolve_source(source: &str) -> std::io::Result<String> {
    if is_url(source) {
        return Ok(source.to_owned());
    }
    Ok(std::path::absolute(source)?.to_string_lossy().into_owned())
}

/// `scheme://...` with an RFC 3986 scheme; which schemes it accepts is the
/// agent's business.
fn is_url(source: &str) -> bool {
    source.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// Turns `Progress` signals into what stderr shows.
#[derive(Debug)]
struct ProgressView {
    tty: bool,
    /// A line is on the terminal, to clear before the final message.
    drawn: bool,
    /// The (state, step) of the last plain line.
    last_step: Option<(String, u64)>,
}

impl ProgressView {
    const BAR_WIDTH: u64 = 24;
    /// Without a total, a plain line every this many bytes.
    const PLAIN_STEP_UNKNOWN_TOTAL: u64 = 64 << 20;

    fn new(tty: bool) -> Self {
        Self {
            tty,
            drawn: false,
            last_step: None,
        }
    }

    /// The text to write for one `Progress` signal, if any.
    fn render(&mut self, state: &str, done: u64, total: u64) -> Option<String> {
        if self.tty {
            self.drawn = true;
            let bar = match percent(done, total) {
                Some(p) => {
                    let full = p * Self::BAR_WIDTH / 100;
                    format!(
                        " [{}{}]",
                        "#".repeat(full as usize),
                        "-".repeat((Self::BAR_WIDTH - full) as usize)
                    )
                }
                None => String::new(),
            };
            return Some(format!("\r\x1b[K{state}{bar} {}", amount(done, total)));
        }
        let step = match percent(done, total) {
            Some(p) => p / 10,
            None => done / Self::PLAIN_STEP_UNKNOWN_TOTAL,
        };
        let key = (state.to_owned(), step);
        if self.last_step.as_ref() == Some(&key) {
            return None;
        }
        self.last_step = Some(key);
        Some(format!("{state}: {}\n", amount(done, total)))
    }

    /// The text that clears the progress line before the final message.
    fn finish(&mut self) -> Option<String> {
        std::mem::take(&mut self.drawn).then(|| "\r\x1b[K".to_owned())
    }
}

/// Percent of `total` done, when the total is known.
fn percent(done: u64, total: u64) -> Option<u64> {
    (total > 0).then(|| (u128::from(done.min(total)) * 100 / u128::from(total)) as u64)
}

/// "12.0 / 512.0 MiB (2%)", or "12.0 MiB" when the total is not known.
fn amount(done: u64, total: u64) -> String {
    match percent(done, total) {
        Some(p) => format!("{} / {} MiB ({p}%)", mib(done), mib(total)),
        None => format!("{} MiB", mib(done)),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

fn status_json(agent: &Status, installer: &InstallerStatus) -> serde_json::Result<String> {
    let mut json = serde_json::to_value(installer)?;
    if let Some(map) = json.as_object_mut() {
        map.insert("booted_slot".into(), agent.booted_slot.clone().into());
        map.insert("os_version".into(), agent.os_version.clone().into());
    }
    serde_json::to_string_pretty(&json)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn human(agent: &Status, i: &InstallerStatus) -> String {
    let version = if i.version == 0 {
        "-".to_owned()
    } else {
        i.version.to_string()
    };
    let written = if i.bytes_done == 0 && i.bytes_total == 0 {
        "-".to_owned()
    } else {
        amount(i.bytes_done, i.bytes_total)
    };
    let fetched = if i.bytes_fetched == 0 {
        "-".to_owned()
    } else {
        format!("{:.1} MiB", i.bytes_fetched as f64 / f64::from(1u32 << 20))
    };
    format!(
        "Booted slot:  {}\nOS version:   {}\nUpdate state: {}\nTarget slot:  {}\nVersion:      {version}\n\
         Written:      {written}\nFetched:      {fetched}\nLast result:  {}\nLast error:   {}\n",
        or_dash(&agent.booted_slot),
        or_dash(&agent.os_version),
        or_dash(&i.state),
        or_dash(&i.target_slot),
        or_dash(&i.last_result),
        or_dash(&i.last_error),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pass_through_and_files_become_absolute() {
        let url = "https://updates.example/stable/release.json";
        assert_eq!(resolve_source(url).expect("url"), url);
        let file = resolve_source("release.json").expect("file");
        assert!(std::path::Path::new(&file).is_absolute(), "{file}");
        assert!(file.ends_with("/release.json"), "{file}");
        assert_eq!(
            resolve_source("/media/usb/r.json").expect("abs"),
            "/media/usb/r.json"
        );
        assert!(!is_url("./odd://name"));
        assert!(!is_url("://x"));
        assert!(is_url("file:///data/r.json"));
    }

    #[test]
    fn terminal_progress_redraws_one_line() {
        let mut view = ProgressView::new(true);
        assert_eq!(view.finish(), None, "nothing drawn, nothing to clear");
        assert_eq!(
            view.render("downloading", 128 << 20, 512 << 20).as_deref(),
            Some("\r\x1b[Kdownloading [######------------------] 128.0 / 512.0 MiB (25%)")
        );
        assert_eq!(
            view.render("verified", 0, 0).as_deref(),
            Some("\r\x1b[Kverified 0.0 MiB")
        );
        assert_eq!(view.finish().as_deref(), Some("\r\x1b[K"));
    }

    #[test]
    fn plain_progress_prints_a_line_per_state_or_ten_percent() {
        let mut view = ProgressView::new(false);
        let total = 1000 << 20;
        let lines: Vec<String> = [
            ("downloading", 0),
            ("downloading", 50 << 20),
            ("downloading", 100 << 20),
            ("downloading", 150 << 20),
            ("written", total),
            ("written", total),
        ]
        .into_iter()
        .filter_map(|(state, done)| view.render(state, done, total))
        .collect();
        assert_eq!(
            lines,
            [
                "downloading: 0.0 / 1000.0 MiB (0%)\n",
                "downloading: 100.0 / 1000.0 MiB (10%)\n",
                "written: 1000.0 / 1000.0 MiB (100%)\n",
            ]
        );
        assert_eq!(view.finish(), None, "plain lines need no clearing");
    }

    #[test]
    fn percent_is_capped_and_needs_a_total() {
        assert_eq!(percent(5, 0), None);
        assert_eq!(percent(u64::MAX, u64::MAX), Some(100));
        assert_eq!(percent(20, 10), Some(100));
    }

    fn example() -> (Status, InstallerStatus) {
        let agent = Status {
            os_version: "1.4".into(),
            booted_slot: "A".into(),
            ..Status::default()
        };
        let installer = InstallerStatus {
            state: "downloading".into(),
            target_slot: "B".into(),
            version: 8,
            bytes_done: 256 << 20,
            bytes_total: 1024 << 20,
            ..InstallerStatus::default()
        };
        (agent, installer)
    }

    #[test]
    fn human_status() {
        let (agent, installer) = example();
        assert_eq!(
            human(&agent, &installer),
            "Booted slot:  A\nOS version:   1.4\nUpdate state: downloading\nTarget slot:  B\nVersion:      8\n\
             Written:      256.0 / 1024.0 MiB (25%)\nFetched:      -\nLast result:  -\nLast error:   -\n"
        );
        let idle = human(&Status::default(), &InstallerStatus::default());
        assert!(idle.contains("Update state: idle\n"), "{idle}");
        assert!(idle.contains("Version:      -\nWritten:      -\n"), "{idle}");
    }

    #[test]
    fn json_status_has_snake_case_keys() {
        let (agent, installer) = example();
        let json: serde_json::Value =
            serde_json::from_str(&status_json(&agent, &installer).expect("json")).expect("parse");
        assert_eq!(
            json,
            serde_json::json!({
                "booted_slot": "A", "os_version": "1.4", "state": "downloading", "target_slot": "B",
                "version": 8, "bytes_done": 268435456u64, "bytes_total": 1073741824u64, "bytes_fetched": 0,
                "last_error": "", "last_result": "",
            })
        );
    }
}
