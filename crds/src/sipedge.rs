//! `SipEdge`: a Kamailio SIP edge — registrar, digest authentication,
//! routing and dispatcher load balancing in front of one or more MediaPools.

use std::net::IpAddr;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DatabaseRef, PodSettings};
use crate::validation::{self as val, Validator};

/// A SIP edge: Kamailio as registrar, authenticator, router and load balancer.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sipstack.io",
    version = "v1alpha1",
    kind = "SipEdge",
    plural = "sipedges",
    shortname = "sedge",
    category = "sipstack",
    namespaced,
    status = "SipEdgeStatus",
    derive = "PartialEq",
    doc = "A SIP edge: Kamailio as registrar, digest authenticator, router and dispatcher load balancer in front of MediaPools, with its state in a PgCluster.",
    printcolumn(name = "Domains", type_ = "string", json_path = ".spec.domains"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
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
pub struct SipEdgeSpec {
    /// SIP domains this edge serves. Subscribers register as user@domain, the domain is the
    /// digest realm, and requests for other domains are not accepted as local.
    #[schemars(
        length(min = 1, max = 32),
        inner(length(min = 1, max = 63), pattern(val::DOMAIN_PATTERN))
    )]
    pub domains: Vec<String>,

    /// The PostgreSQL that keeps subscribers, registrations, dispatcher members and routes.
    pub database: DatabaseRef,

    /// MediaPools (same namespace) this edge balances calls over; each pool is one dispatcher set.
    #[serde(default)]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 63), pattern(val::NAME_PATTERN))
    )]
    pub media_pools: Vec<String>,

    /// SIP sockets to listen on; at least one must be UDP (media nodes are reached and
    /// probed over UDP). Defaults to UDP and TCP on 127.0.0.1:5060.
    #[serde(default = "default_listen")]
    #[schemars(length(min = 1, max = 16))]
    pub listen: Vec<Listener>,

    /// Certificate for `tls` listeners (TLS 1.2 and newer). Required when a listener uses TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Registrar (usrloc) settings.
    #[serde(default)]
    pub registrar: RegistrarSpec,

    /// Digest authentication of subscribers.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Load balancing, OPTIONS probing and failover towards the media pools.
    #[serde(default)]
    pub dispatcher: DispatcherSpec,

    /// Call routing: the dynamic rules live in the database; this is what happens when none matches.
    #[serde(default)]
    pub routing: RoutingSpec,

    /// NAT traversal for user agents behind NAT.
    #[serde(default)]
    pub nat: NatSpec,

    /// Per-source request rate limiting (pike) with temporary bans.
    #[serde(default)]
    pub flood_protection: FloodProtectionSpec,

    /// Dropping of requests from well-known SIP scanners.
    #[serde(default)]
    pub scanner_filter: ScannerFilterSpec,

    /// Limits of TCP and TLS connections, so that idle or unauthenticated ones
    /// from one source cannot use up the edge.
    #[serde(default)]
    pub tcp: TcpSpec,

    /// JSON-RPC over HTTP for the control plane (reloads, dispatcher state).
    #[serde(default)]
    pub rpc: RpcSpec,

    /// Prometheus metrics, served on the RPC socket at /metrics.
    #[serde(default)]
    pub metrics: MetricsSpec,

    /// Kamailio process settings: memory, worker counts, log level.
    #[serde(default)]
    pub process: ProcessSpec,

    /// How the operator runs the edge on Kubernetes (ignored by the local driver).
    #[serde(default)]
    pub kubernetes: EdgeKubernetesSpec,
}

/// A SIP transport.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One SIP socket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Transport of this socket.
    pub transport: Transport,
    /// Local IP address to bind, or a network interface (e.g. eth0 in a pod: its
    /// addresses are used). 0.0.0.0 and :: bind every address and then need `advertise`,
    /// since SIP headers must carry one address the far end can reach.
    #[serde(default = "default_loopback")]
    #[schemars(pattern(val::IP_OR_INTERFACE_PATTERN))]
    pub address: String,
    /// Local port.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Address and port written into Via/Record-Route instead of the local ones
    /// (the public address when the edge sits behind NAT or a load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<Advertise>,
}

