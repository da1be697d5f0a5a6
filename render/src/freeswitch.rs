//! FreeSWITCH configuration from a MediaPool: the files of one media node's
//! configuration directory (`freeswitch.xml`, `vars.xml`, `autoload_configs/…`,
//! `dialplan/…`).
//!
//! Like the Kamailio renderer, the spec is validated first and every value is
//! turned into a model of numbers and strings from a narrow character set. The
//! templates escape what they print as XML, and [`ensure_inert`] refuses any string
//! that FreeSWITCH's preprocessor or its variable expansion could read as more than
//! a value (`$`, quotes, angle brackets, newlines). Secrets never reach these files:
//! the event socket password comes from [`ESL_PASSWORD_ENV`] and the CDR database
//! password from libpq's `PGPASSWORD`.

use std::net::IpAddr;
use std::ops::Deref;

use askama::Template;
use kube::ResourceExt;
use sipstack_crds::mediapool::{Codec, MediaPool};
use sipstack_crds::pgcluster::{PgCluster, DB_IDENTIFIER_PATTERN};
use sipstack_crds::validation::{shown, Validator};

use crate::{config_hash, RenderError, Rendered};

/// Environment variable FreeSWITCH reads the event socket password from. The
/// password must be letters and digits: FreeSWITCH's preprocessor pastes it into
/// the XML before parsing it.
pub const ESL_PASSWORD_ENV: &str = "SIPSTACK_ESL_PASSWORD";
/// Environment variable of the event socket's own password (`auth`), which may run
/// every API command, `system` included: the process that starts FreeSWITCH makes
/// a random one and tells no one. Clients log in as [`ESL_USER`].
pub const ESL_ADMIN_PASSWORD_ENV: &str = "SIPSTACK_ESL_ADMIN_PASSWORD";
/// The directory user the control plane logs in to the event socket as
/// (`userauth`), with the password of [`ESL_PASSWORD_ENV`].
pub const ESL_USER: &str = "sipstack@esl";
/// The API commands [`ESL_USER`] may run: status, calls and draining, nothing that
/// starts a process or reads files (`system`, `bg_system`, `spawn`, `lua`, …).
pub const ESL_ALLOWED_API: &[&str] = &[
    "status",
    "show",
    "fsctl",
    "sofia",
    "version",
    "uptime",
    "hostname",
    "conference",
    "uuid_kill",
    "uuid_dump",
    "hupall",
];
/// Environment variable libpq reads the CDR database password from.
pub const CDR_PASSWORD_ENV: &str = "PGPASSWORD";
/// Name of the SIP profile the edges send calls to.
pub const SIP_PROFILE: &str = "sipstack";
/// Dialplan context of calls arriving on [`SIP_PROFILE`].
pub const DIALPLAN_CONTEXT: &str = "sipstack";

/// Where the CDRs of a pool are written: the read-write endpoint of its PgCluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdrDatabase {
    /// Host name or IP address of the read-write endpoint.
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

impl CdrDatabase {
    /// The platform database of `cluster`, reached at `host` (a Service name on
    /// Kubernetes, 127.0.0.1 locally) on the cluster's port.
    pub fn of_cluster(cluster: &PgCluster, host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: cluster.spec.port,
            database: cluster.spec.database.name.clone(),
            user: cluster.spec.database.owner.clone(),
        }
    }
}

/// Networks the edges send SIP from on Kubernetes: the private ranges pod and node
/// networks use. The event socket is not among them: it listens on loopback only.
pub const CLUSTER_SIP_ALLOW_FROM: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fd00::/8",
];

impl FreeswitchRenderOptions {
    /// What the operator renders for the pods of a MediaPool: SIP from the cluster's
    /// private networks, the event socket on loopback, CDRs to `cdr`'s client Service.
    pub fn for_cluster(cdr: Option<&PgCluster>) -> Self {
        Self {
            bind_address: None,
            sip_allow_from: CLUSTER_SIP_ALLOW_FROM
                .iter()
                .map(|s| s.to_string())
                .collect(),
            event_socket_address: "127.0.0.1".into(),
            event_socket_allow_from: vec!["127.0.0.0/8".into()],
            cdr_database: cdr.map(|c| {
                let (host, port) = c.client_service();
                CdrDatabase {
                    port,
                    ..CdrDatabase::of_cluster(c, host)
                }
            }),
            log_file: false,
        }
    }
}

