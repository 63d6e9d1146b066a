//! Configuration errors as users see them: file, line, column, key, what is
//! wrong and what to do.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Source;
use crate::locate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration file {path} not found: install the sample (agent/dist/agent.toml) there, \
         or point --config or CONTAINEROS_CONFIG at your file"
    )]
    NotFound { path: PathBuf },
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Box<Invalid>),
}

/// A located problem in one configuration file.
#[derive(Debug)]
pub struct Invalid {
    pub path: PathBuf,
    /// 1-based line and column, when the position is known.
    pub position: Option<(usize, usize)>,
    /// Dotted key, e.g. `engine.check_interval`, when one is concerned.
    pub key: Option<String>,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}; {}", self.message, self.hint)
    }
}

impl ConfigError {
    pub(crate) fn invalid_at(
        path: &Path,
        position: Option<(usize, usize)>,
        key: Option<&str>,
        message: &str,
        hint: &str,
    ) -> Self {
        ConfigError::Invalid(Box::new(Invalid {
            path: path.to_owned(),
            position,
            key: key.map(str::to_owned),
            message: message.to_owned(),
            hint: hint.to_owned(),
        }))
    }

    /// Turns a toml/serde error into a located one. The key is found from the
    /// error's byte span in the document (toml does not expose its key path).
    pub(crate) fn from_toml(source: &Source, e: &toml::de::Error) -> Self {
        let span = e.span();
        let position = span.as_ref().map(|s| locate::line_column(&source.text, s.start));
        let key = span.as_ref().and_then(|s| locate::key_at(&source.text, s.start));
        let raw = e.message().trim_end();
        let (message, hint) = if let Some(rest) = raw.strip_prefix("unknown field ") {
            // serde: "unknown field `x`, expected one of `a`, `b`"
            let (field, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let field = field.trim_matches('`');
            let message = format!("unknown key `{field}`");
            let hint = if expected.is_empty() {
                "remove it".to_owned()
            } else {
                format!(
                    "remove it or check its spelling (known keys here: {})",
                    expected.trim_start_matches("one of ")
                )
            };
            (message, hint)
        } else if key.is_none() && position.is_some() && span.as_ref().is_some_and(|s| s.start == 0) {
            (raw.to_owned(), "fix the file's TOML syntax".to_owned())
        } else if key.is_some() {
            (
                raw.to_owned(),
                "fix the value, or remove the key to use its default (see the configuration reference in the README)"
                    .to_owned(),
            )
        } else {
            (raw.to_owned(), "fix the file's TOML syntax".to_owned())
        };
        ConfigError::Invalid(Box::new(Invalid {
            path: source.path.clone(),
            position,
            key,
            message,
            hint,
        }))
    }

    /// The located details, for callers that want to show them differently.
    pub fn invalid(&self) -> Option<&Invalid> {
        match self {
            ConfigError::Invalid(i) => Some(i),
            _ => None,
        }
    }
}
