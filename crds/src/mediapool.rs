//! `MediaPool`: a pool of FreeSWITCH media nodes, one dispatcher set on the edge.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, DatabaseRef, PodSettings};
use crate::sipedge::Algorithm;
use crate::validation::{self as val, Validator};

/// A pool of FreeSWITCH media nodes that SipEdges balance calls over.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "sipstack.io",
    version = "v1alpha1",
    kind = "MediaPool",
    plural = "mediapools",
    shortname = "mpool",
    category = "sipstack",
    namespaced,
    status = "MediaPoolStatus",
    derive = "PartialEq",
    doc = "A pool of FreeSWITCH media nodes (RTP, dialplan, IVR, voicemail, conferencing, CDRs); each pool is one dispatcher set on the SipEdges that use it.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.readyReplicas"
    ),
    printcolumn(name = "Set", type_ = "integer", json_path = ".spec.setId"),
    printcolumn(name = "Algorithm", type_ = "string", json_path = ".spec.algorithm"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.activeMembers"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MediaPoolSpec {
    /// Dispatcher set id of this pool; unique among the pools one SipEdge uses.
    #[schemars(range(min = 1, max = 9999))]
    pub set_id: i32,

    /// How calls are spread over the pool's members.
    #[serde(default)]
    pub algorithm: Algorithm,

    /// FreeSWITCH pods the operator runs. Each ready pod becomes a dispatcher member.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// SIP port of the FreeSWITCH profile the edge sends calls to.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub sip_port: u16,

    /// Weight of each pod member (with the weighted algorithm).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,

    /// Media nodes outside Kubernetes that belong to the pool as well (hybrid and external
    /// pools). The local driver uses these as the pool's members.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub members: Vec<StaticMember>,

    /// RTP port range of each FreeSWITCH node.
    #[serde(default)]
    pub rtp: RtpSpec,

    /// Codecs offered, in order of preference.
    #[serde(default = "default_codecs")]
    #[schemars(length(min = 1, max = 16))]
    pub codecs: Vec<Codec>,

    /// Public addresses FreeSWITCH writes into SIP and SDP (ext-sip-ip, ext-rtp-ip) when
    /// its own address is not reachable by the far end.
    #[serde(default)]
    pub external_address: ExternalAddressSpec,

    /// Concurrent calls one node accepts.
    #[serde(default = "default_max_sessions")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_sessions: u32,

    /// FreeSWITCH's event socket (ESL).
    #[serde(default)]
    pub event_socket: EventSocketSpec,

    /// Call detail records written to PostgreSQL.
    #[serde(default)]
    pub cdr: CdrSpec,

    /// How long a stopping node may take to finish its calls, in seconds.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_seconds: u32,

    /// Where the local driver (`sipctl local up`) runs the pool's replicas as
    /// FreeSWITCH processes on one host. Ignored on Kubernetes.
    #[serde(default, skip_serializing_if = "LocalNodesSpec::is_default")]
    pub local: LocalNodesSpec,

    /// Image, resources and host networking of the FreeSWITCH pods. With hostNetwork the
    /// RTP range is reachable on the node's address (a range of ports cannot go through a Service).
    #[serde(default, flatten)]
    pub pod: PodSettings,
}

/// The local driver's FreeSWITCH nodes. Every node binds a loopback address of its
/// own, so all of them use the pool's sipPort, event socket port and RTP range.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalNodesSpec {
    /// Loopback address of replica 0; replica N binds the N-th address after it.
    /// Default 127.1.S.1 for set id S (for set ids of 256 and more, 127.(1+S/256).(S%256).1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::IP_PATTERN))]
    pub first_address: Option<String>,
}

impl LocalNodesSpec {
    fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// Most replicas the local driver runs for one pool (one host's loopback addresses
/// and its CPUs, not Kubernetes, set the bound).
pub const MAX_LOCAL_REPLICAS: i32 = 64;

impl MediaPoolSpec {
    /// The loopback address of local replica `replica`, when the spec gives a valid
    /// first address (validation reports it otherwise) and the replica's address
    /// stays inside 127.0.0.0/8.
    pub fn local_node_address(&self, replica: i32) -> Option<std::net::Ipv4Addr> {
        let first: std::net::Ipv4Addr = match &self.local.first_address {
            Some(a) => a.parse().ok()?,
            None => {
                let s = self.set_id.clamp(0, 9999) as u32;
                std::net::Ipv4Addr::new(127, (1 + s / 256) as u8, (s % 256) as u8, 1)
            }
        };
        let n = u32::from(first).checked_add(u32::try_from(replica).ok()?)?;
        let ip = std::net::Ipv4Addr::from(n);
        // .0 and .255 of a /24 are fine on loopback, but a node must stay on it
        ip.is_loopback().then_some(ip)
    }
}

/// A media node outside Kubernetes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticMember {
    /// SIP URI of the node, e.g. sip:10.0.0.5:5080.
    #[schemars(length(min = 5, max = 192), pattern(val::SIP_MEMBER_URI_PATTERN))]
    pub uri: String,
    /// Share of calls with the weighted algorithm.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
    /// Order with active-failover: the member with the highest priority gets the calls.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
}

/// RTP ports.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RtpSpec {
    /// First RTP port.
    #[serde(default = "default_rtp_start")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port_start: u16,
    /// Last RTP port.
    #[serde(default = "default_rtp_end")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port_end: u16,
}

