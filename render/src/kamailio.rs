//! kamailio.cfg from a SipEdge and the MediaPools it uses.
//!
//! The spec is validated first; then every value is turned into a model that
//! holds only numbers and strings already checked against a narrow character
//! set. The template never sees raw spec text, and [`ensure_inert`] checks each
//! string once more before it is written into the config.

use std::net::IpAddr;

use askama::Template;
use kube::ResourceExt;
use sipstack_crds::mediapool::MediaPool;
use sipstack_crds::sipedge::{Runtime, SipEdge, Transport};
use sipstack_crds::validation::{shown, SipMemberUri, Validator};

use crate::{config_hash, RenderError, Rendered};

/// Settings that depend on where the edge runs, not on the spec.
#[derive(Debug, Clone)]
pub struct KamailioRenderOptions {
    /// Directory of Kamailio's control socket (`kamcmd -s unix:DIR/kamailio_ctl`).
    pub runtime_dir: String,
    /// Overrides the spec's certificate/key paths (the operator mounts the TLS Secret here).
    pub tls_files: Option<(String, String)>,
    /// Where the edge runs: the control-plane sockets' defaults depend on it.
    pub runtime: Runtime,
    /// The directory of the edge's call records (db_flatstore spool files), which
    /// sipstack-cdr-shipper moves into the database.
    pub cdr_spool_dir: String,
}

impl Default for KamailioRenderOptions {
    fn default() -> Self {
        Self {
            runtime_dir: "/run/kamailio".into(),
            tls_files: None,
            runtime: Runtime::Local,
            cdr_spool_dir: DEFAULT_CDR_SPOOL_DIR.into(),
        }
    }
}

/// Where an edge's call records are spooled unless the render options say otherwise
/// (the operator mounts a volume here that the shipper shares).
pub const DEFAULT_CDR_SPOOL_DIR: &str = "/var/spool/sipstack/cdr";

/// User-Agent fragments of well-known SIP scanners.
/// How long a trunk's gateway has to send any reply before the call moves on to
/// the next gateway (carriers answer within a second; a dead one never does).
pub const TRUNK_GATEWAY_TIMEOUT_MS: u32 = 3000;

const SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "VaxSIPUserAgent",
    "pplsip",
    "sundayddr",
    "iWar",
    "SIVuS",
    "smap",
];

#[derive(Template)]
#[template(path = "kamailio/kamailio.cfg", escape = "none")]
struct KamailioCfg {
    edge_name: String,
    log_level: i8,
    udp_workers: u32,
    tcp_workers: u32,
    domains: Vec<String>,
    default_domain: String,
    listeners: Vec<ListenLine>,
    rpc_socket: String,
    rpc_port: u16,
    rpc_allow_from: String,
    metrics_allow_from: String,
    runtime_dir: String,
    cdr_spool_dir: String,
    tls: Option<TlsModel>,
    metrics: bool,
    registrar: RegistrarModel,
    auth_cache_seconds: u32,
    trunk_gateway_timeout_ms: u32,
    dispatcher: DispatcherModel,
    pools: Vec<PoolModel>,
    default_pool_set: Option<i32>,
    voicemail: Option<VoicemailModel>,
    nat: Option<()>,
    nat_keepalive_interval: u32,
    flood: Option<FloodModel>,
    /// Only with flood protection: the ban goes to its list.
    auth_failures: Option<AuthFailuresModel>,
    scanner_pattern: Option<String>,
    tcp: TcpModel,
}

struct TcpModel {
    max_connections: u32,
    per_source: u32,
    unauthenticated_lifetime: u32,
    /// A connection that authenticated lives as long as a registration can.
    authenticated_lifetime: u32,
    /// Sources the per-source limit does not apply to (floodProtection.exemptNetworks).
    exempt_networks: Option<String>,
}

struct ListenLine {
    socket: String,
    advertise: Option<String>,
}

struct TlsModel {
    certificate: String,
    private_key: String,
    ca_file: Option<String>,
    verify_clients: bool,
}

