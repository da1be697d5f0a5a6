//! patroni.yml from a PgCluster, for a member the local driver runs or for the
//! pods of the operator's StatefulSet.
//!
//! One file serves Patroni 3.0 (Debian 12) and 4.x: the etcd v3 API, `pg_hba`
//! under `bootstrap.dcs`, and no `bootstrap.users` (removed in 4.x; the platform's
//! role and database are created once a primary is up). Passwords never appear in
//! the file: Patroni takes them from `PATRONI_SUPERUSER_PASSWORD` and
//! `PATRONI_REPLICATION_PASSWORD`, which the local driver sets and the operator
//! fills from Secrets.

use std::path::Path;

use askama::Template;
use kube::ResourceExt;
use sipstack_crds::pgcluster::{DcsKind, PgCluster, SynchronousMode};
use sipstack_crds::validation::Validator;

use crate::{config_hash, safe_path, RenderError, Rendered};

/// Where the rendered Patroni runs.
#[derive(Debug, Clone)]
pub enum PatroniTarget<'a> {
    /// Member `index` of a cluster the local driver runs on 127.0.0.1, kept under `dir`
    /// (`dir/data` is PGDATA, `dir/run` the socket directory).
    Local {
        index: u32,
        dir: &'a Path,
        etcd_hosts: Vec<String>,
    },
    /// The pods of a StatefulSet in `namespace`. Per-pod values come from the
    /// environment: `PATRONI_NAME`, `PATRONI_KUBERNETES_POD_IP`,
    /// `PATRONI_RESTAPI_CONNECT_ADDRESS`, `PATRONI_POSTGRESQL_CONNECT_ADDRESS`.
    Kubernetes { namespace: &'a str },
}

/// The Patroni REST API port inside a pod.
pub const KUBERNETES_REST_API_PORT: u16 = 8008;
/// PGDATA inside a pod (on the member's volume).
pub const KUBERNETES_DATA_DIR: &str = "/home/postgres/pgdata/pgroot/data";

#[derive(Template)]
#[template(path = "patroni/patroni.yml", escape = "none")]
struct PatroniYml {
    cluster: String,
    member_name: Option<String>,
    rest_listen: String,
    rest_connect: Option<String>,
    etcd_hosts: Vec<String>,
    k8s_namespace: String,
    port: u16,
    ttl: u32,
    loop_wait: u32,
    retry_timeout: u32,
    maximum_lag_on_failover: u64,
    synchronous_mode: bool,
    synchronous_mode_strict: bool,
    client_network: &'static str,
    pg_listen: String,
    pg_connect: Option<String>,
    data_dir: String,
    bin_dir: Option<String>,
    pgpass: String,
    socket_dir: String,
}

/// The name of member `index` of a cluster: the StatefulSet pod name on Kubernetes,
/// and the same name locally.
pub fn member_name(cluster: &str, index: u32) -> String {
    format!("{cluster}-{index}")
}

/// A validator that has checked a PgCluster's name and spec; the renderers of the
/// cluster's files add their own checks before finishing it.
pub(crate) fn cluster_validator(cluster: &PgCluster) -> Validator {
    let mut v = Validator::new();
    v.name("metadata.name", &cluster.name_any());
    cluster.spec.validate(&mut v);
    v
}

