//! `sipctl render`: what a component runs with, for review and debugging.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kube::ResourceExt;
use sipstack_crds::Platform;
use sipstack_crds::{MediaPool, PgCluster};
use sipstack_local::patroni::LocalCluster;
use sipstack_render::freeswitch::FreeswitchRenderOptions;
use sipstack_render::{
    render_freeswitch, render_haproxy, render_kamailio, render_patroni, render_pgbouncer,
    KamailioRenderOptions, PatroniTarget, PgbouncerTarget,
};

#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// Print the kamailio.cfg of a SipEdge.
    ///
    /// The database URL and the nonce secret are not in the output: Kamailio reads them
    /// from SIPSTACK_DB_URL and SIPSTACK_AUTH_SECRET.
    #[command(
        after_help = "Examples:\n  sipctl render kamailio -f examples/platform.yaml\n  sipctl render kamailio -f platform.yaml --name edge-east > kamailio.cfg"
    )]
    Kamailio(RenderKamailioArgs),
    /// Print the patroni.yml of one member of a PgCluster, as the local driver runs
    /// it, or the one the operator mounts into the StatefulSet's pods (--kubernetes).
    ///
    /// Passwords are not in the output: Patroni reads them from PATRONI_SUPERUSER_PASSWORD
    /// and PATRONI_REPLICATION_PASSWORD.
    #[command(
        after_help = "Examples:\n  sipctl render patroni -f platform.yaml --member 0\n  sipctl render patroni -f platform.yaml --kubernetes --namespace voice"
    )]
    Patroni(RenderPatroniArgs),
    /// Print the haproxy.cfg of a local PgCluster: a read-write endpoint that follows
    /// the primary, a read-only one over the replicas.
    #[command(after_help = "Example:\n  sipctl render haproxy -f platform.yaml")]
    Haproxy(RenderClusterArgs),
    /// Print the FreeSWITCH configuration of a MediaPool's nodes, as the operator
    /// mounts it (`freeswitch.xml`, `vars.xml`, `autoload_configs/*.xml`, the dialplan),
    /// or write the files into a directory.
    ///
    /// Passwords are not in the files: FreeSWITCH reads the event socket's from
    /// SIPSTACK_ESL_PASSWORD and libpq the CDR database's from PGPASSWORD.
    #[command(
        after_help = "Examples:\n  sipctl render freeswitch -f examples/platform.yaml\n  sipctl render freeswitch -f platform.yaml --name media --out /tmp/fs-conf\n  sipctl render freeswitch -f platform.yaml --replica 0 --out /tmp/fs-node-0\n  sipctl render freeswitch -f platform.yaml --only autoload_configs/sofia.conf.xml"
    )]
    Freeswitch(RenderFreeswitchArgs),
    /// Print the pgbouncer.ini of a PgCluster whose spec.pooler is enabled.
    #[command(after_help = "Example:\n  sipctl render pgbouncer -f platform.yaml")]
    Pgbouncer(RenderClusterArgs),
}

#[derive(Debug, Args)]
pub struct RenderFreeswitchArgs {
    /// Platform file with the MediaPool (and the PgCluster its CDRs go to).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// MediaPool to render; needed when the file declares several.
    #[arg(long)]
    pub name: Option<String>,
    /// Print only this file (a path as listed, e.g. vars.xml).
    #[arg(long, conflicts_with = "out")]
    pub only: Option<String>,
    /// Write the files under this directory instead of printing them.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Render replica N as `sipctl local up` runs it (its loopback address, SIP from
    /// the edges' addresses, CDRs to 127.0.0.1) instead of as a Kubernetes pod.
    #[arg(long)]
    pub replica: Option<i32>,
}

#[derive(Debug, Args)]
pub struct RenderClusterArgs {
    /// Platform file with the PgCluster.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// PgCluster to render; needed when the file declares several.
    #[arg(long)]
    pub name: Option<String>,
    /// State directory of the local platform (where the files and data live).
    #[arg(long, env = "SIPSTACK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenderPatroniArgs {
    #[command(flatten)]
    pub cluster: RenderClusterArgs,
    /// Member to render (0 to instances - 1).
    #[arg(long, default_value_t = 0)]
    pub member: u32,
    /// Render for the operator's StatefulSet instead of the local driver.
    #[arg(long)]
    pub kubernetes: bool,
    /// Namespace of the PgCluster (with --kubernetes).
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Args)]
pub struct RenderKamailioArgs {
    /// Platform file (multi-document YAML with the SipEdge and its MediaPools).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// SipEdge to render; needed when the file declares several.
    #[arg(long)]
    pub name: Option<String>,
    /// Directory of Kamailio's control socket.
    #[arg(long, default_value = "/run/kamailio")]
    pub runtime_dir: String,
}

