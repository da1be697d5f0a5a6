//! sipstack-operator: reconciles SipEdge, MediaPool and PgCluster on Kubernetes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sipstack_crds::Platform;
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
    }
    Ok(())
}
