use std::time::Duration;

/// Errors of the platform database layer. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {reason}")]
    InvalidUrl { reason: String },

    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("cannot connect to PostgreSQL at {target}: no answer within {timeout:?}")]
    ConnectTimeout { target: String, timeout: Duration },

    #[error("{context}: {source}")]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "the database schema is at version {database} but this sipstack only knows versions up to {known}; \
         upgrade sipstack to a release that knows schema version {database}"
    )]
    SchemaTooNew { database: i32, known: i32 },

    #[error(
        "migration {version:04} ({name}) was applied with checksum {applied} but this sipstack's copy has \
         checksum {embedded}: the migration was changed after it was applied; run the sipstack release that \
         applied it, or repair the database by hand"
    )]
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        embedded: String,
    },

    #[error(
        "the database records migration {version:04} ({name}), which this sipstack does not have; \
         run the sipstack release that applied it"
    )]
    UnknownMigration { version: i32, name: String },

    #[error("{field}: {problem}; {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },

    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },

    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },

    #[error("{problem}; {fix}")]
    Conflict { problem: String, fix: String },
}

impl DbError {
    pub(crate) fn query(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        let context = context.into();
        move |source| DbError::Query { context, source }
    }

    /// The SQLSTATE of a failed statement, if PostgreSQL reported one.
    pub fn sql_state(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Query { source, .. } | DbError::Connect { source, .. } => source.code(),
            _ => None,
        }
    }
}
