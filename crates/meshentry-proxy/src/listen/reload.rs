//! Hot reload. The `--config` paths are watched (their parent directories too, so that an
//! editor's rename-over and a Kubernetes ConfigMap's symlink swap are seen) and SIGHUP asks
//! for a reload as well. A changed configuration is loaded and validated as at startup, and its
//! snapshot built, on a blocking thread; only then is it swapped in, atomically. Requests in
//! flight keep the snapshot they started with. An invalid configuration is refused, logged,
//! counted and shown on `/config_dump`, and the one in force stays. In gateway mode the
//! listeners follow the Gateway's server ports.
//!
//! A live source (a Kubernetes API server, followed by the binary) says when it changed through
//! [`Input::cluster`]; its objects are loaded with the files. An invalid object from it is
//! skipped on its own, as istiod skips it, and listed on `/config_dump`; an invalid file still
//! refuses the whole configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use meshentry_api::{Finding, Loaded};
use notify::Watcher;
use notify::event::{AccessKind, AccessMode, EventKind};
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, oneshot, watch};

use crate::base::addr::ListenAddr;
use crate::listen::workers::{BindError, Command, Listen, Socket};
use crate::live::Live;
use crate::model::snapshot::Snapshot;
use crate::rt::lifecycle::{ListenerState, Rejection};
use crate::rt::shared::Shared;

/// However often files keep changing, a reload happens at least this often.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);

/// How long closing a removed listener may take on every worker before the swap goes ahead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What asked for a reload.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Files,
    Signal,
    Cluster,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Files => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Cluster => "cluster change",
        }
    }
}

/// How the configuration is read: the paths to `Loaded`, or why they could not be read.
pub type Load = dyn Fn(&[PathBuf]) -> Result<Loaded, Box<dyn std::error::Error + Send + Sync>> + Send + Sync;

/// An error and its causes on one line, as `anyhow` prints them with `{:#}`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// What a reload needs from the command line.
#[derive(Clone)]
pub struct Input {
    pub paths: Vec<PathBuf>,
    /// Reads and validates the configuration as at startup (the binary's loader: files,
    /// default namespace, `--mesh-config`).
    pub load: Arc<Load>,
    pub gateway: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The version of the live source's objects, which `load` reads; a new version reloads.
    pub cluster: Option<watch::Receiver<u64>>,
    /// Whether a finding's file is an object of the live source, skipped alone when invalid.
    pub per_object: fn(&str) -> bool,
    /// Told what each reload the live source asked for took (loading, building, swapping), so
    /// that it can pace its changes to the cost of a rebuild.
    pub rebuilt: Option<Arc<dyn Fn(Duration) + Send + Sync>>,
}

/// A configuration's errors: those that refuse it (in files), and those of live-source objects
/// that are skipped alone (`per_object` says which).
pub fn split_errors(loaded: &Loaded, per_object: fn(&str) -> bool) -> (Vec<Finding>, Vec<Finding>) {
    loaded.errors().cloned().partition(|f| !per_object(&f.file))
}

/// Reloads the configuration and keeps the Gateway's listeners in step with it.
pub struct Reloader {
    input: Input,
    shared: Arc<Shared>,
    /// Each worker's command queue; index 0 is the main thread's.
    workers: Vec<mpsc::UnboundedSender<Command>>,
    /// The listeners the flags ask for; reloads never change them.
    fixed: Vec<ListenerState>,
    /// The admin listener's address, one of the proxy's own for the loop guard.
    admin: SocketAddr,
    /// The Gateway listeners (server port and bind) served now.
    gateway_addrs: BTreeSet<ListenAddr>,
    /// Gateway listeners that would not bind, and why; tried again at the next reload.
    failed: BTreeMap<ListenAddr, String>,
    /// Fingerprints of the configuration in force and of the last one refused.
    applied: Option<u64>,
    rejected: Option<u64>,
}

impl Reloader {
    pub fn new(
        input: Input,
        shared: Arc<Shared>,
        workers: Vec<mpsc::UnboundedSender<Command>>,
        listeners: &[(Listen, ListenAddr)],
        admin: SocketAddr,
        applied: Option<u64>,
    ) -> Self {
        let mut fixed = Vec::new();
        let mut gateway_addrs = BTreeSet::new();
        for (kind, addr) in listeners {
            match kind {
                Listen::Gateway => {
                    gateway_addrs.insert(addr.clone());
                }
                _ => fixed.push(ListenerState {
                    kind: kind.name(),
                    address: addr.clone(),
                    error: None,
                }),
            }
        }
        let reloader = Self {
            input,
            shared,
            workers,
            fixed,
            admin,
            gateway_addrs,
            failed: BTreeMap::new(),
            applied,
            rejected: None,
        };
        reloader.publish_listeners();
        reloader
    }