pub fn run(cmd: RenderCommand) -> anyhow::Result<()> {
    match cmd {
        RenderCommand::Kamailio(args) => {
            let platform = load_platform(&args.file)?;
            let edge = platform.edge(args.name.as_deref())?;
            let options = KamailioRenderOptions {
                runtime_dir: args.runtime_dir,
                ..Default::default()
            };
            let rendered = render_kamailio(edge, &platform.pools_of(edge), &options)?;
            print!("{}", rendered.text);
            Ok(())
        }
        RenderCommand::Patroni(args) => {
            let platform = load_platform(&args.cluster.file)?;
            let pg = pg_cluster(&platform, args.cluster.name.as_deref())?;
            let rendered = if args.kubernetes {
                render_patroni(
                    pg,
                    &PatroniTarget::Kubernetes {
                        namespace: &args.namespace,
                    },
                )?
            } else {
                let cluster = LocalCluster::new(&state_dir(&args.cluster), pg);
                let dir = cluster.member_dir(args.member);
                let hosts = cluster.endpoints().etcd_endpoints;
                render_patroni(
                    pg,
                    &PatroniTarget::Local {
                        index: args.member,
                        dir: &dir,
                        etcd_hosts: hosts,
                    },
                )?
            };
            print!("{}", rendered.text);
            Ok(())
        }
        RenderCommand::Freeswitch(args) => {
            let platform = load_platform(&args.file)?;
            let pools: Vec<&MediaPool> = platform
                .media_pools
                .iter()
                .filter(|p| args.name.as_deref().is_none_or(|n| p.name_any() == n))
                .collect();
            let pool = match (pools.as_slice(), &args.name) {
                ([one], _) => *one,
                ([], Some(n)) => anyhow::bail!("the file declares no MediaPool named {n:?}"),
                ([], None) => anyhow::bail!("the file declares no MediaPool"),
                (_, _) => {
                    anyhow::bail!("the file declares several MediaPools; choose one with --name")
                }
            };
            let cdr = pool
                .spec
                .cdr
                .database
                .as_ref()
                .filter(|_| pool.spec.cdr.enabled)
                .and_then(|d| {
                    platform
                        .pg_clusters
                        .iter()
                        .find(|c| c.name_any() == d.pg_cluster)
                });
            let options = match args.replica {
                None => FreeswitchRenderOptions::for_cluster(cdr),
                Some(n) => {
                    let node = sipstack_local::freeswitch::MediaNode::new(
                        std::path::Path::new("/"),
                        pool,
                        n,
                    )
                    .with_context(|| {
                        format!("replica {n} has no loopback address (spec.local.firstAddress)")
                    })?;
                    let cdr = cdr.map(|c| {
                        sipstack_render::freeswitch::CdrDatabase::of_cluster(c, "127.0.0.1")
                    });
                    sipstack_local::node_render_options(&platform, pool, &node, cdr)
                }
            };
            let files = render_freeswitch(pool, &options)?;
            if let Some(only) = &args.only {
                let Some((_, file)) = files.iter().find(|(path, _)| path == only) else {
                    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
                    anyhow::bail!("no file {only:?}; the files are {}", names.join(", "));
                };
                print!("{}", file.text);
            } else if let Some(dir) = &args.out {
                for (path, file) in &files {
                    let target = dir.join(path);
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)
                            .with_context(|| format!("cannot create {}", parent.display()))?;
                    }
                    std::fs::write(&target, &file.text)
                        .with_context(|| format!("cannot write {}", target.display()))?;
                    println!("{}", target.display());
                }
            } else {
                for (path, file) in &files {
                    println!("<!-- ===== {path} ===== -->");
                    print!("{}", file.text);
                }
            }
            Ok(())
        }
        RenderCommand::Haproxy(args) => {
            let platform = load_platform(&args.file)?;
            let pg = pg_cluster(&platform, args.name.as_deref())?;
            print!("{}", render_haproxy(pg, None)?.text);
            Ok(())
        }
        RenderCommand::Pgbouncer(args) => {
            let platform = load_platform(&args.file)?;
            let pg = pg_cluster(&platform, args.name.as_deref())?;
            if !pg.spec.pooler.enabled {
                anyhow::bail!(
                    "PgCluster/{}: spec.pooler.enabled is false; set it to true to run PgBouncer",
                    pg.name_any()
                );
            }
            let cluster = LocalCluster::new(&state_dir(&args), pg);
            let userlist = cluster.dir().join("pgbouncer/userlist.txt");
            let target = PgbouncerTarget {
                upstream_host: "127.0.0.1",
                upstream_port: pg.spec.port,
                listen_addr: "127.0.0.1",
                auth_file: &userlist,
                unix_socket_dir: None,
                pid_file: None,
            };
            print!("{}", render_pgbouncer(pg, &target)?.text);
            Ok(())
        }
    }
}

fn state_dir(args: &RenderClusterArgs) -> PathBuf {
    args.state_dir
        .clone()
        .unwrap_or_else(sipstack_local::default_state_dir)
}

fn pg_cluster<'a>(platform: &'a Platform, name: Option<&str>) -> anyhow::Result<&'a PgCluster> {
    let found: Vec<&PgCluster> = platform
        .pg_clusters
        .iter()
        .filter(|p| name.is_none_or(|n| p.name_any() == n))
        .collect();
    match (found.as_slice(), name) {
        ([one], _) => Ok(one),
        ([], Some(n)) => anyhow::bail!("the file declares no PgCluster named {n:?}"),
        ([], None) => anyhow::bail!("the file declares no PgCluster"),
        (_, _) => anyhow::bail!("the file declares several PgClusters; choose one with --name"),
    }
}

pub fn load_platform(path: &std::path::Path) -> anyhow::Result<Platform> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Platform::from_yaml(&text)
        .with_context(|| format!("{} is not a usable platform file", path.display()))
}