/// Settings that depend on where the media node runs, not on the spec.
#[derive(Debug, Clone)]
pub struct FreeswitchRenderOptions {
    /// Address the SIP profile and RTP bind to; `None` uses the node's own address
    /// (FreeSWITCH's `local_ip_v4`: the pod's IP, or the node's with hostNetwork).
    pub bind_address: Option<String>,
    /// Networks allowed to send SIP to the profile (the edges).
    pub sip_allow_from: Vec<String>,
    /// Address the event socket listens on.
    pub event_socket_address: String,
    /// Networks allowed to connect to the event socket (besides knowing the password).
    pub event_socket_allow_from: Vec<String>,
    /// Where CDRs go; required when the pool's `spec.cdr.enabled` is true.
    pub cdr_database: Option<CdrDatabase>,
    /// Log to `log/freeswitch.log` (mod_logfile) as well as the console: a process
    /// started in the background has no console to read.
    pub log_file: bool,
}

impl Default for FreeswitchRenderOptions {
    fn default() -> Self {
        Self {
            bind_address: None,
            sip_allow_from: vec!["127.0.0.0/8".into()],
            event_socket_address: "127.0.0.1".into(),
            event_socket_allow_from: vec!["127.0.0.0/8".into()],
            cdr_database: None,
            log_file: false,
        }
    }
}

/// Every value the templates print, already validated.
struct Model {
    pool_name: String,
    bind_address: String,
    codecs: String,
    codec_modules: Vec<&'static str>,
    ext_sip_ip: Option<String>,
    ext_rtp_ip: Option<String>,
    esl_password_env: &'static str,
    esl_admin_password_env: &'static str,
    esl_user_id: &'static str,
    esl_user_domain: &'static str,
    esl_allowed_api: String,
    esl_listen_address: String,
    esl_port: u16,
    esl_allow_from: Vec<String>,
    sip_allow_from: Vec<String>,
    sip_port: u16,
    profile_name: &'static str,
    context_name: &'static str,
    max_sessions: u32,
    sessions_per_second: u32,
    rtp_start: u16,
    rtp_end: u16,
    cdr: Option<CdrDatabase>,
    log_file: bool,
}

/// One askama template per file, each reading the shared [`Model`].
macro_rules! file_templates {
    ($($name:ident => $path:literal),* $(,)?) => {$(
        #[derive(Template)]
        #[template(path = $path, escape = "html")]
        struct $name<'a>(&'a Model);
        impl Deref for $name<'_> {
            type Target = Model;
            fn deref(&self) -> &Model {
                self.0
            }
        }
    )*};
}

file_templates!(
    FreeswitchXml => "freeswitch/freeswitch.xml",
    VarsXml => "freeswitch/vars.xml",
    SwitchConf => "freeswitch/autoload_configs/switch.conf.xml",
    ModulesConf => "freeswitch/autoload_configs/modules.conf.xml",
    ConsoleConf => "freeswitch/autoload_configs/console.conf.xml",
    AclConf => "freeswitch/autoload_configs/acl.conf.xml",
    SofiaConf => "freeswitch/autoload_configs/sofia.conf.xml",
    EventSocketConf => "freeswitch/autoload_configs/event_socket.conf.xml",
    CdrPgCsvConf => "freeswitch/autoload_configs/cdr_pg_csv.conf.xml",
    LogfileConf => "freeswitch/autoload_configs/logfile.conf.xml",
    ConferenceConf => "freeswitch/autoload_configs/conference.conf.xml",
    DialplanXml => "freeswitch/dialplan/sipstack.xml",
);

/// The voicemail script: Lua, not XML, so askama escapes nothing in it. Every
/// value it prints passed [`Model::ensure_inert`].
#[derive(Template)]
#[template(path = "freeswitch/scripts/sipstack_voicemail.lua", escape = "none")]
struct VoicemailLua<'a> {
    pool_name: &'a str,
    db: &'a CdrDatabase,
    voicemail_max_seconds: u32,
}

/// Longest voicemail message, in seconds (about 16 kB of audio a second).
pub const VOICEMAIL_MAX_SECONDS: u32 = 180;