/// A public address for a socket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Advertise {
    /// Public IP address or host name.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    /// Public port; the local port when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// TLS certificate for the `tls` listeners.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Kubernetes Secret of type kubernetes.io/tls holding `tls.crt` and `tls.key`
    /// (the operator mounts it; the local driver uses the file paths below instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::NAME_PATTERN))]
    pub secret_name: Option<String>,
    /// PEM certificate (chain) file. On Kubernetes the mounted Secret's path is used.
    #[serde(default = "default_tls_certificate")]
    #[schemars(pattern(val::PATH_PATTERN))]
    pub certificate_file: String,
    /// PEM private key file. On Kubernetes the mounted Secret's path is used.
    #[serde(default = "default_tls_private_key")]
    #[schemars(pattern(val::PATH_PATTERN))]
    pub private_key_file: String,
    /// Ask clients for a certificate and refuse those that present none signed by `caFile`.
    #[serde(default)]
    pub verify_clients: bool,
    /// PEM file of the CAs client certificates must chain to (with `verifyClients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::PATH_PATTERN))]
    pub ca_file: Option<String>,
}

/// Registrar settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrarSpec {
    /// Shortest registration accepted, in seconds; shorter requests get 423 Interval Too Brief
    /// (with a Min-Expires header).
    #[serde(default = "default_min_expires")]
    #[schemars(range(min = 1, max = 86400))]
    pub min_expires: u32,
    /// Longest registration granted, in seconds; longer requests are shortened to this.
    #[serde(default = "default_max_expires")]
    #[schemars(range(min = 1, max = 604800))]
    pub max_expires: u32,
    /// Registration length when the user agent asks for none, in seconds.
    #[serde(default = "default_default_expires")]
    #[schemars(range(min = 1, max = 604800))]
    pub default_expires: u32,
    /// Most contacts one address of record may hold (0 = no limit).
    #[serde(default = "default_max_contacts")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_contacts: u32,
    /// How often registrations held in memory are written to PostgreSQL, in seconds
    /// (write-back: the registrar keeps working while the database is briefly away).
    #[serde(default = "default_flush_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub flush_interval_seconds: u32,
}

/// Digest authentication.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// How long, in seconds, the edge remembers the credentials (ha1) of a subscriber who
    /// authenticated, to go on authenticating them while PostgreSQL cannot be reached
    /// (a failover). The database is always asked first. 0 turns the cache off.
    #[serde(default = "default_auth_cache_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub cache_seconds: u32,
}

/// How a dispatcher set spreads calls over its members.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    /// Each new call goes to the next member in turn.
    #[default]
    RoundRobin,
    /// The Call-ID picks the member: a dialog's requests stay on one node.
    CallIdHash,
    /// Calls are spread in proportion to each member's weight; the shares of the
    /// remaining members are recomputed when one becomes inactive.
    Weighted,
    /// All calls go to the member with the highest priority until it fails, then to the next.
    ActiveFailover,
}

impl Algorithm {
    /// The number Kamailio's dispatcher module uses for this algorithm.
    pub fn kamailio_id(self) -> u8 {
        match self {
            Algorithm::CallIdHash => 0,
            Algorithm::RoundRobin => 4,
            Algorithm::ActiveFailover => 8,
            Algorithm::Weighted => 11,
        }
    }
}

/// Dispatcher settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatcherSpec {
    /// OPTIONS probing of media nodes.
    #[serde(default)]
    pub probing: ProbingSpec,
    /// Time a media node has to answer an INVITE (any provisional reply) before the call
    /// is retried on the next node, and an OPTIONS probe before it counts as failed, in
    /// milliseconds.
    #[serde(default = "default_failover_timeout")]
    #[schemars(range(min = 200, max = 30000))]
    pub failover_timeout_ms: u32,
    /// How many media nodes one call may try before it fails.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 16))]
    pub max_attempts: u32,
}

/// OPTIONS probing.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbingSpec {
    /// Seconds between OPTIONS probes to each member.
    #[serde(default = "default_probe_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
    /// Failed probes in a row before a member is marked inactive.
    #[serde(default = "default_inactive_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub inactive_threshold: u32,
    /// Answered probes in a row before an inactive member is used again.
    #[serde(default = "default_active_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub active_threshold: u32,
    /// Replies besides 2xx that count as alive (e.g. 404 or 501 from a node that does not
    /// implement OPTIONS): 3xx, 4xx other than 408, and 501. A timeout (408) or a refusal
    /// (503 from a draining node) never counts.
    #[serde(default)]
    #[schemars(length(max = 16), inner(range(min = 300, max = 501)))]
    pub extra_alive_codes: Vec<u16>,
}

