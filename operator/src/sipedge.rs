//! SipEdge → Kamailio: a Deployment (or a DaemonSet, one edge per node), the
//! rendered kamailio.cfg, the nonce Secret and Services for SIP, RPC and metrics.
//!
//! kamailio.cfg holds no secret: Kamailio reads the database URL and the nonce
//! secret from `SIPSTACK_DB_URL` and `SIPSTACK_AUTH_SECRET`. The URL is put together
//! in the pod from the PgCluster's app Secret (`$(SIPSTACK_DB_PASSWORD)`), so the
//! password is never written into an object the operator owns. The RPC token
//! (`SIPSTACK_RPC_TOKEN`) comes from the generated Secret `NAME-rpc-token`, which
//! the operator reads to call the edge. The trunk key (`SIPSTACK_TRUNK_KEY`) is
//! the database's: the PgCluster's generated Secret `NAME-trunk-key`.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, PodSpec, PodTemplateSpec, Probe,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use kube::ResourceExt;
use sipstack_crds::sipedge::{EdgeWorkload, Transport};
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use sipstack_render::KamailioRenderOptions;

use crate::error::BuildError;
use crate::meta::{object_meta, pod_meta, KAMAILIO};
use crate::names;
use crate::object::Object;
use crate::pod::{
    config_map_of_files, config_volume, env, env_from_secret, generated_secret, one_at_a_time,
    service_port, spread_over_nodes,
};

/// Image of the edge pods when `spec.kubernetes.image` is unset (the default the CRD documents).
pub const DEFAULT_IMAGE: &str = "ghcr.io/kamailio/kamailio-ci:5.6.3-bookworm";
/// Where kamailio.cfg is mounted.
pub const CONFIG_DIR: &str = "/etc/sipstack/kamailio";
/// Kamailio's control socket directory (`kamcmd -s unix:/run/kamailio/kamailio_ctl`).
pub const RUNTIME_DIR: &str = "/run/kamailio";
/// Where the edge spools its call records (an emptyDir).
pub const CDR_SPOOL_DIR: &str = sipstack_render::DEFAULT_CDR_SPOOL_DIR;
/// Where the TLS Secret (`tls.crt`, `tls.key`) is mounted.
pub const TLS_DIR: &str = "/etc/sipstack/tls";
/// Environment variables kamailio.cfg reads (`#!defenvs`), and the one the URL is built from.
pub const DB_URL_ENV: &str = "SIPSTACK_DB_URL";
pub const AUTH_SECRET_ENV: &str = "SIPSTACK_AUTH_SECRET";
pub const DB_PASSWORD_ENV: &str = "SIPSTACK_DB_PASSWORD";
/// The key of the trunks' encrypted passwords, from the PgCluster's `NAME-trunk-key`.
pub const TRUNK_KEY_ENV: &str = "SIPSTACK_TRUNK_KEY";

