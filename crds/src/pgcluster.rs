//! `PgCluster`: PostgreSQL under Patroni, the platform's single source of state.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, PodSettings};
use crate::validation::{self as val, Validator};

/// A PostgreSQL cluster managed by Patroni: subscribers, registrations, dispatcher
/// members, routes and CDRs.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sipstack.io",
    version = "v1alpha1",
    kind = "PgCluster",
    plural = "pgclusters",
    shortname = "pgc",
    category = "sipstack",
    namespaced,
    status = "PgClusterStatus",
    derive = "PartialEq",
    doc = "A PostgreSQL cluster under Patroni (etcd or Kubernetes as DCS) with an optional PgBouncer pooler; the platform's database.",
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyInstances"
    ),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary"),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PgClusterSpec {
    /// PostgreSQL members. 1 runs a single server; 3 or more give automatic failover.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 9))]
    pub instances: i32,

    /// Major PostgreSQL version.
    #[serde(default)]
    pub postgres_version: PostgresVersion,

    /// Port PostgreSQL listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// The platform database and the role that owns it.
    #[serde(default)]
    pub database: PlatformDatabaseSpec,

    /// Patroni's failover timing and replication guarantees.
    #[serde(default)]
    pub patroni: PatroniSpec,

    /// Where Patroni keeps its leader lock.
    #[serde(default)]
    pub dcs: DcsSpec,

    /// PgBouncer in front of the read-write endpoint.
    #[serde(default)]
    pub pooler: PoolerSpec,

    /// Persistent volume of each member (Kubernetes).
    #[serde(default)]
    pub storage: StorageSpec,

    /// Ports the local driver gives the members, etcd and HAProxy on 127.0.0.1 when
    /// instances is more than 1. Not used on Kubernetes, where every member is its own pod.
    #[serde(default)]
    pub local: LocalPgSpec,

    /// Image, resources and host networking of the Patroni pods.
    /// Image default: ghcr.io/zalando/spilo-15:3.0-p1.
    #[serde(default, flatten)]
    pub pod: PodSettings,
}

/// A PostgreSQL major version.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PostgresVersion {
    #[serde(rename = "15")]
    #[default]
    V15,
    #[serde(rename = "16")]
    V16,
    #[serde(rename = "17")]
    V17,
}

impl PostgresVersion {
    pub fn major(self) -> u32 {
        match self {
            PostgresVersion::V15 => 15,
            PostgresVersion::V16 => 16,
            PostgresVersion::V17 => 17,
        }
    }
}

/// The platform database.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformDatabaseSpec {
    /// Database name.
    #[serde(default = "default_db_name")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN))]
    pub name: String,
    /// Role that owns the database; Kamailio, FreeSWITCH and sipctl connect as this role.
    #[serde(default = "default_db_owner")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN))]
    pub owner: String,
}

/// PostgreSQL identifiers the platform accepts: lower-case, no quoting ever needed.
pub const DB_IDENTIFIER_PATTERN: &str = r"^[a-z_][a-z0-9_]{0,62}$";

/// Patroni timing and replication settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatroniSpec {
    /// Seconds the leader lock lives without renewal; after it expires a replica takes over.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 5, max = 3600))]
    pub ttl: u32,
    /// Seconds between Patroni's cycles.
    #[serde(default = "default_loop_wait")]
    #[schemars(range(min = 1, max = 600))]
    pub loop_wait: u32,
    /// Seconds Patroni retries the DCS and PostgreSQL before demoting.
    #[serde(default = "default_retry_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub retry_timeout: u32,
    /// Bytes a replica may lag and still be promoted.
    #[serde(default = "default_max_lag")]
    #[schemars(range(min = 0))]
    pub maximum_lag_on_failover: u64,
    /// Synchronous replication: disabled; enabled (a commit waits for one replica
    /// while one runs; with none left, commits go on unprotected); or strict (commits
    /// block while no replica runs). Not `on`/`off`: kubectl reads those as booleans.
    #[serde(default)]
    pub synchronous_mode: SynchronousMode,
}

/// Synchronous replication mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SynchronousMode {
    #[default]
    Disabled,
    Enabled,
    Strict,
}

