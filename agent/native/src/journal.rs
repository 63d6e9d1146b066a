//! Container output to journald, the way systemd connects a service's
//! stdout: a stream connection to journald's stdout socket, opened with
//! the header journald expects, handed to the container as its stdout and
//! stderr. The container holds the connection, not the agent: its lines
//! keep arriving while the agent restarts.
//!
//! The header (systemd's `journald-stream.c`, what `sd_journal_stream_fd`
//! writes), one line each: the identifier (`SYSLOG_IDENTIFIER=`, here the
//! service name), the unit id (empty: journald takes it as
//! `_SYSTEMD_UNIT=` only for a real unit name and a peer without a known
//! cgroup, so a container name there would be dropped or claim a unit that
//! does not exist), the priority (6 for stdout, 3 for stderr, as Docker's
//! journald driver does), level prefix (0: `<N>` at the start of a line is
//! the application's text), and forwarding to syslog, kmsg and console
//! (all 0).
//!
//! A socket under `/run/systemd/journal.<namespace>/` is a journal
//! namespace (systemd's `LogNamespace=`): it is read back with
//! `journalctl --namespace=<namespace>`.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// journald's stdout socket on a systemd host.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/stdout";

/// `LOG_INFO`, for stdout.
pub const PRIORITY_STDOUT: u8 = 6;
/// `LOG_ERR`, for stderr.
pub const PRIORITY_STDERR: u8 = 3;

/// Where container output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogTarget {
    /// journald when its socket exists, else a file on the run directory.
    #[default]
    Auto,
    /// journald; starting a container fails when it does not answer.
    Journald,
    /// A file on the run directory (cut when it passes 1 MiB at a start).
    File,
}

/// journald's stdout socket and how to read back what went there.
#[derive(Debug, Clone)]
pub struct Journal {
    socket: PathBuf,
    namespace: Option<String>,
}

/// The stream header for `identifier` at `priority`.
pub fn header(identifier: &str, priority: u8) -> String {
    // A line break in the identifier would shift every header field.
    let identifier: String = identifier
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    format!("{identifier}\n\n{priority}\n0\n0\n0\n0\n")
}

impl Journal {
    /// `socket`: journald's stdout socket ([`DEFAULT_SOCKET`], or a
    /// namespace's `/run/systemd/journal.<namespace>/stdout`).
    pub fn new(socket: PathBuf) -> Self {
        let namespace = socket
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("journal."))
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        Self { socket, namespace }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether journald's socket is there.
    pub fn available(&self) -> bool {
        use std::os::unix::fs::FileTypeExt as _;
        std::fs::metadata(&self.socket).is_ok_and(|m| m.file_type().is_socket())
    }

    /// A connection whose lines journald records under `identifier` at
    /// `priority`.
    pub fn stream(&self, identifier: &str, priority: u8) -> Result<UnixStream> {
        let io = |e: std::io::Error| Error::Journal {
            reason: format!(
                "{}: {e}; is systemd-journald running? (engine.native_logs = \"file\" keeps \
                 container output in engine.native_run_dir instead)",
                self.socket.display()
            ),
        };
        let mut s = UnixStream::connect(&self.socket).map_err(io)?;
        // A journald that accepts but never reads must not hang a start.
        s.set_write_timeout(Some(Duration::from_secs(5))).map_err(io)?;
        s.write_all(header(identifier, priority).as_bytes()).map_err(io)?;
        s.set_write_timeout(None).map_err(io)?;
        // journald never writes back (sd_journal_stream_fd does the same).
        s.shutdown(std::net::Shutdown::Read).map_err(io)?;
        Ok(s)
    }

    /// The last `lines` lines recorded under `identifier` since `since`.
    pub async fn read(&self, identifier: &str, since: SystemTime, lines: usize) -> Result<String> {
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut c = tokio::process::Command::new("journalctl");
        if let Some(ns) = &self.namespace {
            c.arg(format!("--namespace={ns}"));
        }
        let out = c
            // Newest first: with --since and without --reverse, --lines
            // would count from the oldest.
            .args(["--quiet", "--no-pager", "--output=cat", "--reverse"])
            .arg(format!("--lines={lines}"))
            .arg(format!("--since=@{since}"))
            .arg(format!("SYSLOG_IDENTIFIER={identifier}"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::Journal {
                reason: format!(
                    "cannot run journalctl: {e}; install it or set engine.native_logs = \"file\""
                ),
            })?;
        if !out.status.success() {
            return Err(Error::Journal {
                reason: format!(
                    "journalctl failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<&str> = text.lines().collect();
        lines.reverse();
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_seven_lines() {
        assert_eq!(header("web", 6), "web\n\n6\n0\n0\n0\n0\n");
        assert_eq!(header("a\nb", 3), "a_b\n\n3\n0\n0\n0\n0\n");
    }

    #[test]
    fn namespace_from_the_socket_path() {
        assert_eq!(Journal::new(DEFAULT_SOCKET.into()).namespace, None);
        assert_eq!(
            Journal::new("/run/systemd/journal.apps/stdout".into())
                .namespace
                .as_deref(),
            Some("apps")
        );
    }
}
