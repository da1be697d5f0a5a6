//! pgbouncer.ini in front of a cluster's read-write endpoint.

use std::path::Path;

use askama::Template;
use kube::ResourceExt;
use sipstack_crds::pgcluster::{PgCluster, PoolMode};

use crate::patroni::cluster_validator;
use crate::{config_hash, safe_path, RenderError, Rendered};

#[derive(Template)]
#[template(path = "pgbouncer/pgbouncer.ini", escape = "none")]
struct PgbouncerIni {
    cluster: String,
    database: String,
    upstream_host: String,
    upstream_port: u16,
    listen_addr: String,
    listen_port: u16,
    unix_socket_dir: Option<String>,
    auth_file: String,
    pool_mode: &'static str,
    default_pool_size: u32,
    max_client_conn: u32,
    pid_file: Option<String>,
}

/// Where PgBouncer runs and what it talks to.
#[derive(Debug, Clone)]
pub struct PgbouncerTarget<'a> {
    /// Host of the read-write endpoint (HAProxy locally, the primary Service on Kubernetes).
    pub upstream_host: &'a str,
    pub upstream_port: u16,
    pub listen_addr: &'a str,
    /// `userlist.txt`: the users PgBouncer accepts, with their passwords.
    pub auth_file: &'a Path,
    pub unix_socket_dir: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
}

/// Renders pgbouncer.ini.
pub fn render_pgbouncer(
    cluster: &PgCluster,
    target: &PgbouncerTarget<'_>,
) -> Result<Rendered, RenderError> {
    let name = cluster.name_any();
    let mut v = cluster_validator(cluster);
    v.host("upstream host", target.upstream_host);
    v.ip("listen address", target.listen_addr);
    v.finish(format!("PgCluster/{name}"))
        .map_err(RenderError::Invalid)?;
    let spec = &cluster.spec;
    let model = PgbouncerIni {
        cluster: name,
        database: spec.database.name.clone(),
        upstream_host: target.upstream_host.to_string(),
        upstream_port: target.upstream_port,
        listen_addr: target.listen_addr.to_string(),
        listen_port: spec.pooler.port,
        unix_socket_dir: target
            .unix_socket_dir
            .map(|p| safe_path("the socket directory", p))
            .transpose()?,
        auth_file: safe_path("the auth file", target.auth_file)?,
        pool_mode: match spec.pooler.pool_mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        },
        default_pool_size: spec.pooler.default_pool_size,
        max_client_conn: spec.pooler.max_client_conn,
        pid_file: target
            .pid_file
            .map(|p| safe_path("the pid file", p))
            .transpose()?,
    };
    let text = model
        .render()
        .map_err(|e| RenderError::Template(e.to_string()))?;
    Ok(Rendered {
        hash: config_hash(&text),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_the_platform_database_over_the_read_write_endpoint() {
        let c: PgCluster = serde_yaml::from_str(
            "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {name: pg}\nspec:\n  instances: 3\n  pooler: {enabled: true, poolMode: session, defaultPoolSize: 7}\n",
        )
        .unwrap();
        let target = PgbouncerTarget {
            upstream_host: "127.0.0.1",
            upstream_port: 5432,
            listen_addr: "127.0.0.1",
            auth_file: Path::new("/srv/pgb/userlist.txt"),
            unix_socket_dir: None,
            pid_file: None,
        };
        let r = render_pgbouncer(&c, &target).unwrap();
        assert!(
            r.text
                .contains("sipstack = host=127.0.0.1 port=5432 dbname=sipstack\n"),
            "{}",
            r.text
        );
        assert!(r.text.contains("listen_port = 6432\n"));
        assert!(r.text.contains("pool_mode = session\n"));
        assert!(r.text.contains("default_pool_size = 7\n"));
        assert!(r.text.contains("auth_file = /srv/pgb/userlist.txt\n"));
        let bad = PgbouncerTarget {
            upstream_host: "h;x=1",
            ..target.clone()
        };
        assert!(render_pgbouncer(&c, &bad).is_err());
        let bad = PgbouncerTarget {
            auth_file: Path::new("/srv/x\n[databases]"),
            ..target
        };
        assert!(render_pgbouncer(&c, &bad).is_err());
    }
}
