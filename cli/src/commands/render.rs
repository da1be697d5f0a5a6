//! `sipctl render`: what a component runs with, for review and debugging.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use sipstack_crds::Platform;
use sipstack_render::{render_kamailio, KamailioRenderOptions};

#[derive(Debug, Subcommand)]
pub enum RenderCommand {
    /// Print the kamailio.cfg of a SipEdge.
    ///
    /// The database URL and the nonce secret are not in the output: Kamailio reads them
    /// from SIPSTACK_DB_URL and SIPSTACK_AUTH_SECRET.
    #[command(after_help = "Examples:\n  sipctl render kamailio -f examples/platform.yaml\n  sipctl render kamailio -f platform.yaml --name edge-east > kamailio.cfg")]
    Kamailio(RenderKamailioArgs),
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
            let options = KamailioRenderOptions { runtime_dir: args.runtime_dir, ..Default::default() };
            let rendered = render_kamailio(edge, &platform.pools_of(edge), &options)?;
            print!("{}", rendered.text);
            Ok(())
        }
    }
}

pub fn load_platform(path: &std::path::Path) -> anyhow::Result<Platform> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Platform::from_yaml(&text).with_context(|| format!("{} is not a usable platform file", path.display()))
}