/// FreeSWITCH's name of a codec and the module that provides it (`None`: built in).
fn codec_name_and_module(codec: Codec) -> (&'static str, Option<&'static str>) {
    match codec {
        Codec::Pcmu => ("PCMU", None),
        Codec::Pcma => ("PCMA", None),
        Codec::G722 => ("G722", Some("mod_spandsp")),
        Codec::G729 => ("G729", Some("mod_g729")),
        Codec::Opus => ("OPUS", Some("mod_opus")),
    }
}

/// Renders the configuration directory of the media nodes of `pool`: `(relative
/// path, file)` pairs, `freeswitch.xml` first. `cdr_pg_csv.conf.xml` and the voicemail script are present only
/// when the pool writes CDRs.
pub fn render_freeswitch(
    pool: &MediaPool,
    options: &FreeswitchRenderOptions,
) -> Result<Vec<(String, Rendered)>, RenderError> {
    let model = model(pool, options)?;
    let mut files: Vec<(&str, Result<String, askama::Error>)> = vec![
        ("freeswitch.xml", FreeswitchXml(&model).render()),
        ("vars.xml", VarsXml(&model).render()),
        (
            "autoload_configs/switch.conf.xml",
            SwitchConf(&model).render(),
        ),
        (
            "autoload_configs/modules.conf.xml",
            ModulesConf(&model).render(),
        ),
        (
            "autoload_configs/console.conf.xml",
            ConsoleConf(&model).render(),
        ),
        ("autoload_configs/acl.conf.xml", AclConf(&model).render()),
        (
            "autoload_configs/sofia.conf.xml",
            SofiaConf(&model).render(),
        ),
        (
            "autoload_configs/event_socket.conf.xml",
            EventSocketConf(&model).render(),
        ),
        (
            "autoload_configs/conference.conf.xml",
            ConferenceConf(&model).render(),
        ),
    ];
    if let Some(db) = &model.cdr {
        files.push((
            "autoload_configs/cdr_pg_csv.conf.xml",
            CdrPgCsvConf(&model).render(),
        ));
        files.push((
            "scripts/sipstack_voicemail.lua",
            VoicemailLua {
                pool_name: &model.pool_name,
                db,
                voicemail_max_seconds: VOICEMAIL_MAX_SECONDS,
            }
            .render(),
        ));
    }
    if model.log_file {
        files.push((
            "autoload_configs/logfile.conf.xml",
            LogfileConf(&model).render(),
        ));
    }
    files.push(("dialplan/sipstack.xml", DialplanXml(&model).render()));
    files
        .into_iter()
        .map(|(path, text)| {
            let mut text = text.map_err(|e| RenderError::Template(format!("{path}: {e}")))?;
            // askama drops the template's final newline; files end with one
            text.push('\n');
            Ok((
                path.to_string(),
                Rendered {
                    hash: config_hash(&text),
                    text,
                },
            ))
        })
        .collect()
}

