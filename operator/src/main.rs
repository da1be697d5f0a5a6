//! sipstack-operator: reconciles SipEdge, MediaPool and PgCluster on Kubernetes.

use clap::{Parser, Subcommand};

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
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", sipstack_crds::crds_yaml()),
    }
}