/// Builds the objects of `edge` in apply order. `pools` must hold the MediaPools the
/// edge names, `cluster` the PgCluster of `spec.database` (looked up by the caller).
pub fn build(
    edge: &SipEdge,
    namespace: &str,
    pools: &[&MediaPool],
    cluster: Option<&PgCluster>,
) -> Result<Vec<Object>, BuildError> {
    let name = edge.name_any();
    let object = format!("SipEdge/{name}");
    let spec = &edge.spec;
    let workload = names::edge_workload(&name);
    names::check_workload_name(&object, &workload)?;

    let missing = |field: String, kind: &'static str, name: &str| BuildError::MissingReference {
        object: object.clone(),
        field,
        kind,
        name: name.to_string(),
        namespace: namespace.to_string(),
    };
    let cluster = cluster
        .filter(|c| c.name_any() == spec.database.pg_cluster)
        .ok_or_else(|| {
            missing(
                "spec.database.pgCluster".into(),
                "PgCluster",
                &spec.database.pg_cluster,
            )
        })?;
    for (i, pool) in spec.media_pools.iter().enumerate() {
        if !pools.iter().any(|p| &p.name_any() == pool) {
            return Err(missing(format!("spec.mediaPools[{i}]"), "MediaPool", pool));
        }
    }

    let tls_secret = tls_secret(edge);
    let options = KamailioRenderOptions {
        runtime_dir: RUNTIME_DIR.into(),
        tls_files: tls_secret.map(|_| (format!("{TLS_DIR}/tls.crt"), format!("{TLS_DIR}/tls.key"))),
        runtime: sipstack_crds::Runtime::Kubernetes,
        cdr_spool_dir: CDR_SPOOL_DIR.into(),
    };
    let rendered = sipstack_render::render_kamailio(edge, pools, &options).map_err(|source| {
        BuildError::Render {
            object: object.clone(),
            source,
        }
    })?;

    let mut objects: Vec<Object> = vec![
        generated_secret(
            edge,
            namespace,
            &names::edge_auth_secret(&name),
            KAMAILIO,
            &[],
            &["secret"],
        )
        .into(),
        // the token every RPC request to the edge carries; the operator reads it
        generated_secret(
            edge,
            namespace,
            &names::edge_rpc_token_secret(&name),
            KAMAILIO,
            &[],
            &["token"],
        )
        .into(),
        config_map_of_files(
            edge,
            namespace,
            &names::edge_config(&name),
            KAMAILIO,
            &[("kamailio.cfg".to_string(), rendered.text.clone())],
        )
        .into(),
        service(
            edge,
            namespace,
            &names::edge_sip_service(&name),
            sip_ports(edge),
        )
        .into(),
        service(
            edge,
            namespace,
            &names::edge_rpc_service(&name),
            vec![service_port("http-rpc", spec.rpc.port, "TCP")],
        )
        .into(),
    ];
    if spec.metrics.enabled {
        objects.push(
            service(
                edge,
                namespace,
                &names::edge_metrics_service(&name),
                vec![service_port("metrics", spec.rpc.port, "TCP")],
            )
            .into(),
        );
    }
    let template = pod_template(edge, cluster, &rendered.hash, tls_secret);
    let selector = KAMAILIO.selector(&name);
    let meta = object_meta(edge, namespace, &workload, KAMAILIO);
    match spec.kubernetes.workload {
        EdgeWorkload::Deployment => {
            objects.push(
                Deployment {
                    metadata: meta,
                    spec: DeploymentSpec {
                        replicas: Some(spec.kubernetes.replicas),
                        selector,
                        template,
                        ..Default::default()
                    },
                    ..Default::default()
                }
                .into(),
            );
            objects.push(one_at_a_time(edge, namespace, &workload, KAMAILIO).into());
        }
        EdgeWorkload::DaemonSet => objects.push(
            DaemonSet {
                metadata: meta,
                spec: DaemonSetSpec {
                    selector,
                    template,
                    ..Default::default()
                },
                ..Default::default()
            }
            .into(),
        ),
    }
    Ok(objects)
}

/// The Secret holding the certificate, when a TLS listener needs one and the spec names it.
fn tls_secret(edge: &SipEdge) -> Option<&str> {
    let tls_listener = edge
        .spec
        .listen
        .iter()
        .any(|l| l.transport == Transport::Tls);
    edge.spec
        .tls
        .as_ref()
        .and_then(|t| t.secret_name.as_deref())
        .filter(|_| tls_listener)
}

/// One port per transport family and port: UDP for udp, TCP for tcp and tls.
fn sip_ports(edge: &SipEdge) -> Vec<ServicePort> {
    let mut seen = BTreeSet::new();
    edge.spec
        .listen
        .iter()
        .filter(|l| seen.insert((l.transport.as_str(), l.port)))
        .map(|l| {
            service_port(
                &format!("{}-{}", l.transport.as_str(), l.port),
                l.port,
                protocol(l.transport),
            )
        })
        .collect()
}

fn protocol(t: Transport) -> &'static str {
    if t == Transport::Udp {
        "UDP"
    } else {
        "TCP"
    }
}