    /// Reloads on file changes (after `debounce` without another) and on SIGHUP (`hup`), until
    /// `stopped` turns.
    pub async fn run(mut self, debounce: Duration, mut hup: Option<Signal>, mut stopped: watch::Receiver<bool>) {
        if self.input.paths.iter().any(|p| p.as_os_str() == "-") {
            // Standard input was read once and is gone: a reload would lose what it held.
            tracing::info!("configuration read from standard input: reloads are off");
            let _ = stopped.changed().await;
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Kept alive for its events; replaced after each reload.
        let mut _watcher = watch_paths(&self.input.paths, &tx);
        let mut cluster = self.input.cluster.clone();
        loop {
            let mut trigger = tokio::select! {
                Some(()) = rx.recv() => Trigger::Files,
                Some(()) = hangup(&mut hup) => Trigger::Signal,
                Some(()) = changed(&mut cluster) => Trigger::Cluster,
                _ = stopped.changed() => return,
            };
            if let Trigger::Files = trigger {
                // One save is often several events (truncate, write, rename): wait for quiet,
                // unless a signal asks for the reload now.
                let until = tokio::time::Instant::now() + MAX_DEBOUNCE.max(debounce);
                loop {
                    tokio::select! {
                        more = tokio::time::timeout(debounce, rx.recv()) => match more {
                            Ok(Some(())) => {}
                            _ => break,
                        },
                        () = tokio::time::sleep_until(until) => break,
                        Some(()) = hangup(&mut hup) => {
                            trigger = Trigger::Signal;
                            break;
                        }
                    }
                }
            }
            if *stopped.borrow() {
                return;
            }
            let started = Instant::now();
            self.reload(trigger).await;
            if let (Trigger::Cluster, Some(rebuilt)) = (trigger, &self.input.rebuilt) {
                rebuilt(started.elapsed());
            }
            // The watched directories may have been replaced (a ConfigMap swap, `mv`): watch
            // them afresh, the new watch first so that no change in between is missed.
            let fresh = watch_paths(&self.input.paths, &tx);
            if fresh.is_some() {
                _watcher = fresh;
            }
        }
    }

    async fn reload(&mut self, trigger: Trigger) {
        let started = Instant::now();
        let input = self.input.clone();
        let shared = self.shared.clone();
        let applied = self.applied;
        // A signal retries a refused configuration (a file it names may have been fixed).
        let rejected = match trigger {
            Trigger::Files | Trigger::Cluster => self.rejected,
            Trigger::Signal => None,
        };
        let prepared = tokio::task::spawn_blocking(move || prepare(&input, &shared, applied, rejected)).await;
        match prepared {
            Err(e) => tracing::error!(error = %e, "configuration reload failed"),
            // A signal is someone asking, who wants an answer; file events can be anything in
            // the directory, and are not worth a line each.
            Ok(Prepared::Unchanged) => match trigger {
                Trigger::Signal => tracing::info!(trigger = trigger.as_str(), "configuration unchanged: not reloaded"),
                Trigger::Files | Trigger::Cluster => {
                    tracing::debug!(trigger = trigger.as_str(), "configuration unchanged: not reloaded");
                }
            },
            Ok(Prepared::Rejected {
                fingerprint,
                reason,
                findings,
            }) => self.reject(fingerprint, reason, findings, trigger),
            Ok(Prepared::Ready {
                snapshot,
                fingerprint,
                skipped,
                phases,
            }) => {
                self.apply(snapshot, fingerprint, trigger, started, phases).await;
                publish_skipped(&self.shared, skipped);
            }
        }
    }

    fn reject(&mut self, fingerprint: Option<u64>, reason: String, findings: Vec<Finding>, trigger: Trigger) {
        let kept = self.shared.snapshot.load().generation;
        for f in &findings {
            tracing::error!("{f}");
        }
        tracing::error!(trigger = trigger.as_str(), generation = kept, %reason,
            "configuration rejected: the one in force stays");
        self.shared
            .stats
            .config_reloads_rejected
            .fetch_add(1, Ordering::Relaxed);
        self.shared.lifecycle.last_rejected.store(Some(Arc::new(Rejection {
            at: SystemTime::now(),
            kept,
            reason,
            findings,
        })));
        self.rejected = fingerprint;
    }

    async fn apply(
        &mut self,
        snapshot: Box<Live>,
        fingerprint: Option<u64>,
        trigger: Trigger,
        started: Instant,
        phases: Phases,
    ) {
        // The configuration in force was warned about when it was applied: only what this one
        // adds is news (at 10,000 ServiceEntries a reload repeated 30,000 lines).
        {
            let before = self.shared.snapshot.load();
            let said: std::collections::HashSet<&str> = before
                .registry
                .warnings()
                .iter()
                .map(|w| w.message.as_str())
                .chain(before.warnings.iter().map(String::as_str))
                .collect();
            let mut repeated = 0usize;
            for w in snapshot.registry.warnings() {
                match said.contains(w.message.as_str()) {
                    true => repeated += 1,
                    false => tracing::warn!("{}", w.unlabelled()),
                }
            }
            for w in &snapshot.warnings {
                match said.contains(w.as_str()) {
                    true => repeated += 1,
                    false => tracing::warn!("{w}"),
                }
            }
            if repeated > 0 {
                tracing::info!(
                    warnings = repeated,
                    "warnings of the configuration in force still apply (not repeated)"
                );
            }
        }
        let generation = snapshot.generation;
        let services = snapshot.registry.services().len();
        let wanted = gateway_addrs(&snapshot);
        // New listeners are bound (one socket per worker) before the swap: from the moment the
        // new generation is in force, their connections queue until the workers accept them.
        let mut opened = Vec::new();
        self.failed.retain(|a, _| wanted.contains(a));
        for addr in wanted.difference(&self.gateway_addrs) {
            match self.sockets(addr) {
                Ok(sockets) => {
                    self.failed.remove(addr);
                    opened.push((addr.clone(), sockets));
                }
                Err(e) => {
                    let e = chain(&e);
                    tracing::error!(%addr, error = %e, "Gateway server port not served: cannot listen");
                    self.shared.stats.listener_errors.fetch_add(1, Ordering::Relaxed);
                    self.failed.insert(addr.clone(), e);
                }
            }
        }
        // Removed listeners close before the swap, so a connection one of them accepted is
        // routed by the snapshot that still has its server.
        let removed: Vec<ListenAddr> = self.gateway_addrs.difference(&wanted).cloned().collect();
        let mut acks = Vec::new();
        for addr in &removed {
            for w in &self.workers {
                let (done, ack) = oneshot::channel();
                if w.send(Command::Close {
                    addr: addr.clone(),
                    done,
                })
                .is_ok()
                {
                    acks.push(ack);
                }
            }
        }
        let closing = async {
            for ack in acks {
                let _ = ack.await;
            }
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            tracing::warn!(listeners = ?removed, "removed Gateway listeners did not all close in time");
        }

        self.shared.snapshot.store(Arc::from(snapshot));

        for (addr, sockets) in opened {
            for (w, socket) in self.workers.iter().zip(sockets) {
                let _ = w.send(Command::Open {
                    kind: Listen::Gateway,
                    addr: addr.clone(),
                    socket,
                });
            }
            tracing::info!(%addr, "Gateway server port opened");
            self.gateway_addrs.insert(addr);
        }
        for addr in &removed {
            tracing::info!(%addr, "Gateway server port closed");
            self.gateway_addrs.remove(addr);
        }
        self.publish_listeners();
        // The build's garbage and (unless a request still holds it) the previous snapshot are
        // free now: hand the pages back, off this thread.
        tokio::task::spawn_blocking(crate::rt::memory::trim);
        self.applied = fingerprint;
        self.rejected = None;
        self.shared.stats.config_reloads.fetch_add(1, Ordering::Relaxed);
        let forgotten = self.shared.dns.forget_unused();
        tracing::info!(
            trigger = trigger.as_str(),
            generation,
            services,
            dns_names_forgotten = forgotten,
            took_ms = started.elapsed().as_millis() as u64,
            load_ms = phases.load.as_millis() as u64,
            build_ms = phases.build.as_millis() as u64,
            "configuration reloaded"
        );
    }

    /// One socket per worker for the Gateway listener `addr`.
    fn sockets(&self, addr: &ListenAddr) -> Result<Vec<Socket>, BindError> {
        let first = Socket::bind(addr)?;
        let mut all = Vec::with_capacity(self.workers.len());
        for _ in 1..self.workers.len() {
            all.push(first.another(addr)?);
        }
        all.insert(0, first);
        Ok(all)
    }

    fn publish_listeners(&self) {
        let mut all = self.fixed.clone();
        for addr in &self.gateway_addrs {
            all.push(ListenerState {
                kind: Listen::Gateway.name(),
                address: addr.clone(),
                error: None,
            });
        }
        for (addr, error) in &self.failed {
            all.push(ListenerState {
                kind: Listen::Gateway.name(),
                address: addr.clone(),
                error: Some(error.clone()),
            });
        }
        // Requests to a Gateway port opened by this reload would loop as much as requests to
        // the listeners the proxy started with (a unix socket is never a request's target).
        let own = all
            .iter()
            .filter(|l| l.error.is_none())
            .filter_map(|l| l.address.tcp())
            .chain([self.admin]);
        self.shared.set_local_addrs(own);
        self.shared.lifecycle.listeners.store(Arc::new(all));
    }
}

/// The outcome of loading and building off the data path.
enum Prepared {
    /// The same bytes as the configuration in force (or as the last one refused).
    Unchanged,
    Rejected {
        fingerprint: Option<u64>,
        reason: String,
        findings: Vec<Finding>,
    },
    Ready {
        snapshot: Box<Live>,
        fingerprint: Option<u64>,
        /// The errors of the live-source objects left out.
        skipped: Vec<Finding>,
        phases: Phases,
    },
}

/// Where a reload's time went before the swap, for its log line.
#[derive(Clone, Copy, Debug, Default)]
struct Phases {
    /// Reading, parsing and validating every file and live-source object.
    load: Duration,
    /// The registry, the snapshot and its runtime state.
    build: Duration,
}

/// Records (and logs, when they changed) the live-source objects a configuration left out.
pub fn publish_skipped(shared: &Shared, skipped: Vec<Finding>) {
    let before = shared.lifecycle.skipped.load();
    if **before == skipped {
        return;
    }
    for f in &skipped {
        tracing::warn!("skipped: {f}");
    }
    if !skipped.is_empty() {
        tracing::warn!(
            findings = skipped.len(),
            "objects from the cluster skipped as invalid; the rest of the configuration applies"
        );
    }
    shared.lifecycle.skipped.store(Arc::new(skipped));
}

/// Loads, validates and builds as at startup. Blocking: file reads and the whole build.
fn prepare(input: &Input, shared: &Shared, applied: Option<u64>, rejected: Option<u64>) -> Prepared {
    let fingerprint = with_cluster(fingerprint(&input.paths), input.cluster.as_ref());
    if fingerprint.is_some() && (fingerprint == applied || fingerprint == rejected) {
        return Prepared::Unchanged;
    }
    let reject = |reason: String, findings: Vec<Finding>| Prepared::Rejected {
        fingerprint,
        reason,
        findings,
    };
    let loading = Instant::now();
    let loaded = match (input.load)(&input.paths) {
        Ok(l) => l,
        Err(e) => return reject(chain(&*e), Vec::new()),
    };
    let load = loading.elapsed();
    let (findings, skipped) = split_errors(&loaded, input.per_object);
    if !findings.is_empty() {
        let first = findings.first().map(ToString::to_string).unwrap_or_default();
        let reason = match findings.len() {
            1 => format!("1 error in the configuration: {first}"),
            n => format!("{n} errors in the configuration; the first: {first}"),
        };
        return reject(reason, findings);
    }
    for n in &loaded.notices {
        tracing::debug!("{n}");
    }
    let valid: Vec<_> = loaded.valid().collect();
    if let Some(name) = &input.gateway
        && let Err(e) = crate::model::gateway::check(&valid, name, &input.labels)
    {
        return reject(format!("--gateway {name}: {e}"), Vec::new());
    }
    let generation = shared.snapshot.load().generation + 1;
    let building = Instant::now();
    let snapshot = Live::new(Snapshot::build(&valid, &shared.config, generation), &shared.dns);
    let phases = Phases {
        load,
        build: building.elapsed(),
    };
    if let Some(gw) = &snapshot.gateway {
        for l in &gw.listeners {
            if let Some(reason) = snapshot.listener_error(l) {
                return reject(format!("Gateway {} port {}: {reason}", gw.name, l.port), Vec::new());
            }
        }
    }
    Prepared::Ready {
        snapshot: Box::new(snapshot),
        fingerprint,
        skipped,
        phases,
    }
}

/// The files' fingerprint with the live source's version in it.
pub fn with_cluster(files: Option<u64>, cluster: Option<&watch::Receiver<u64>>) -> Option<u64> {
    let files = files?;
    Some(match cluster {
        Some(version) => {
            let mut h = DefaultHasher::new();
            files.hash(&mut h);
            version.borrow().hash(&mut h);
            h.finish()
        }
        None => files,
    })
}

/// The next change of the live source; never, without one (or once it is gone).
async fn changed(cluster: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match cluster {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                *cluster = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// The Gateway listeners (server port and bind) a snapshot serves.
pub fn gateway_addrs(snapshot: &Snapshot) -> BTreeSet<ListenAddr> {
    snapshot
        .gateway
        .iter()
        .flat_map(|gw| &gw.listeners)
        .filter(|l| l.served())
        .map(|l| l.addr())
        .collect()
}

/// A hash of every file the configuration is read from, names and bytes; `None` when one
/// cannot be read (the load then says why).
pub fn fingerprint(paths: &[PathBuf]) -> Option<u64> {
    let files = meshentry_api::source_files(paths).ok()?;
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).ok()?.hash(&mut h);
    }
    Some(h.finish())
}

async fn hangup(hup: &mut Option<Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Watches each path's directory, and a directory path's whole tree; every change there sends
/// on `tx`. `None` (logged) when watching is not possible: SIGHUP still reloads.
fn watch_paths(paths: &[PathBuf], tx: &mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let tx = tx.clone();
    let watched: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .filter_map(|p| std::path::absolute(p).ok())
        .collect();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && changes(&event.kind)
            && concerns(&watched, &event.paths)
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the configuration; reload it with SIGHUP");
            return None;
        }
    };
    for path in paths.iter().filter(|p| p.as_os_str() != "-") {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Err(e) = watcher.watch(parent, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(path = %parent.display(), error = %e, "cannot watch a configuration directory");
        }
        if path.is_dir()
            && let Err(e) = watcher.watch(path, notify::RecursiveMode::Recursive)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch a configuration directory");
        }
    }
    Some(watcher)
}

