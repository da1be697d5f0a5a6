//! The local driver: runs a declared platform as processes on one host, from the
//! same platform file `kubectl apply` takes.
//!
//! `up` starts (or finds running) PostgreSQL, applies the schema migrations, writes
//! the media pools and their members, renders kamailio.cfg for every SipEdge and
//! starts Kamailio. `down` stops everything and keeps the data; a later `up` finds
//! the subscribers and registrations again. Everything lives under one state
//! directory; `state.json` there records what runs where.

pub mod cdr_shipper;
pub mod freeswitch;
pub mod kamailio;
pub mod patroni;
pub mod postgres;
pub mod process;
pub mod standin;
pub mod state;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::ResourceExt;
use sipstack_crds::{MediaPool, PgCluster, Platform};
use sipstack_edgerpc::{EdgeRpc, Reload};
use sipstack_render::{render_kamailio, KamailioRenderOptions};

use freeswitch::{MediaNode, NodeChange, NodeSecrets};
use kamailio::{EdgeChange, EdgeSecrets, LocalKamailio, RunSettings};
use patroni::LocalCluster;
use postgres::LocalPostgres;
use sipstack_render::freeswitch::{render_freeswitch, CdrDatabase, FreeswitchRenderOptions};
use state::{EdgeState, HaState, LocalState, MediaNodeState, PostgresState, StandinState};

