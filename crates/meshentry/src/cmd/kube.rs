//! `--kubernetes`: a Kubernetes API server as a configuration source, beside files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshentry_api::{LoadOptions, Loaded};
use meshentry_kube::{View, Watch, WatchOptions};
use meshentry_proxy::{Shared, SourceState};
use tokio::sync::watch;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// Also read Istio's networking objects (the networking.istio.io kinds meshentry reads, in
    /// the version the server prefers) and Namespaces, Pods, Services and EndpointSlices from a
    /// Kubernetes API server, in all namespaces, as `istioctl analyze` reads a cluster; `proxy`
    /// follows it live. Combines with files.
    #[arg(long)]
    pub kubernetes: bool,
    /// The kubeconfig for --kubernetes (its current context). Default: KUBECONFIG, then
    /// ~/.kube/config, then the pod's service account, as kubectl finds them.
    #[arg(long, value_name = "PATH", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
}

/// Adds the cluster's objects (in `namespace`, else all) to `loaded` when `--kubernetes` asks
/// for them.
pub fn load_into(
    args: &KubeArgs,
    loaded: &mut Loaded,
    opts: &LoadOptions,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    if !args.kubernetes {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let cluster = meshentry_kube::Cluster::connect(args.kubeconfig.as_deref()).await?;
        cluster.load_into(loaded, opts, namespace).await?;
        Ok::<_, meshentry_kube::KubeError>(())
    })?;
    Ok(())
}

/// Connects and follows the cluster, and waits for its first full sync (however long the API
/// server takes to answer: a proxy without its configuration has nothing to serve).
pub async fn first_sync(args: &KubeArgs, opts: WatchOptions) -> anyhow::Result<Watch> {
    let cluster = meshentry_kube::Cluster::connect(args.kubeconfig.as_deref()).await?;
    tracing::info!(server = cluster.server(), secrets = ?opts.secrets.as_ref().map(|s| &s.namespace),
        "following the cluster's configuration");
    let watch = cluster.watch(opts);
    let mut view = watch.view();
    let started = std::time::Instant::now();
    loop {
        let waited = tokio::time::timeout(Duration::from_secs(5), view.wait_for(|v| v.synced))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => break,
            Ok(false) => anyhow::bail!("stopped following the cluster before its first sync"),
            Err(_) => {
                let status = view.borrow().status.clone();
                tracing::warn!(server = %status.server, waited = ?started.elapsed(),
                    error = status.error.as_deref().unwrap_or("-"),
                    "waiting for the first full sync of the cluster");
            }
        }
    }
    Ok(watch)
}

/// Shows the cluster's status on the admin server and returns the version of its objects, for
/// the reloader: it starts at `loaded` (the version the configuration in force was built from).
pub fn follow(
    cluster: &Watch,
    loaded: u64,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(loaded);
    let mut view = cluster.view();
    // The version may have moved since the configuration was loaded: marked as seen only
    // below, so that the first pass compares it.
    view.mark_changed();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = stopped.changed() => return,
            }
            let current = view.borrow_and_update().clone();
            shared.lifecycle.source.store(Some(Arc::new(state(&current))));
            tx.send_if_modified(|v| {
                let newer = *v != current.version;
                *v = current.version;
                newer
            });
        }
    });
    rx
}

fn state(view: &View) -> SourceState {
    let s = &view.status;
    SourceState {
        kind: "kubernetes",
        server: s.server.clone(),
        synced: view.synced,
        connected: s.connected,
        error: s.error.clone(),
        failing_since: s.failing_since,
        synced_at: s.synced_at,
        failures: s.failures,
        relists: s.relists,
        gone: s.gone,
        objects: view.documents.len(),
        version: view.version,
    }
}

/// The directory --kubernetes-secrets writes to; one the proxy made is removed when dropped.
pub struct SecretsDir {
    path: PathBuf,
    made: bool,
}

impl SecretsDir {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for SecretsDir {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `--secrets-dir`, made private to this user, or a new one in /dev/shm (memory: keys never
/// reach a disk), else the temporary directory.
pub fn secrets_dir(given: Option<&std::path::Path>) -> anyhow::Result<SecretsDir> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let (path, made) = match given {
        Some(p) => (p.to_path_buf(), false),
        None => {
            let base = match std::path::Path::new("/dev/shm") {
                shm if shm.is_dir() => shm.to_path_buf(),
                _ => std::env::temp_dir(),
            };
            (base.join(format!("meshentry-secrets-{}", std::process::id())), true)
        }
    };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&path)
        .map_err(|e| anyhow::anyhow!("cannot make the secrets directory {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", path.display()))?;
    Ok(SecretsDir { path, made })
}
