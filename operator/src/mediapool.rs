//! MediaPool → the FreeSWITCH nodes of the pool: a StatefulSet, its headless
//! Service, the rendered configuration, the event socket Secret, a NetworkPolicy
//! and a PodDisruptionBudget.
//!
//! A node that stops drains first: the preStop hook pauses inbound calls (`fsctl pause
//! inbound`), which turns the readiness probe false (the pod leaves the dispatcher
//! members) and makes FreeSWITCH answer the edges' OPTIONS probes with 503 (the edges
//! stop sending new calls), then waits until no call is left or `spec.drainSeconds`
//! have passed. The grace period covers the wait.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, Lifecycle, LifecycleHandler,
    PodSpec, PodTemplateSpec, Probe, Service, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use sipstack_crds::{MediaPool, PgCluster, SipEdge};
use sipstack_render::freeswitch::{
    FreeswitchRenderOptions, CDR_PASSWORD_ENV, ESL_ADMIN_PASSWORD_ENV, ESL_PASSWORD_ENV, ESL_USER,
    SIP_PROFILE,
};

use crate::error::BuildError;
use crate::meta::{combined_hash, object_meta, pod_meta, FREESWITCH};
use crate::names;
use crate::network_policy::{ingress_policy, port, port_range, rule, Source};
use crate::object::Object;
use crate::pod::{
    config_map_of_files, config_volume, env_from_secret, generated_secret, one_at_a_time,
    service_port, shell, spread_over_nodes,
};

/// Image of the FreeSWITCH pods when `spec.image` is unset. It must hold `freeswitch`,
/// `fs_cli` and the modules the rendered modules.conf.xml loads (mod_sofia,
/// mod_event_socket, mod_cdr_pg_csv, mod_opus, …).
pub const DEFAULT_IMAGE: &str = "docker.io/safarov/freeswitch:1.10.12";
/// Where the rendered configuration is mounted (FreeSWITCH's `-conf`).
pub const CONFIG_DIR: &str = "/etc/sipstack/freeswitch";
/// Writable state of one node (logs, core database, run files); lost with the pod.
pub const STATE_DIR: &str = "/var/lib/sipstack-freeswitch";
/// Seconds the grace period adds to `spec.drainSeconds` for FreeSWITCH to stop.
pub const STOP_MARGIN_SECONDS: i64 = 30;

/// Builds the objects of `pool` in apply order. `cdr_cluster` is the PgCluster named
/// by `spec.cdr.database` (looked up by the caller); it is required when CDRs are on.
/// `edges` are the SipEdges that send calls to the pool (also looked up by the
/// caller): the NetworkPolicy admits their SIP.
pub fn build(
    pool: &MediaPool,
    namespace: &str,
    cdr_cluster: Option<&PgCluster>,
    edges: &[&SipEdge],
) -> Result<Vec<Object>, BuildError> {
    let name = pool.name_any();
    let object = format!("MediaPool/{name}");
    let spec = &pool.spec;
    let workload = names::media_workload(&name);
    names::check_workload_name(&object, &workload)?;

    let cdr = match (&spec.cdr.database, spec.cdr.enabled) {
        (Some(db), true) => match cdr_cluster {
            Some(cluster) if cluster.name_any() == db.pg_cluster => Some(cluster),
            _ => {
                return Err(BuildError::MissingReference {
                    object,
                    field: "spec.cdr.database.pgCluster".into(),
                    kind: "PgCluster",
                    name: db.pg_cluster.clone(),
                    namespace: namespace.into(),
                })
            }
        },
        _ => None,
    };
    let render_options = FreeswitchRenderOptions::for_cluster(cdr);
    let rendered = sipstack_render::render_freeswitch(pool, &render_options).map_err(|source| {
        BuildError::Render {
            object: object.clone(),
            source,
        }
    })?;
    let files: Vec<(String, String)> = rendered
        .iter()
        .map(|(p, r)| (p.clone(), r.text.clone()))
        .collect();
    let config_hash = combined_hash(files.iter().map(|(p, t)| (p.as_str(), t.as_str())));

    let mut objects: Vec<Object> = Vec::new();
    let esl_secret = match &spec.event_socket.password_secret {
        Some(user_secret) => user_secret.clone(),
        None => {
            let secret_name = names::media_esl_secret(&name);
            objects.push(
                generated_secret(
                    pool,
                    namespace,
                    &secret_name,
                    FREESWITCH,
                    &[],
                    &["password"],
                )
                .into(),
            );
            secret_name
        }
    };
    objects.push(
        config_map_of_files(
            pool,
            namespace,
            &names::media_config(&name),
            FREESWITCH,
            &files,
        )
        .into(),
    );
    let service = names::media_service(&name);
    objects.push(headless_service(pool, namespace, &service).into());
    // before the pods, so that none starts unprotected
    objects.push(network_policy(pool, namespace, edges).into());
    objects.push(
        stateful_set(
            pool,
            namespace,
            &workload,
            &files,
            &config_hash,
            &esl_secret,
            cdr,
        )
        .into(),
    );
    objects.push(one_at_a_time(pool, namespace, &workload, FREESWITCH).into());
    Ok(objects)
}