/// Whether an event in a watched directory is about the configuration (`watched`, absolute):
/// a configuration path itself or anything under one, or an entry of a configuration file's
/// directory whose name starts with `..` (Kubernetes' atomic writer swaps a mounted ConfigMap
/// by renaming `..data`, which the files are links through). The parent directories are
/// watched only to see a path replaced; without this, every other file written beside the
/// configuration (a log, a benchmark's output) would wake the reloader.
fn concerns(watched: &[PathBuf], event_paths: &[PathBuf]) -> bool {
    // An event without paths (a queue overflow, a rescan) may be about anything.
    event_paths.is_empty()
        || event_paths.iter().any(|p| {
            let Ok(p) = std::path::absolute(p) else { return true };
            watched.iter().any(|c| {
                p.starts_with(c)
                    || (p.parent() == c.parent()
                        && p.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b"..")))
            })
        })
}

/// Whether an event can mean new contents: not the opens and reads (ours included) that
/// inotify also reports.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Checks every `every` for TLS certificate files that changed ([`Live::reload_certificates`])
/// until `stopped`: certificates rotate without a configuration change.
pub async fn watch_certificates(shared: Arc<Shared>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        shared.snapshot.load_full().reload_certificates();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_and_changes_trigger() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        let dir = PathBuf::from("/etc/meshentry");
        let file = PathBuf::from("/etc/mesh.yaml");
        let watched = [dir.clone(), file.clone()];
        let yes = |p: &str| concerns(&watched, &[PathBuf::from(p)]);
        assert!(yes("/etc/meshentry"), "the directory replaced");
        assert!(yes("/etc/meshentry/new.yaml"));
        assert!(yes("/etc/meshentry/sub/dir/x.yaml"));
        assert!(yes("/etc/mesh.yaml"), "the file rewritten or renamed over");
        assert!(yes("/etc/..data"), "a ConfigMap swap beside a configuration file");
        assert!(!yes("/etc/other.log"), "a neighbour's writes");
        assert!(!yes("/etc/meshentry.log"));
        assert!(!yes("/var/log/x"));
        assert!(concerns(&watched, &[]), "no paths: assume it is ours");
        assert!(!changes(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(changes(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(changes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(changes(&EventKind::Create(CreateKind::File)));
        assert!(changes(&EventKind::Remove(RemoveKind::File)));
    }

    #[test]
    fn fingerprint_follows_bytes_not_times() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a: 1\n").expect("write");
        let paths = vec![dir.path().to_path_buf()];
        let first = fingerprint(&paths);
        assert!(first.is_some());
        std::fs::write(&file, "a: 1\n").expect("write");
        assert_eq!(fingerprint(&paths), first, "same bytes written again");
        std::fs::write(&file, "a: 2\n").expect("write");
        assert_ne!(fingerprint(&paths), first);
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        let with_other = fingerprint(&paths);
        std::fs::write(dir.path().join("b.yml"), "b: 1\n").expect("write");
        assert_ne!(fingerprint(&paths), with_other, "a new config file counts");
        std::fs::remove_file(&file).expect("remove");
        assert!(fingerprint(&[file]).is_none(), "a missing file has no fingerprint");
    }
}