/// The distributed configuration store Patroni uses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DcsSpec {
    /// Kubernetes (Endpoints/ConfigMaps, no extra service) or etcd.
    #[serde(default)]
    pub kind: DcsKind,
    /// etcd client endpoints (`host:port`) when kind is etcd and the etcd cluster runs
    /// elsewhere. Empty with kind etcd: the local driver starts its own etcd.
    #[serde(default)]
    #[schemars(length(max = 9), inner(pattern(val::ENDPOINT_PATTERN)))]
    pub etcd_endpoints: Vec<String>,
    /// Members of the etcd cluster the local driver starts (1 or 3 or 5).
    #[serde(default = "default_etcd_members")]
    #[schemars(range(min = 1, max = 7))]
    pub etcd_members: u32,
}

/// DCS kind.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DcsKind {
    #[default]
    Kubernetes,
    Etcd,
}

/// PgBouncer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    /// Run PgBouncer in front of the read-write endpoint.
    #[serde(default)]
    pub enabled: bool,
    /// Pooling mode.
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Server connections per database/user pair.
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub default_pool_size: u32,
    /// Client connections PgBouncer accepts.
    #[serde(default = "default_max_client_conn")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_client_conn: u32,
    /// Port PgBouncer listens on.
    #[serde(default = "default_pooler_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// PgBouncer pool mode.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
}

/// Member storage.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's volume.
    #[serde(default = "default_storage_size")]
    #[schemars(pattern(val::QUANTITY_PATTERN))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::NAME_PATTERN))]
    pub storage_class: Option<String>,
}

/// Where the members of a local Patroni cluster listen. `spec.port` stays the
/// read-write endpoint (HAProxy, following the primary), so clients never see
/// which member is primary.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalPgSpec {
    /// PostgreSQL port of member 0; member N listens on this port + N.
    #[serde(default = "default_member_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub member_port: u16,
    /// Patroni REST API port of member 0; member N listens on this port + N.
    #[serde(default = "default_rest_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub rest_api_port: u16,
    /// etcd client port of etcd member 0; member N uses this port + 2N for clients
    /// and this port + 2N + 1 for its peers.
    #[serde(default = "default_etcd_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub etcd_port: u16,
    /// HAProxy's read-only endpoint, balanced over the replicas.
    #[serde(default = "default_read_only_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub read_only_port: u16,
}

impl Default for LocalPgSpec {
    fn default() -> Self {
        Self {
            member_port: default_member_port(),
            rest_api_port: default_rest_api_port(),
            etcd_port: default_etcd_port(),
            read_only_port: default_read_only_port(),
        }
    }
}

fn default_member_port() -> u16 {
    15432
}
fn default_rest_api_port() -> u16 {
    8008
}
fn default_etcd_port() -> u16 {
    2379
}
fn default_read_only_port() -> u16 {
    5433
}

impl PgCluster {
    /// The Service (and port) the platform's clients connect to on Kubernetes:
    /// `NAME-pooler` (PgBouncer) when the cluster runs a pooler, else `NAME`, the
    /// read-write Service that follows the primary.
    pub fn client_service(&self) -> (String, u16) {
        let name = kube::ResourceExt::name_any(self);
        if self.spec.pooler.enabled {
            (format!("{name}-pooler"), self.spec.pooler.port)
        } else {
            (name, self.spec.port)
        }
    }
}

impl PgClusterSpec {
    /// Whether the local driver starts its own etcd for this cluster: a cluster of more
    /// than one member that names no etcd endpoints (with DCS kind kubernetes too, since
    /// there is no Kubernetes API locally).
    pub fn runs_local_etcd(&self) -> bool {
        self.instances > 1 && self.dcs.etcd_endpoints.is_empty()
    }

    /// The TCP ports a local cluster of this spec binds on 127.0.0.1, each with the field
    /// that gives it (member ports and etcd ports are ranges from one base field).
    pub fn local_ports(&self) -> Vec<(String, u32)> {
        let mut ports: Vec<(String, u32)> = vec![("spec.port".into(), self.port as u32)];
        if self.pooler.enabled {
            ports.push(("spec.pooler.port".into(), self.pooler.port as u32));
        }
        if self.instances > 1 {
            let l = &self.local;
            ports.push(("spec.local.readOnlyPort".into(), l.read_only_port as u32));
            for n in 0..self.instances as u32 {
                ports.push((
                    format!("spec.local.memberPort (member {n})"),
                    l.member_port as u32 + n,
                ));
                ports.push((
                    format!("spec.local.restApiPort (member {n})"),
                    l.rest_api_port as u32 + n,
                ));
            }
            if self.runs_local_etcd() {
                for n in 0..self.dcs.etcd_members {
                    ports.push((
                        format!("spec.local.etcdPort (etcd member {n} clients)"),
                        l.etcd_port as u32 + 2 * n,
                    ));
                    ports.push((
                        format!("spec.local.etcdPort (etcd member {n} peers)"),
                        l.etcd_port as u32 + 2 * n + 1,
                    ));
                }
            }
        }
        ports
    }
}

