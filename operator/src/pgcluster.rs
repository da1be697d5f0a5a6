//! PgCluster → PostgreSQL under Patroni: a StatefulSet of members, Services for
//! the primary and the replicas, the Secrets of the superuser, replication and
//! platform roles, the RBAC Patroni needs to keep its state in Kubernetes, a
//! NetworkPolicy, a PodDisruptionBudget and, with `spec.pooler.enabled`, PgBouncer
//! (with its own NetworkPolicy).
//!
//! Patroni runs with `use_endpoints`: it elects the leader through an Endpoints
//! object named after the cluster and keeps that object's address on the primary.
//! The read-write Service has the same name and no selector, so it always leads to
//! the primary, whatever role label a Patroni version writes (3.x `master`, 4.x
//! `primary`). The replicas Service selects `role=replica`, the same in both.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, Service,
    ServiceAccount, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sipstack_crds::pgcluster::{DcsKind, PostgresVersion};
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use sipstack_render::patroni::{PatroniTarget, KUBERNETES_DATA_DIR, KUBERNETES_REST_API_PORT};
use sipstack_render::{PgbouncerTarget, Rendered};

use crate::error::BuildError;
use crate::meta::{object_meta, pod_meta, PATRONI, PGBOUNCER};
use crate::names;
use crate::network_policy::{ingress_policy, port, rule, Source};
use crate::object::Object;
use crate::pod::{
    config_map_of_files, config_volume, env, env_from_field, env_from_secret, generated_key_secret,
    generated_secret, one_at_a_time, service_port, shell, spread_over_nodes,
};

/// Image of the Patroni pods when `spec.image` is unset, by PostgreSQL version (Spilo:
/// PostgreSQL with Patroni; the postgres user is uid 101, gid 103).
pub fn default_image(version: PostgresVersion) -> &'static str {
    match version {
        PostgresVersion::V15 => "ghcr.io/zalando/spilo-15:3.0-p1",
        PostgresVersion::V16 => "ghcr.io/zalando/spilo-16:3.2-p3",
        PostgresVersion::V17 => "ghcr.io/zalando/spilo-17:4.0-p2",
    }
}
/// PgBouncer image and the small image that writes its user list.
pub const PGBOUNCER_IMAGE: &str = "ghcr.io/cloudnative-pg/pgbouncer:1.23.0";
pub const INIT_IMAGE: &str = "docker.io/library/busybox:1.36";
/// Where patroni.yml is mounted.
pub const PATRONI_CONFIG_DIR: &str = "/etc/sipstack/patroni";
/// Mount point of each member's volume; PGDATA is below it.
pub const DATA_VOLUME_DIR: &str = "/home/postgres/pgdata";
pub const PGBOUNCER_CONFIG_DIR: &str = "/etc/sipstack/pgbouncer";
pub const PGBOUNCER_AUTH_DIR: &str = "/etc/sipstack/pgbouncer-auth";
/// PgBouncer replicas: two, so that one can be drained.
pub const POOLER_REPLICAS: i32 = 2;
/// Role names of the superuser and of replication (as patroni.yml names them).
pub const SUPERUSER: &str = "postgres";
pub const REPLICATION_USER: &str = "replicator";
/// Spilo's postgres user and group.
const POSTGRES_UID: i64 = 101;
const POSTGRES_GID: i64 = 103;

/// patroni.yml of the cluster's pods. The one place the operator asks the renderer for
/// it, so a change of the renderer's interface is made here only.
pub fn patroni_config(cluster: &PgCluster, namespace: &str) -> Result<Rendered, BuildError> {
    sipstack_render::render_patroni(cluster, &PatroniTarget::Kubernetes { namespace }).map_err(
        |source| BuildError::Render {
            object: format!("PgCluster/{}", cluster.name_any()),
            source,
        },
    )
}

