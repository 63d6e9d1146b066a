//! The agent's configuration: `/etc/containeros/agent.toml` plus an optional
//! override file on the data partition (`<agent.state_dir>/agent.toml`).
//!
//! Design:
//! - One serde model ([`Config`]) in which every section and key has a
//!   default, so any file — the full base file or a three-line override — is
//!   a valid *partial* configuration on its own. Each file is therefore
//!   checked alone first (unknown keys, wrong types and impossible values are
//!   reported with that file's own line and key), then the override is merged
//!   into the base key by key and the result is checked once more for rules
//!   that span several keys.
//! - Value rules that concern one key live in the key's type (`Duration`,
//!   `AbsPath`, `UnitName`, `NonZeroU32`, enums), so serde reports them at
//!   the key's position. Rules across keys live in [`Config::validate`] and
//!   are located through [`Loaded::locate`].
//! - Errors are user-facing: file, line, column, dotted key, what is wrong
//!   and what to do.
//!
//! Limits: the override file may not move the state directory (it lives in
//! it); that is refused with a located error.

mod duration;
mod error;
mod locate;
mod model;

pub use duration::Duration;
pub use error::ConfigError;
pub use model::{
    AbsPath, AgentSection, AppsSection, Bootloader, Bus, ChannelMode, ChannelSection, Config, DbusSection,
    EngineKind, EngineSection, NativeLogs, ProvisionSection, UnitName, UpdateSection, maintenance_window,
};

use std::path::{Path, PathBuf};

/// Where the agent looks for its configuration when nothing else is said.
pub const DEFAULT_PATH: &str = "/etc/containeros/agent.toml";
/// The environment variable that overrides [`DEFAULT_PATH`] (the
/// `--config` flag wins over it).
pub const PATH_ENV: &str = "CONTAINEROS_CONFIG";
/// Name of the override file inside `agent.state_dir`.
pub const OVERRIDE_FILE: &str = "agent.toml";
/// The settings the boot partition's provisioning file gives, written by
/// the agent's import under `agent.state_dir`; between the base file and the
/// override file.
pub const PROVISIONED_FILE: &str = "provision/agent.toml";

/// One configuration file as read, kept to locate keys in error messages.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// The effective configuration and the files it came from (base first).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub sources: Vec<Source>,
}

impl Loaded {
    /// Where a dotted key (`engine.check_interval`) was last set: the override
    /// file if it sets the key, else the base file. `None` when the key has
    /// its default value.
    pub fn locate(&self, key: &str) -> Option<locate::Location> {
        self.sources
            .iter()
            .rev()
            .find_map(|s| locate::key_location(&s.path, &s.text, key))
    }
}

/// Loads the base file at `path` (which must exist) and, if present, the
/// provisioned settings and the override file in the state directory the
/// base file names.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let base = read(path)?;
    let base_config = parse_one(&base)?;

    let state_dir = base_config.agent.state_dir.as_path();
    let mut layers = Vec::new();
    for name in [PROVISIONED_FILE, OVERRIDE_FILE] {
        let layer_path = state_dir.join(name);
        match std::fs::read_to_string(&layer_path) {
            Ok(text) => layers.push(Source {
                path: layer_path,
                text,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: layer_path,
                    source,
                });
            }
        }
    }
    load_layers(base, layers)
}

/// Parses the given base text and optional override text (named for error
/// messages) without touching the file system.
pub fn load_sources(base: Source, overlay: Option<Source>) -> Result<Loaded, ConfigError> {
    load_layers(base, overlay.into_iter().collect())
}

/// Parses the base text and the layers over it, later layers winning key by
/// key, without touching the file system.
pub fn load_layers(base: Source, layers: Vec<Source>) -> Result<Loaded, ConfigError> {
    let mut merged = parse_table(&base)?;
    let mut sources = vec![base];
    for overlay in layers {
        let partial = parse_one(&overlay)?;
        if partial.agent.state_dir != Config::default().agent.state_dir
            || locate::key_location(&overlay.path, &overlay.text, "agent.state_dir").is_some()
        {
            let at = locate::key_location(&overlay.path, &overlay.text, "agent.state_dir");
            return Err(ConfigError::invalid_at(
                &overlay.path,
                at.map(|l| (l.line, l.column)),
                Some("agent.state_dir"),
                "the override file lives in the state directory and cannot move it",
                "set agent.state_dir in the base configuration file only",
            ));
        }
        let table = parse_table(&overlay)?;
        merge(&mut merged, table);
        sources.push(overlay);
    }

    // Both files were valid alone and merging only replaces values by values
    // of the same key, so this cannot fail on a key or type; it is checked
    // anyway rather than assumed.
    let config: Config = merged.try_into().map_err(|e: toml::de::Error| {
        let path = sources.last().map(|s| s.path.clone()).unwrap_or_default();
        ConfigError::invalid_at(&path, None, None, e.message(), "check both configuration files")
    })?;
    let loaded = Loaded { config, sources };
    loaded.config.validate(&loaded)?;
    Ok(loaded)
}

fn read(path: &Path) -> Result<Source, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Source {
            path: path.to_owned(),
            text,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConfigError::NotFound {
            path: path.to_owned(),
        }),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_one(source: &Source) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(&source.text).map_err(|e| ConfigError::from_toml(source, &e))
}

fn parse_table(source: &Source) -> Result<toml::Table, ConfigError> {
    // Type check first so the error names the key and the expected type.
    parse_one(source)?;
    toml::from_str::<toml::Table>(&source.text).map_err(|e| ConfigError::from_toml(source, &e))
}

/// Deep merge: tables merge key by key, any other value replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
