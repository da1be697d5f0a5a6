//! The shipper's errors. None of them carries the database password or the RPC
//! token: the database errors name the server only, the RPC errors the URL.

use std::path::PathBuf;
use std::time::Duration;

use sipstack_db::DbError;
use sipstack_edgerpc::RpcError;

/// Why records could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database did not finish storing the records within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// Why Kamailio could not be told to reopen its spool files.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("{0}")]
    Other(String),
}

/// A problem of a shipping cycle, or of the shipper's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store the records of {}: {source}", file.display())]
    Store {
        file: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("cannot make Kamailio reopen its spool files (flatstore.k_rotate): {0}")]
    Rotate(#[source] RotateError),
    #[error("{0}")]
    Config(String),
}

impl ShipError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ShipError {
        let path = path.into();
        move |source| ShipError::Io {
            action,
            path,
            source,
        }
    }

    /// The database refused or could not be reached.
    pub fn is_store(&self) -> bool {
        matches!(self, ShipError::Store { .. })
    }
}