/// Renders patroni.yml for one target.
pub fn render_patroni(
    cluster: &PgCluster,
    target: &PatroniTarget<'_>,
) -> Result<Rendered, RenderError> {
    let name = cluster.name_any();
    cluster_validator(cluster)
        .finish(format!("PgCluster/{name}"))
        .map_err(RenderError::Invalid)?;
    let spec = &cluster.spec;
    let p = &spec.patroni;

    let mut model = PatroniYml {
        cluster: name.clone(),
        member_name: None,
        rest_listen: String::new(),
        rest_connect: None,
        etcd_hosts: Vec::new(),
        k8s_namespace: String::new(),
        port: spec.port,
        ttl: p.ttl,
        loop_wait: p.loop_wait,
        retry_timeout: p.retry_timeout,
        maximum_lag_on_failover: p.maximum_lag_on_failover,
        synchronous_mode: p.synchronous_mode != SynchronousMode::Disabled,
        synchronous_mode_strict: p.synchronous_mode == SynchronousMode::Strict,
        client_network: "127.0.0.1/32",
        pg_listen: String::new(),
        pg_connect: None,
        data_dir: String::new(),
        bin_dir: None,
        pgpass: String::new(),
        socket_dir: String::new(),
    };
    match target {
        PatroniTarget::Local {
            index,
            dir,
            etcd_hosts,
        } => {
            if *index >= spec.instances as u32 {
                return Err(RenderError::Internal(format!(
                    "member {index} does not exist: PgCluster/{name} has {} instance(s) (members 0 to {})",
                    spec.instances,
                    spec.instances - 1
                )));
            }
            let rest = format!("127.0.0.1:{}", spec.local.rest_api_port as u32 + index);
            let pg = format!("127.0.0.1:{}", spec.local.member_port as u32 + index);
            model.member_name = Some(member_name(&name, *index));
            model.rest_connect = Some(rest.clone());
            model.rest_listen = rest;
            model.pg_connect = Some(pg.clone());
            model.pg_listen = pg;
            model.etcd_hosts = etcd_hosts
                .iter()
                .map(|h| endpoint(h))
                .collect::<Result<_, _>>()?;
            if model.etcd_hosts.is_empty() {
                return Err(RenderError::Internal(
                    "a local Patroni member needs at least one etcd endpoint".into(),
                ));
            }
            model.data_dir = safe_path("the data directory", &dir.join("data"))?;
            model.socket_dir = safe_path("the socket directory", &dir.join("run"))?;
            model.pgpass = safe_path("the pgpass file", &dir.join("run/pgpass"))?;
            model.bin_dir = Some(format!(
                "/usr/lib/postgresql/{}/bin",
                spec.postgres_version.major()
            ));
        }
        PatroniTarget::Kubernetes { namespace } => {
            let mut v = Validator::new();
            v.name("metadata.namespace", namespace);
            v.finish(format!("PgCluster/{name}"))
                .map_err(RenderError::Invalid)?;
            model.k8s_namespace = namespace.to_string();
            model.rest_listen = format!("0.0.0.0:{KUBERNETES_REST_API_PORT}");
            model.pg_listen = format!("0.0.0.0:{}", spec.port);
            if spec.dcs.kind == DcsKind::Etcd {
                if spec.dcs.etcd_endpoints.is_empty() {
                    return Err(RenderError::Invalid(sipstack_crds::ValidationErrors {
                        object: format!("PgCluster/{name}"),
                        errors: vec![sipstack_crds::FieldError {
                            path: "spec.dcs.etcdEndpoints".into(),
                            problem: "kind is etcd but no endpoints are given".into(),
                            fix: "list the etcd cluster's client endpoints (host:port), or set spec.dcs.kind to kubernetes".into(),
                        }],
                    }));
                }
                model.etcd_hosts = spec
                    .dcs
                    .etcd_endpoints
                    .iter()
                    .map(|h| endpoint(h))
                    .collect::<Result<_, _>>()?;
            }
            // pods reach each other over the pod network; passwords still apply
            model.client_network = "0.0.0.0/0";
            model.data_dir = KUBERNETES_DATA_DIR.into();
            model.socket_dir = "/var/run/postgresql".into();
            model.pgpass = "/tmp/pgpass".into();
        }
    }
    let text = model
        .render()
        .map_err(|e| RenderError::Template(e.to_string()))?;
    Ok(Rendered {
        hash: config_hash(&text),
        text,
    })
}

