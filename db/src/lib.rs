//! The platform database: schema migrations and the tables Kamailio, sipctl and
//! the operator share.
//!
//! Kamailio reads `subscriber`, `location`, `dispatcher` and the views
//! `sipstack_dialplan`, `sipstack_trunk_address_view` and `sipstack_trunk_htable`
//! directly; everything written here must stay in the shape its modules expect
//! (see the migrations).

pub mod bootstrap;
pub mod cdr;
pub mod dispatcher;
mod error;
pub mod limits;
pub mod media_pool;
mod migrate;
pub mod number;
pub mod route;
pub mod subscriber;
pub mod trunk;
pub mod validate;
pub mod voicemail;

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

pub use error::DbError;
pub use migrate::{
    known_migrations, latest_version, migrate, schema_version, AppliedMigration, Migration,
    MigrationReport,
};

/// Connects to PostgreSQL and drives the connection on a background task.
///
/// `url` is a libpq-style URL or key=value string. Errors name the server
/// (host, port, database, user) but never the password.
pub async fn connect(url: &str, connect_timeout: Duration) -> Result<Client, DbError> {
    let config: Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::InvalidUrl {
            reason: e.to_string(),
        })?;
    connect_with(config, connect_timeout).await
}

/// Like [`connect`], with a parsed configuration.
pub async fn connect_with(
    mut config: Config,
    connect_timeout: Duration,
) -> Result<Client, DbError> {
    let target = describe_target(&config);
    config.connect_timeout(connect_timeout);
    let deadline = tokio::time::Instant::now() + connect_timeout;
    let (client, connection) = loop {
        // connect_timeout bounds each TCP connect; this bounds the whole handshake too.
        let connecting = tokio::time::timeout(
            connect_timeout + Duration::from_secs(1),
            config.connect(NoTls),
        );
        match connecting.await {
            Ok(Ok(pair)) => break pair,
            // A proxy in front of a cluster (HAProxy) accepts the connection and closes
            // it while no member is primary, e.g. for a second during a switchover: try
            // again until the timeout rather than fail the command.
            Ok(Err(source)) if source.is_closed() && tokio::time::Instant::now() < deadline => {
                tracing::debug!(%target, "connection closed before the handshake; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Err(source)) => return Err(DbError::Connect { target, source }),
            Err(_) => {
                return Err(DbError::ConnectTimeout {
                    target,
                    timeout: connect_timeout,
                })
            }
        }
    };
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%target, %error, "PostgreSQL connection ended with an error");
        }
    });
    Ok(client)
}

/// `host:port (database D, user U)` — what a person needs to find the server, without secrets.
pub fn describe_target(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    let user = config.get_user().unwrap_or("(default user)");
    let database = config.get_dbname().unwrap_or(user);
    format!("{hosts} (database {database}, user {user})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_description_has_no_password() {
        let config: Config = "postgresql://sip:s3cret@127.0.0.1:6543/platform"
            .parse()
            .unwrap();
        let shown = describe_target(&config);
        assert_eq!(shown, "127.0.0.1:6543 (database platform, user sip)");
        assert!(!shown.contains("s3cret"));
    }

    #[tokio::test]
    async fn invalid_url_is_reported_without_connecting() {
        let err = connect(
            "postgresql://u:pw@127.0.0.1:notaport/db",
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DbError::InvalidUrl { .. }), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }

    #[tokio::test]
    async fn refused_connection_names_host_and_port() {
        // Port 1 on loopback: nothing listens there, the connect is refused at once.
        let err = connect(
            "postgresql://u:topsecret@127.0.0.1:1/db",
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("topsecret"), "{text}");
    }
}