/// Routing fallbacks.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// MediaPool that gets calls no routing rule matches. Unset: such calls are answered
    /// 404 Not Found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::NAME_PATTERN))]
    pub default_media_pool: Option<String>,
    /// MediaPool that takes a message for a subscriber who does not answer: calls
    /// to a subscriber who is not registered, is busy, declines or has not answered
    /// within `voicemailAfterSeconds` go to this pool's voicemail. The pool needs
    /// its database (`spec.cdr`). Unset: such calls fail with the phone's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::NAME_PATTERN))]
    pub voicemail_media_pool: Option<String>,
    /// Seconds a subscriber's phones ring before the call goes to voicemail.
    #[serde(default = "default_voicemail_after")]
    #[schemars(range(min = 5, max = 300))]
    pub voicemail_after_seconds: u32,
}

fn default_voicemail_after() -> u32 {
    20
}

impl Default for RoutingSpec {
    fn default() -> Self {
        Self {
            default_media_pool: None,
            voicemail_media_pool: None,
            voicemail_after_seconds: default_voicemail_after(),
        }
    }
}

/// NAT traversal.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatSpec {
    /// Detect user agents behind NAT, fix their contacts and keep their bindings open.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds between keep-alive OPTIONS sent to registered user agents behind NAT.
    #[serde(default = "default_keepalive_interval")]
    #[schemars(range(min = 5, max = 3600))]
    pub keepalive_interval_seconds: u32,
}

/// Per-source flood protection.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FloodProtectionSpec {
    /// Count requests per source address and ban sources above the limit.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Length of one counting window, in seconds.
    #[serde(default = "default_sampling_time_unit")]
    #[schemars(range(min = 1, max = 60))]
    pub window_seconds: u32,
    /// Requests one source may send in one window (at most 65534: pike counts in 16 bits).
    #[serde(default = "default_requests_per_window")]
    #[schemars(range(min = 1, max = 65534))]
    pub requests_per_window: u32,
    /// How long a flooding source stays banned, in seconds.
    #[serde(default = "default_ban_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub ban_seconds: u32,
    /// Networks never limited (carriers, SBCs). The media pools' members are always exempt.
    #[serde(default)]
    #[schemars(length(max = 64), inner(pattern(val::CIDR_PATTERN)))]
    pub exempt_networks: Vec<String>,
    /// Password guessing: a source whose digest authentications keep failing is banned
    /// for banSeconds, like a flooding one (the same exemptions apply).
    #[serde(default)]
    pub auth_failures: AuthFailuresSpec,
}

/// Failed digest authentications, counted per source address. A failure is a request
/// whose credentials for this edge's realm are refused: a wrong password, an unknown
/// user (counted alike, so the ban tells nothing about which users exist) or another
/// user's credentials. A request without credentials (a phone's first try), one with
/// an expired nonce, and one the edge could not check (database unreachable) do not
/// count. A successful authentication clears nothing, so an account of one's own does
/// not buy more guesses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthFailuresSpec {
    /// Ban sources that fail too often (only while floodProtection is enabled).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many failures within one window ban a source; the request that fails for the
    /// limit-th time already goes unanswered.
    #[serde(default = "default_auth_failure_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: u32,
    /// Length of the window, in seconds; it starts at a source's first failure and is
    /// not extended by later ones.
    #[serde(default = "default_auth_failure_window")]
    #[schemars(range(min = 1, max = 3600))]
    pub window_seconds: u32,
}

/// Scanner filtering.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScannerFilterSpec {
    /// Silently drop requests whose User-Agent names a well-known SIP scanner
    /// (friendly-scanner, sipvicious, sipcli, VaxSIPUserAgent and others).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// More User-Agent fragments to drop, matched case-insensitively anywhere in the header.
    #[serde(default)]
    #[schemars(length(max = 64), inner(pattern(val::USER_AGENT_PATTERN)))]
    pub extra_user_agents: Vec<String>,
}

