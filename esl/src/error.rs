//! The one error type of the crate.

use std::time::Duration;

/// Why an event socket operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EslError {
    /// Connecting, reading or writing the socket failed.
    #[error("event socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer within the call's timeout. The connection stays
    /// usable: a late reply is matched to the call that timed out and discarded.
    #[error("event socket: no answer within {0:?}")]
    Timeout(Duration),
    /// The server refused the password (`-ERR invalid`).
    #[error("event socket: authentication failed")]
    AuthFailed,
    /// The server sent something this client does not understand, or the caller
    /// asked for something the protocol cannot carry (a line break in a command).
    #[error("event socket protocol: {0}")]
    Protocol(String),
    /// The server ran the command and reported a failure (`-ERR ...`, `-USAGE ...`).
    #[error("event socket command failed: {0}")]
    Command(String),
    /// The connection is closed (by the server, by a socket error, or by the
    /// client); calls still waiting for a reply get this too.
    #[error("event socket connection closed")]
    Closed,
}

impl EslError {
    /// Whether the connection is gone, so that a new connection may succeed where
    /// this one failed. [`EslSession`](crate::EslSession) retries these.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, EslError::Io(_) | EslError::Closed)
    }
}
