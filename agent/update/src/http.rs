//! The update HTTP client: rustls on the `ring` provider, the system's CA
//! store plus optional extra CA certificates, and timeouts per connection
//! and per read (never for the whole transfer: a 500 MiB image over 3G takes
//! hours, and that is fine while bytes keep arriving).

use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read CA certificate file {path}: {source}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA certificate file {path} holds no usable PEM certificate: {reason}")]
    ParseCa { path: String, reason: String },
    #[error("cannot set up the HTTPS client: {0}")]
    Build(#[source] reqwest::Error),
}

/// Timeouts of the update client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest silence between two reads before the connection is dropped
    /// (and the download resumed).
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(15),
            read: Duration::from_secs(30),
        }
    }
}

/// Builds the client. `extra_ca` (PEM) is trusted *in addition to* the
/// system's CA store — or instead of it when `only_extra_ca` is set (a
/// private update server with its own CA).
pub fn client(
    extra_ca: Option<&Path>,
    only_extra_ca: bool,
    timeouts: Timeouts,
) -> Result<reqwest::Client, ClientError> {
    // The process-wide provider; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.read)
        .user_agent(concat!("containeros-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = extra_ca {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
            path: shown.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::ParseCa {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(ClientError::ParseCa {
                path: shown,
                reason: "no certificate found".into(),
            });
        }
        builder = if only_extra_ca {
            builder.tls_certs_only(certs)
        } else {
            builder.tls_certs_merge(certs)
        };
    }
    builder.build().map_err(ClientError::Build)
}