/// TCP and TLS connection limits.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpSpec {
    /// Connections the edge keeps open at most (SIP and the RPC socket together).
    #[serde(default = "default_tcp_max_connections")]
    #[schemars(range(min = 16, max = 65536))]
    pub max_connections: u32,
    /// Connections one source address may have sent requests on at once; the next
    /// one is closed. Media nodes and floodProtection.exemptNetworks are exempt.
    #[serde(default = "default_tcp_per_source")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_connections_per_source: u32,
    /// A connection that has not authenticated is closed after this many seconds
    /// without a message; a connection that authenticated (a REGISTER or a call)
    /// lives as long as the registration can.
    #[serde(default = "default_tcp_unauthenticated_lifetime")]
    #[schemars(range(min = 2, max = 3600))]
    pub unauthenticated_lifetime_seconds: u32,
}

fn default_tcp_max_connections() -> u32 {
    4096
}
fn default_tcp_per_source() -> u32 {
    32
}
fn default_tcp_unauthenticated_lifetime() -> u32 {
    20
}

/// The control-plane RPC endpoint. Every request needs the edge's RPC token
/// (`Authorization: Bearer`) as well as a source in `allowFrom`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RpcSpec {
    /// IP address the HTTP JSON-RPC endpoint binds to. Unset: 127.0.0.1 locally,
    /// every address of the pod on Kubernetes (the operator calls each pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::IP_PATTERN))]
    pub address: Option<String>,
    /// TCP port of the HTTP JSON-RPC endpoint (POST /RPC) and of /metrics.
    #[serde(default = "default_rpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Networks allowed to call the endpoint; everyone else gets 403. Unset:
    /// 127.0.0.1/32 locally, any source on Kubernetes (where the token and the pod
    /// network gate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(pattern(val::CIDR_PATTERN)))]
    pub allow_from: Option<Vec<String>>,
}

/// Prometheus metrics.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Serve Kamailio's statistics in Prometheus format at /metrics on the RPC socket.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Networks allowed to scrape /metrics (they get no access to the RPC methods).
    /// Unset: 127.0.0.1/32 locally, any source on Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(pattern(val::CIDR_PATTERN)))]
    pub allow_from: Option<Vec<String>>,
}

/// Where a spec runs: the defaults of the control-plane sockets differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// Processes on one host (the local driver).
    #[default]
    Local,
    /// Pods managed by the operator.
    Kubernetes,
}

const LOOPBACK_ONLY: &[&str] = &["127.0.0.1/32"];
const ANY_SOURCE: &[&str] = &["0.0.0.0/0", "::/0"];

impl Runtime {
    fn default_allow_from(self) -> Vec<String> {
        match self {
            Runtime::Local => LOOPBACK_ONLY,
            Runtime::Kubernetes => ANY_SOURCE,
        }
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

impl RpcSpec {
    /// The address the endpoint binds to on `runtime`.
    pub fn address_on(&self, runtime: Runtime) -> String {
        match (&self.address, runtime) {
            (Some(a), _) => a.clone(),
            (None, Runtime::Local) => default_loopback(),
            (None, Runtime::Kubernetes) => "0.0.0.0".into(),
        }
    }

    /// The networks allowed to call it on `runtime`.
    pub fn allow_from_on(&self, runtime: Runtime) -> Vec<String> {
        self.allow_from
            .clone()
            .unwrap_or_else(|| runtime.default_allow_from())
    }
}

impl MetricsSpec {
    /// The networks allowed to scrape on `runtime`.
    pub fn allow_from_on(&self, runtime: Runtime) -> Vec<String> {
        self.allow_from
            .clone()
            .unwrap_or_else(|| runtime.default_allow_from())
    }
}

/// Kamailio log level.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warning,
    #[default]
    Notice,
    Info,
    Debug,
}

impl LogLevel {
    /// Kamailio's `debug=` value.
    pub fn kamailio_level(self) -> i8 {
        match self {
            LogLevel::Error => -1,
            LogLevel::Warning => 0,
            LogLevel::Notice => 1,
            LogLevel::Info => 2,
            LogLevel::Debug => 3,
        }
    }
}

/// Kamailio process settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Shared memory, in MiB (transactions, registrations, dispatcher state). A finished
    /// transaction is kept for 5 s to absorb retransmissions, so each call per second
    /// needs about 150 KiB: 512 MiB carries about 3 000 calls/s.
    #[serde(default = "default_shm_mb")]
    #[schemars(range(min = 64, max = 65536))]
    pub shared_memory_mb: u32,
    /// Private memory per worker process, in MiB.
    #[serde(default = "default_pkg_mb")]
    #[schemars(range(min = 8, max = 1024))]
    pub private_memory_mb: u32,
    /// Worker processes per UDP socket.
    #[serde(default = "default_children")]
    #[schemars(range(min = 1, max = 128))]
    pub udp_workers: u32,
    /// Worker processes for all TCP and TLS connections.
    #[serde(default = "default_tcp_children")]
    #[schemars(range(min = 1, max = 128))]
    pub tcp_workers: u32,
    /// Log level.
    #[serde(default)]
    pub log_level: LogLevel,
}

