//! `--kubernetes`: a Kubernetes API server as a configuration source, beside files.

use std::path::PathBuf;

use meshentry_api::{LoadOptions, Loaded};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// Also read Istio's networking objects (networking.istio.io, every kind, in the version
    /// the server prefers) from a Kubernetes API server, in all namespaces, as `istioctl
    /// analyze` reads a cluster. Combines with files.
    #[arg(long)]
    pub kubernetes: bool,
    /// The kubeconfig for --kubernetes (its current context). Default: KUBECONFIG, then
    /// ~/.kube/config, then the pod's service account, as kubectl finds them.
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
}

/// Adds the cluster's objects to `loaded` when `--kubernetes` asks for them.
pub fn load_into(args: &KubeArgs, loaded: &mut Loaded, opts: &LoadOptions) -> anyhow::Result<()> {
    if !args.kubernetes {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let cluster = meshentry_kube::Cluster::connect(args.kubeconfig.as_deref()).await?;
        cluster.load_into(loaded, opts, None).await?;
        Ok::<_, meshentry_kube::KubeError>(())
    })?;
    Ok(())
}
