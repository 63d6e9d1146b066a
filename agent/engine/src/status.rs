//! What the agent knows about the engine, as published on D-Bus.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineState {
    /// Not checked yet.
    #[default]
    Unknown,
    /// Answered the last ping.
    Up,
    /// Does not answer; a restart may follow.
    Down,
    /// The agent asked systemd to restart the engine's unit.
    Restarting,
    /// Restarts did not bring it back; the agent stopped trying until the
    /// engine answers again or someone asks for a restart.
    Failed,
    /// This agent build or configuration cannot drive the engine at all.
    Unavailable,
}

impl EngineState {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::Unknown => "unknown",
            EngineState::Up => "up",
            EngineState::Down => "down",
            EngineState::Restarting => "restarting",
            EngineState::Failed => "failed",
            EngineState::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for EngineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a running engine, from its version endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineInfo {
    /// e.g. "Docker Engine - Community", "Podman Engine", "Engine".
    pub name: String,
    pub version: String,
    /// The API version the agent negotiated (the lower of its own and the
    /// engine's), e.g. "1.41".
    pub api_version: String,
}

impl fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (API {})", self.name, self.version, self.api_version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineStatus {
    pub state: EngineState,
    /// The engine last seen answering.
    pub info: Option<EngineInfo>,
    /// Restarts the agent made since it started.
    pub restarts: u32,
    /// The last problem, in words for people (empty when none).
    pub last_error: String,
}