/// How the edge runs on Kubernetes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeKubernetesSpec {
    /// Deployment (replicas behind a Service) or DaemonSet (one per node, usually with hostNetwork).
    #[serde(default)]
    pub workload: EdgeWorkload,
    /// Replicas of the Deployment (ignored for a DaemonSet).
    #[serde(default = "default_edge_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Image, resources and host networking. Image default: ghcr.io/kamailio/kamailio-ci:5.6.3-bookworm.
    #[serde(default, flatten)]
    pub pod: PodSettings,
}

/// Workload kind of the edge.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EdgeWorkload {
    #[default]
    Deployment,
    DaemonSet,
}

/// Observed state of a SipEdge.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipEdgeStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Edge pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Hash of the rendered kamailio.cfg the pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_loopback() -> String {
    "127.0.0.1".into()
}
fn default_sip_port() -> u16 {
    5060
}
fn default_listen() -> Vec<Listener> {
    vec![
        Listener {
            transport: Transport::Udp,
            address: default_loopback(),
            port: 5060,
            advertise: None,
        },
        Listener {
            transport: Transport::Tcp,
            address: default_loopback(),
            port: 5060,
            advertise: None,
        },
    ]
}
fn default_tls_certificate() -> String {
    "/etc/sipstack/tls/tls.crt".into()
}
fn default_tls_private_key() -> String {
    "/etc/sipstack/tls/tls.key".into()
}
fn default_min_expires() -> u32 {
    60
}
fn default_max_expires() -> u32 {
    3600
}
fn default_default_expires() -> u32 {
    3600
}
fn default_max_contacts() -> u32 {
    10
}
fn default_flush_interval() -> u32 {
    10
}
fn default_auth_cache_seconds() -> u32 {
    3600
}
fn default_failover_timeout() -> u32 {
    2000
}
fn default_max_attempts() -> u32 {
    3
}
fn default_probe_interval() -> u32 {
    10
}
fn default_inactive_threshold() -> u32 {
    2
}
fn default_active_threshold() -> u32 {
    1
}
fn default_keepalive_interval() -> u32 {
    30
}
fn default_sampling_time_unit() -> u32 {
    2
}
fn default_requests_per_window() -> u32 {
    60
}
fn default_ban_seconds() -> u32 {
    300
}
fn default_auth_failure_limit() -> u32 {
    10
}
fn default_auth_failure_window() -> u32 {
    60
}
fn default_rpc_port() -> u16 {
    5071
}
fn default_shm_mb() -> u32 {
    512
}
fn default_pkg_mb() -> u32 {
    16
}
fn default_children() -> u32 {
    8
}
fn default_tcp_children() -> u32 {
    4
}
fn default_edge_replicas() -> i32 {
    2
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                serde_json::from_value(serde_json::json!({})).expect("every field has a default")
            }
        }
    )*};
}
default_from_serde!(
    AuthSpec,
    RegistrarSpec,
    DispatcherSpec,
    ProbingSpec,
    NatSpec,
    FloodProtectionSpec,
    AuthFailuresSpec,
    ScannerFilterSpec,
    TcpSpec,
    RpcSpec,
    MetricsSpec,
    ProcessSpec,
    EdgeKubernetesSpec
);