fn model(pool: &MediaPool, options: &FreeswitchRenderOptions) -> Result<Model, RenderError> {
    let name = pool.name_any();
    let spec = &pool.spec;
    let mut v = Validator::new();
    v.name("metadata.name", &name);
    spec.validate(&mut v);
    if let Some(ip) = &options.bind_address {
        v.ip("(render option) bindAddress", ip);
    }
    v.ip(
        "(render option) eventSocketAddress",
        &options.event_socket_address,
    );
    for (field, nets) in [
        ("(render option) sipAllowFrom", &options.sip_allow_from),
        (
            "(render option) eventSocketAllowFrom",
            &options.event_socket_allow_from,
        ),
    ] {
        if nets.is_empty() {
            v.error(
                field,
                "no network is allowed",
                "list at least one network, e.g. 127.0.0.0/8",
            );
        }
        for (i, n) in nets.iter().enumerate() {
            v.cidr(&format!("{field}[{i}]"), n);
        }
    }
    let cdr = match (&options.cdr_database, spec.cdr.enabled) {
        (Some(db), true) => {
            v.host("(render option) cdrDatabase.host", &db.host);
            v.port("(render option) cdrDatabase.port", db.port);
            for (field, value) in [("database", &db.database), ("user", &db.user)] {
                v.pattern(
                    &format!("(render option) cdrDatabase.{field}"),
                    value,
                    DB_IDENTIFIER_PATTERN,
                    "a PostgreSQL name the platform accepts",
                    "use lower-case letters, digits and '_'",
                );
            }
            Some(db.clone())
        }
        (None, true) => {
            v.error(
                "spec.cdr",
                "CDRs are enabled but the renderer was given no database to write them to",
                "pass the PgCluster's endpoint (cdrDatabase), or set spec.cdr.enabled to false",
            );
            None
        }
        (_, false) => None,
    };
    v.finish(format!("MediaPool/{name}"))
        .map_err(RenderError::Invalid)?;

    let ip = |value: &str| -> Result<String, RenderError> {
        value
            .parse::<IpAddr>()
            .map(|ip| ip.to_string())
            .map_err(|_| RenderError::Internal(format!("{value} was validated as an IP address")))
    };
    let mut codec_names = Vec::new();
    let mut codec_modules = Vec::new();
    for codec in &spec.codecs {
        let (codec_name, module) = codec_name_and_module(*codec);
        if !codec_names.contains(&codec_name) {
            codec_names.push(codec_name);
        }
        if let Some(m) = module.filter(|m| !codec_modules.contains(m)) {
            codec_modules.push(m);
        }
    }
    let model = Model {
        pool_name: name,
        bind_address: match &options.bind_address {
            Some(a) => ip(a)?,
            // FreeSWITCH's own global: the address of the default route's interface
            None => "$${local_ip_v4}".into(),
        },
        codecs: codec_names.join(","),
        codec_modules,
        ext_sip_ip: spec.external_address.sip.as_deref().map(ip).transpose()?,
        ext_rtp_ip: spec.external_address.rtp.as_deref().map(ip).transpose()?,
        esl_password_env: ESL_PASSWORD_ENV,
        esl_admin_password_env: ESL_ADMIN_PASSWORD_ENV,
        esl_user_id: ESL_USER.split('@').next().unwrap_or(ESL_USER),
        esl_user_domain: ESL_USER.split('@').nth(1).unwrap_or(""),
        esl_allowed_api: ESL_ALLOWED_API.join(","),
        esl_listen_address: ip(&options.event_socket_address)?,
        esl_port: spec.event_socket.port,
        esl_allow_from: options.event_socket_allow_from.clone(),
        sip_allow_from: options.sip_allow_from.clone(),
        sip_port: spec.sip_port,
        profile_name: SIP_PROFILE,
        context_name: DIALPLAN_CONTEXT,
        max_sessions: spec.max_sessions,
        // new calls per second the core admits: a full node refills in about 5 s
        sessions_per_second: (spec.max_sessions / 5).clamp(30, 1000),
        rtp_start: spec.rtp.port_start,
        rtp_end: spec.rtp.port_end,
        cdr,
        log_file: options.log_file,
    };
    model.ensure_inert()?;
    Ok(model)
}

impl Model {
    /// Every string that reaches the files, checked once more: validation makes these
    /// safe; this turns a future validation gap into an error instead of markup or a
    /// `$${variable}` in the configuration.
    fn ensure_inert(&self) -> Result<(), RenderError> {
        let mut strings: Vec<(&str, &str)> = vec![
            ("pool name", &self.pool_name),
            ("codecs", &self.codecs),
            ("event socket address", &self.esl_listen_address),
        ];
        // the one deliberate reference to a FreeSWITCH global
        if self.bind_address != "$${local_ip_v4}" {
            strings.push(("bind address", &self.bind_address));
        }
        for ip in self.ext_sip_ip.iter().chain(&self.ext_rtp_ip) {
            strings.push(("external address", ip));
        }
        strings.extend(
            self.sip_allow_from
                .iter()
                .map(|n| ("sip allowFrom", n.as_str())),
        );
        strings.extend(
            self.esl_allow_from
                .iter()
                .map(|n| ("event socket allowFrom", n.as_str())),
        );
        if let Some(db) = &self.cdr {
            strings.extend([
                ("cdr host", db.host.as_str()),
                ("cdr database", &db.database),
                ("cdr user", &db.user),
            ]);
        }
        for (what, s) in strings {
            ensure_inert(what, s)?;
        }
        Ok(())
    }
}

