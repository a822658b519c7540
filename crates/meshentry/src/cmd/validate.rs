use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use meshentry_api::{LoadOptions, Loaded, Severity, load_paths};

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories (.yaml, .yml, .json; recursive), or `-` for stdin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Namespace of resources that do not set metadata.namespace.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    #[command(flatten)]
    pub mesh: crate::cmd::mesh::MeshArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Exit 0 when everything is valid (warnings allowed), 1 when anything is invalid.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let mut loaded = load(&args.paths, &args.namespace, &args.mesh)?;
    // References between resources (gateways, hosts, subsets, imports), as warnings.
    let analysis = meshentry_registry::analyze::analyze(&loaded);
    loaded.add_findings(analysis);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &loaded.findings)?;
            writeln!(out)?;
        }
        Output::Text => {
            for f in &loaded.findings {
                writeln!(out, "{f}")?;
            }
            for n in &loaded.notices {
                eprintln!("{n}");
            }
            eprintln!("{}", summary(&loaded));
        }
    }
    Ok(if loaded.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Loads and validates, under `--mesh-config` when given; shared by the subcommands that read
/// configuration.
pub fn load(paths: &[PathBuf], namespace: &str, mesh: &crate::cmd::mesh::MeshArgs) -> anyhow::Result<Loaded> {
    let opts = LoadOptions {
        default_namespace: namespace.to_string(),
    };
    let mut loaded = load_paths(paths, &opts).context("cannot read configuration")?;
    crate::cmd::mesh::apply(mesh, &mut loaded)?;
    Ok(loaded)
}

fn summary(loaded: &Loaded) -> String {
    let count = |s: Severity| loaded.findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings, infos) = (count(Severity::Error), count(Severity::Warning), count(Severity::Info));
    let invalid = loaded.resources.iter().filter(|r| !r.valid).count();
    let resources = loaded.resources.len();
    let mut line = format!(
        "{} {}, {} invalid: {} {}, {} {}",
        resources,
        if resources == 1 { "resource" } else { "resources" },
        invalid,
        errors,
        if errors == 1 { "error" } else { "errors" },
        warnings,
        if warnings == 1 { "warning" } else { "warnings" },
    );
    if infos > 0 {
        line.push_str(&format!(", {infos} info"));
    }
    line
}
