//! Product configuration rendered from sipstack specs, with askama templates kept
//! in the repository's `templates/` directory. The operator, the local driver and
//! `sipctl render` all call these functions, so what a reviewer sees is what runs.

pub mod freeswitch;
pub mod haproxy;
pub mod kamailio;
pub mod patroni;
pub mod pgbouncer;

pub use freeswitch::{render_freeswitch, CdrDatabase, FreeswitchRenderOptions};
pub use haproxy::render_haproxy;
pub use kamailio::{render_kamailio, KamailioRenderOptions, DEFAULT_CDR_SPOOL_DIR};
pub use patroni::{render_patroni, PatroniTarget};
pub use pgbouncer::{render_pgbouncer, PgbouncerTarget};

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

/// A path written into a configuration file as it is: only characters that need no
/// quoting in YAML, INI or HAProxy syntax.
pub(crate) fn safe_path(what: &str, path: &std::path::Path) -> Result<String, RenderError> {
    let text = path.to_string_lossy();
    let ok = text.starts_with('/')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@'));
    if !ok {
        return Err(RenderError::Unsafe {
            what: what.to_string(),
            value: format!("{text:?}"),
        });
    }
    Ok(text.into_owned())
}
