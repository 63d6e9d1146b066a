//! `sd_notify(3)` without libsystemd: one datagram per state change to the
//! socket in `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//! Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op, so the
//! daemon runs the same way in a terminal.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the
    /// watchdog applies only when it is meant for this process).
    pub fn from_env() -> io::Result<Self> {
        let socket = match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) if !path.is_empty() => Some(connect(path.to_string_lossy().as_ref())?),
            _ => None,
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.parse() == Ok(std::process::id()));
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Ok(Self { socket, watchdog })
    }

    /// Whether a service manager is listening.
    pub fn is_active(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog timeout systemd set, if any. Ping at half of it.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ))
    }

    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={status}"))
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    fn send(&self, message: &str) -> io::Result<()> {
        match &self.socket {
            Some((socket, addr)) => match socket.send_to_addr(message.as_bytes(), addr) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the service manager's notification queue is full; notification dropped",
                )),
                other => other.map(drop),
            },
            None => Ok(()),
        }
    }
}

/// An unbound datagram socket aimed at `path`. Non-blocking: a slow or
/// stuck receiver must never block the daemon, so a full queue drops the
/// notification instead (a watchdog ping lost that way is exactly what the
/// watchdog is there to notice).
fn connect(path: &str) -> io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, socket_addr(path)?))
}

fn socket_addr(path: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        std::os::unix::net::SocketAddr::from_pathname(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().expect("socket"),
                socket_addr(path.to_str().expect("utf8")).expect("addr"),
            )),
            watchdog: None,
        };
        notifier.ready("up").expect("send");
        notifier.watchdog().expect("send");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("recv");
        let first = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(first.starts_with("READY=1\nSTATUS=up\nMAINPID="), "{first}");
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("notify-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let _listener = UnixDatagram::bind(&path).expect("bind"); // never read
        let notifier = Notifier {
            socket: Some(connect(path.to_str().expect("utf8")).expect("connect")),
            watchdog: None,
        };
        let mut dropped = 0;
        for _ in 0..10_000 {
            if notifier.watchdog().is_err() {
                dropped += 1;
            }
        }
        assert!(
            dropped > 0,
            "the queue filled up and sends returned instead of blocking"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_socket_calls_are_no_ops() {
        let notifier = Notifier {
            socket: None,
            watchdog: None,
        };
        assert!(!notifier.is_active());
        notifier.ready("x").expect("no-op");
    }
}
