//! sipstack-operator: reconciles SipEdge, MediaPool and PgCluster on Kubernetes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgAction, Parser, Subcommand};
use sipstack_crds::Platform;
use sipstack_operator::controller::{self, leader::LeaseSettings};
use sipstack_operator::{manifests, object};

/// The sipstack Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "sipstack-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions of SipEdge, MediaPool and PgCluster
    /// (`sipstack-operator crd | kubectl apply -f -`).
    Crd,
    /// Print every object the operator would apply for the resources in a platform file,
    /// as multi-document YAML, in the order it applies them.
    #[command(after_help = "\
Secrets whose values the operator generates (passwords, the edge's nonce secret) are
printed with the placeholder GENERATED-IN-CLUSTER-BY-SIPSTACK-OPERATOR and the
annotation sipstack.io/generated: the operator fills them with random values once,
in the cluster, and never overwrites them. Owner references are printed only for
resources that carry a metadata.uid (the API server assigns it), so the output is for
reading and diffing rather than for `kubectl apply`.

Examples:
  sipstack-operator manifests -f examples/platform.yaml
  sipstack-operator manifests -f platform.yaml --namespace voice > objects.yaml")]
    Manifests {
        /// The platform file (multi-document YAML, as for `kubectl apply -f`).
        #[arg(short = 'f', long = "file", value_name = "FILE.yaml")]
        file: PathBuf,
        /// Namespace of resources that do not name one in metadata.namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Run the controllers of SipEdge, MediaPool and PgCluster against the cluster of
    /// the in-cluster service account, or else of the kubeconfig (KUBECONFIG,
    /// ~/.kube/config).
    #[command(after_help = "\
Several replicas may run: they elect a leader on the Lease sipstack-operator (in
--lease-namespace), and only the leader acts. A leader that loses the Lease exits.

Examples:
  sipstack-operator run
  sipstack-operator run --namespace voice --leader-election=false --log-level debug")]
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(short = 'n', long, env = "SIPSTACK_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, value_name = "ADDRESS:PORT", default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Elect a leader among replicas on a Lease; turn off only with a single replica.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "true|false")]
    leader_election: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, POD_NAMESPACE,
    /// else the client's default namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease and in Events (default: the pod's name,
    /// POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives
    /// such as `info,sipstack_operator=debug`.
    #[arg(long, env = "SIPSTACK_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => print!("{}", sipstack_crds::crds_yaml()),
        Command::Manifests { file, namespace } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let platform = Platform::from_yaml(&text)
                .with_context(|| format!("{} is not a usable platform file", file.display()))?;
            let objects = manifests::build_all(&platform, &namespace)?;
            print!("{}", object::to_yaml(&objects)?);
        }
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run_operator(args))?;
        }
    }
    Ok(())
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level {:?} is not a level or a log filter",
            args.log_level
        )
    })?;
    tracing_subscriber::fmt().with_env_filter(filter).init();

    // kube's error repeats its causes in its own message: shown once, without the chain
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot configure the Kubernetes client (no in-cluster service account and no usable kubeconfig): {e}"
        )
    })?;
    let identity = match args.identity {
        Some(identity) => identity,
        None => host_identity(),
    };
    let leader_election = args.leader_election.then(|| {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        LeaseSettings::new(namespace, identity.clone())
    });
    let settings = controller::Settings {
        namespace: args.namespace,
        metrics_address: args.metrics_address,
        leader_election,
        identity,
    };
    controller::run(client, settings).await?;
    Ok(())
}

/// The host name with the process id: unique among replicas outside a pod too.
fn host_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sipstack-operator".into());
    format!("{host}-{}", std::process::id())
}
