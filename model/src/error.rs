//! The one error type of frugal-model. Variants carry what a person needs to
//! act: the file, the offset, the numbers expected and found.
//! (Add variants here, grouped by area; keep messages actionable.)

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;

#[derive(Debug)]
pub enum ModelError {
    // --- config ---
    Config(ConfigError),

    // --- data ---
    /// An I/O error while reading `path`.
    Io { path: PathBuf, source: std::io::Error },

    // --- checkpoints ---
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config(e) => write!(f, "{e}"),
            ModelError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ModelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModelError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ConfigError> for ModelError {
    fn from(e: ConfigError) -> Self {
        ModelError::Config(e)
    }
}