/// Builds the objects of `cluster` in apply order. `edges` and `pools` are the
/// cluster's clients (looked up by the caller): the SipEdges that keep their state in
/// it and the MediaPools that write their CDRs to it. The NetworkPolicies admit them.
pub fn build(
    cluster: &PgCluster,
    namespace: &str,
    edges: &[&SipEdge],
    pools: &[&MediaPool],
) -> Result<Vec<Object>, BuildError> {
    let name = cluster.name_any();
    let object = format!("PgCluster/{name}");
    names::check_workload_name(&object, &names::pg_workload(&name))?;
    names::check_workload_name(&object, &names::pg_pooler(&name))?;
    let spec = &cluster.spec;
    let patroni_yml = patroni_config(cluster, namespace)?;

    let mut objects: Vec<Object> = Vec::new();
    if spec.dcs.kind == DcsKind::Kubernetes {
        objects.extend(rbac(cluster, namespace));
    } else {
        // Patroni needs no API access with etcd; the pods still run under their own account
        objects.push(service_account(cluster, namespace).into());
    }
    objects.push(
        generated_secret(
            cluster,
            namespace,
            &names::pg_superuser_secret(&name),
            PATRONI,
            &[("username", SUPERUSER)],
            &["password"],
        )
        .into(),
    );
    objects.push(
        generated_secret(
            cluster,
            namespace,
            &names::pg_replication_secret(&name),
            PATRONI,
            &[("username", REPLICATION_USER)],
            &["password"],
        )
        .into(),
    );
    objects.push(
        generated_secret(
            cluster,
            namespace,
            &names::pg_rest_api_secret(&name),
            PATRONI,
            &[("username", sipstack_patroni::REST_API_USER)],
            &["password"],
        )
        .into(),
    );
    objects.push(
        generated_secret(
            cluster,
            namespace,
            &names::pg_app_secret(&name),
            PATRONI,
            &[("username", &spec.database.owner)],
            &["password"],
        )
        .into(),
    );
    objects.push(
        generated_key_secret(
            cluster,
            namespace,
            &names::pg_trunk_key_secret(&name),
            PATRONI,
            "key",
        )
        .into(),
    );
    objects.push(
        config_map_of_files(
            cluster,
            namespace,
            &names::pg_config(&name),
            PATRONI,
            &[("patroni.yml".into(), patroni_yml.text.clone())],
        )
        .into(),
    );
    objects.push(members_service(cluster, namespace).into());
    objects.push(primary_service(cluster, namespace).into());
    objects.push(replicas_service(cluster, namespace).into());
    // the clients that connect from their node's address (see crate::network_policy)
    let clients_on_host_network = edges.iter().any(|e| e.spec.kubernetes.pod.host_network)
        || pools.iter().any(|p| p.spec.pod.host_network);
    // before the pods, so that none starts unprotected
    objects.push(postgres_network_policy(cluster, namespace, clients_on_host_network).into());
    objects.push(stateful_set(cluster, namespace, &patroni_yml.hash).into());
    objects.push(one_at_a_time(cluster, namespace, &names::pg_workload(&name), PATRONI).into());
    if spec.pooler.enabled {
        objects.extend(pooler(cluster, namespace, clients_on_host_network)?);
    }
    Ok(objects)
}

/// What reaches the members: PostgreSQL from the other members (replication),
/// PgBouncer, the edges, the media nodes and the operator; Patroni's REST API from the
/// other members (they ask each other during a failover) and the operator. The
/// kubelet's probes of the REST API come from the node, which no policy restricts;
/// members on the nodes' network (`hostNetwork`) are outside every NetworkPolicy.
fn postgres_network_policy(
    cluster: &PgCluster,
    namespace: &str,
    clients_on_host_network: bool,
) -> NetworkPolicy {
    let name = cluster.name_any();
    let spec = &cluster.spec;
    let members = Source::PodsOf(PATRONI, &name);
    let mut postgres_from = vec![members];
    if spec.pooler.enabled {
        postgres_from.push(Source::PodsOf(PGBOUNCER, &name));
    }
    postgres_from.extend([Source::Edges, Source::MediaNodes, Source::Operator]);
    if clients_on_host_network && !spec.pooler.enabled {
        // the clients connect here, and from node addresses
        postgres_from.push(Source::Anywhere);
    }
    ingress_policy(
        cluster,
        namespace,
        &names::pg_network_policy(&name),
        PATRONI,
        vec![
            rule(vec![port("TCP", spec.port)], &postgres_from),
            rule(
                vec![port("TCP", KUBERNETES_REST_API_PORT)],
                &[members, Source::Operator],
            ),
        ],
    )
}

