//! haproxy.cfg for a local Patroni cluster: a read-write endpoint that follows the
//! primary and a read-only one over the replicas, both chosen by Patroni's REST
//! health checks (`/primary`, `/replica`). On Kubernetes the same job is done by
//! Services that select Patroni's role label.

use std::path::Path;

use askama::Template;
use kube::ResourceExt;
use sipstack_crds::pgcluster::PgCluster;

use crate::patroni::{cluster_validator, member_name};
use crate::{config_hash, safe_path, RenderError, Rendered};

#[derive(Template)]
#[template(path = "haproxy/haproxy.cfg", escape = "none")]
struct HaproxyCfg {
    cluster: String,
    maxconn: u32,
    pid_file: Option<String>,
    read_write_bind: String,
    read_only_bind: String,
    members: Vec<Backend>,
}

struct Backend {
    name: String,
    address: String,
    rest_api_port: u32,
}

/// Renders haproxy.cfg for the local members of `cluster`; `pid_file` is where
/// HAProxy writes its pid (the local driver's state directory).
pub fn render_haproxy(
    cluster: &PgCluster,
    pid_file: Option<&Path>,
) -> Result<Rendered, RenderError> {
    let name = cluster.name_any();
    cluster_validator(cluster)
        .finish(format!("PgCluster/{name}"))
        .map_err(RenderError::Invalid)?;
    let spec = &cluster.spec;
    let members = (0..spec.instances as u32)
        .map(|n| Backend {
            name: member_name(&name, n),
            address: format!("127.0.0.1:{}", spec.local.member_port as u32 + n),
            rest_api_port: spec.local.rest_api_port as u32 + n,
        })
        .collect();
    let model = HaproxyCfg {
        cluster: name,
        // every client of the pooler or the platform, with room for replication tools
        maxconn: spec.pooler.max_client_conn.max(1000) + 100,
        pid_file: pid_file.map(|p| safe_path("the pid file", p)).transpose()?,
        read_write_bind: format!("127.0.0.1:{}", spec.port),
        read_only_bind: format!("127.0.0.1:{}", spec.local.read_only_port),
        members,
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
    fn every_member_is_checked_on_its_rest_port() {
        let c: PgCluster = serde_yaml::from_str(
            "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {name: pg}\nspec: {instances: 3, port: 6000}\n",
        )
        .unwrap();
        let r = render_haproxy(&c, Some(Path::new("/run/h.pid"))).unwrap();
        assert!(r.text.contains("bind 127.0.0.1:6000\n"), "{}", r.text);
        assert!(r.text.contains("bind 127.0.0.1:5433\n"));
        assert!(r.text.contains("uri /primary"));
        assert!(r.text.contains("uri /replica"));
        assert!(r.text.contains("on-marked-down shutdown-sessions"));
        for (n, pg, api) in [(0, 15432, 8008), (1, 15433, 8009), (2, 15434, 8010)] {
            assert_eq!(
                r.text
                    .matches(&format!("server pg-{n} 127.0.0.1:{pg} check port {api}\n"))
                    .count(),
                2
            );
        }
        assert!(r.text.contains("pidfile /run/h.pid\n"));
        assert!(render_haproxy(&c, Some(Path::new("/run/h pid\n"))).is_err());
    }
}
