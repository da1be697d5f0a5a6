//! Shell completion and man pages, generated from the command definitions.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  sipctl completion bash > /etc/bash_completion.d/sipctl\n  sipctl completion zsh > \"${fpath[1]}/_sipctl\""
)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  sipctl man /usr/local/share/man/man1 && man sipctl-add-subscriber"
)]
pub struct ManArgs {
    /// Directory for the pages (sipctl.1, sipctl-add-subscriber.1, ...).
    pub dir: PathBuf,
}

pub fn completion(args: CompletionArgs) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "sipctl", &mut std::io::stdout());
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("cannot write man pages to {}", args.dir.display()))?;
    println!("man pages written to {}", args.dir.display());
    Ok(())
}