/// Why the local platform could not be brought up, inspected or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{program} is not installed; install the Debian package {package} (apt-get install {package})")]
    Missing { program: String, package: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start {what}: {detail}")]
    Start { what: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
    /// Another `up` or `down` holds the state directory.
    #[error("{0}")]
    Busy(String),
    #[error("no local platform in {0}; bring one up with `sipctl local up -f PLATFORM.yaml`")]
    NotFound(String),
    // `{0}` rather than `transparent`: the inner error stays in the source chain,
    // where sipctl finds it to choose its exit code.
    #[error("{0}")]
    Platform(#[from] sipstack_crds::PlatformError),
    #[error("{0}")]
    Render(#[from] sipstack_render::RenderError),
    #[error("{0}")]
    Db(#[from] sipstack_db::DbError),
    #[error("{0}")]
    Postgres(#[from] postgres::PostgresError),
    #[error("{0}")]
    Rpc(#[from] sipstack_edgerpc::RpcError),
    #[error("{0}")]
    Dispatch(#[from] sipstack_dispatch::SyncError),
}

impl LocalError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        LocalError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// How `up` runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub state_dir: PathBuf,
    /// Start a SIPp stand-in on every static media member with a loopback address,
    /// and on the replicas' addresses when FreeSWITCH is not installed.
    pub standins: bool,
}

/// What `up` did, line by line, for a person to read.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub notices: Vec<String>,
}

impl Report {
    fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        tracing::info!("{s}");
        self.lines.push(s);
    }
    fn notice(&mut self, s: impl Into<String>) {
        let s = s.into();
        tracing::info!("{s}");
        self.notices.push(s);
    }
}

/// The default state directory: `/var/lib/sipstack/local` for root (PostgreSQL then
/// runs as the `postgres` user, which must be able to reach it), else
/// `$XDG_STATE_HOME/sipstack/local` or `~/.local/state/sipstack/local`.
pub fn default_state_dir() -> PathBuf {
    if process::is_root() {
        return PathBuf::from("/var/lib/sipstack/local");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("sipstack/local");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/sipstack/local")
}

/// Brings the platform up. Safe to run again: what runs is kept, what changed is applied.
pub async fn up(
    platform_text: &str,
    options: &UpOptions,
) -> Result<(LocalState, Report), LocalError> {
    let platform = Platform::from_yaml(platform_text)?;
    let mut report = Report::default();
    std::fs::create_dir_all(&options.state_dir)
        .map_err(|e| LocalError::io(&options.state_dir, e))?;
    let state_dir = options
        .state_dir
        .canonicalize()
        .map_err(|e| LocalError::io(&options.state_dir, e))?;
    let _lock = state::StateLock::acquire(&state_dir, "up")?;
    // written once the platform is up: a file that failed must not replace the copy
    // of the one that runs
    let platform_copy = state_dir.join("platform.yaml");

    let Some(pg) = platform.pg_clusters.first() else {
        return Err(LocalError::Unsupported(
            "the platform declares no PgCluster; add one (see examples/platform.yaml)".into(),
        ));
    };
    if platform.pg_clusters.len() > 1 {
        return Err(LocalError::Unsupported(format!(
            "the platform declares {} PgClusters; the local driver runs one",
            platform.pg_clusters.len()
        )));
    }
    // PostgreSQL (one server, or a Patroni cluster behind HAProxy) and the schema
    let PlatformDatabase {
        postgres,
        db_url,
        edge_db_url,
        ha,
        mut client,
    } = up_database(&state_dir, pg, &mut report).await?;

    // media pools and their members; pools no longer declared lose theirs
    let names: Vec<String> = platform.media_pools.iter().map(|p| p.name_any()).collect();
    let cleanup = sipstack_db::media_pool::remove_absent(&client, &names).await?;
    for gone in &cleanup.removed {
        report.line(format!(
            "media      MediaPool/{gone} is no longer declared: removed"
        ));
    }
    for kept in &cleanup.still_referenced {
        report.notice(format!("MediaPool/{} is no longer declared but routes still name it; delete those routes to remove it", kept.name));
    }
    let declared_sets: Vec<i32> = platform.media_pools.iter().map(|p| p.spec.set_id).collect();
    let mut stale_sets: Vec<i32> = sipstack_db::dispatcher::list(&client)
        .await?
        .iter()
        .map(|d| d.set_id)
        .filter(|s| !declared_sets.contains(s))
        .collect();
    stale_sets.sort_unstable();
    stale_sets.dedup();
    for set in stale_sets {
        // an undeclared member would still get calls, and be trusted as a media node
        let change = sipstack_db::dispatcher::replace_set(&client, set, &[]).await?;
        report.line(format!(
            "media      dispatcher set {set} belongs to no declared pool: {} member(s) removed",
            change.removed.len()
        ));
    }
    let mut standins = Vec::new();
    let mut media_nodes = Vec::new();
    // edges already running stop sending calls to removed members at once
    let secrets_dir = state_dir.join("secrets");
    // one token for the RPC of every edge this state directory runs
    let rpc_token = state::secret(&secrets_dir, state::RPC_TOKEN_SECRET)?;
    let trunk_key = state::trunk_key(&state_dir)?;
    let running_edges: Vec<EdgeRpc> = platform
        .sip_edges
        .iter()
        .map(|e| local_edge_rpc(e, &rpc_token))
        .collect();
    let freeswitch_binary = freeswitch::find_freeswitch();
    for pool in &platform.media_pools {
        let name = pool.name_any();
        let replicas = pool.spec.replicas;
        if replicas > sipstack_crds::mediapool::MAX_LOCAL_REPLICAS {
            return Err(LocalError::Unsupported(format!(
                "MediaPool/{name}: spec.replicas is {replicas}; the local driver runs at most {} nodes per pool on one host. \
                 Lower spec.replicas, or run the pool on Kubernetes",
                sipstack_crds::mediapool::MAX_LOCAL_REPLICAS
            )));
        }
        let nodes: Vec<MediaNode> = (0..replicas)
            .map(|r| {
                MediaNode::new(&state_dir, pool, r).ok_or_else(|| {
                    LocalError::Unsupported(format!(
                        "MediaPool/{name}: replica {r} has no loopback address; check spec.local.firstAddress"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut replica_uris = Vec::new();
        match (&freeswitch_binary, replicas > 0) {
            (Some(binary), true) => {
                let cdr = cdr_database(pool, &db_url)?;
                let secrets = NodeSecrets {
                    esl_password: state::secret(&secrets_dir, &freeswitch::esl_password_secret(&name))?,
                    cdr_password: cdr.as_ref().map(|(_, password)| password.clone()),
                };
                for node in &nodes {
                    let options = node_render_options(&platform, pool, node, cdr.as_ref().map(|(db, _)| db.clone()));
                    let files = render_freeswitch(pool, &options)?;
                    let (pid, change) = node.ensure(binary, &files, &secrets).await?;
                    let what = match change {
                        NodeChange::Unchanged => "runs",
                        NodeChange::Started => "started",
                        NodeChange::Restarted => "restarted (its configuration changed)",
                    };
                    report.line(format!(
                        "media      MediaPool/{name} node {} {what}: FreeSWITCH pid {pid}, SIP {}, event socket {}, log {}",
                        node.replica,
                        node.uri(),
                        node.esl_address(),
                        node.log_path().display()
                    ));
                    replica_uris.push(node.uri());
                    media_nodes.push(MediaNodeState {
                        pool: name.clone(),
                        replica: node.replica,
                        uri: node.uri(),
                        event_socket: node.esl_address(),
                        pid,
                        log: node.log_path(),
                    });
                }
            }
            (None, true) if options.standins => {
                for node in &nodes {
                    if let Some(s) = standin::ensure(&state_dir, &name, &node.uri()).await? {
                        report.line(format!("media      MediaPool/{name} node {} answered by a SIPp stand-in (pid {}) at {}: OPTIONS and INVITE, no RTP", node.replica, s.pid, s.uri));
                        replica_uris.push(s.uri.clone());
                        standins.push(s);
                    }
                }
            }
            (None, true) => report.notice(format!(
                "MediaPool/{name}: FreeSWITCH was not found (PATH or {}); its {replicas} replica(s) do not run",
                freeswitch::FREESWITCH_ENV
            )),
            (_, false) => {}
        }
        let retiring: Vec<MediaNode> =
            freeswitch::existing_replicas(&freeswitch::pool_dir(&state_dir, &name))
                .into_iter()
                .filter(|r| *r >= replicas)
                .filter_map(|r| MediaNode::new(&state_dir, pool, r))
                .collect();
        sync_pool(
            &mut client,
            pool,
            &replica_uris,
            &running_edges,
            &mut report,
        )
        .await?;
        // scale-in: out of the dispatcher set (above), then drained, then stopped
        for node in retiring {
            retire(&secrets_dir, &name, pool, node, &mut report).await?;
        }
        if options.standins {
            for member in &pool.spec.members {
                if let Some(s) = standin::ensure(&state_dir, &name, &member.uri).await? {
                    report.line(format!("media      {} answered by a SIPp stand-in (pid {}): OPTIONS and INVITE, no RTP", s.uri, s.pid));
                    standins.push(s);
                }
            }
            let keep: Vec<String> = standins
                .iter()
                .filter(|s| s.pool == name)
                .map(|s| s.uri.clone())
                .collect();
            for uri in standin::stop_others(&freeswitch::pool_dir(&state_dir, &name), &keep).await?
            {
                report.line(format!(
                    "media      stand-in {uri} of MediaPool/{name} stopped: no longer a member"
                ));
            }
        }
    }
    if !standins.is_empty() {
        report.notice(format!(
            "FreeSWITCH was not found (PATH or {}); the media nodes are SIP stand-ins that answer calls without audio. \
             Install FreeSWITCH (see the README) for calls with media",
            freeswitch::FREESWITCH_ENV
        ));
    }

    // the edges
    let edges = up_edges(
        &state_dir,
        &platform,
        &EdgeSecretsSource {
            db_url: &edge_db_url,
            secrets_dir: &secrets_dir,
            rpc_token: &rpc_token,
            trunk_key: &trunk_key,
        },
        &mut report,
    )
    .await?;

    // edges no longer declared stop (their directory stays, with its log)
    let declared: Vec<String> = platform.sip_edges.iter().map(|e| e.name_any()).collect();
    for gone in edge_dirs(&state_dir)? {
        if !declared.contains(&gone) && LocalKamailio::new(&state_dir, &gone).stop().await? {
            report.line(format!(
                "edge       SipEdge/{gone} is no longer declared: Kamailio stopped"
            ));
        }
    }

    let state = LocalState {
        state_dir: state_dir.clone(),
        platform_file: platform_copy,
        db_url_file: secrets_dir.join("db-url"),
        postgres: PostgresState {
            cluster: pg.name_any(),
            port: pg.spec.port,
            database: pg.spec.database.name.clone(),
            owner: pg.spec.database.owner.clone(),
            data_dir: postgres.data_dir().to_path_buf(),
            log: postgres.log_file().to_path_buf(),
            ha,
        },
        edges,
        standins: standins
            .iter()
            .map(|s| StandinState {
                uri: s.uri.clone(),
                pool: s.pool.clone(),
                pid: s.pid,
            })
            .collect(),
        media_nodes,
    };
    state::write_secret(&state.db_url_file, &db_url)?;
    // the file may carry Secrets beside the sipstack kinds: keep the copy private
    state::write_secret(&state.platform_file, platform_text)?;
    state.save()?;
    report.line(format!("state      {}", state_dir.display()));
    Ok((state, report))
}

/// The RPC client of an edge the local driver runs.
fn local_edge_rpc(edge: &sipstack_crds::SipEdge, token: &str) -> EdgeRpc {
    EdgeRpc::for_socket(
        &edge.spec.rpc.address_on(sipstack_crds::Runtime::Local),
        edge.spec.rpc.port,
    )
    .with_token(token)
}

/// Where the edges' secrets come from.
struct EdgeSecretsSource<'a> {
    db_url: &'a str,
    secrets_dir: &'a Path,
    rpc_token: &'a str,
    trunk_key: &'a str,
}

/// The step of `up` that renders and runs every SipEdge's Kamailio (restarting
/// one whose configuration changed) and has it load the dispatcher sets.
async fn up_edges(
    state_dir: &Path,
    platform: &Platform,
    secrets: &EdgeSecretsSource<'_>,
    report: &mut Report,
) -> Result<Vec<EdgeState>, LocalError> {
    let mut edges = Vec::new();
    for edge in &platform.sip_edges {
        let kam = LocalKamailio::new(state_dir, &edge.name_any());
        let options = KamailioRenderOptions {
            runtime_dir: kam.runtime_dir().display().to_string(),
            tls_files: None,
            cdr_spool_dir: kam.cdr_spool_dir().display().to_string(),
            ..Default::default()
        };
        let rendered = render_kamailio(edge, &platform.pools_of(edge), &options)?;
        let rpc = local_edge_rpc(edge, secrets.rpc_token);
        let edge_secrets = EdgeSecrets {
            db_url: secrets.db_url.to_string(),
            auth_secret: state::secret(
                secrets.secrets_dir,
                &format!("edge-{}-auth-secret", edge.name_any()),
            )?,
            rpc_token: secrets.rpc_token.to_string(),
            trunk_key: secrets.trunk_key.to_string(),
        };
        let settings = RunSettings {
            config: rendered.text,
            shared_memory_mb: edge.spec.process.shared_memory_mb,
            private_memory_mb: edge.spec.process.private_memory_mb,
        };
        let (pid, change) = kam.ensure(&settings, &edge_secrets, &rpc).await?;
        if change == EdgeChange::Restarted {
            report.line(format!(
                "edge       SipEdge/{}: its configuration changed; Kamailio was restarted",
                edge.name_any()
            ));
        }
        // the members written above are in the database; make sure this edge uses them now
        rpc.reload(Reload::Dispatcher, Duration::from_secs(8))
            .await?;
        let sockets: Vec<String> = edge
            .spec
            .listen
            .iter()
            .map(|l| format!("{}:{}:{}", l.transport.as_str(), l.address, l.port))
            .collect();
        report.line(format!(
            "edge       SipEdge/{} (Kamailio pid {pid}) SIP on {}, RPC {}, config {}, log {}",
            edge.name_any(),
            sockets.join(" "),
            rpc.url(),
            kam.config_path().display(),
            kam.log_path().display()
        ));
        let shipper = cdr_shipper::LocalShipper::new(&kam.dir, &edge.name_any());
        match cdr_shipper::find_shipper() {
            Some(program) => {
                let pid = shipper.ensure(&program, rpc.url(), secrets.db_url, secrets.rpc_token)?;
                report.line(format!(
                    "edge       SipEdge/{}: call records shipped from {} (sipstack-cdr-shipper pid {pid}, log {})",
                    edge.name_any(),
                    shipper.spool_dir().display(),
                    shipper.log_path().display()
                ));
            }
            None => report.line(format!(
                "edge       SipEdge/{}: {} not found ({} or next to sipctl): call records stay in {}",
                edge.name_any(),
                cdr_shipper::PROGRAM,
                cdr_shipper::PROGRAM_ENV,
                shipper.spool_dir().display()
            )),
        }
        edges.push(EdgeState {
            name: edge.name_any(),
            sip: sockets,
            rpc_url: rpc.url().to_string(),
            rpc_token_file: Some(state::rpc_token_file(state_dir)),
            domains: edge.spec.domains.clone(),
            config: kam.config_path(),
            log: kam.log_path(),
        });
    }

    Ok(edges)
}

/// What [`up_database`] brought up.
struct PlatformDatabase {
    postgres: LocalPostgres,
    /// For sipctl and the schema: the read-write endpoint.
    db_url: String,
    /// For the edges: through the pooler when there is one.
    edge_db_url: String,
    ha: Option<HaState>,
    client: tokio_postgres::Client,
}

/// The step of `up` that runs PostgreSQL (one server, or a Patroni cluster behind
/// HAProxy and PgBouncer), creates the platform's database and applies the schema.
async fn up_database(
    state_dir: &Path,
    pg: &PgCluster,
    report: &mut Report,
) -> Result<PlatformDatabase, LocalError> {
    let postgres = local_postgres(state_dir, pg);
    let (db_url, edge_db_url, ha) = if pg.spec.instances > 1 {
        let cluster = LocalCluster::new(state_dir, pg);
        let mut lines = Vec::new();
        let endpoints = cluster.up(&mut lines).await?;
        for l in lines {
            report.line(l);
        }
        let db_url = cluster
            .read_write()
            .ensure_database(&pg.spec.database.owner, &pg.spec.database.name)
            .await?;
        // the edges go through the pooler when there is one; sipctl keeps to the
        // read-write endpoint (its prepared statements need a session of their own)
        let edge_db_url = match cluster.start_pooler(&pg.spec.database.owner).await? {
            Some(port) => {
                report.line(format!("postgres   PgBouncer on 127.0.0.1:{port} in front of the read-write endpoint, for the edges"));
                LocalPostgres::new(cluster.dir(), port, pg.spec.postgres_version.major())
                    .url_for_owner(&pg.spec.database.owner, &pg.spec.database.name)?
            }
            None => db_url.clone(),
        };
        let ha = HaState {
            members: cluster.member_names(),
            patroni_urls: endpoints.patroni_urls,
            rest_password_file: Some(cluster.rest_password_file()),
            read_only_port: endpoints.read_only_port,
            pooler_port: endpoints.pooler_port,
            etcd_endpoints: endpoints.etcd_endpoints,
        };
        (db_url, edge_db_url, Some(ha))
    } else {
        if LocalCluster::is_cluster_dir(postgres.state_dir()) {
            return Err(LocalError::Unsupported(format!(
                "{} holds a Patroni cluster of PgCluster/{}, but spec.instances is 1; set spec.instances back, or \
                 run `sipctl local down` and move that directory away to start a single server",
                postgres.state_dir().display(),
                pg.name_any()
            )));
        }
        postgres.init().await?;
        postgres.start().await?;
        let db_url = postgres
            .ensure_database(&pg.spec.database.owner, &pg.spec.database.name)
            .await?;
        (db_url.clone(), db_url, None)
    };
    let mut client = sipstack_db::connect(&db_url, Duration::from_secs(10)).await?;
    let migrated = sipstack_db::migrate(&mut client).await?;
    report.line(format!(
        "postgres   PgCluster/{} on 127.0.0.1:{}, database {} (schema version {}, {} migration(s) applied){}",
        pg.name_any(),
        pg.spec.port,
        pg.spec.database.name,
        migrated.version,
        migrated.applied.len(),
        if ha.is_some() { String::new() } else { format!(", log {}", postgres.log_file().display()) }
    ));

    Ok(PlatformDatabase {
        postgres,
        db_url,
        edge_db_url,
        ha,
        client,
    })
}

/// The names of the edges that have a directory (`edge-NAME`) in `state_dir`.
fn edge_dirs(state_dir: &Path) -> Result<Vec<String>, LocalError> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir)
        .map_err(|e| LocalError::io(state_dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("edge-"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// Stops every process of the local platform; the data stays for the next `up`.
///
/// It finds the processes from the state directory's own pid files and data
/// directories, not from `state.json` alone, so it also cleans up after an `up`
/// that failed half-way.
pub async fn down(state_dir: &Path) -> Result<Report, LocalError> {
    if !state_dir.is_dir() {
        return Err(LocalError::NotFound(state_dir.display().to_string()));
    }
    let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(state_dir)
        .map_err(|e| LocalError::io(state_dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    entries.sort();
    if entries.is_empty() && !LocalState::path(state_dir).exists() {
        return Err(LocalError::NotFound(state_dir.display().to_string()));
    }
    let _lock = state::StateLock::acquire(state_dir, "down")?;
    let mut report = Report::default();
    // the edges first (they hold database connections), then the media, then PostgreSQL
    let known = LocalState::load(state_dir).ok();
    for (name, _) in &entries {
        if let Some(edge) = name.strip_prefix("edge-") {
            let kam = LocalKamailio::new(state_dir, edge);
            let shipper = cdr_shipper::LocalShipper::new(&kam.dir, edge);
            shipper.stop().await?;
            if kam.stop().await? {
                report.line(format!("edge       SipEdge/{edge} stopped"));
            }
            // nothing writes the spool now: what is left goes to the database while it runs
            let ship = (
                cdr_shipper::find_shipper(),
                known
                    .as_ref()
                    .and_then(|k| k.edges.iter().find(|e| e.name == edge)),
                known.as_ref().and_then(|k| k.db_url().ok()),
                std::fs::read_to_string(state::rpc_token_file(state_dir)).ok(),
            );
            if let (Some(program), Some(edge_state), Some(db_url), Some(token)) = ship {
                let spooled = std::fs::read_dir(shipper.spool_dir())
                    .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
                    .unwrap_or(false);
                if spooled {
                    let what = shipper
                        .ship_remaining(&program, &edge_state.rpc_url, &db_url, token.trim())
                        .await?;
                    report.line(format!("edge       SipEdge/{edge}: {what}"));
                }
            }
        }
    }
    for (name, path) in &entries {
        if let Some(pool) = name.strip_prefix("media-") {
            for replica in freeswitch::stop_all(state_dir, pool, Duration::from_secs(10)).await? {
                report.line(format!(
                    "media      MediaPool/{pool} node {replica} (FreeSWITCH) stopped"
                ));
            }
            for uri in standin::stop_all(path).await? {
                report.line(format!(
                    "media      stand-in {uri} of MediaPool/{pool} stopped"
                ));
            }
        }
    }
    for (name, path) in &entries {
        if let Some(cluster) = name.strip_prefix("pg-") {
            if LocalCluster::is_cluster_dir(path) {
                for what in LocalCluster::stop_all(path).await? {
                    report.line(format!("postgres   PgCluster/{cluster}: {what} stopped"));
                }
                report.line(format!(
                    "postgres   PgCluster/{cluster} stopped (data kept in {})",
                    path.display()
                ));
                continue;
            }
            let major = std::fs::read_to_string(path.join("data/PG_VERSION"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(15);
            // the port does not matter for stopping: pg_ctl finds the server by its data directory
            let postgres = LocalPostgres::new(path, 0, major);
            if postgres.stop().await? {
                report.line(format!(
                    "postgres   PgCluster/{cluster} stopped (data kept in {})",
                    postgres.data_dir().display()
                ));
            }
        }
    }
    report.line(format!(
        "state      {} (run `sipctl local up` again to resume)",
        state_dir.display()
    ));
    Ok(report)
}

/// What runs of the local platform, checked now.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: LocalState,
    pub postgres_running: bool,
    /// The Patroni cluster's members now, when the cluster runs under Patroni;
    /// the error when none of its REST APIs answered.
    pub cluster: Option<Result<sipstack_patroni::Cluster, String>>,
    pub edges: Vec<EdgeStatus>,
    pub standins: Vec<(StandinState, bool)>,
    /// Each FreeSWITCH node with what its event socket says now.
    pub media_nodes: Vec<(MediaNodeState, freeswitch::NodeHealth)>,
}

#[derive(Debug, Clone)]
pub struct EdgeStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub version: Option<String>,
    pub destinations: Vec<sipstack_edgerpc::LiveDestination>,
    pub rpc_error: Option<String>,
}

pub async fn status(state_dir: &Path) -> Result<Status, LocalError> {
    let state = LocalState::load(state_dir)?;
    let platform = Platform::from_yaml(
        &std::fs::read_to_string(&state.platform_file)
            .map_err(|e| LocalError::io(&state.platform_file, e))?,
    )?;
    let mut cluster = None;
    let postgres_running = match (platform.pg_clusters.first(), &state.postgres.ha) {
        (Some(_), Some(ha)) => {
            let found = sipstack_patroni::PatroniClient::new(ha.patroni_urls.clone())
                .cluster()
                .await;
            let running = found.as_ref().is_ok_and(|c| c.leader().is_some());
            cluster = Some(found.map_err(|e| e.to_string()));
            running
        }
        (Some(pg), None) => local_postgres(&state.state_dir, pg).is_running(),
        (None, _) => false,
    };
    let mut edges = Vec::new();
    for e in &state.edges {
        let kam = LocalKamailio::new(&state.state_dir, &e.name);
        let pid = kam.running_pid();
        let rpc = e.rpc()?;
        let (version, destinations, rpc_error) = match pid {
            Some(_) => match (rpc.version().await, rpc.dispatcher_list().await) {
                (Ok(v), Ok(d)) => (Some(v), d, None),
                (Err(e), _) | (_, Err(e)) => (None, Vec::new(), Some(e.to_string())),
            },
            None => (None, Vec::new(), None),
        };
        edges.push(EdgeStatus {
            name: e.name.clone(),
            pid,
            version,
            destinations,
            rpc_error,
        });
    }
    let standins = state
        .standins
        .iter()
        .map(|s| (s.clone(), process::is_alive(s.pid)))
        .collect();
    let mut media_nodes = Vec::new();
    for n in &state.media_nodes {
        let health = match platform.media_pools.iter().find(|p| p.name_any() == n.pool) {
            Some(pool) => match MediaNode::new(&state.state_dir, pool, n.replica) {
                Some(node) if node.running_pid().is_some() => {
                    let secret = freeswitch::esl_password_file(&state.state_dir, &n.pool);
                    match std::fs::read_to_string(&secret) {
                        Ok(password) => node.health(password.trim()).await,
                        Err(e) => freeswitch::NodeHealth {
                            error: Some(format!("{}: {e}", secret.display())),
                            ..Default::default()
                        },
                    }
                }
                _ => freeswitch::NodeHealth {
                    error: Some("not running".into()),
                    ..Default::default()
                },
            },
            None => freeswitch::NodeHealth {
                error: Some("its pool is no longer declared".into()),
                ..Default::default()
            },
        };
        media_nodes.push((n.clone(), health));
    }
    Ok(Status {
        state,
        postgres_running,
        cluster,
        edges,
        standins,
        media_nodes,
    })
}

fn local_postgres(state_dir: &Path, pg: &PgCluster) -> LocalPostgres {
    LocalPostgres::new(
        state_dir.join(format!("pg-{}", pg.name_any())),
        pg.spec.port,
        pg.spec.postgres_version.major(),
    )
}

/// Writes a pool and its static members to the database with the dispatcher
/// sync engine: members added to a serving pool wait for their first answered
/// probe, removed ones are disabled on the running `edges` at once and deleted
/// (the reload after the edges are up makes them load the rest).
async fn sync_pool(
    client: &mut tokio_postgres::Client,
    pool: &MediaPool,
    replica_uris: &[String],
    edges: &[EdgeRpc],
    report: &mut Report,
) -> Result<(), LocalError> {
    let name = pool.name_any();
    let mut members = sipstack_dispatch::pool::static_members(pool);
    members.extend(
        replica_uris
            .iter()
            .map(|uri| sipstack_dispatch::pool::node_member(pool, uri)),
    );
    let set = sipstack_dispatch::pool::dispatcher_set(pool, members);
    let plan = sipstack_dispatch::sync_once(client, edges, &set).await?;
    let (set_id, members) = (set.policy.set_id, set.members);
    report.line(format!(
        "media      MediaPool/{name}: dispatcher set {} with {} member(s) ({} added, {} removed)",
        set_id,
        members.len(),
        plan.inserted().len(),
        plan.deleted().len()
    ));
    Ok(())
}

/// Whether an address is on this host's loopback (a stand-in can bind it).
pub(crate) fn is_loopback(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Where a pool's CDRs go locally (the platform database the driver runs) and the
/// password of its owner; `None` when the pool writes none.
fn cdr_database(
    pool: &MediaPool,
    db_url: &str,
) -> Result<Option<(CdrDatabase, String)>, LocalError> {
    if !pool.spec.cdr.enabled {
        return Ok(None);
    }
    let config: tokio_postgres::Config = db_url.parse().map_err(|e| {
        LocalError::Unsupported(format!("the platform's database URL does not parse: {e}"))
    })?;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or_default().to_string();
    let user = config.get_user().unwrap_or_default().to_string();
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    Ok(Some((
        CdrDatabase {
            host: "127.0.0.1".into(),
            port,
            database,
            user,
        },
        password,
    )))
}

/// What a local node is rendered with: its own loopback address for SIP, RTP and the
/// event socket; SIP from the addresses of the edges that use the pool only.
pub fn node_render_options(
    platform: &Platform,
    pool: &MediaPool,
    node: &MediaNode,
    cdr: Option<CdrDatabase>,
) -> FreeswitchRenderOptions {
    let name = pool.name_any();
    let mut sip_allow_from: Vec<String> = Vec::new();
    for edge in platform
        .sip_edges
        .iter()
        .filter(|e| e.spec.media_pools.contains(&name))
    {
        for l in &edge.spec.listen {
            let net = match l.address.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => "127.0.0.0/8".to_string(),
                Ok(IpAddr::V4(ip)) => format!("{ip}/32"),
                Ok(IpAddr::V6(ip)) => format!("{ip}/128"),
                Err(_) => continue,
            };
            if !sip_allow_from.contains(&net) {
                sip_allow_from.push(net);
            }
        }
    }
    if sip_allow_from.is_empty() {
        // no edge uses the pool: nothing may place calls but this host
        sip_allow_from.push("127.0.0.1/32".into());
    }
    FreeswitchRenderOptions {
        bind_address: Some(node.address.to_string()),
        sip_allow_from,
        event_socket_address: node.address.to_string(),
        // the control plane on this host connects from 127.0.0.1 (the kernel's source
        // for every loopback destination); other loopback addresses are media nodes
        // and edges, which have no business on the event socket
        event_socket_allow_from: vec!["127.0.0.1/32".into()],
        cdr_database: cdr,
        log_file: true,
    }
}

/// Scale-in of one node that is already out of the dispatcher set: it refuses new
/// calls, the calls it carries end (for spec.drainSeconds at most), then it stops
/// and its directory goes.
async fn retire(
    secrets_dir: &Path,
    name: &str,
    pool: &MediaPool,
    node: MediaNode,
    report: &mut Report,
) -> Result<(), LocalError> {
    if node.running_pid().is_some() {
        let password = state::secret(secrets_dir, &freeswitch::esl_password_secret(name))?;
        let grace = Duration::from_secs(pool.spec.drain_seconds.into());
        match node.drain(&password, grace).await {
            Ok(0) => report.line(format!(
                "media      MediaPool/{name} node {} drained: no calls left",
                node.replica
            )),
            Ok(n) => report.notice(format!(
                "MediaPool/{name} node {}: {n} call(s) still ran after spec.drainSeconds ({}s); they are cut",
                node.replica, pool.spec.drain_seconds
            )),
            Err(e) => report.notice(format!(
                "MediaPool/{name} node {}: could not drain it over its event socket ({e}); stopping it",
                node.replica
            )),
        }
        node.stop(Duration::from_secs(5)).await?;
    }
    std::fs::remove_dir_all(&node.dir).map_err(|e| LocalError::io(&node.dir, e))?;
    report.line(format!(
        "media      MediaPool/{name} node {} removed (scale-in to {})",
        node.replica, pool.spec.replicas
    ));
    Ok(())
}