fn service(edge: &SipEdge, namespace: &str, name: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: object_meta(edge, namespace, name, KAMAILIO),
        spec: Some(ServiceSpec {
            selector: Some(KAMAILIO.selector_labels(&edge.name_any())),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_template(
    edge: &SipEdge,
    cluster: &PgCluster,
    config_hash: &str,
    tls_secret: Option<&str>,
) -> PodTemplateSpec {
    let name = edge.name_any();
    let spec = &edge.spec;
    let (db_host, db_port) = names::pg_client_endpoint(cluster);
    let db = &cluster.spec.database;
    let cluster_name = cluster.name_any();
    let mut ports: Vec<ContainerPort> = spec
        .listen
        .iter()
        .map(|l| (l.transport.as_str(), l.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|(transport, port)| ContainerPort {
            name: Some(format!("{transport}-{port}")),
            container_port: port.into(),
            protocol: Some(if transport == "udp" { "UDP" } else { "TCP" }.into()),
            ..Default::default()
        })
        .collect();
    ports.push(ContainerPort {
        name: Some("http-rpc".into()),
        container_port: spec.rpc.port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    });
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "runtime".into(),
            mount_path: RUNTIME_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "cdr-spool".into(),
            mount_path: CDR_SPOOL_DIR.into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![
        config_volume("config", &names::edge_config(&name), &["kamailio.cfg"]),
        Volume {
            name: "runtime".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        // the call records Kamailio spools until they are shipped to the database
        Volume {
            name: "cdr-spool".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    if let Some(secret) = tls_secret {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let ctl = format!("kamcmd -s unix:{RUNTIME_DIR}/kamailio_ctl core.uptime");
    let container = Container {
        name: "kamailio".into(),
        image: Some(
            spec.kubernetes
                .pod
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.into()),
        ),
        command: Some(vec![
            "kamailio".into(),
            // in the foreground, logging to stderr
            "-DD".into(),
            "-E".into(),
            "-f".into(),
            format!("{CONFIG_DIR}/kamailio.cfg"),
            "-m".into(),
            spec.process.shared_memory_mb.to_string(),
            "-M".into(),
            spec.process.private_memory_mb.to_string(),
        ]),
        env: Some(vec![
            env_from_secret(
                DB_PASSWORD_ENV,
                &names::pg_app_secret(&cluster_name),
                "password",
            ),
            env(
                DB_URL_ENV,
                format!(
                    "postgres://{}:$({DB_PASSWORD_ENV})@{db_host}:{db_port}/{}",
                    db.owner, db.name
                ),
            ),
            env_from_secret(AUTH_SECRET_ENV, &names::edge_auth_secret(&name), "secret"),
            env_from_secret(
                sipstack_edgerpc::TOKEN_ENV,
                &names::edge_rpc_token_secret(&name),
                "token",
            ),
            env_from_secret(
                TRUNK_KEY_ENV,
                &names::pg_trunk_key_secret(&cluster_name),
                "key",
            ),
        ]),
        ports: Some(ports),
        resources: spec.kubernetes.pod.resources.clone(),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(ctl.split(' ').map(String::from).collect()),
            }),
            initial_delay_seconds: Some(3),
            period_seconds: Some(5),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(ctl.split(' ').map(String::from).collect()),
            }),
            initial_delay_seconds: Some(20),
            period_seconds: Some(20),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let host_network = spec.kubernetes.pod.host_network;
    PodTemplateSpec {
        metadata: Some(pod_meta(KAMAILIO, &name, config_hash)),
        spec: Some(PodSpec {
            containers: vec![container],
            host_network: host_network.then_some(true),
            dns_policy: host_network.then(|| "ClusterFirstWithHostNet".into()),
            affinity: (spec.kubernetes.workload == EdgeWorkload::Deployment)
                .then(|| spread_over_nodes(KAMAILIO, &name, host_network)),
            volumes: Some(volumes),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{example, golden, ha_fixture};

    #[test]
    fn example_edge_matches_golden() {
        let p = example();
        let edge = &p.sip_edges[0];
        let objects = build(edge, "voice", &p.pools_of(edge), p.pg_cluster("pg")).unwrap();
        golden("example/sipedge-edge.yaml", &objects);
    }

    #[test]
    fn daemonset_edge_with_tls_matches_golden() {
        let p = ha_fixture();
        let edge = &p.sip_edges[0];
        let objects = build(edge, "voice", &p.pools_of(edge), p.pg_cluster("pg")).unwrap();
        golden("ha/sipedge-edge.yaml", &objects);
        assert!(objects
            .iter()
            .all(|o| o.kind() != "PodDisruptionBudget" && o.kind() != "Deployment"));
    }

    #[test]
    fn missing_references_are_named() {
        let p = example();
        let edge = &p.sip_edges[0];
        let err = build(edge, "voice", &p.pools_of(edge), None).unwrap_err();
        assert!(err.to_string().contains("spec.database.pgCluster"), "{err}");
        let err = build(edge, "voice", &[], p.pg_cluster("pg")).unwrap_err();
        assert!(
            err.to_string().contains("spec.mediaPools[0]") && err.to_string().contains("\"media\""),
            "{err}"
        );
    }

    #[test]
    fn the_database_url_uses_the_app_secret_and_the_pooler() {
        let p = ha_fixture();
        let edge = &p.sip_edges[0];
        let objects = build(edge, "voice", &p.pools_of(edge), p.pg_cluster("pg")).unwrap();
        let yaml = crate::object::to_yaml(&objects).unwrap();
        assert!(
            yaml.contains("postgres://sipstack:$(SIPSTACK_DB_PASSWORD)@pg-pooler:6432/sipstack"),
            "{yaml}"
        );
        assert!(yaml.contains("name: pg-app"), "{yaml}");
    }
}