/// What reaches PgBouncer: the edges, the media nodes and the operator.
fn pooler_network_policy(
    cluster: &PgCluster,
    namespace: &str,
    clients_on_host_network: bool,
) -> NetworkPolicy {
    let mut from = vec![Source::Edges, Source::MediaNodes, Source::Operator];
    if clients_on_host_network {
        // the clients connect here, and from node addresses
        from.push(Source::Anywhere);
    }
    ingress_policy(
        cluster,
        namespace,
        &names::pg_pooler_network_policy(&cluster.name_any()),
        PGBOUNCER,
        vec![rule(vec![port("TCP", cluster.spec.pooler.port)], &from)],
    )
}

fn service_account(cluster: &PgCluster, namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(
            cluster,
            namespace,
            names::pg_service_account(&cluster.name_any()),
            PATRONI,
        ),
        ..Default::default()
    }
}

/// What Patroni's Kubernetes DCS does: leader election and cluster state in Endpoints
/// and ConfigMaps, its role label on the pods, and the `NAME-config` Service it creates.
fn rbac(cluster: &PgCluster, namespace: &str) -> Vec<Object> {
    let account = names::pg_service_account(&cluster.name_any());
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let role = Role {
        metadata: object_meta(cluster, namespace, &account, PATRONI),
        rules: Some(vec![
            rule(
                &["configmaps", "endpoints"],
                &[
                    "create", "get", "list", "patch", "update", "watch", "delete",
                ],
            ),
            rule(&["pods"], &["get", "list", "patch", "update", "watch"]),
            rule(&["services"], &["create"]),
        ]),
    };
    let binding = RoleBinding {
        metadata: object_meta(cluster, namespace, &account, PATRONI),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: account.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: account.clone(),
            namespace: Some(namespace.into()),
            ..Default::default()
        }]),
    };
    vec![
        service_account(cluster, namespace).into(),
        role.into(),
        binding.into(),
    ]
}

fn postgres_ports(cluster: &PgCluster) -> Vec<k8s_openapi::api::core::v1::ServicePort> {
    vec![service_port("postgresql", cluster.spec.port, "TCP")]
}

