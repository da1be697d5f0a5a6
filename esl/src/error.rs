//! The one error type of the crate.

use std::time::Duration;

/// Why an event socket operation failed. Variants that concern one server name
/// its address (`host:port`), so that the message alone says which node failed.
#[derive(Debug, thiserror::Error)]
pub enum EslError {
    /// Connecting to, reading or writing the socket failed.
    #[error("event socket {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    /// The server did not answer within the timeout. The connection stays
    /// usable: a late reply is matched to the call that gave up, and discarded.
    #[error("event socket {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    /// The server refused the password (`-ERR invalid`).
    #[error("event socket {0}: the password was refused")]
    AuthFailed(String),
    /// The server sent something this client does not understand, or the caller
    /// asked for something the protocol cannot carry (a line break in a command).
    #[error("event socket: {0}")]
    Protocol(String),
    /// The server ran the command and reported a failure: the text it answered
    /// (`-ERR ...`, `-USAGE ...`).
    #[error("{0}")]
    Command(String),
    /// The connection is closed (by the server, a socket error, or the client);
    /// calls still waiting for a reply get this too.
    #[error("event socket {0}: the connection is closed")]
    Closed(String),
}

impl EslError {
    /// Whether the connection is gone, so that a new connection may succeed where
    /// this one failed. [`EslSession`](crate::EslSession) retries on these.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, EslError::Io { .. } | EslError::Closed(_))
    }
}