struct RegistrarModel {
    min_expires: u32,
    max_expires: u32,
    default_expires: u32,
    max_contacts: u32,
    flush_interval_seconds: u32,
}

struct DispatcherModel {
    ping_interval: u32,
    /// Kamailio's ds_probing_threshold: failed probes before a member is inactive.
    failed_probes_to_inactive: u32,
    /// Kamailio's ds_inactive_threshold: answered probes before it is active again.
    answered_probes_to_active: u32,
    alive_codes: String,
    failover_timeout_ms: u32,
    max_attempts: u32,
}

/// Where calls to subscribers who do not answer go (spec.routing.voicemailMediaPool).
struct VoicemailModel {
    set_id: i32,
    after_ms: u32,
}

struct PoolModel {
    name: String,
    set_id: i32,
    algorithm: u8,
}

struct FloodModel {
    window_seconds: u32,
    requests_per_window: u32,
    ban_seconds: u32,
    exempt_networks: Option<String>,
}

struct AuthFailuresModel {
    limit: u32,
    window_seconds: u32,
}

/// Renders the kamailio.cfg of `edge`. `pools` must hold every MediaPool the edge
/// names in `spec.mediaPools` (other pools are ignored).
pub fn render_kamailio(
    edge: &SipEdge,
    pools: &[&MediaPool],
    options: &KamailioRenderOptions,
) -> Result<Rendered, RenderError> {
    let object = format!("SipEdge/{}", edge.name_any());
    let mut v = Validator::new();
    v.name("metadata.name", &edge.name_any());
    edge.spec.validate(&mut v);
    if options.runtime == Runtime::Kubernetes {
        edge.spec.validate_for_kubernetes(&mut v);
    }
    v.path("(render option) runtimeDir", &options.runtime_dir);
    v.path("(render option) cdrSpoolDir", &options.cdr_spool_dir);
    if let Some((cert, key)) = &options.tls_files {
        v.path("(render option) tls certificate", cert);
        v.path("(render option) tls private key", key);
    }

    let mut pool_models = Vec::new();
    for (i, name) in edge.spec.media_pools.iter().enumerate() {
        match pools.iter().find(|p| p.name_any() == *name) {
            Some(pool) => {
                let mut pv = Validator::new();
                pool.spec.validate(&mut pv);
                if let Err(e) = pv.finish(format!("MediaPool/{name}")) {
                    return Err(RenderError::Invalid(e));
                }
                if pool_models
                    .iter()
                    .any(|p: &PoolModel| p.set_id == pool.spec.set_id)
                {
                    v.error(
                        format!("spec.mediaPools[{i}]"),
                        format!(
                            "setId {} of MediaPool {} is used by another pool of this edge",
                            pool.spec.set_id,
                            shown(name)
                        ),
                        "give each pool of one edge its own spec.setId",
                    );
                }
                pool_models.push(PoolModel {
                    name: name.clone(),
                    set_id: pool.spec.set_id,
                    algorithm: pool.spec.algorithm.kamailio_id(),
                });
            }
            None => v.error(
                format!("spec.mediaPools[{i}]"),
                format!("MediaPool {} was not given to the renderer", shown(name)),
                "declare the MediaPool beside the SipEdge",
            ),
        }
    }
    // Kamailio sends to a member from a UDP socket of the member's address family
    let udp_families: Vec<Option<bool>> = edge
        .spec
        .listen
        .iter()
        .filter(|l| l.transport == Transport::Udp)
        .map(|l| l.address.parse::<IpAddr>().ok().map(|ip| ip.is_ipv4()))
        .collect();
    for pool in pools
        .iter()
        .filter(|p| edge.spec.media_pools.contains(&p.name_any()))
    {
        for (i, m) in pool.spec.members.iter().enumerate() {
            let host = SipMemberUri::parse(&m.uri)
                .map(|u| u.host)
                .unwrap_or_default();
            let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            else {
                continue;
            };
            // interface listeners (None) may carry either family
            if !udp_families
                .iter()
                .any(|f| f.is_none_or(|v4| v4 == ip.is_ipv4()))
            {
                v.error(
                    "spec.listen",
                    format!(
                        "MediaPool {} member {} ({}) is {} but no UDP listener is",
                        pool.name_any(),
                        i,
                        m.uri,
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                    "add a UDP listener of that address family",
                );
            }
        }
    }
    v.finish(object.clone()).map_err(RenderError::Invalid)?;

    let spec = &edge.spec;
    let domains: Vec<String> = spec
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    let listeners = spec
        .listen
        .iter()
        .map(|l| {
            // an IP address, or (validated) the name of a network interface
            let host = match l.address.parse::<IpAddr>() {
                Ok(ip) => bracket(ip),
                Err(_) => l.address.clone(),
            };
            Ok(ListenLine {
                socket: format!("{}:{host}:{}", l.transport.as_str(), l.port),
                advertise: l.advertise.as_ref().map(|a| {
                    let host = match a.address.parse::<IpAddr>() {
                        Ok(ip) => bracket(ip),
                        Err(_) => a.address.to_ascii_lowercase(),
                    };
                    format!("{host}:{}", a.port.unwrap_or(l.port))
                }),
            })
        })
        .collect::<Result<Vec<_>, RenderError>>()?;
    let rpc_ip: IpAddr = spec
        .rpc
        .address_on(options.runtime)
        .parse()
        .map_err(|_| RenderError::Internal("rpc address was validated".into()))?;

    let tls = match (
        &spec.tls,
        spec.listen.iter().any(|l| l.transport == Transport::Tls),
    ) {
        (Some(t), true) => {
            let (certificate, private_key) = match &options.tls_files {
                Some((c, k)) => (c.clone(), k.clone()),
                None => (t.certificate_file.clone(), t.private_key_file.clone()),
            };
            Some(TlsModel {
                certificate,
                private_key,
                ca_file: t.ca_file.clone(),
                verify_clients: t.verify_clients,
            })
        }
        // a certificate without a TLS listener has nothing to serve
        _ => None,
    };

    let mut alive_codes = vec!["class=2".to_string()];
    alive_codes.extend(
        spec.dispatcher
            .probing
            .extra_alive_codes
            .iter()
            .map(|c| format!("code={c}")),
    );

    let default_pool_set = spec.routing.default_media_pool.as_ref().and_then(|name| {
        pool_models
            .iter()
            .find(|p| &p.name == name)
            .map(|p| p.set_id)
    });

    let voicemail = spec.routing.voicemail_media_pool.as_ref().and_then(|name| {
        pool_models
            .iter()
            .find(|p| &p.name == name)
            .map(|p| VoicemailModel {
                set_id: p.set_id,
                after_ms: spec.routing.voicemail_after_seconds * 1000,
            })
    });

    let flood = spec.flood_protection.enabled.then(|| FloodModel {
        window_seconds: spec.flood_protection.window_seconds,
        requests_per_window: spec.flood_protection.requests_per_window,
        ban_seconds: spec.flood_protection.ban_seconds,
        exempt_networks: (!spec.flood_protection.exempt_networks.is_empty())
            .then(|| spec.flood_protection.exempt_networks.join(",")),
    });

    let guessing = &spec.flood_protection.auth_failures;
    let auth_failures =
        (spec.flood_protection.enabled && guessing.enabled).then_some(AuthFailuresModel {
            limit: guessing.limit,
            window_seconds: guessing.window_seconds,
        });

    let tcp = TcpModel {
        max_connections: spec.tcp.max_connections,
        per_source: spec.tcp.max_connections_per_source,
        unauthenticated_lifetime: spec.tcp.unauthenticated_lifetime_seconds,
        authenticated_lifetime: spec.registrar.max_expires + 60,
        exempt_networks: (!spec.flood_protection.exempt_networks.is_empty())
            .then(|| spec.flood_protection.exempt_networks.join(",")),
    };

    let scanner_pattern = spec.scanner_filter.enabled.then(|| {
        SCANNER_USER_AGENTS
            .iter()
            .map(|s| s.to_string())
            .chain(
                spec.scanner_filter
                    .extra_user_agents
                    .iter()
                    .map(|ua| literal_ere(ua)),
            )
            .collect::<Vec<_>>()
            .join("|")
    });

    let model = KamailioCfg {
        edge_name: edge.name_any(),
        log_level: spec.process.log_level.kamailio_level(),
        udp_workers: spec.process.udp_workers,
        tcp_workers: spec.process.tcp_workers,
        default_domain: domains[0].clone(),
        domains,
        listeners,
        rpc_socket: socket_addr(rpc_ip, spec.rpc.port),
        rpc_port: spec.rpc.port,
        rpc_allow_from: spec.rpc.allow_from_on(options.runtime).join(","),
        metrics_allow_from: spec.metrics.allow_from_on(options.runtime).join(","),
        runtime_dir: options.runtime_dir.trim_end_matches('/').to_string(),
        cdr_spool_dir: options.cdr_spool_dir.trim_end_matches('/').to_string(),
        tls,
        metrics: spec.metrics.enabled,
        registrar: RegistrarModel {
            min_expires: spec.registrar.min_expires,
            max_expires: spec.registrar.max_expires,
            default_expires: spec.registrar.default_expires,
            max_contacts: spec.registrar.max_contacts,
            flush_interval_seconds: spec.registrar.flush_interval_seconds,
        },
        auth_cache_seconds: spec.auth.cache_seconds,
        trunk_gateway_timeout_ms: TRUNK_GATEWAY_TIMEOUT_MS,
        dispatcher: DispatcherModel {
            ping_interval: spec.dispatcher.probing.interval_seconds,
            failed_probes_to_inactive: spec.dispatcher.probing.inactive_threshold,
            answered_probes_to_active: spec.dispatcher.probing.active_threshold,
            alive_codes: alive_codes.join(";"),
            failover_timeout_ms: spec.dispatcher.failover_timeout_ms,
            max_attempts: spec.dispatcher.max_attempts,
        },
        pools: pool_models,
        default_pool_set,
        voicemail,
        nat: spec.nat.enabled.then_some(()),
        nat_keepalive_interval: spec.nat.keepalive_interval_seconds,
        flood,
        auth_failures,
        scanner_pattern,
        tcp,
    };
    model.ensure_inert()?;
    let text = model
        .render()
        .map_err(|e| RenderError::Template(e.to_string()))?;
    Ok(Rendered {
        hash: config_hash(&text),
        text,
    })
}

impl KamailioCfg {
    /// Every string that reaches the config, checked once more: validation makes
    /// these safe, this makes a future validation gap fail loudly instead of
    /// writing a directive into the config.
    fn ensure_inert(&self) -> Result<(), RenderError> {
        let mut strings: Vec<(&str, &str)> = vec![
            ("edge name", &self.edge_name),
            ("default domain", &self.default_domain),
            ("rpc socket", &self.rpc_socket),
            ("rpc allowFrom", &self.rpc_allow_from),
            ("metrics allowFrom", &self.metrics_allow_from),
            ("runtime dir", &self.runtime_dir),
            ("cdr spool dir", &self.cdr_spool_dir),
            ("alive codes", &self.dispatcher.alive_codes),
        ];
        strings.extend(self.domains.iter().map(|d| ("domain", d.as_str())));
        for l in &self.listeners {
            strings.push(("listener", &l.socket));
            if let Some(a) = &l.advertise {
                strings.push(("advertise", a));
            }
        }
        if let Some(t) = &self.tls {
            strings.push(("tls certificate", &t.certificate));
            strings.push(("tls private key", &t.private_key));
            if let Some(ca) = &t.ca_file {
                strings.push(("tls ca file", ca));
            }
        }
        strings.extend(self.pools.iter().map(|p| ("pool name", p.name.as_str())));
        if let Some(f) = &self.flood {
            if let Some(e) = &f.exempt_networks {
                strings.push(("flood exempt networks", e));
            }
        }
        if let Some(p) = &self.scanner_pattern {
            strings.push(("scanner pattern", p));
        }
        for (what, s) in strings {
            ensure_inert(what, s)?;
        }
        Ok(())
    }
}

/// Refuses anything that could end a string, a line or a statement in kamailio.cfg,
/// or start a preprocessor directive or a variable.
pub(crate) fn ensure_inert(what: &str, value: &str) -> Result<(), RenderError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " .-_:/@=;,[]|".contains(c);
    if value.chars().all(allowed) {
        Ok(())
    } else {
        Err(RenderError::Unsafe {
            what: what.to_string(),
            value: shown(value),
        })
    }
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn socket_addr(ip: IpAddr, port: u16) -> String {
    // listeners are rendered by the caller; this is the RPC socket
    format!("{}:{port}", bracket(ip))
}

/// A validated User-Agent fragment as a POSIX extended regex that matches it literally.
/// Only '.' is special among the characters the fragment may hold.
fn literal_ere(fragment: &str) -> String {
    fragment.replace('.', "[.]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipstack_crds::Platform;

    pub(crate) const PLATFORM: &str = r#"
apiVersion: sipstack.io/v1alpha1
kind: PgCluster
metadata: {name: pg}
spec: {instances: 1}
---
apiVersion: sipstack.io/v1alpha1
kind: MediaPool
metadata: {name: media}
spec: {setId: 7, algorithm: weighted, cdr: {enabled: false}}
---
apiVersion: sipstack.io/v1alpha1
kind: SipEdge
metadata: {name: edge}
spec:
  domains: [Example.com, other.example.net]
  database: {pgCluster: pg}
  mediaPools: [media]
  routing: {defaultMediaPool: media}
  listen:
    - {transport: udp, address: 0.0.0.0, port: 5060, advertise: {address: 203.0.113.10}}
    - {transport: tcp, address: eth0, port: 5060}
    - {transport: tls, address: "::", port: 5061, advertise: {address: "2001:db8::10"}}
  tls: {certificateFile: /etc/tls/crt.pem, privateKeyFile: /etc/tls/key.pem}
  scannerFilter: {extraUserAgents: [evil.bot/1.0]}
  floodProtection: {exemptNetworks: [10.0.0.0/8]}
"#;

    fn render(text: &str) -> Result<Rendered, RenderError> {
        let platform = Platform::from_yaml(text).unwrap();
        let edge = platform.edge(None).unwrap();
        render_kamailio(
            edge,
            &platform.pools_of(edge),
            &KamailioRenderOptions::default(),
        )
    }

    #[test]
    fn spec_values_reach_the_config() {
        let cfg = render(PLATFORM).unwrap().text;
        for expected in [
            "alias=\"example.com\"",
            "alias=\"other.example.net\"",
            "listen=udp:0.0.0.0:5060 advertise 203.0.113.10:5060",
            "listen=tls:[::]:5061 advertise [2001:db8::10]:5061",
            "listen=tcp:eth0:5060\n",
            "listen=tcp:127.0.0.1:5071",
            "#!define WITH_TLS",
            "modparam(\"tls\", \"certificate\", \"/etc/tls/crt.pem\")",
            "case 7: # MediaPool media",
            "$var(alg) = 11;",
            "$var(setid) = 7;\n\troute(TO_MEDIA_POOL);",
            "is_in_subnet(\"$si\", \"10.0.0.0/8\")",
            // password guessing: 10 failures within 60 s, banned for banSeconds
            "#!define WITH_AUTH_FAILURE_BAN",
            "authfail=>size=10;autoexpire=60;updateexpire=0;",
            "$shtex(authfail=>$si) = 60;",
            "if ($var(auth_failures) >= 10) {",
            "banned for 300s",
            "if ($Rp == 5071 && $pr != \"udp\") {",
            "|evil[.]bot/1[.]0\"",
            "modparam(\"registrar\", \"max_expires\", 3600)",
            "modparam(\"dispatcher\", \"ds_ping_reply_codes\", \"class=2\")",
            // a probe fails after the failover timeout, not after tm's fr_timer
            "event_route[tm:local-request] {\n\tif (is_method(\"OPTIONS\")) {\n\t\tt_set_fr(0, 2000);",
        ] {
            assert!(cfg.contains(expected), "missing {expected:?} in:\n{cfg}");
        }
    }

    #[test]
    fn switches_follow_the_spec() {
        let off = PLATFORM.replace(
            "floodProtection: {exemptNetworks: [10.0.0.0/8]}",
            "floodProtection: {enabled: false}\n  nat: {enabled: false}\n  metrics: {enabled: false}",
        );
        let cfg = render(&off).unwrap().text;
        assert!(!cfg.contains("#!define WITH_ANTIFLOOD"));
        assert!(!cfg.contains("#!define WITH_AUTH_FAILURE_BAN"));
        assert!(!cfg.contains("#!define WITH_NAT"));
        assert!(!cfg.contains("#!define WITH_METRICS"));
        assert!(cfg.contains("#!define WITH_SCANNER_FILTER"));
        let cfg = render(PLATFORM).unwrap().text;
        assert!(cfg.contains("#!define WITH_ANTIFLOOD") && cfg.contains("#!define WITH_NAT"));

        // the guessing ban on its own switch, pike kept
        let no_guessing_ban = PLATFORM.replace(
            "floodProtection: {exemptNetworks: [10.0.0.0/8]}",
            "floodProtection: {authFailures: {enabled: false}}",
        );
        let cfg = render(&no_guessing_ban).unwrap().text;
        assert!(cfg.contains("#!define WITH_ANTIFLOOD"));
        assert!(!cfg.contains("#!define WITH_AUTH_FAILURE_BAN"));
    }

    #[test]
    fn auth_failure_settings_reach_the_config_and_are_validated() {
        let tuned = PLATFORM.replace(
            "floodProtection: {exemptNetworks: [10.0.0.0/8]}",
            "floodProtection: {banSeconds: 900, authFailures: {limit: 4, windowSeconds: 30}}",
        );
        let cfg = render(&tuned).unwrap().text;
        for expected in [
            "authfail=>size=10;autoexpire=30;updateexpire=0;",
            "if ($var(auth_failures) >= 4) {",
            "banned for 900s",
        ] {
            assert!(cfg.contains(expected), "missing {expected:?}");
        }
        for (bad, field) in [
            ("{limit: 0}", "spec.floodProtection.authFailures.limit"),
            ("{limit: 1001}", "spec.floodProtection.authFailures.limit"),
            (
                "{windowSeconds: 0}",
                "spec.floodProtection.authFailures.windowSeconds",
            ),
            (
                "{windowSeconds: 3601}",
                "spec.floodProtection.authFailures.windowSeconds",
            ),
        ] {
            let yaml = PLATFORM.replace(
                "floodProtection: {exemptNetworks: [10.0.0.0/8]}",
                &format!("floodProtection: {{authFailures: {bad}}}"),
            );
            let err = Platform::from_yaml(&yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn same_spec_same_hash_and_a_change_changes_it() {
        let a = render(PLATFORM).unwrap();
        assert_eq!(a.hash, render(PLATFORM).unwrap().hash);
        let b = render(&PLATFORM.replace("setId: 7", "setId: 8")).unwrap();
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn inert_check_refuses_what_could_escape() {
        for bad in [
            "a\"b", "a\nb", "#!define", "$(x)", "a\\b", "a{b}", "a'b", "a#b",
        ] {
            assert!(ensure_inert("x", bad).is_err(), "{bad:?}");
        }
        assert!(ensure_inert("x", "udp:[::1]:5060").is_ok());
    }
}