/// An etcd `host:port` as Patroni takes it; anything else is refused.
fn endpoint(value: &str) -> Result<String, RenderError> {
    let ok = value.split_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        return Err(RenderError::Unsafe {
            what: "etcd endpoint".into(),
            value: format!("{value:?}"),
        });
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> PgCluster {
        serde_yaml::from_str(yaml).unwrap()
    }

    const THREE: &str = "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {name: pg}\nspec:\n  instances: 3\n  patroni: {ttl: 20, loopWait: 2, retryTimeout: 5, synchronousMode: enabled}\n";

    #[test]
    fn names_that_yaml_1_1_reads_as_other_types_are_quoted() {
        for name in ["on", "no", "null", "123", "yes"] {
            let c = cluster(&THREE.replace("name: pg", &format!("name: \"{name}\"")));
            let r = render_patroni(
                &c,
                &PatroniTarget::Local {
                    index: 0,
                    dir: Path::new("/tmp/m"),
                    etcd_hosts: vec!["127.0.0.1:2379".into()],
                },
            )
            .unwrap();
            assert!(
                r.text.contains(&format!("\nscope: \"{name}\"\n")),
                "{}",
                r.text
            );
            assert!(
                r.text.contains(&format!("\nname: \"{name}-0\"\n")),
                "{}",
                r.text
            );
            let k = render_patroni(&c, &PatroniTarget::Kubernetes { namespace: name }).unwrap();
            assert!(
                k.text.contains(&format!("namespace: \"{name}\"")),
                "{}",
                k.text
            );
            assert!(
                k.text.contains(&format!("instance: \"{name}\"")),
                "{}",
                k.text
            );
        }
    }

    #[test]
    fn local_member_has_its_own_ports_and_directories() {
        let c = cluster(THREE);
        let dir = Path::new("/var/lib/sipstack/local/pg-pg/member-1");
        let r = render_patroni(
            &c,
            &PatroniTarget::Local {
                index: 1,
                dir,
                etcd_hosts: vec!["127.0.0.1:2379".into()],
            },
        )
        .unwrap();
        let y: serde_yaml::Value = serde_yaml::from_str(&r.text).unwrap();
        assert_eq!(y["scope"].as_str(), Some("pg"));
        assert_eq!(y["name"].as_str(), Some("pg-1"));
        assert_eq!(y["restapi"]["listen"].as_str(), Some("127.0.0.1:8009"));
        assert_eq!(y["postgresql"]["listen"].as_str(), Some("127.0.0.1:15433"));
        assert_eq!(
            y["postgresql"]["data_dir"].as_str(),
            Some("/var/lib/sipstack/local/pg-pg/member-1/data")
        );
        assert_eq!(
            y["postgresql"]["bin_dir"].as_str(),
            Some("/usr/lib/postgresql/15/bin")
        );
        assert_eq!(y["etcd3"]["hosts"].as_str(), Some("127.0.0.1:2379"));
        let dcs = &y["bootstrap"]["dcs"];
        assert_eq!(dcs["ttl"].as_u64(), Some(20));
        assert_eq!(dcs["loop_wait"].as_u64(), Some(2));
        assert_eq!(dcs["retry_timeout"].as_u64(), Some(5));
        assert_eq!(dcs["synchronous_mode"].as_bool(), Some(true));
        assert_eq!(dcs["synchronous_mode_strict"].as_bool(), Some(false));
        assert!(dcs["postgresql"]["pg_hba"]
            .as_sequence()
            .is_some_and(|s| !s.is_empty()));
        // Patroni 4 refuses these; passwords come from the environment
        assert!(y["bootstrap"].get("users").is_none());
        assert!(!r.text.contains("password:"));
    }

    #[test]
    fn kubernetes_target_uses_the_kubernetes_dcs_and_the_environment() {
        let c = cluster(THREE);
        let r = render_patroni(&c, &PatroniTarget::Kubernetes { namespace: "voice" }).unwrap();
        let y: serde_yaml::Value = serde_yaml::from_str(&r.text).unwrap();
        assert!(y.get("name").is_none());
        assert_eq!(y["kubernetes"]["namespace"].as_str(), Some("voice"));
        assert_eq!(y["kubernetes"]["role_label"].as_str(), Some("role"));
        assert!(y.get("etcd3").is_none());
        assert_eq!(
            y["postgresql"]["data_dir"].as_str(),
            Some(KUBERNETES_DATA_DIR)
        );
        assert!(y["postgresql"].get("connect_address").is_none());
    }

    #[test]
    fn kubernetes_target_with_etcd_endpoints() {
        let c = cluster(&format!("{THREE}  dcs: {{kind: etcd, etcdEndpoints: ['etcd-0.etcd:2379', 'etcd-1.etcd:2379']}}\n"));
        let r = render_patroni(&c, &PatroniTarget::Kubernetes { namespace: "voice" }).unwrap();
        let y: serde_yaml::Value = serde_yaml::from_str(&r.text).unwrap();
        assert_eq!(
            y["etcd3"]["hosts"].as_str(),
            Some("etcd-0.etcd:2379,etcd-1.etcd:2379")
        );
        assert!(y.get("kubernetes").is_none());
    }

    #[test]
    fn strict_mode_and_bad_timing() {
        let c = cluster(&THREE.replace("synchronousMode: enabled", "synchronousMode: strict"));
        let dir = Path::new("/srv/m0");
        let r = render_patroni(
            &c,
            &PatroniTarget::Local {
                index: 0,
                dir,
                etcd_hosts: vec!["127.0.0.1:2379".into()],
            },
        )
        .unwrap();
        let y: serde_yaml::Value = serde_yaml::from_str(&r.text).unwrap();
        assert_eq!(
            y["bootstrap"]["dcs"]["synchronous_mode_strict"].as_bool(),
            Some(true)
        );

        let bad = cluster(&THREE.replace("ttl: 20", "ttl: 10"));
        let err = render_patroni(&bad, &PatroniTarget::Kubernetes { namespace: "voice" })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.patroni.ttl") && err.contains("loopWait + 2 × retryTimeout"),
            "{err}"
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        let c = cluster(THREE);
        let dir = Path::new("/tmp/x\nbootstrap: {}");
        let err = render_patroni(
            &c,
            &PatroniTarget::Local {
                index: 0,
                dir,
                etcd_hosts: vec!["127.0.0.1:2379".into()],
            },
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::Unsafe { .. }), "{err}");
        let err = render_patroni(
            &c,
            &PatroniTarget::Local {
                index: 0,
                dir: Path::new("/srv"),
                etcd_hosts: vec!["h:1\nx: y".into()],
            },
        )
        .unwrap_err();
        assert!(matches!(err, RenderError::Unsafe { .. }), "{err}");
        let err = render_patroni(&c, &PatroniTarget::Kubernetes { namespace: "a\"b" })
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.namespace"), "{err}");
        let err = render_patroni(
            &c,
            &PatroniTarget::Local {
                index: 3,
                dir: Path::new("/srv"),
                etcd_hosts: vec!["127.0.0.1:2379".into()],
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("members 0 to 2"), "{err}");
    }
}