/// Observed state of a PgCluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PgClusterStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Members whose PostgreSQL is running and, for replicas, streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_instances: Option<i32>,
    /// The member that is primary now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Highest schema migration applied to the platform database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
}

fn default_instances() -> i32 {
    3
}
fn default_port() -> u16 {
    5432
}
fn default_db_name() -> String {
    "sipstack".into()
}
fn default_db_owner() -> String {
    "sipstack".into()
}
fn default_ttl() -> u32 {
    30
}
fn default_loop_wait() -> u32 {
    10
}
fn default_retry_timeout() -> u32 {
    10
}
fn default_max_lag() -> u64 {
    1_048_576
}
fn default_etcd_members() -> u32 {
    3
}
fn default_pool_size() -> u32 {
    20
}
fn default_max_client_conn() -> u32 {
    1000
}
fn default_pooler_port() -> u16 {
    6432
}
fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for PlatformDatabaseSpec {
    fn default() -> Self {
        Self {
            name: default_db_name(),
            owner: default_db_owner(),
        }
    }
}
impl Default for PatroniSpec {
    fn default() -> Self {
        Self {
            ttl: default_ttl(),
            loop_wait: default_loop_wait(),
            retry_timeout: default_retry_timeout(),
            maximum_lag_on_failover: default_max_lag(),
            synchronous_mode: SynchronousMode::Disabled,
        }
    }
}
impl Default for DcsSpec {
    fn default() -> Self {
        Self {
            kind: DcsKind::Kubernetes,
            etcd_endpoints: Vec::new(),
            etcd_members: default_etcd_members(),
        }
    }
}
impl Default for PoolerSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            pool_mode: PoolMode::Transaction,
            default_pool_size: default_pool_size(),
            max_client_conn: default_max_client_conn(),
            port: default_pooler_port(),
        }
    }
}
impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class: None,
        }
    }
}

