use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories of resources, or `-` for stdin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(_args: &Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("registry: not built yet")
}
