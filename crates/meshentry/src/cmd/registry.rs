//! `meshentry registry`: the services and endpoints the resources describe, as Istio's
//! registry would hold them, optionally as one namespace's proxies see them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use meshentry_api::Resource;
use meshentry_registry::{Registry, Service, SidecarScope, select_sidecar};

use crate::cmd::proxy::{Labels, parse_labels};

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories (.yaml, .yml, .json; recursive), or `-` for stdin.
    #[arg(required_unless_present = "kubernetes")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub kube: crate::cmd::kube::KubeArgs,
    /// The namespace of resources that do not set metadata.namespace, as `kubectl apply -n`
    /// would put them.
    #[arg(short, long, value_name = "NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Show the registry as a workload in this namespace sees it: only services exported to
    /// it, one per host (its own namespace's first, then exported to it by name, then the
    /// oldest public one), and, when a Sidecar applies to it, only what its egress hosts import
    /// (the ports it imports, and the services its imported VirtualServices route to).
    /// Default: the whole registry, as istiod holds it.
    #[arg(long, value_name = "NAMESPACE")]
    pub workload_namespace: Option<String>,
    /// With --workload-namespace: the workload's labels (k=v,k=v), to pick the Sidecar whose
    /// workloadSelector selects it over the namespace's.
    #[arg(long, default_value = "", value_parser = parse_labels, requires = "workload_namespace")]
    pub labels: Labels,
    /// `table` (one row per service port) or `json` (every field, for tools).
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// Also print, to stderr, every conflict Istio resolves silently (same host in several
    /// ServiceEntries or namespaces, shared listeners), naming the resources involved.
    #[arg(long)]
    pub warnings: bool,
    #[command(flatten)]
    pub mesh: crate::cmd::mesh::MeshArgs,
    #[command(flatten)]
    pub domain: crate::cmd::validate::DomainArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Namespace of resources that do not set one.
const DEFAULT_NAMESPACE: &str = "default";

