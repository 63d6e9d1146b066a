//! The OCI runtime binary (`crun` on the device, `runc` where the cgroup
//! layout makes crun refuse), driven through its command line — the
//! interface both share: `create`, `start`, `state`, `kill`, `delete`,
//! `exec`. Its state directory (`--root`) is the engine's own, on a tmpfs,
//! so containers are found again after an agent restart and never mixed
//! with another engine's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where a container's stdout and stderr go.
#[derive(Debug)]
pub enum Output {
    /// Appended to this file, with the runtime's own complaints.
    File(PathBuf),
    /// journald streams ([`crate::journal`]); the runtime's own log to `log`.
    Journal {
        stdout: std::os::unix::net::UnixStream,
        stderr: std::os::unix::net::UnixStream,
        log: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct Runtime {
    binary: PathBuf,
    root: PathBuf,
}

/// `runtime state <id>`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RuntimeState {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    /// `created`, `running`, `paused`, `stopped`.
    pub status: String,
}

fn failed(op: &'static str, container: &str, reason: impl Into<String>) -> Error {
    Error::Runtime {
        op,
        container: container.to_owned(),
        reason: reason.into(),
    }
}

impl Runtime {
    pub fn new(binary: PathBuf, root: PathBuf) -> Self {
        Self { binary, root }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // The agent's own systemd notification socket is not the
        // container's: with it set, the runtime would proxy sd_notify for
        // the container (and fail on a socket path too long for the id).
        c.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        c
    }

    async fn run(&self, op: &'static str, container: &str, args: &[OsString]) -> Result<Vec<u8>> {
        let out = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| {
                failed(
                    op,
                    container,
                    format!("cannot run {}: {e}", self.binary.display()),
                )
            })?;
        if !out.status.success() {
            return Err(failed(
                op,
                container,
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(out.stdout)
    }

    /// Creates the container of `bundle` with `output` as its stdout and
    /// stderr (the runtime passes its own on to the container's process).
    /// A failure quotes the end of the file the runtime complained to.
    pub async fn create(&self, id: &str, bundle: &Path, output: Output) -> Result<()> {
        let mut command = self.command();
        let complaints = match output {
            Output::File(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map_err(Error::io("opening", &log))?;
                let err = file.try_clone().map_err(Error::io("opening", &log))?;
                command.stdout(file).stderr(err);
                log
            }
            Output::Journal { stdout, stderr, log } => {
                // The runtime's own messages would go to the journal under
                // the service's name: they go to a file of their own too.
                let _ = std::fs::remove_file(&log);
                command
                    .arg("--log")
                    .arg(&log)
                    .stdout(std::os::fd::OwnedFd::from(stdout))
                    .stderr(std::os::fd::OwnedFd::from(stderr));
                log
            }
        };
        let status = command
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(bundle.join("pid"))
            .arg(id)
            .status()
            .await
            .map_err(|e| failed("create", id, format!("cannot run {}: {e}", self.binary.display())))?;
        if !status.success() {
            let tail = crate::containers::tail(&complaints, 5).unwrap_or_default();
            return Err(failed("create", id, tail.trim().to_owned()));
        }
        Ok(())
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.run("start", id, &["start".into(), id.into()])
            .await
            .map(drop)
    }

    /// The container's state; `None` when the runtime does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<RuntimeState>> {
        let out = self
            .command()
            .args(["state", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| failed("state", id, format!("cannot run {}: {e}", self.binary.display())))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("does not exist")
                || stderr.contains("not found")
                || stderr.contains("No such file")
            {
                return Ok(None);
            }
            return Err(failed("state", id, stderr.trim().to_owned()));
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| failed("state", id, format!("unreadable state: {e}")))
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        let signal = signal.strip_prefix("SIG").unwrap_or(signal);
        self.run("kill", id, &["kill".into(), id.into(), signal.into()])
            .await
            .map(drop)
    }

    pub async fn delete(&self, id: &str) -> Result<()> {
        match self
            .run("delete", id, &["delete".into(), "--force".into(), id.into()])
            .await
        {
            Err(Error::Runtime { reason, .. })
                if reason.contains("does not exist") || reason.contains("not found") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Runs `argv` in the container (its environment, user and working
    /// dir); returns the exit code and the output, killed after `timeout`.
    pub async fn exec(&self, id: &str, argv: &[String], timeout: Duration) -> Result<(i32, String)> {
        let child = self
            .command()
            .arg("exec")
            .arg(id)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        match tokio::time::timeout(timeout, child).await {
            Err(_) => Ok((-1, format!("timed out after {timeout:?}"))),
            Ok(Err(e)) => Err(failed(
                "exec",
                id,
                format!("cannot run {}: {e}", self.binary.display()),
            )),
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok((out.status.code().unwrap_or(-1), text))
            }
        }
    }
}