fn headless_service(pool: &MediaPool, namespace: &str, name: &str) -> Service {
    let port = pool.spec.sip_port;
    Service {
        metadata: object_meta(pool, namespace, name, FREESWITCH),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(FREESWITCH.selector_labels(&pool.name_any())),
            ports: Some(vec![
                service_port("sip-udp", port, "UDP"),
                service_port("sip-tcp", port, "TCP"),
            ]),
            // only nodes that take calls are published
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What reaches the pool's pods: SIP from the edges, RTP from anywhere (phones and
/// carriers send media straight to the nodes), the event socket from the operator
/// (fs_cli in the pod uses loopback, which no policy restricts). Pods on the nodes'
/// network (`hostNetwork`) are outside every NetworkPolicy: see
/// [`crate::network_policy`].
fn network_policy(pool: &MediaPool, namespace: &str, edges: &[&SipEdge]) -> NetworkPolicy {
    let spec = &pool.spec;
    let mut sip_from = vec![Source::Edges];
    if edges.iter().any(|e| e.spec.kubernetes.pod.host_network) {
        // an edge on the nodes' network sends from its node's address, which no pod
        // selector matches: SIP must be open for its calls to arrive
        sip_from.push(Source::Anywhere);
    }
    ingress_policy(
        pool,
        namespace,
        &names::media_network_policy(&pool.name_any()),
        FREESWITCH,
        vec![
            rule(
                vec![port("UDP", spec.sip_port), port("TCP", spec.sip_port)],
                &sip_from,
            ),
            rule(
                vec![port_range("UDP", spec.rtp.port_start, spec.rtp.port_end)],
                &[Source::Anywhere],
            ),
            rule(
                vec![port("TCP", spec.event_socket.port)],
                &[Source::Operator],
            ),
        ],
    )
}

/// fs_cli's own configuration (`$HOME/.fs_cli_conf`), written by the start script:
/// the password stays off every command line (probes, preStop), where any process
/// of the pod could read it.
fn fs_cli_home() -> String {
    format!("{STATE_DIR}/run/fs_cli")
}

/// `fs_cli` against the node's own event socket, with the configuration above.
fn fs_cli() -> String {
    format!("HOME={} fs_cli", fs_cli_home())
}

fn start_script(esl_port: u16) -> String {
    [
        "set -e".to_string(),
        // an empty password would open the event socket to anyone on the pod; anything but
        // letters and digits would be pasted into the XML by FreeSWITCH's preprocessor
        format!("case \"${ESL_PASSWORD_ENV}\" in ''|*[!A-Za-z0-9]*) echo \"{ESL_PASSWORD_ENV} must be letters and digits\" >&2; exit 1;; esac"),
        format!("mkdir -p {STATE_DIR}/log {STATE_DIR}/run {STATE_DIR}/db {STATE_DIR}/tmp"),
        // the event socket's own password runs every command (system too): random, in
        // FreeSWITCH's environment only; the probes log in as the restricted user
        format!("{ESL_ADMIN_PASSWORD_ENV}=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \\n')"),
        format!("[ ${{#{ESL_ADMIN_PASSWORD_ENV}}} -ge 32 ] || {{ echo 'no random event socket password' >&2; exit 1; }}"),
        format!("export {ESL_ADMIN_PASSWORD_ENV}"),
        // printf is the shell's own: the password is in no process's arguments
        format!(
            "(umask 077; mkdir -p {home}; printf '[default]\\nhost => 127.0.0.1\\nport => %s\\nuser => {ESL_USER}\\npassword => %s\\n' {esl_port} \"${ESL_PASSWORD_ENV}\" > {home}/.fs_cli_conf)",
            home = fs_cli_home()
        ),
        format!(
            "exec freeswitch -nonat -nf -nc -conf {CONFIG_DIR} -log {STATE_DIR}/log -run {STATE_DIR}/run -db {STATE_DIR}/db -temp {STATE_DIR}/tmp"
        ),
    ]
    .join("\n")
}

/// Ready: inbound calls are not paused and the SIP profile runs.
fn readiness_script() -> String {
    let cli = fs_cli();
    format!(
        "case \"$({cli} -x 'fsctl pause_check inbound')\" in *false*) ;; *) exit 1;; esac\n{cli} -x 'sofia status profile {SIP_PROFILE}' | grep -q RUNNING"
    )
}

/// Pause inbound calls, then wait until none is left or the drain time is over.
fn drain_script(drain_seconds: u32) -> String {
    let cli = fs_cli();
    [
        format!("{cli} -x 'fsctl pause inbound' >/dev/null 2>&1 || true"),
        format!("end=$(( $(date +%s) + {drain_seconds} ))"),
        "while [ \"$(date +%s)\" -lt \"$end\" ]; do".to_string(),
        format!(
            "  calls=$({cli} -x 'show calls count' 2>/dev/null | grep -o '^[0-9]*' | head -n 1)"
        ),
        "  [ \"${calls:-0}\" = 0 ] && break".to_string(),
        "  sleep 2".to_string(),
        "done".to_string(),
    ]
    .join("\n")
}

fn exec(script: String) -> ExecAction {
    ExecAction {
        command: Some(shell(script)),
    }
}

fn stateful_set(
    pool: &MediaPool,
    namespace: &str,
    name: &str,
    files: &[(String, String)],
    config_hash: &str,
    esl_secret: &str,
    cdr: Option<&PgCluster>,
) -> StatefulSet {
    let spec = &pool.spec;
    let instance = pool.name_any();
    let esl_port = spec.event_socket.port;
    let mut env = vec![env_from_secret(ESL_PASSWORD_ENV, esl_secret, "password")];
    if let Some(cluster) = cdr {
        env.push(env_from_secret(
            CDR_PASSWORD_ENV,
            &names::pg_app_secret(&cluster.name_any()),
            "password",
        ));
    }
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let container = Container {
        name: "freeswitch".into(),
        image: Some(
            spec.pod
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.into()),
        ),
        command: Some(shell(start_script(esl_port))),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("sip-udp".into()),
                container_port: spec.sip_port.into(),
                protocol: Some("UDP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("sip-tcp".into()),
                container_port: spec.sip_port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        resources: spec.pod.resources.clone(),
        readiness_probe: Some(Probe {
            exec: Some(exec(readiness_script())),
            initial_delay_seconds: Some(5),
            period_seconds: Some(5),
            timeout_seconds: Some(4),
            failure_threshold: Some(2),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            exec: Some(exec(format!("{} -x status >/dev/null", fs_cli()))),
            initial_delay_seconds: Some(30),
            period_seconds: Some(20),
            timeout_seconds: Some(10),
            failure_threshold: Some(6),
            ..Default::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(exec(drain_script(spec.drain_seconds))),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "state".into(),
                mount_path: STATE_DIR.into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let host_network = spec.pod.host_network;
    StatefulSet {
        metadata: object_meta(pool, namespace, name, FREESWITCH),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names::media_service(&instance)),
            // nodes are interchangeable: start and stop them all at once
            pod_management_policy: Some("Parallel".into()),
            selector: FREESWITCH.selector(&instance),
            template: PodTemplateSpec {
                metadata: Some(pod_meta(FREESWITCH, &instance, config_hash)),
                spec: Some(PodSpec {
                    containers: vec![container],
                    host_network: host_network.then_some(true),
                    dns_policy: host_network.then(|| "ClusterFirstWithHostNet".into()),
                    affinity: Some(spread_over_nodes(FREESWITCH, &instance, host_network)),
                    termination_grace_period_seconds: Some(
                        i64::from(spec.drain_seconds) + STOP_MARGIN_SECONDS,
                    ),
                    volumes: Some(vec![
                        config_volume("config", &names::media_config(&instance), &paths),
                        Volume {
                            name: "state".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network_policy::inspect;
    use crate::testing::{example, golden, ha_fixture};
    use sipstack_crds::Platform;

    /// The platform's SipEdges (each of the fixtures' edges uses the pool `media`).
    fn edges(p: &Platform) -> Vec<&SipEdge> {
        p.sip_edges.iter().collect()
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn example_pool_matches_golden() {
        let p = example();
        let pool = &p.media_pools[0];
        let objects = build(pool, "voice", p.pg_cluster("pg"), &edges(&p)).unwrap();
        golden("example/mediapool-media.yaml", &objects);
    }

    #[test]
    fn pool_with_host_network_and_own_secret_matches_golden() {
        let p = ha_fixture();
        let pool = p.media_pool("media").unwrap();
        let objects = build(pool, "voice", p.pg_cluster("pg"), &edges(&p)).unwrap();
        golden("ha/mediapool-media.yaml", &objects);
    }

    #[test]
    fn a_missing_cdr_cluster_is_named() {
        let p = example();
        let err = build(&p.media_pools[0], "voice", None, &[]).unwrap_err();
        assert_eq!(err.reason(), "MissingReference");
        assert!(
            err.to_string().contains("spec.cdr.database.pgCluster")
                && err.to_string().contains("\"pg\""),
            "{err}"
        );
    }

    #[test]
    fn the_event_socket_password_is_on_no_command_line() {
        let p = example();
        let objects = build(&p.media_pools[0], "voice", p.pg_cluster("pg"), &[]).unwrap();
        let Some(Object::StatefulSet(sts)) = objects.iter().find(|o| o.kind() == "StatefulSet")
        else {
            panic!()
        };
        let c = &sts.spec.template.spec.as_ref().unwrap().containers[0];
        // probes and preStop run fs_cli, whose arguments every process of the pod can read
        for (what, handler) in [
            (
                "readiness",
                serde_json::to_string(&c.readiness_probe).unwrap(),
            ),
            (
                "liveness",
                serde_json::to_string(&c.liveness_probe).unwrap(),
            ),
            ("preStop", serde_json::to_string(&c.lifecycle).unwrap()),
        ] {
            assert!(handler.contains("fs_cli"), "{what}: {handler}");
            assert!(
                !handler.contains(ESL_PASSWORD_ENV) && !handler.contains(" -p "),
                "{what} passes the password: {handler}"
            );
        }
        // the start script hands it to fs_cli's own file, with the shell's printf
        let start = c.command.as_ref().unwrap().join(" ");
        assert!(
            start.contains("umask 077") && start.contains(".fs_cli_conf"),
            "{start}"
        );
    }

    #[test]
    fn drain_time_sets_the_grace_period_and_the_wait() {
        let mut p = example();
        p.media_pools[0].spec.drain_seconds = 600;
        let objects = build(&p.media_pools[0], "voice", p.pg_cluster("pg"), &[]).unwrap();
        let Some(Object::StatefulSet(sts)) = objects.iter().find(|o| o.kind() == "StatefulSet")
        else {
            panic!()
        };
        let pod = sts.spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(630));
        let pre_stop = serde_json::to_string(&pod.containers[0].lifecycle).unwrap();
        assert!(
            pre_stop.contains("fsctl pause inbound") && pre_stop.contains("+ 600 ))"),
            "{pre_stop}"
        );
    }

    #[test]
    fn a_config_change_changes_the_pod_template() {
        let p = example();
        let hash = |objects: &[Object]| -> String {
            let Some(Object::StatefulSet(sts)) = objects.iter().find(|o| o.kind() == "StatefulSet")
            else {
                panic!()
            };
            let meta = sts.spec.template.metadata.as_ref().unwrap();
            meta.annotations.as_ref().unwrap()[crate::meta::CONFIG_HASH_ANNOTATION].clone()
        };
        let a = hash(&build(&p.media_pools[0], "voice", p.pg_cluster("pg"), &[]).unwrap());
        let mut changed = p.clone();
        changed.media_pools[0].spec.max_sessions = 42;
        let b = hash(&build(&changed.media_pools[0], "voice", p.pg_cluster("pg"), &[]).unwrap());
        assert_ne!(a, b);
        assert_eq!(
            a,
            hash(&build(&p.media_pools[0], "voice", p.pg_cluster("pg"), &[]).unwrap())
        );
    }

    #[test]
    fn sip_from_edges_rtp_from_anywhere_the_event_socket_from_the_operator() {
        let p = example();
        let objects = build(&p.media_pools[0], "voice", p.pg_cluster("pg"), &edges(&p)).unwrap();
        let policy = inspect::find(&objects, "media-freeswitch");
        assert_eq!(policy.metadata.namespace.as_deref(), Some("voice"));
        assert_eq!(
            inspect::selected(policy),
            FREESWITCH
                .selector_labels("media")
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            inspect::rules(policy),
            [
                (strings(&["UDP 5080", "TCP 5080"]), strings(&["kamailio"])),
                (strings(&["UDP 16384-32767"]), strings(&["*"])),
                (strings(&["TCP 8021"]), strings(&["sipstack@any-namespace"])),
            ]
        );
        // applied before the pods it protects
        let position = |kind: &str| objects.iter().position(|o| o.kind() == kind).unwrap();
        assert!(position("NetworkPolicy") < position("StatefulSet"));
    }

    #[test]
    fn edges_on_the_nodes_network_open_sip_to_every_source() {
        // the fixture's edge is a DaemonSet with hostNetwork: its SIP comes from node
        // addresses, which no pod selector matches
        let p = ha_fixture();
        let pool = p.media_pool("media").unwrap();
        let objects = build(pool, "voice", p.pg_cluster("pg"), &edges(&p)).unwrap();
        assert_eq!(
            inspect::rules(inspect::find(&objects, "media-freeswitch")),
            [
                (strings(&["UDP 5080", "TCP 5080"]), strings(&["*"])),
                (strings(&["UDP 20000-29999"]), strings(&["*"])),
                (strings(&["TCP 8022"]), strings(&["sipstack@any-namespace"])),
            ]
        );
        // the same pool with edges on the pod network keeps SIP to them
        let mut on_pods = p.sip_edges[0].clone();
        on_pods.spec.kubernetes.pod.host_network = false;
        let objects = build(pool, "voice", p.pg_cluster("pg"), &[&on_pods]).unwrap();
        assert_eq!(
            inspect::rules(inspect::find(&objects, "media-freeswitch"))[0].1,
            strings(&["kamailio"])
        );
    }
}
