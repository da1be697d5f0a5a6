//! Product configuration rendered from sipstack specs, with askama templates kept
//! in the repository's `templates/` directory. The operator, the local driver and
//! `sipctl render` all call these functions, so what a reviewer sees is what runs.

pub mod kamailio;

pub use kamailio::{render_kamailio, KamailioRenderOptions};

use sha2::{Digest, Sha256};
use sipstack_crds::ValidationErrors;

/// A rendered configuration file and the hash that rolls pods when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Hex SHA-256 of `text`.
    pub hash: String,
}

/// Why a configuration could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error("refusing to write {what} {value} into the configuration: it holds a character that could change the configuration's meaning")]
    Unsafe { what: String, value: String },
    #[error("template error: {0}")]
    Template(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Hex SHA-256 of a rendered file.
pub fn config_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