impl SipEdgeSpec {
    /// What only works on one host: a control plane the operator could not reach
    /// from its own pod. [`Self::validate`] has checked the fields already.
    pub fn validate_for_kubernetes(&self, v: &mut Validator) {
        let loopback = |net: &str| {
            let ip = net.split('/').next().unwrap_or(net);
            ip.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
        };
        if let Some(address) = &self.rpc.address {
            if loopback(address) {
                v.error(
                    "spec.rpc.address",
                    format!("{address} is a loopback address: the operator, in another pod, could not reach the RPC endpoint, so reloads and drains would never arrive"),
                    "leave spec.rpc.address out (the endpoint then listens on the pod's addresses) or give 0.0.0.0",
                );
            }
        }
        if let Some(nets) = &self.rpc.allow_from {
            if !nets.is_empty() && nets.iter().all(|n| loopback(n)) {
                v.error(
                    "spec.rpc.allowFrom",
                    "admits loopback only: the operator's pod could not call the edge",
                    "leave spec.rpc.allowFrom out (the RPC token gates the endpoint) or list the operator's pod network, e.g. [10.0.0.0/8]",
                );
            }
        }
    }

    /// Checks every field; errors name the field and the fix.
    pub fn validate(&self, v: &mut Validator) {
        if self.domains.is_empty() {
            v.error(
                "spec.domains",
                "no domain is given",
                "list the SIP domains this edge serves, e.g. [example.com]",
            );
        }
        if self.domains.len() > 32 {
            v.error(
                "spec.domains",
                format!("{} domains are listed", self.domains.len()),
                "list at most 32",
            );
        }
        for (i, d) in self.domains.iter().enumerate() {
            v.domain(&format!("spec.domains[{i}]"), d);
            if self.domains[..i].contains(d) {
                v.error(
                    format!("spec.domains[{i}]"),
                    format!("{} is listed twice", val::shown(d)),
                    "list each domain once",
                );
            }
        }
        self.database.validate(v, "spec.database");
        for (i, p) in self.media_pools.iter().enumerate() {
            v.name(&format!("spec.mediaPools[{i}]"), p);
            if self.media_pools[..i].contains(p) {
                v.error(
                    format!("spec.mediaPools[{i}]"),
                    format!("{} is listed twice", val::shown(p)),
                    "list each pool once",
                );
            }
        }

        if self.listen.is_empty() {
            v.error(
                "spec.listen",
                "no listener is given",
                "give at least one, e.g. {transport: udp, port: 5060}",
            );
        }
        for (i, l) in self.listen.iter().enumerate() {
            let path = format!("spec.listen[{i}]");
            let ip = match l.address.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    v.pattern(
                        &format!("{path}.address"),
                        &l.address,
                        val::INTERFACE_PATTERN,
                        "an IP address or a network interface name",
                        "use an address such as 10.0.0.10 or 127.0.0.1, or an interface such as eth0",
                    );
                    None
                }
            };
            v.port(&format!("{path}.port"), l.port);
            match &l.advertise {
                Some(adv) => {
                    v.host(&format!("{path}.advertise.address"), &adv.address);
                    if let Some(p) = adv.port {
                        v.port(&format!("{path}.advertise.port"), p);
                    }
                }
                None if ip.is_some_and(|ip| ip.is_unspecified()) => v.error(
                    format!("{path}.address"),
                    format!("{} binds every address, and SIP headers would carry it unusable", val::shown(&l.address)),
                    "listen on the address clients reach (or an interface such as eth0), or give advertise.address",
                ),
                None => {}
            }
            // TCP and TLS share the kernel's TCP ports; a wildcard overlaps every address
            let family = |t: Transport| if t == Transport::Udp { 0 } else { 1 };
            let clash = self.listen[..i].iter().any(|o| {
                if family(o.transport) != family(l.transport) || o.port != l.port {
                    return false;
                }
                match (o.address.parse::<IpAddr>(), ip) {
                    (Ok(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
                    _ => o.address == l.address,
                }
            });
            if clash {
                v.error(
                    &path,
                    "this socket overlaps an earlier listener",
                    "give each transport/address/port one listener (TCP and TLS share ports)",
                );
            }
            if l.port == self.rpc.port && l.transport != Transport::Udp {
                v.error(
                    format!("{path}.port"),
                    format!("TCP port {} is also spec.rpc.port", l.port),
                    "give the RPC endpoint and the SIP listeners different ports",
                );
            }
        }
        if !self.listen.is_empty() && !self.listen.iter().any(|l| l.transport == Transport::Udp) {
            v.error(
                "spec.listen",
                "no listener uses UDP",
                "add a UDP listener: media nodes are reached and probed over UDP",
            );
        }
        let has_tls_listener = self.listen.iter().any(|l| l.transport == Transport::Tls);
        match (&self.tls, has_tls_listener) {
            (None, true) => v.error(
                "spec.tls",
                "a listener uses transport tls but no certificate is configured",
                "add spec.tls with secretName (Kubernetes) or certificateFile and privateKeyFile",
            ),
            (Some(tls), _) => {
                if let Some(s) = &tls.secret_name {
                    v.name("spec.tls.secretName", s);
                }
                v.path("spec.tls.certificateFile", &tls.certificate_file);
                v.path("spec.tls.privateKeyFile", &tls.private_key_file);
                match (&tls.ca_file, tls.verify_clients) {
                    (Some(ca), _) => v.path("spec.tls.caFile", ca),
                    (None, true) => v.error(
                        "spec.tls.caFile",
                        "verifyClients is set but no CA file is given",
                        "set caFile to the PEM file of the CAs client certificates must chain to",
                    ),
                    (None, false) => {}
                }
            }
            (None, false) => {}
        }

        let r = &self.registrar;
        v.range("spec.registrar.minExpires", r.min_expires, 1, 86400);
        v.range("spec.registrar.maxExpires", r.max_expires, 1, 604800);
        v.range(
            "spec.registrar.defaultExpires",
            r.default_expires,
            1,
            604800,
        );
        v.range("spec.registrar.maxContacts", r.max_contacts, 0, 1000);
        v.range(
            "spec.registrar.flushIntervalSeconds",
            r.flush_interval_seconds,
            1,
            300,
        );
        if r.min_expires > r.max_expires {
            v.error(
                "spec.registrar.minExpires",
                format!(
                    "minExpires {} is larger than maxExpires {}",
                    r.min_expires, r.max_expires
                ),
                "make minExpires at most maxExpires",
            );
        }
        if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
            v.error(
                "spec.registrar.defaultExpires",
                format!(
                    "{} is outside minExpires..maxExpires ({}..{})",
                    r.default_expires, r.min_expires, r.max_expires
                ),
                "choose a default between minExpires and maxExpires",
            );
        }