/// A codec FreeSWITCH offers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Codec {
    #[serde(rename = "PCMU")]
    Pcmu,
    #[serde(rename = "PCMA")]
    Pcma,
    #[serde(rename = "G722")]
    G722,
    #[serde(rename = "G729")]
    G729,
    #[serde(rename = "OPUS")]
    Opus,
}

/// Public addresses.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAddressSpec {
    /// Address written into SIP headers (ext-sip-ip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::IP_PATTERN))]
    pub sip: Option<String>,
    /// Address written into SDP (ext-rtp-ip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::IP_PATTERN))]
    pub rtp: Option<String>,
}

/// Event socket.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSocketSpec {
    /// TCP port of the event socket.
    #[serde(default = "default_esl_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Secret holding the event socket password under the key `password`;
    /// the operator generates one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(val::NAME_PATTERN))]
    pub password_secret: Option<String>,
}

/// CDRs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdrSpec {
    /// Write a CDR for every call to the platform database.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where CDRs go; required when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseRef>,
}

/// Observed state of a MediaPool.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaPoolStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// FreeSWITCH pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Dispatcher members currently written for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_members: Option<i32>,
    /// The dispatcher destinations of this pool, as written to the database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    2
}
fn default_sip_port() -> u16 {
    5080
}
fn default_weight() -> u32 {
    1
}
fn default_rtp_start() -> u16 {
    16384
}
fn default_rtp_end() -> u16 {
    32767
}
fn default_codecs() -> Vec<Codec> {
    vec![Codec::Opus, Codec::Pcmu, Codec::Pcma]
}
fn default_max_sessions() -> u32 {
    1000
}
fn default_esl_port() -> u16 {
    8021
}
fn default_drain_seconds() -> u32 {
    300
}

impl Default for RtpSpec {
    fn default() -> Self {
        Self {
            port_start: default_rtp_start(),
            port_end: default_rtp_end(),
        }
    }
}
impl Default for EventSocketSpec {
    fn default() -> Self {
        Self {
            port: default_esl_port(),
            password_secret: None,
        }
    }
}
impl Default for CdrSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            database: None,
        }
    }
}

impl MediaPoolSpec {
    /// Checks every field; errors name the field and the fix.
    pub fn validate(&self, v: &mut Validator) {
        v.range("spec.setId", self.set_id, 1, 9999);
        v.range("spec.replicas", self.replicas, 0, 1000);
        v.port("spec.sipPort", self.sip_port);
        v.range("spec.weight", self.weight, 1, 100);
        for (i, m) in self.members.iter().enumerate() {
            let path = format!("spec.members[{i}]");
            v.sip_member_uri(&format!("{path}.uri"), &m.uri);
            v.range(&format!("{path}.weight"), m.weight, 1, 100);
            v.range(&format!("{path}.priority"), m.priority, 0, 1000);
            if self.members[..i].iter().any(|o| o.uri == m.uri) {
                v.error(
                    format!("{path}.uri"),
                    format!("{} is listed twice", val::shown(&m.uri)),
                    "list each member once",
                );
            }
        }
        v.range("spec.rtp.portStart", self.rtp.port_start, 1024, 65535);
        v.range("spec.rtp.portEnd", self.rtp.port_end, 1024, 65535);
        if self.rtp.port_start >= self.rtp.port_end {
            v.error(
                "spec.rtp.portEnd",
                format!(
                    "the range {}..{} is empty",
                    self.rtp.port_start, self.rtp.port_end
                ),
                "make portEnd larger than portStart",
            );
        }
        if self.codecs.is_empty() {
            v.error(
                "spec.codecs",
                "no codec is offered",
                "list at least one, e.g. [PCMU]",
            );
        }
        if let Some(ip) = &self.external_address.sip {
            v.ip("spec.externalAddress.sip", ip);
        }
        if let Some(ip) = &self.external_address.rtp {
            v.ip("spec.externalAddress.rtp", ip);
        }
        v.range("spec.maxSessions", self.max_sessions, 1, 100_000);
        v.port("spec.eventSocket.port", self.event_socket.port);
        if let Some(s) = &self.event_socket.password_secret {
            v.name("spec.eventSocket.passwordSecret", s);
        }
        match (&self.cdr.database, self.cdr.enabled) {
            (Some(db), _) => db.validate(v, "spec.cdr.database"),
            (None, true) if self.replicas > 0 => v.error(
                "spec.cdr.database",
                "CDRs are enabled but no database is named",
                "set spec.cdr.database.pgCluster, or set spec.cdr.enabled to false",
            ),
            _ => {}
        }
        v.range("spec.drainSeconds", self.drain_seconds, 0, 86400);
        if let Some(a) = &self.local.first_address {
            match a.parse::<std::net::Ipv4Addr>() {
                Ok(ip) if ip.is_loopback() => {
                    let last = self.replicas.clamp(1, MAX_LOCAL_REPLICAS) - 1;
                    if self.local_node_address(last).is_none() {
                        v.error(
                            "spec.local.firstAddress",
                            format!(
                                "{a} leaves no room for {} replicas inside 127.0.0.0/8",
                                last + 1
                            ),
                            "choose a lower loopback address, e.g. 127.1.1.1",
                        );
                    }
                }
                _ => v.error(
                    "spec.local.firstAddress",
                    format!("{} is not an IPv4 loopback address", val::shown(a)),
                    "use an address in 127.0.0.0/8, e.g. 127.1.1.1",
                ),
            }
        }
        self.pod.validate(v, "spec");
    }
}
