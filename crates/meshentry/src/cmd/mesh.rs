//! `--mesh-config FILE`, for every subcommand that reads configuration: Istio's MeshConfig
//! (the bare object or the `istio` ConfigMap) read once and applied to the loaded resources and
//! the proxy's settings (`validate`, `registry`, `explain`, `proxy`), to the capture rules
//! (`iptables install`: the outbound policy) and to the CA (`ca init`: the trust domain). The
//! subcommands' own flags override it.

use std::path::PathBuf;

use anyhow::Context;
use meshentry_api::model::OutboundTrafficPolicyMode;
use meshentry_api::{Loaded, MeshConfig};
use meshentry_route::base::config::{OutboundPolicy, ProxyConfig};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct MeshArgs {
    /// Istio's MeshConfig YAML: the bare object, or the `istio` ConfigMap with it in data.mesh.
    /// Applied: outboundTrafficPolicy.mode, trustDomain, rootNamespace,
    /// defaultServiceExportTo, defaultVirtualServiceExportTo, defaultDestinationRuleExportTo,
    /// enableAutoMtls and defaultConfig.proxyMetadata's ISTIO_META_DNS_CAPTURE and
    /// ISTIO_META_DNS_AUTO_ALLOCATE; other fields are accepted with a note. Flags such as
    /// --outbound-policy and --trust-domain override it.
    #[arg(long = "mesh-config", value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
}

/// Reads `--mesh-config` (when given) into `loaded`: its findings join the resources' (a bad
/// value is an error like any other), and its defaults apply to the resources.
pub fn apply(args: &MeshArgs, loaded: &mut Loaded) -> anyhow::Result<()> {
    let mesh = match &args.mesh_config {
        Some(path) => {
            let (mesh, findings) =
                MeshConfig::load(path).with_context(|| format!("cannot read --mesh-config {}", path.display()))?;
            loaded.add_findings(findings);
            mesh
        }
        None => MeshConfig::default(),
    };
    mesh.apply(loaded);
    Ok(())
}

/// `--mesh-config` alone, for the subcommands that read no resources (`iptables install`,
/// `ca init`): its findings go to stderr; `None` when one is an error (the subcommand then
/// exits 1, as for an invalid configuration). An unreadable file is an `Err`.
pub fn read(args: &MeshArgs) -> anyhow::Result<Option<MeshConfig>> {
    let Some(path) = &args.mesh_config else {
        return Ok(Some(MeshConfig::default()));
    };
    let (mesh, findings) =
        MeshConfig::load(path).with_context(|| format!("cannot read --mesh-config {}", path.display()))?;
    for f in &findings {
        eprintln!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == meshentry_api::Severity::Error)
        .count();
    if errors > 0 {
        eprintln!("meshentry: --mesh-config {}: {errors} invalid value(s)", path.display());
        return Ok(None);
    }
    Ok(Some(mesh))
}

/// The proxy settings MeshConfig decides, where no flag did.
pub fn proxy_config(mesh: &MeshConfig, config: &mut ProxyConfig) {
    config.root_namespace.clone_from(&mesh.root_namespace);
    config.auto_mtls = mesh.enable_auto_mtls;
    config.ip_autoallocate = mesh.ip_autoallocate;
    config.trust_domain.clone_from(&mesh.trust_domain);
    config.mesh_policy = match mesh.outbound_policy {
        OutboundTrafficPolicyMode::AllowAny => OutboundPolicy::AllowAny,
        OutboundTrafficPolicyMode::RegistryOnly => OutboundPolicy::RegistryOnly,
    };
    if let Some(file) = &mesh.source {
        config.mesh_policy_source = format!("mesh default, --mesh-config {file}");
    }
}
