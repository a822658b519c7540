use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use meshentry_api::{LoadOptions, Loaded, Severity};

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories (.yaml, .yml, .json; recursive), or `-` for stdin.
    #[arg(required_unless_present = "kubernetes")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub kube: crate::cmd::kube::KubeArgs,
    /// The namespace of resources that do not set metadata.namespace, as `kubectl apply -n`
    /// would put them (default: `default`). With --kubernetes, also the only namespace read
    /// from the cluster, as `istioctl analyze -n` (default: all namespaces).
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// `text` (one finding per line, a summary on stderr) or `json` (every finding, for tools).
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: Output,
    /// Succeed when the paths (and the cluster) hold no resource at all. Without it, finding
    /// nothing is an error, so that a CI job pointed at the wrong directory fails.
    #[arg(long)]
    pub allow_empty: bool,
    #[command(flatten)]
    pub mesh: crate::cmd::mesh::MeshArgs,
    #[command(flatten)]
    pub domain: DomainArgs,
    /// Exit 1 when a finding is at least this severe (error, warning or info; any case), as
    /// `istioctl analyze --failure-threshold`. Validation errors are errors.
    #[arg(long, value_name = "LEVEL", default_value = "error", value_parser = parse_level)]
    pub failure_threshold: Severity,
    /// Print only the findings at least this severe (error, warning or info; any case), as
    /// `istioctl analyze --output-threshold`. The exit status still counts every finding.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_level)]
    pub output_threshold: Severity,
}

/// `--cluster-domain`, for the subcommands that build the registry.
#[derive(clap::Args, Clone, Debug)]
pub struct DomainArgs {
    /// The cluster's DNS domain (istiod's --domain): a Kubernetes Service is
    /// NAME.NAMESPACE.svc.DOMAIN, and a short host `name` means name.NAMESPACE.svc.DOMAIN.
    #[arg(long, value_name = "DOMAIN", default_value = meshentry_api::DEFAULT_CLUSTER_DOMAIN, value_parser = meshentry_api::ClusterDomain::new)]
    pub cluster_domain: meshentry_api::ClusterDomain,
}

/// A severity as istioctl reads its thresholds: `Error`, `Warning` or `Info`, in any case.
fn parse_level(s: &str) -> Result<Severity, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(Severity::Error),
        "warning" => Ok(Severity::Warning),
        "info" => Ok(Severity::Info),
        _ => Err(format!("invalid level {s:?} (valid levels: error, warning, info)")),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Exit 1 when a finding is at or above the failure threshold (by default: anything invalid,
/// or an `istioctl analyze` error such as IST0101), else 0.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let namespace = args.namespace.as_deref().unwrap_or("default");
    let mut loaded = load_from(&args.paths, namespace, &args.mesh, |loaded, opts| {
        crate::cmd::kube::load_into(&args.kube, loaded, opts, args.namespace.as_deref())
    })?;
    loaded.cluster_domain = args.domain.cluster_domain.clone();
    // Checks across resources, as `istioctl analyze` makes them, on everything Istio reads.
    let analysis = meshentry_registry::analyze::analyze(&loaded);
    loaded.add_findings(analysis);
    let missing = missing_files(&loaded);
    loaded.add_findings(missing);
    let shown: Vec<&meshentry_api::Finding> = loaded
        .findings
        .iter()
        .filter(|f| f.severity <= args.output_threshold)
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &shown)?;
            writeln!(out)?;
        }
        Output::Text => {
            for f in &shown {
                writeln!(out, "{f}")?;
            }
            for n in &loaded.notices {
                eprintln!("{n}");
            }
            eprintln!("{}", summary(&loaded, loaded.findings.len() - shown.len()));
        }
    }
    let failed = loaded.findings.iter().any(|f| f.severity <= args.failure_threshold);
    if loaded.resources.is_empty() && loaded.findings.is_empty() && !args.allow_empty {
        eprintln!(
            "meshentry: no resources found in {} (pass --allow-empty if that is expected)",
            searched(args)
        );
        return Ok(ExitCode::from(1));
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// What was read, for the "no resources found" message.
fn searched(args: &Args) -> String {
    let mut places: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
    if args.kube.kubernetes {
        places.push(match &args.namespace {
            Some(ns) => format!("the cluster's namespace {ns}"),
            None => "the cluster".to_string(),
        });
    }
    places.join(", ")
}

/// A warning for each file a DestinationRule names (certificates, keys, CA bundles) that does
/// not exist on this machine: a proxy run here fails every connection the policy applies to,
/// and `explain` refuses those routes. Objects read from a cluster are checked the same way,
/// as `proxy --kubernetes` run here would read these files here.
fn missing_files(loaded: &Loaded) -> Vec<meshentry_api::Finding> {
    let mut out = Vec::new();
    for r in loaded.analyzable() {
        for (path, file) in meshentry_api::validate::files::read_files(&r.spec) {
            // Only a file known to be absent: one this user may not read can still be the
            // proxy's to read.
            let absent = std::fs::metadata(file).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            if absent {
                out.push(loaded.finding(
                    r,
                    &path,
                    Severity::Warning,
                    format!(
                        "file {file:?} does not exist on this machine: a proxy run here cannot originate this TLS, and every connection the policy applies to fails"
                    ),
                ));
            }
        }
    }
    out
}

/// Loads and validates, under `--mesh-config` when given; shared by the subcommands that read
/// configuration.
pub fn load(
    paths: &[PathBuf],
    namespace: &str,
    mesh: &crate::cmd::mesh::MeshArgs,
    kube: &crate::cmd::kube::KubeArgs,
) -> anyhow::Result<Loaded> {
    load_from(paths, namespace, mesh, |loaded, opts| {
        crate::cmd::kube::load_into(kube, loaded, opts, None)
    })
}

/// Loads and validates the files, then what `more` adds (a cluster's objects).
pub fn load_from(
    paths: &[PathBuf],
    namespace: &str,
    mesh: &crate::cmd::mesh::MeshArgs,
    more: impl FnOnce(&mut Loaded, &LoadOptions) -> anyhow::Result<()>,
) -> anyhow::Result<Loaded> {
    let opts = LoadOptions {
        default_namespace: namespace.to_string(),
    };
    let mut loaded = Loaded::default();
    for path in paths {
        loaded.add_path(path, &opts).context("cannot read configuration")?;
    }
    more(&mut loaded, &opts).context("cannot read the cluster's configuration")?;
    loaded.finish();
    crate::cmd::mesh::apply(mesh, &mut loaded)?;
    Ok(loaded)
}

/// One line: resources, invalid ones, findings per severity, and how many the output threshold
/// hid.
fn summary(loaded: &Loaded, hidden: usize) -> String {
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
    if hidden > 0 {
        line.push_str(&format!(" ({hidden} below the output threshold not shown)"));
    }
    line
}