fn members_service(cluster: &PgCluster, namespace: &str) -> Service {
    let name = cluster.name_any();
    let mut ports = postgres_ports(cluster);
    ports.push(service_port("patroni", KUBERNETES_REST_API_PORT, "TCP"));
    Service {
        metadata: object_meta(
            cluster,
            namespace,
            names::pg_members_service(&name),
            PATRONI,
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(PATRONI.selector_labels(&name)),
            ports: Some(ports),
            // members find each other before they are ready (a replica bootstrapping)
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The read-write endpoint: no selector, Patroni keeps its Endpoints on the primary.
fn primary_service(cluster: &PgCluster, namespace: &str) -> Service {
    Service {
        metadata: object_meta(
            cluster,
            namespace,
            names::pg_primary_service(&cluster.name_any()),
            PATRONI,
        ),
        spec: Some(ServiceSpec {
            ports: Some(postgres_ports(cluster)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn replicas_service(cluster: &PgCluster, namespace: &str) -> Service {
    let name = cluster.name_any();
    let mut selector = PATRONI.selector_labels(&name);
    selector.insert("role".into(), "replica".into());
    Service {
        metadata: object_meta(
            cluster,
            namespace,
            names::pg_replicas_service(&name),
            PATRONI,
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(postgres_ports(cluster)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn stateful_set(cluster: &PgCluster, namespace: &str, config_hash: &str) -> StatefulSet {
    let name = cluster.name_any();
    let spec = &cluster.spec;
    let port = spec.port;
    let patroni_probe = |path: &str, initial: i32, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(KUBERNETES_REST_API_PORT.into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let container = Container {
        name: "patroni".into(),
        image: Some(
            spec.pod
                .image
                .clone()
                .unwrap_or_else(|| default_image(spec.postgres_version).into()),
        ),
        command: Some(vec![
            "patroni".into(),
            format!("{PATRONI_CONFIG_DIR}/patroni.yml"),
        ]),
        env: Some(vec![
            env_from_field("PATRONI_NAME", "metadata.name"),
            env_from_field("POD_IP", "status.podIP"),
            env("PATRONI_KUBERNETES_POD_IP", "$(POD_IP)"),
            env(
                "PATRONI_RESTAPI_CONNECT_ADDRESS",
                format!("$(POD_IP):{KUBERNETES_REST_API_PORT}"),
            ),
            env(
                "PATRONI_POSTGRESQL_CONNECT_ADDRESS",
                format!("$(POD_IP):{port}"),
            ),
            env(
                "PATRONI_POSTGRESQL_BIN_DIR",
                format!("/usr/lib/postgresql/{}/bin", spec.postgres_version.major()),
            ),
            env_from_secret(
                "PATRONI_SUPERUSER_PASSWORD",
                &names::pg_superuser_secret(&name),
                "password",
            ),
            env_from_secret(
                "PATRONI_REPLICATION_PASSWORD",
                &names::pg_replication_secret(&name),
                "password",
            ),
            env_from_secret(
                "PATRONI_RESTAPI_USERNAME",
                &names::pg_rest_api_secret(&name),
                "username",
            ),
            env_from_secret(
                "PATRONI_RESTAPI_PASSWORD",
                &names::pg_rest_api_secret(&name),
                "password",
            ),
            env_from_secret(
                "SIPSTACK_APP_USER",
                &names::pg_app_secret(&name),
                "username",
            ),
            env_from_secret(
                "SIPSTACK_APP_PASSWORD",
                &names::pg_app_secret(&name),
                "password",
            ),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("postgresql".into()),
                container_port: port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("patroni".into()),
                container_port: KUBERNETES_REST_API_PORT.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: spec.pod.resources.clone(),
        readiness_probe: Some(patroni_probe("/readiness", 5, 5, 3)),
        liveness_probe: Some(patroni_probe("/liveness", 30, 10, 6)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "pgdata".into(),
                mount_path: DATA_VOLUME_DIR.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: PATRONI_CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    debug_assert!(KUBERNETES_DATA_DIR.starts_with(DATA_VOLUME_DIR));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("pgdata".into()),
            labels: Some(PATRONI.labels(&name)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let host_network = spec.pod.host_network;
    StatefulSet {
        metadata: object_meta(cluster, namespace, names::pg_workload(&name), PATRONI),
        spec: StatefulSetSpec {
            replicas: Some(spec.instances),
            service_name: Some(names::pg_members_service(&name)),
            selector: PATRONI.selector(&name),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(PATRONI, &name, config_hash)),
                spec: Some(PodSpec {
                    service_account_name: Some(names::pg_service_account(&name)),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(POSTGRES_UID),
                        run_as_group: Some(POSTGRES_GID),
                        fs_group: Some(POSTGRES_GID),
                        ..Default::default()
                    }),
                    host_network: host_network.then_some(true),
                    dns_policy: host_network.then(|| "ClusterFirstWithHostNet".into()),
                    // members on different nodes: losing a node loses one member
                    affinity: Some(spread_over_nodes(PATRONI, &name, host_network)),
                    volumes: Some(vec![config_volume(
                        "config",
                        &names::pg_config(&name),
                        &["patroni.yml"],
                    )]),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// PgBouncer in front of the primary Service, with the platform role's credentials
/// written to its user list by an init container (from the app Secret).
fn pooler(
    cluster: &PgCluster,
    namespace: &str,
    clients_on_host_network: bool,
) -> Result<Vec<Object>, BuildError> {
    let name = cluster.name_any();
    let pooler_name = names::pg_pooler(&name);
    let spec = &cluster.spec;
    let primary = names::pg_primary_service(&name);
    let auth_file = format!("{PGBOUNCER_AUTH_DIR}/userlist.txt");
    let ini = sipstack_render::render_pgbouncer(
        cluster,
        &PgbouncerTarget {
            upstream_host: &primary,
            upstream_port: spec.port,
            listen_addr: "0.0.0.0",
            auth_file: Path::new(&auth_file),
            unix_socket_dir: None,
            pid_file: None,
        },
    )
    .map_err(|source| BuildError::Render {
        object: format!("PgCluster/{name}"),
        source,
    })?;
    let app_secret = names::pg_app_secret(&name);
    let init = Container {
        name: "userlist".into(),
        image: Some(INIT_IMAGE.into()),
        command: Some(shell(format!(
            "umask 077 && printf '\"%s\" \"%s\"\\n' \"$SIPSTACK_APP_USER\" \"$SIPSTACK_APP_PASSWORD\" > {auth_file}"
        ))),
        env: Some(vec![
            env_from_secret("SIPSTACK_APP_USER", &app_secret, "username"),
            env_from_secret("SIPSTACK_APP_PASSWORD", &app_secret, "password"),
        ]),
        volume_mounts: Some(vec![VolumeMount { name: "auth".into(), mount_path: PGBOUNCER_AUTH_DIR.into(), ..Default::default() }]),
        ..Default::default()
    };
    let port = spec.pooler.port;
    let container = Container {
        name: "pgbouncer".into(),
        image: Some(PGBOUNCER_IMAGE.into()),
        command: Some(vec![
            "pgbouncer".into(),
            format!("{PGBOUNCER_CONFIG_DIR}/pgbouncer.ini"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("pgbouncer".into()),
            container_port: port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(port.into()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: PGBOUNCER_CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "auth".into(),
                mount_path: PGBOUNCER_AUTH_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: object_meta(cluster, namespace, &pooler_name, PGBOUNCER),
        spec: DeploymentSpec {
            replicas: Some(POOLER_REPLICAS),
            selector: PGBOUNCER.selector(&name),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(PGBOUNCER, &name, &ini.hash)),
                spec: Some(PodSpec {
                    init_containers: Some(vec![init]),
                    containers: vec![container],
                    affinity: Some(spread_over_nodes(PGBOUNCER, &name, false)),
                    volumes: Some(vec![
                        config_volume(
                            "config",
                            &names::pg_pooler_config(&name),
                            &["pgbouncer.ini"],
                        ),
                        Volume {
                            name: "auth".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                medium: Some("Memory".into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let service = Service {
        metadata: object_meta(cluster, namespace, &pooler_name, PGBOUNCER),
        spec: Some(ServiceSpec {
            selector: Some(PGBOUNCER.selector_labels(&name)),
            ports: Some(vec![service_port("pgbouncer", port, "TCP")]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(vec![
        config_map_of_files(
            cluster,
            namespace,
            &names::pg_pooler_config(&name),
            PGBOUNCER,
            &[("pgbouncer.ini".into(), ini.text)],
        )
        .into(),
        service.into(),
        pooler_network_policy(cluster, namespace, clients_on_host_network).into(),
        deployment.into(),
        one_at_a_time(cluster, namespace, &pooler_name, PGBOUNCER).into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network_policy::inspect;
    use crate::testing::{example, golden, ha_fixture};
    use sipstack_crds::Platform;

    /// The platform's SipEdges and MediaPools: in both fixtures, clients of `pg`.
    fn edges(p: &Platform) -> Vec<&SipEdge> {
        p.sip_edges.iter().collect()
    }
    fn pools(p: &Platform) -> Vec<&MediaPool> {
        p.media_pools.iter().collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn example_cluster_matches_golden() {
        let p = example();
        golden(
            "example/pgcluster-pg.yaml",
            &build(&p.pg_clusters[0], "voice", &edges(&p), &pools(&p)).unwrap(),
        );
    }

    #[test]
    fn three_instances_with_pooler_match_golden() {
        let p = ha_fixture();
        let objects = build(p.pg_cluster("pg").unwrap(), "voice", &edges(&p), &pools(&p)).unwrap();
        golden("ha/pgcluster-pg.yaml", &objects);
        let kinds: Vec<String> = objects.iter().map(Object::reference).collect();
        for expected in [
            "Role/pg-patroni",
            "Service/pg",
            "Service/pg-replicas",
            "StatefulSet/pg",
            "Deployment/pg-pooler",
            "Secret/pg-app",
        ] {
            assert!(
                kinds.iter().any(|k| k == expected),
                "{expected} missing from {kinds:?}"
            );
        }
    }

    #[test]
    fn the_primary_service_has_no_selector_and_replicas_select_the_role() {
        let p = ha_fixture();
        let objects = build(p.pg_cluster("pg").unwrap(), "voice", &[], &[]).unwrap();
        let service = |name: &str| -> Service {
            objects
                .iter()
                .find_map(|o| match o {
                    Object::Service(s) if s.name_any() == name => Some(s.clone()),
                    _ => None,
                })
                .unwrap()
        };
        assert!(service("pg").spec.unwrap().selector.is_none());
        assert_eq!(
            service("pg-replicas").spec.unwrap().selector.unwrap()["role"],
            "replica"
        );
    }

    #[test]
    fn postgres_admits_its_members_and_the_platforms_pods_only() {
        let p = example();
        let objects = build(&p.pg_clusters[0], "voice", &edges(&p), &pools(&p)).unwrap();
        assert!(
            !objects.iter().any(|o| o.name() == "pg-pgbouncer"),
            "no PgBouncer, no policy for it"
        );
        let policy = inspect::find(&objects, "pg-postgres");
        assert_eq!(
            inspect::selected(policy),
            PATRONI
                .selector_labels("pg")
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            inspect::rules(policy),
            [
                (
                    strings(&["TCP 5432"]),
                    strings(&[
                        "patroni/pg",
                        "kamailio",
                        "freeswitch",
                        "sipstack@any-namespace"
                    ])
                ),
                (
                    strings(&["TCP 8008"]),
                    strings(&["patroni/pg", "sipstack@any-namespace"])
                ),
            ]
        );
        let position = |reference: &str| {
            objects
                .iter()
                .position(|o| o.reference() == reference)
                .unwrap()
        };
        assert!(position("NetworkPolicy/pg-postgres") < position("StatefulSet/pg"));
    }

    #[test]
    fn pgbouncer_admits_the_platforms_pods_and_reaches_the_members() {
        let p = example();
        let mut cluster = p.pg_clusters[0].clone();
        cluster.spec.pooler.enabled = true;
        cluster.spec.pooler.port = 6432;
        let objects = build(&cluster, "voice", &edges(&p), &pools(&p)).unwrap();
        let pooler = inspect::find(&objects, "pg-pgbouncer");
        assert_eq!(
            inspect::selected(pooler),
            PGBOUNCER
                .selector_labels("pg")
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            inspect::rules(pooler),
            [(
                strings(&["TCP 6432"]),
                strings(&["kamailio", "freeswitch", "sipstack@any-namespace"])
            )]
        );
        assert_eq!(
            inspect::rules(inspect::find(&objects, "pg-postgres"))[0].1,
            strings(&[
                "patroni/pg",
                "pgbouncer/pg",
                "kamailio",
                "freeswitch",
                "sipstack@any-namespace"
            ])
        );
        let position = |reference: &str| {
            objects
                .iter()
                .position(|o| o.reference() == reference)
                .unwrap()
        };
        assert!(position("NetworkPolicy/pg-pgbouncer") < position("Deployment/pg-pooler"));
    }

    #[test]
    fn clients_on_the_nodes_network_open_the_port_they_connect_to() {
        // the fixture's edge and media nodes run with hostNetwork and connect through
        // PgBouncer: from node addresses, which no pod selector matches
        let p = ha_fixture();
        let objects = build(p.pg_cluster("pg").unwrap(), "voice", &edges(&p), &pools(&p)).unwrap();
        assert_eq!(
            inspect::rules(inspect::find(&objects, "pg-pgbouncer")),
            [(strings(&["TCP 6432"]), strings(&["*"]))]
        );
        let members = inspect::rules(inspect::find(&objects, "pg-postgres"));
        assert_eq!(
            members,
            [
                (
                    strings(&["TCP 5432"]),
                    strings(&[
                        "patroni/pg",
                        "pgbouncer/pg",
                        "kamailio",
                        "freeswitch",
                        "sipstack@any-namespace"
                    ])
                ),
                (
                    strings(&["TCP 8008"]),
                    strings(&["patroni/pg", "sipstack@any-namespace"])
                ),
            ],
            "the members stay closed: the clients reach them through PgBouncer"
        );

        // without PgBouncer they connect to the members, which are then open
        let mut direct = p.pg_cluster("pg").unwrap().clone();
        direct.spec.pooler.enabled = false;
        let objects = build(&direct, "voice", &edges(&p), &pools(&p)).unwrap();
        assert_eq!(
            inspect::rules(inspect::find(&objects, "pg-postgres"))[0].1,
            strings(&["*"])
        );
        // and a cluster whose clients are all on the pod network stays closed
        let objects = build(&direct, "voice", &[], &[]).unwrap();
        assert!(!inspect::rules(inspect::find(&objects, "pg-postgres"))[0]
            .1
            .contains(&"*".to_string()));
    }
}