/// Exit 1 when any resource is invalid (its errors go to stderr, as `validate` prints them).
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let loaded = crate::cmd::validate::load(&args.paths, &args.namespace, &args.mesh, &args.kube)?;
    if loaded.has_errors() {
        for f in loaded.errors() {
            eprintln!("{f}");
        }
        return Ok(ExitCode::from(1));
    }
    let opts = meshentry_registry::BuildOptions {
        cluster_domain: args.domain.cluster_domain.clone(),
        auto_allocate: loaded.mesh.ip_autoallocate,
        dns_capture: false,
    };
    let registry = Registry::build_with(&loaded.resources, &opts);
    let scoped = args.workload_namespace.as_deref().and_then(|ns| {
        scoped(
            &registry,
            &loaded.resources,
            ns,
            &args.labels,
            &loaded.mesh.root_namespace,
        )
    });
    let services: Vec<&Service> = match (&args.workload_namespace, &scoped) {
        (Some(_), Some((scoped, _))) => scoped.services().collect(),
        (Some(ns), None) => registry.visible(ns),
        (None, _) => registry.services().collect(),
    };
    if let Some((_, scope)) = &scoped {
        eprintln!(
            "meshentry: namespace {} sees only what {} imports",
            scope.namespace,
            scope.source()
        );
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = match args.output {
        Output::Json => serde_json::to_writer_pretty(&mut out, &meshentry_registry::RegistryJson::new(services))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Output::Table => write_table(&mut out, &services),
    };
    match written {
        // `meshentry registry ... | head` is a normal way to look at a big registry.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    if args.warnings {
        for w in registry.warnings() {
            eprintln!("{w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// C9: the registry a proxy in `namespace` with `labels` holds when a Sidecar with egress
/// hosts applies to it (as `meshentry proxy` would hold it), and that Sidecar's scope.
fn scoped(
    registry: &Registry,
    resources: &[Resource],
    namespace: &str,
    labels: &Labels,
    root_namespace: &str,
) -> Option<(Registry, SidecarScope)> {
    let resources: Vec<&Resource> = resources.iter().collect();
    let selected = select_sidecar(&resources, namespace, &labels.0, root_namespace)?;
    if selected.sidecar.egress.is_empty() {
        return None;
    }
    let scope = SidecarScope::compute(registry, &resources, Some(&selected), namespace);
    Some((registry.scoped(&scope), scope))
}

/// The service's VIPs as a sidecar would listen on them: `spec.addresses`, else the allocated
/// ones (marked, as they depend on DNS capture), else `-` (no VIP: Istio's `0.0.0.0`, routed
/// by port, Host or SNI only).
fn addresses(s: &Service) -> String {
    if !s.addresses.is_empty() {
        return s.addresses.iter().map(|a| &*a.text).collect::<Vec<_>>().join(",");
    }
    if !s.auto_addresses.is_empty() {
        let auto: Vec<&str> = s.auto_addresses.iter().map(|a| &*a.text).collect();
        return format!("{} (auto)", auto.join(","));
    }
    "-".to_string()
}

/// Endpoints shown per row before "+N more".
const MAX_ENDPOINTS: usize = 3;

/// One row per service port, like `istioctl proxy-config cluster`.
fn write_table(out: &mut impl Write, services: &[&Service]) -> std::io::Result<()> {
    let mut rows = vec![
        [
            "SERVICE FQDN",
            "NAMESPACE",
            "ADDRESSES",
            "PORT",
            "PROTOCOL",
            "RESOLUTION",
            "LOCATION",
            "ENDPOINTS",
        ]
        .map(String::from),
    ];
    for s in services {
        let addresses = addresses(s);
        for p in &s.ports {
            let eps: Vec<String> = s
                .endpoints_for(p)
                .map(|e| {
                    if e.workload.is_unix() {
                        e.address().to_string()
                    } else {
                        format!("{}:{}", e.address(), e.port)
                    }
                })
                .collect();
            let mut shown = eps.iter().take(MAX_ENDPOINTS).cloned().collect::<Vec<_>>().join(",");
            if eps.len() > MAX_ENDPOINTS {
                shown.push_str(&format!(" +{} more", eps.len() - MAX_ENDPOINTS));
            }
            if shown.is_empty() {
                shown.push('-');
            }
            rows.push([
                s.host.to_string(),
                s.namespace.to_string(),
                addresses.clone(),
                p.number.to_string(),
                match p.protocol.as_str() {
                    "" => "auto".to_string(),
                    protocol => protocol.to_string(),
                },
                s.resolution.as_str().to_string(),
                s.location.as_str().to_string(),
                shown,
            ]);
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}     ", width = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meshentry_api::{LoadOptions, load_str};

    use super::*;

    /// The table of the registry `yaml` describes, built with `opts`.
    fn table(yaml: &str, opts: &meshentry_registry::BuildOptions) -> String {
        let loaded = load_str("a.yaml", yaml, &LoadOptions::default());
        assert!(!loaded.has_errors(), "{:?}", loaded.findings);
        let registry = Registry::build_with(&loaded.resources, opts);
        let mut out = Vec::new();
        write_table(&mut out, &registry.services().collect::<Vec<_>>()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_has_one_row_per_port() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example.com]\n  addresses: [10.0.0.1]\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: web, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 1.1.1.1}, {address: 1.1.1.2}, {address: 1.1.1.3}, {address: 1.1.1.4}]\n";
        let text = table(yaml, &meshentry_registry::BuildOptions::default());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SERVICE FQDN"));
        assert!(
            lines[1].contains("a.example.com")
                && lines[1].contains(" 80 ")
                && lines[1].ends_with("1.1.1.1:80,1.1.1.2:80,1.1.1.3:80 +1 more"),
            "{text}"
        );
        assert!(lines[2].contains(" 81 "), "{text}");
        let columns: Vec<&str> = lines[0].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            columns,
            [
                "SERVICE FQDN",
                "NAMESPACE",
                "ADDRESSES",
                "PORT",
                "PROTOCOL",
                "RESOLUTION",
                "LOCATION",
                "ENDPOINTS"
            ]
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            &cells[..6],
            ["a.example.com", "default", "10.0.0.1", "80", "HTTP", "STATIC"],
            "{text}"
        );
    }

    #[test]
    fn table_says_when_there_is_no_vip_and_when_the_protocol_is_detected() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b, namespace: ns}\nspec:\n  hosts: [b.example.com]\n  ports: [{number: 9000, name: p}]\n  resolution: DNS\n";
        let text = table(yaml, &meshentry_registry::BuildOptions::default());
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            &cells[..6],
            ["b.example.com", "ns", "-", "9000", "auto", "DNS"],
            "{text}"
        );

        let opts = meshentry_registry::BuildOptions {
            auto_allocate: true,
            ..meshentry_registry::BuildOptions::default()
        };
        let text = table(yaml, &opts);
        assert!(text.contains(" 240.240."), "an allocated VIP is shown: {text}");
        assert!(text.contains(" (auto) "), "and marked as allocated: {text}");
    }
}
