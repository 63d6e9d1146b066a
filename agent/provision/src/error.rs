//! Provisioning errors as users see them: the file, line, key, what is
//! wrong and what to do.

use std::fmt;
use std::path::PathBuf;

use crate::Located;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot read the provisioning file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", InvalidAt { path, located })]
    Invalid { path: PathBuf, located: Box<Located> },
    #[error("cannot store the provisioning state in {path}: {source}")]
    Store { path: PathBuf, source: std::io::Error },
}

struct InvalidAt<'a> {
    path: &'a PathBuf,
    located: &'a Located,
}

impl fmt::Display for InvalidAt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.located.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.located.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}; {}", self.located.message, self.located.hint)
    }
}

impl ProvisionError {
    pub fn located(&self) -> Option<&Located> {
        match self {
            ProvisionError::Invalid { located, .. } => Some(located),
            _ => None,
        }
    }
}