impl PgClusterSpec {
    /// Checks every field; errors name the field and the fix.
    pub fn validate(&self, v: &mut Validator) {
        v.range("spec.instances", self.instances, 1, 9);
        v.port("spec.port", self.port);
        for (path, value) in [
            ("spec.database.name", &self.database.name),
            ("spec.database.owner", &self.database.owner),
        ] {
            v.pattern(
                path,
                value,
                DB_IDENTIFIER_PATTERN,
                "a PostgreSQL name the platform accepts",
                "use at most 63 lower-case letters, digits and '_', not starting with a digit (e.g. sipstack)",
            );
        }
        if self.database.owner == "postgres" {
            v.error(
                "spec.database.owner",
                "\"postgres\" is the superuser",
                "name an ordinary role, e.g. sipstack",
            );
        }
        let p = &self.patroni;
        v.range("spec.patroni.ttl", p.ttl, 5, 3600);
        v.range("spec.patroni.loopWait", p.loop_wait, 1, 600);
        v.range("spec.patroni.retryTimeout", p.retry_timeout, 1, 600);
        // Patroni 4 refuses this; 3.0 silently runs with a lock that expires between cycles.
        if p.loop_wait + 2 * p.retry_timeout > p.ttl {
            v.error(
                "spec.patroni.ttl",
                format!(
                    "ttl {} is shorter than loopWait + 2 × retryTimeout = {}",
                    p.ttl,
                    p.loop_wait + 2 * p.retry_timeout
                ),
                "raise ttl or lower loopWait/retryTimeout so that loopWait + 2 × retryTimeout ≤ ttl",
            );
        }
        if p.synchronous_mode != SynchronousMode::Disabled && self.instances < 2 {
            v.error(
                "spec.patroni.synchronousMode",
                "synchronous replication needs a replica but instances is 1",
                "set instances to 3, or synchronousMode to disabled",
            );
        }
        for (i, e) in self.dcs.etcd_endpoints.iter().enumerate() {
            v.pattern(
                &format!("spec.dcs.etcdEndpoints[{i}]"),
                e,
                val::ENDPOINT_PATTERN,
                "an etcd endpoint",
                "use host:port, e.g. etcd-0.etcd:2379",
            );
        }
        if self.dcs.kind == DcsKind::Kubernetes && !self.dcs.etcd_endpoints.is_empty() {
            v.error(
                "spec.dcs.etcdEndpoints",
                "endpoints are given but kind is kubernetes",
                "set spec.dcs.kind to etcd, or remove the endpoints",
            );
        }
        v.range("spec.dcs.etcdMembers", self.dcs.etcd_members, 1, 7);
        if self.dcs.etcd_members > 0 && self.dcs.etcd_members.is_multiple_of(2) {
            v.error(
                "spec.dcs.etcdMembers",
                format!(
                    "{} etcd members tolerate no more failures than {}",
                    self.dcs.etcd_members,
                    self.dcs.etcd_members - 1
                ),
                "use an odd number: 1, 3 or 5",
            );
        }
        let pool = &self.pooler;
        v.range(
            "spec.pooler.defaultPoolSize",
            pool.default_pool_size,
            1,
            10000,
        );
        v.range(
            "spec.pooler.maxClientConn",
            pool.max_client_conn,
            1,
            100_000,
        );
        v.port("spec.pooler.port", pool.port);
        if pool.enabled && pool.port == self.port {
            v.error(
                "spec.pooler.port",
                format!("port {} is also spec.port", pool.port),
                "give PgBouncer its own port, e.g. 6432",
            );
        }
        v.quantity("spec.storage.size", &self.storage.size);
        if let Some(sc) = &self.storage.storage_class {
            v.name("spec.storage.storageClass", sc);
        }
        self.pod.validate(v, "spec");

        // the local driver's ports: all on 127.0.0.1, so no two may be the same
        let ports = self.local_ports();
        for (i, (field, port)) in ports.iter().enumerate() {
            if *port > 65535 {
                v.error(
                    field.as_str(),
                    format!("the port would be {port}"),
                    "lower the base port so every member's port is at most 65535",
                );
            } else if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                v.error(
                    field.as_str(),
                    format!("port {port} is also {other}"),
                    "give every endpoint its own port",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::platform::Platform;

    fn errors_of(spec: &str) -> String {
        let yaml = format!("apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {{name: pg}}\nspec:\n{spec}");
        match Platform::from_yaml(&yaml) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_sound_cluster_passes() {
        assert_eq!(errors_of("  instances: 3\n  patroni: {ttl: 10, loopWait: 2, retryTimeout: 3, synchronousMode: strict}\n"), "");
    }

    #[test]
    fn timing_that_lets_the_leader_lock_expire_between_cycles_is_refused() {
        let e = errors_of("  instances: 3\n  patroni: {ttl: 20, loopWait: 10, retryTimeout: 10}\n");
        assert!(
            e.contains("spec.patroni.ttl") && e.contains("loopWait + 2 × retryTimeout = 30"),
            "{e}"
        );
    }

    #[test]
    fn an_even_etcd_cluster_is_refused() {
        let e = errors_of("  instances: 3\n  dcs: {kind: etcd, etcdMembers: 2}\n");
        assert!(
            e.contains("spec.dcs.etcdMembers") && e.contains("odd number"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_postgres_version_is_refused() {
        let e = errors_of("  instances: 3\n  postgresVersion: \"14\"\n");
        assert!(
            e.contains("postgresVersion") || e.contains("unknown variant"),
            "{e}"
        );
    }

    #[test]
    fn synchronous_replication_needs_a_replica() {
        let e = errors_of("  instances: 1\n  patroni: {synchronousMode: enabled}\n");
        assert!(e.contains("spec.patroni.synchronousMode"), "{e}");
    }

    #[test]
    fn local_ports_must_not_collide() {
        let e = errors_of("  instances: 3\n  port: 5432\n  local: {memberPort: 5431}\n");
        assert!(
            e.contains("spec.local.memberPort (member 1)") && e.contains("is also spec.port"),
            "{e}"
        );
        let e = errors_of("  instances: 3\n  local: {memberPort: 65534}\n");
        assert!(e.contains("65536"), "{e}");
        let e = errors_of("  instances: 3\n  dcs: {kind: etcd}\n  local: {etcdPort: 8007}\n");
        assert!(
            e.contains("spec.local.restApiPort (member 0)") && e.contains("etcdPort"),
            "{e}"
        );
    }

    #[test]
    fn etcd_endpoints_need_kind_etcd() {
        let e = errors_of("  instances: 3\n  dcs: {etcdEndpoints: ['etcd-0:2379']}\n");
        assert!(e.contains("spec.dcs.etcdEndpoints"), "{e}");
    }
}
