//! The Docker Engine API on a Unix socket, through bollard.
//!
//! The API version is negotiated on every (re)connection: the agent starts
//! at bollard's newest version and steps down to the engine's, so Docker API
//! 1.41 engines (Debian's dockerd 20.10, older balena-engine) and podman's
//! compat API are spoken to in their own version. A client that failed is
//! dropped, so an engine upgraded by a restart is negotiated afresh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{API_DEFAULT_VERSION, Docker};

use crate::status::EngineInfo;
use crate::supervisor::Probe;

#[derive(Debug)]
pub struct DockerProbe {
    socket: PathBuf,
    timeout: Duration,
    client: Option<Docker>,
}

impl DockerProbe {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_owned(),
            timeout,
            client: None,
        }
    }

    /// A client with the negotiated version, connecting if needed.
    pub async fn client(&mut self) -> Result<Docker, String> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let socket = self.socket.display();
        let path = self
            .socket
            .to_str()
            .ok_or_else(|| format!("engine socket {socket} is not a UTF-8 path"))?;
        let secs = self.timeout.as_secs().max(1);
        let client = Docker::connect_with_unix(path, secs, API_DEFAULT_VERSION)
            .map_err(|e| format!("engine socket {socket}: {e}"))?;
        let client = tokio::time::timeout(self.timeout, client.negotiate_version())
            .await
            .map_err(|_| format!("engine socket {socket}: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("engine socket {socket}: {e}"))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn version(&mut self) -> Result<EngineInfo, String> {
        let client = self.client().await?;
        let socket = self.socket.display();
        let version = tokio::time::timeout(self.timeout, client.version())
            .await
            .map_err(|_| format!("engine socket {socket}: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("engine socket {socket}: {e}"))?;
        // Docker CE names its platform "Docker Engine - Community"; Debian's
        // dockerd leaves it empty and podman puts "linux/amd64/debian-12"
        // there, naming itself in the "Podman Engine" component instead.
        let platform = version
            .platform
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let component = version
            .components
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.name.contains("Engine")))
            .map(|c| c.name.clone());
        let name = if platform.contains("Engine") {
            platform
        } else {
            component.unwrap_or_else(|| {
                if platform.is_empty() {
                    "engine".to_owned()
                } else {
                    platform
                }
            })
        };
        let negotiated = client.client_version();
        Ok(EngineInfo {
            name,
            version: version.version.unwrap_or_default(),
            api_version: format!("{}.{}", negotiated.major_version, negotiated.minor_version),
        })
    }
}

impl Probe for DockerProbe {
    async fn probe(&mut self) -> Result<EngineInfo, String> {
        let result = self.version().await;
        if result.is_err() {
            self.client = None;
        }
        result
    }
}