        v.range("spec.auth.cacheSeconds", self.auth.cache_seconds, 0, 86400);

        let d = &self.dispatcher;
        v.range(
            "spec.dispatcher.failoverTimeoutMs",
            d.failover_timeout_ms,
            200,
            30000,
        );
        v.range("spec.dispatcher.maxAttempts", d.max_attempts, 1, 16);
        v.range(
            "spec.dispatcher.probing.intervalSeconds",
            d.probing.interval_seconds,
            1,
            3600,
        );
        v.range(
            "spec.dispatcher.probing.inactiveThreshold",
            d.probing.inactive_threshold,
            1,
            100,
        );
        v.range(
            "spec.dispatcher.probing.activeThreshold",
            d.probing.active_threshold,
            1,
            100,
        );
        for (i, c) in d.probing.extra_alive_codes.iter().enumerate() {
            let path = format!("spec.dispatcher.probing.extraAliveCodes[{i}]");
            if *c == 408 {
                v.error(path, "408 cannot count as alive", "remove it: the proxy's own timeout reply is a 408, so a dead node would look alive");
            } else if (500..=599).contains(c) && *c != 501 {
                v.error(path, format!("{c} cannot count as alive"), "remove it: a node that refuses calls with 5xx is not usable (501 is the only 5xx allowed)");
            } else {
                v.range(&path, *c, 300, 501);
            }
        }