/// Refuses anything FreeSWITCH could read as markup, as a variable (`$${x}`, `${x}`)
/// or as the end of a preprocessor directive's value.
pub(crate) fn ensure_inert(what: &str, value: &str) -> Result<(), RenderError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_:/,".contains(c);
    if !value.is_empty() && value.chars().all(allowed) {
        Ok(())
    } else {
        Err(RenderError::Unsafe {
            what: what.to_string(),
            value: shown(value),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use sipstack_crds::Platform;

    fn example() -> Platform {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/platform.yaml");
        Platform::from_yaml(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn render_example(options: &FreeswitchRenderOptions) -> Vec<(String, Rendered)> {
        let platform = example();
        render_freeswitch(&platform.media_pools[0], options).unwrap()
    }

    fn with_cdr() -> FreeswitchRenderOptions {
        let platform = example();
        FreeswitchRenderOptions {
            cdr_database: Some(CdrDatabase::of_cluster(
                &platform.pg_clusters[0],
                "pg-primary",
            )),
            ..Default::default()
        }
    }

    fn file<'a>(files: &'a [(String, Rendered)], path: &str) -> &'a str {
        &files
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{path} not rendered"))
            .1
            .text
    }

    /// The files of the example pool, committed under render/tests/golden/freeswitch/.
    /// `SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-render --lib` rewrites them.
    #[test]
    fn example_pool_matches_the_golden_files() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/freeswitch");
        let update = std::env::var_os("SIPSTACK_UPDATE_GOLDEN").is_some();
        let mut stale = Vec::new();
        for (path, rendered) in render_example(&with_cdr()) {
            let golden = dir.join(&path);
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &rendered.text).unwrap();
            } else if std::fs::read_to_string(&golden).ok().as_deref()
                != Some(rendered.text.as_str())
            {
                stale.push(golden.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "rendered FreeSWITCH files differ from {stale:?}; check the change and run SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-render --lib"
        );
    }

    #[test]
    fn every_file_is_well_formed_xml() {
        for options in [with_cdr(), FreeswitchRenderOptions::default()] {
            let mut platform = example();
            platform.media_pools[0].spec.cdr.enabled = options.cdr_database.is_some();
            for (path, rendered) in render_freeswitch(&platform.media_pools[0], &options).unwrap() {
                if !path.ends_with(".xml") {
                    continue;
                }
                if let Err(e) = roxmltree::Document::parse(&rendered.text) {
                    panic!("{path} is not well-formed XML: {e}\n{}", rendered.text);
                }
            }
        }
    }

    #[test]
    fn spec_values_reach_the_files() {
        let mut platform = example();
        let pool = &mut platform.media_pools[0];
        pool.spec.external_address.sip = Some("203.0.113.7".into());
        pool.spec.external_address.rtp = Some("2001:db8::7".into());
        pool.spec.max_sessions = 250;
        pool.spec.codecs = vec![Codec::G722, Codec::Pcmu, Codec::Opus];
        let files = render_freeswitch(pool, &with_cdr()).unwrap();
        let vars = file(&files, "vars.xml");
        let sofia = file(&files, "autoload_configs/sofia.conf.xml");
        let switch = file(&files, "autoload_configs/switch.conf.xml");
        let modules = file(&files, "autoload_configs/modules.conf.xml");
        for (text, expected) in [
            (vars, r#"data="global_codec_prefs=G722,PCMU,OPUS""#),
            (vars, r#"data="sipstack_ext_sip_ip=203.0.113.7""#),
            (vars, r#"data="sipstack_ext_rtp_ip=2001:db8::7""#),
            (
                vars,
                r#"<X-PRE-PROCESS cmd="env-set" data="sipstack_esl_password=$SIPSTACK_ESL_PASSWORD"/>"#,
            ),
            (sofia, r#"<param name="sip-port" value="5080"/>"#),
            (
                sofia,
                r#"<param name="ext-sip-ip" value="$${sipstack_ext_sip_ip}"/>"#,
            ),
            (
                sofia,
                r#"<param name="ext-rtp-ip" value="$${sipstack_ext_rtp_ip}"/>"#,
            ),
            (
                sofia,
                r#"<param name="sip-options-respond-503-on-busy" value="true"/>"#,
            ),
            (switch, r#"<param name="max-sessions" value="250"/>"#),
            (switch, r#"<param name="rtp-start-port" value="16384"/>"#),
            (switch, r#"<param name="rtp-end-port" value="32767"/>"#),
            (modules, r#"<load module="mod_spandsp"/>"#),
            (modules, r#"<load module="mod_opus"/>"#),
            (modules, r#"<load module="mod_cdr_pg_csv"/>"#),
            (
                file(&files, "autoload_configs/event_socket.conf.xml"),
                r#"<param name="listen-port" value="8021"/>"#,
            ),
            (
                file(&files, "autoload_configs/cdr_pg_csv.conf.xml"),
                "host=pg-primary port=5432 dbname=sipstack user=sipstack ",
            ),
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!modules.contains("mod_g729"), "{modules}");
    }

    #[test]
    fn no_secret_and_no_cdr_file_without_cdrs() {
        let mut platform = example();
        platform.media_pools[0].spec.cdr.enabled = false;
        let files = render_freeswitch(
            &platform.media_pools[0],
            &FreeswitchRenderOptions::default(),
        )
        .unwrap();
        assert!(files
            .iter()
            .all(|(p, _)| p != "autoload_configs/cdr_pg_csv.conf.xml"));
        assert!(!file(&files, "autoload_configs/modules.conf.xml").contains("mod_cdr_pg_csv"));
        for (path, r) in &files {
            assert!(
                !r.text.to_lowercase().contains("password=") || path == "vars.xml",
                "{path}"
            );
        }
    }

    #[test]
    fn cdrs_without_a_database_are_an_error() {
        let platform = example();
        let err = render_freeswitch(
            &platform.media_pools[0],
            &FreeswitchRenderOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("spec.cdr"), "{err}");
    }

    /// Values that would close an attribute, open an element, or expand a FreeSWITCH
    /// variable are refused naming the field, whether they come from the spec or the options.
    #[test]
    fn hostile_values_are_refused() {
        let hostile = [
            "1.2.3.4\"/><param name=\"auth-calls\" value=\"false",
            "$${local_ip_v4}",
            "${uuid}",
            "a<b",
            "a&b",
            "1.2.3.4\n<X-PRE-PROCESS cmd=\"exec-set\" data=\"x=id\"/>",
        ];
        for bad in hostile {
            let mut platform = example();
            platform.media_pools[0].spec.external_address.sip = Some(bad.into());
            let err = render_freeswitch(&platform.media_pools[0], &with_cdr())
                .unwrap_err()
                .to_string();
            assert!(err.contains("spec.externalAddress.sip"), "{bad:?}: {err}");

            let mut platform = example();
            platform.media_pools[0].metadata.name = Some(bad.into());
            let err = render_freeswitch(&platform.media_pools[0], &with_cdr())
                .unwrap_err()
                .to_string();
            assert!(err.contains("metadata.name"), "{bad:?}: {err}");

            let platform = example();
            let mut options = with_cdr();
            options.bind_address = Some(bad.into());
            options.sip_allow_from = vec![bad.into()];
            if let Some(db) = options.cdr_database.as_mut() {
                db.host = bad.into();
                db.user = bad.into();
            }
            let err = render_freeswitch(&platform.media_pools[0], &options)
                .unwrap_err()
                .to_string();
            for field in [
                "bindAddress",
                "sipAllowFrom[0]",
                "cdrDatabase.host",
                "cdrDatabase.user",
            ] {
                assert!(err.contains(field), "{bad:?} in {field} accepted: {err}");
            }
        }
        for bad in hostile {
            assert!(ensure_inert("x", bad).is_err(), "{bad:?}");
        }
        assert!(ensure_inert("x", "2001:db8::7").is_ok());
    }

    #[test]
    fn a_change_in_the_spec_changes_the_hash() {
        let a = render_example(&with_cdr());
        let mut platform = example();
        platform.media_pools[0].spec.rtp.port_end = 30000;
        let b = render_freeswitch(&platform.media_pools[0], &with_cdr()).unwrap();
        let hash = |files: &[(String, Rendered)], p: &str| {
            files.iter().find(|(x, _)| x == p).unwrap().1.hash.clone()
        };
        assert_ne!(
            hash(&a, "autoload_configs/switch.conf.xml"),
            hash(&b, "autoload_configs/switch.conf.xml")
        );
        assert_eq!(hash(&a, "vars.xml"), hash(&b, "vars.xml"));
    }
}