        for (field, pool) in [
            (
                "spec.routing.defaultMediaPool",
                &self.routing.default_media_pool,
            ),
            (
                "spec.routing.voicemailMediaPool",
                &self.routing.voicemail_media_pool,
            ),
        ] {
            let Some(p) = pool else { continue };
            v.name(field, p);
            if !self.media_pools.contains(p) {
                v.error(
                    field,
                    format!("{} is not one of spec.mediaPools", val::shown(p)),
                    "add the pool to spec.mediaPools or name one that is there",
                );
            }
        }
        v.range(
            "spec.routing.voicemailAfterSeconds",
            self.routing.voicemail_after_seconds,
            5,
            300,
        );

        v.range(
            "spec.nat.keepaliveIntervalSeconds",
            self.nat.keepalive_interval_seconds,
            5,
            3600,
        );

        let f = &self.flood_protection;
        v.range(
            "spec.floodProtection.windowSeconds",
            f.window_seconds,
            1,
            60,
        );
        // pike keeps the limit in 16 bits: a larger value silently wraps to a small one
        v.range(
            "spec.floodProtection.requestsPerWindow",
            f.requests_per_window,
            1,
            65_534,
        );
        v.range("spec.floodProtection.banSeconds", f.ban_seconds, 1, 86400);
        for (i, n) in f.exempt_networks.iter().enumerate() {
            v.cidr(&format!("spec.floodProtection.exemptNetworks[{i}]"), n);
        }
        v.range(
            "spec.floodProtection.authFailures.limit",
            f.auth_failures.limit,
            1,
            1000,
        );
        v.range(
            "spec.floodProtection.authFailures.windowSeconds",
            f.auth_failures.window_seconds,
            1,
            3600,
        );

        for (i, ua) in self.scanner_filter.extra_user_agents.iter().enumerate() {
            v.pattern(
                &format!("spec.scannerFilter.extraUserAgents[{i}]"),
                ua,
                val::USER_AGENT_PATTERN,
                "an acceptable User-Agent fragment",
                "use 1 to 64 letters, digits, spaces, '.', '_', '/' and '-'",
            );
        }

        if let Some(address) = &self.rpc.address {
            v.ip("spec.rpc.address", address);
        }
        v.port("spec.rpc.port", self.rpc.port);
        if self.rpc.allow_from.as_ref().is_some_and(|a| a.is_empty()) {
            v.error(
                "spec.rpc.allowFrom",
                "no network may call the RPC endpoint",
                "list the control plane's networks, e.g. [127.0.0.1/32], or leave the field out",
            );
        }
        for (i, n) in self.rpc.allow_from.iter().flatten().enumerate() {
            v.cidr(&format!("spec.rpc.allowFrom[{i}]"), n);
        }
        if self
            .metrics
            .allow_from
            .as_ref()
            .is_some_and(|a| a.is_empty())
        {
            v.error(
                "spec.metrics.allowFrom",
                "no network may scrape the metrics",
                "list the scrapers' networks, e.g. [127.0.0.1/32], or leave the field out",
            );
        }
        for (i, n) in self.metrics.allow_from.iter().flatten().enumerate() {
            v.cidr(&format!("spec.metrics.allowFrom[{i}]"), n);
        }

        let t = &self.tcp;
        v.range("spec.tcp.maxConnections", t.max_connections, 16, 65536);
        v.range(
            "spec.tcp.maxConnectionsPerSource",
            t.max_connections_per_source,
            1,
            4096,
        );
        v.range(
            "spec.tcp.unauthenticatedLifetimeSeconds",
            t.unauthenticated_lifetime_seconds,
            2,
            3600,
        );
        if t.max_connections_per_source > t.max_connections {
            v.error(
                "spec.tcp.maxConnectionsPerSource",
                format!(
                    "{} is more than spec.tcp.maxConnections ({})",
                    t.max_connections_per_source, t.max_connections
                ),
                "give each source a share of the connections, e.g. 32",
            );
        }

        let p = &self.process;
        v.range("spec.process.sharedMemoryMb", p.shared_memory_mb, 64, 65536);
        v.range("spec.process.privateMemoryMb", p.private_memory_mb, 8, 1024);
        v.range("spec.process.udpWorkers", p.udp_workers, 1, 128);
        v.range("spec.process.tcpWorkers", p.tcp_workers, 1, 128);

        v.range("spec.kubernetes.replicas", self.kubernetes.replicas, 0, 100);
        self.kubernetes.pod.validate(v, "spec.kubernetes");
    }
}
