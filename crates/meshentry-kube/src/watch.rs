//! Following a cluster live: one list-then-watch loop per kind (Kubernetes' reflector), and one
//! store that debounces their changes into [`View`]s, as istiod debounces pushes.
//!
//! Each kind is listed in pages, then watched from the list's resourceVersion with bookmarks,
//! so that a watch that ends (the server closes it every few minutes) resumes where it was. A
//! 410 Gone (the resourceVersion was compacted away) lists the kind again, and the new list
//! replaces the kind's objects whole: nothing deleted meanwhile survives, nothing is counted
//! twice. Any other failure is retried with exponential backoff, and meanwhile the last objects
//! read stay: an API server outage never empties the configuration, it makes it stale, and
//! [`Status`] says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::api::{DynamicObject, ListParams, WatchEvent, WatchParams};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Cluster;
use crate::kinds::{self, Document, Kind};

/// How a [`Watch`] behaves.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Watch these namespaces only (namespaced kinds; one watch per kind and namespace);
    /// empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Read only the Istio objects with these labels (a Kubernetes label selector, e.g.
    /// `meshentry.io/proxy=egress`); Kubernetes' own kinds are read whole.
    pub label_selector: Option<String>,
    /// A change is published once the cluster has been quiet this long (istiod's
    /// PILOT_DEBOUNCE_AFTER, 100 ms)...
    pub quiet: Duration,
    /// ...or at most this long after the first unpublished change (PILOT_DEBOUNCE_MAX, 1 s).
    /// Under a steady stream of changes the cluster is never quiet, and istiod then pushes
    /// only every PILOT_DEBOUNCE_MAX; here the wait is also cut to four times what the last
    /// rebuild took ([`Watch::rebuilt`]), but never below `quiet`: a cheap configuration
    /// follows a stream within about `quiet`, an expensive one is rebuilt at most a fifth of
    /// the time, and neither waits longer than `max_delay`.
    pub max_delay: Duration,
    /// The longest wait between attempts to reach a failing API server.
    pub max_backoff: Duration,
    /// Objects per list page.
    pub page_size: u32,
    /// Also read the Secrets of a namespace, kept as files for `credentialName`.
    pub secrets: Option<SecretsOptions>,
}

/// Where Secrets are read and kept (see `secrets.rs`).
#[derive(Clone, Debug)]
pub struct SecretsOptions {
    /// The proxy's namespace: Istio reads a `credentialName` there only.
    pub namespace: String,
    /// `DIR/NAME/tls.crt`, `tls.key`, `ca.crt`.
    pub dir: std::path::PathBuf,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            label_selector: None,
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            page_size: 500,
            secrets: None,
        }
    }
}

/// The cluster's configuration as last published, and how reading it goes.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Bumped each time `documents` change.
    pub version: u64,
    /// Every kind has been listed at least once: `documents` is the whole configuration.
    pub synced: bool,
    /// Every object read, by kind (discovery order), namespace and name.
    pub documents: Arc<[Document]>,
    pub status: Status,
}

/// How reading the cluster goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The API server's address.
    pub server: String,
    /// Every kind's watch is established; `false` while any is failing (the documents are
    /// then those last read: stale, not empty).
    pub connected: bool,
    /// The latest failure while not connected, as one line.
    pub error: Option<String>,
    /// When the current failure began.
    pub failing_since: Option<SystemTime>,
    /// When the first full sync completed.
    pub synced_at: Option<SystemTime>,
    /// Failures so far (each attempt that failed).
    pub failures: u64,
    /// Lists after the first of each kind: after a 410 Gone or an outage.
    pub relists: u64,
    /// 410 Gone answers (a watch's resourceVersion compacted away).
    pub gone: u64,
    /// The kinds read.
    pub kinds: Vec<String>,
}

/// A cluster followed live. Dropping every clone stops nothing: the tasks end when the runtime
/// does.
#[derive(Clone)]
pub struct Watch {
    view: watch::Receiver<View>,
    /// What the last rebuild took, in microseconds.
    cost: Arc<AtomicU64>,
}

impl Watch {
    /// The latest view, and a way to wait for the next.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Says what building the configuration from the last view took, which bounds how long
    /// changes wait under a steady stream (see [`WatchOptions::max_delay`]).
    pub fn rebuilt(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.cost.store(micros, Ordering::Relaxed);
    }

    /// Waits until the first full sync (every kind listed); returns that view.
    pub async fn synced(&self) -> View {
        let mut rx = self.view.clone();
        let synced = rx.wait_for(|v| v.synced).await.map(|v| v.clone());
        // Err: the store ended (its runtime is shutting down): what there is.
        synced.unwrap_or_else(|_| self.view.borrow().clone())
    }
}

impl Cluster {
    /// Starts following the cluster, on the current tokio runtime.
    pub fn watch(&self, opts: WatchOptions) -> Watch {
        let (view_tx, view) = watch::channel(View {
            status: Status {
                server: self.server.clone(),
                ..Status::default()
            },
            ..View::default()
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let cost = Arc::new(AtomicU64::new(0));
        tokio::spawn(supervise(self.client.clone(), self.server.clone(), opts.clone(), tx));
        tokio::spawn(Store::new(opts, view_tx, cost.clone()).run(rx));
        Watch { view, cost }
    }
}

/// What the readers tell the store.
enum Msg {
    /// The kinds discovered (name, and whether it is Secrets); kind indexes below refer to
    /// this list.
    Kinds(Vec<(String, bool)>),
    /// A full list of kind `kind`, replacing what the store had.
    Listed {
        kind: usize,
        objects: Objects,
    },
    Applied {
        kind: usize,
        key: Key,
        doc: Document,
    },
    Deleted {
        kind: usize,
        key: Key,
    },
    /// Kind `kind`'s watch is established (or, `None`: discovery succeeded).
    Healthy {
        kind: Option<usize>,
    },
    Failed {
        kind: Option<usize>,
        error: String,
        gone: bool,
    },
}

type Key = (String, String);
type Objects = BTreeMap<Key, Document>;

/// Discovers the kinds (retrying until the server answers), then runs one reader per kind.
async fn supervise(client: kube::Client, server: String, opts: WatchOptions, tx: mpsc::UnboundedSender<Msg>) {
    let mut backoff = Backoff::new(opts.max_backoff);
    let kinds = loop {
        let found = match kinds::discover(&client).await {
            Ok(mut k) => match &opts.secrets {
                Some(s) => kinds::secrets(&client, &s.namespace).await.map(|secrets| {
                    match secrets {
                        Some(secrets) => k.push(secrets),
                        None => {
                            tracing::warn!(%server, "the API server serves no Secrets: credentialName cannot be read")
                        }
                    }
                    k
                }),
                None => Ok(k),
            },
            Err(e) => Err(e),
        };
        match found {
            Ok(k) => break k,
            Err(e) => {
                let error = error_line(&e.at(&server));
                tracing::warn!(%server, %error, retry_in = ?backoff.peek(), "cannot discover the cluster's kinds");
                if tx
                    .send(Msg::Failed {
                        kind: None,
                        error,
                        gone: false,
                    })
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    };
    // One reader per kind and watched namespace (a namespace-scoped role grants no more).
    let kinds: Vec<Kind> = kinds
        .into_iter()
        .flat_map(|k| {
            if !k.namespaced || k.only_namespace.is_some() || opts.namespaces.is_empty() {
                return vec![k];
            }
            opts.namespaces
                .iter()
                .map(|ns| Kind {
                    only_namespace: Some(ns.clone()),
                    ..k.clone()
                })
                .collect()
        })
        .collect();
    let names = kinds.iter().map(|k| (k.ar.kind.clone(), k.secret)).collect();
    if tx.send(Msg::Kinds(names)).is_err() || tx.send(Msg::Healthy { kind: None }).is_err() {
        return;
    }
    for (i, kind) in kinds.into_iter().enumerate() {
        tokio::spawn(read(i, kind, client.clone(), opts.clone(), tx.clone()));
    }
}

/// An error and its causes on one line (kube's messages often repeat their cause: once).
fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let line = c.to_string();
        if !out.contains(&line) {
            out.push_str(": ");
            out.push_str(&line);
        }
        cause = c.source();
    }
    out
}

/// One kind's reflector: list, watch from the list's resourceVersion, resume after a watch
/// ends, list again after 410 Gone, back off after failures.
async fn read(i: usize, kind: Kind, client: kube::Client, opts: WatchOptions, tx: mpsc::UnboundedSender<Msg>) {
    let api = kind.api(&client, None);
    // Istio's kinds only: a selector on Pods or Namespaces would hide workloads, not config.
    let selector = opts.label_selector.as_deref().filter(|_| kind.ar.group == crate::GROUP);
    let mut backoff = Backoff::new(opts.max_backoff);
    let fail = |error: String, gone: bool| Msg::Failed {
        kind: Some(i),
        error: format!("{}: {error}", kind.ar.plural),
        gone,
    };
    'list: loop {
        let (objects, mut version) = match list(&api, &kind, opts.page_size, selector).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(resource = %kind.ar.plural, error = %e, retry_in = ?backoff.peek(), "cannot list");
                if tx.send(fail(e, false)).is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        backoff.reset();
        if tx.send(Msg::Listed { kind: i, objects }).is_err() {
            return;
        }
        loop {
            // Bookmarks keep `version` recent on a quiet kind, so that resuming after the
            // watch ends seldom meets a compacted resourceVersion.
            let mut params = WatchParams::default().timeout(290);
            if let Some(s) = selector {
                params = params.labels(s);
            }
            let events = match api.watch(&params, &version).await {
                Ok(s) => s,
                Err(kube::Error::Api(status)) if status.code == 410 => {
                    tracing::info!(resource = %kind.ar.plural, %version, "resourceVersion gone (410): listing again");
                    if tx.send(fail("410 Gone: listing again".into(), true)).is_err() {
                        return;
                    }
                    continue 'list;
                }
                Err(e) => {
                    let e = error_line(&e);
                    tracing::warn!(resource = %kind.ar.plural, error = %e, retry_in = ?backoff.peek(), "cannot watch");
                    if tx.send(fail(e, false)).is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            if tx.send(Msg::Healthy { kind: Some(i) }).is_err() {
                return;
            }
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let msg = match event {
                    Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                        version = resource_version(&o, &version);
                        let key = key(&o);
                        match kind.document(o) {
                            Ok(doc) => Msg::Applied { kind: i, key, doc },
                            Err(e) => fail(format!("{}/{}: {e}", key.0, key.1), false),
                        }
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        version = resource_version(&o, &version);
                        Msg::Deleted { kind: i, key: key(&o) }
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        version = b.metadata.resource_version;
                        continue;
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => {
                        tracing::info!(resource = %kind.ar.plural, %version, "watch expired (410 Gone): listing again");
                        if tx.send(fail("410 Gone: listing again".into(), true)).is_err() {
                            return;
                        }
                        continue 'list;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        let e = format!("watch: {} ({})", status.message, status.code);
                        tracing::warn!(resource = %kind.ar.plural, error = %e, "watch error");
                        if tx.send(fail(e, false)).is_err() {
                            return;
                        }
                        tokio::time::sleep(backoff.next()).await;
                        break;
                    }
                    Err(e) => {
                        let e = error_line(&e);
                        tracing::warn!(resource = %kind.ar.plural, error = %e, "watch failed");
                        if tx.send(fail(e, false)).is_err() {
                            return;
                        }
                        tokio::time::sleep(backoff.next()).await;
                        break;
                    }
                };
                backoff.reset();
                if tx.send(msg).is_err() {
                    return;
                }
            }
            // The watch ended (the server's timeout, or the connection closed): resume.
        }
    }
}

fn key(o: &DynamicObject) -> Key {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

fn resource_version(o: &DynamicObject, current: &str) -> String {
    o.metadata
        .resource_version
        .clone()
        .unwrap_or_else(|| current.to_string())
}

/// Every object of the kind, page by page, and the list's resourceVersion.
async fn list(
    api: &kube::Api<DynamicObject>,
    kind: &Kind,
    page_size: u32,
    selector: Option<&str>,
) -> Result<(Objects, String), String> {
    let mut objects = Objects::new();
    let mut params = ListParams::default().limit(page_size);
    if let Some(s) = selector {
        params = params.labels(s);
    }
    loop {
        let page = api.list(&params).await.map_err(|e| error_line(&e))?;
        let version = page.metadata.resource_version.clone().unwrap_or_default();
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        for o in page.items {
            let key = key(&o);
            let doc = kind.document(o).map_err(|e| format!("{}/{}: {e}", key.0, key.1))?;
            objects.insert(key, doc);
        }
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((objects, version)),
        }
    }
}

/// Exponential backoff from 100 ms to a maximum, with a little jitter so that many proxies do
/// not retry in step.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Self {
            next: Self::FIRST,
            max: max.max(Self::FIRST),
        }
    }

    fn peek(&self) -> Duration {
        self.next
    }

    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        // Up to a tenth more, from the clock's nanoseconds: enough to spread retries.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        now + now.mul_f64(f64::from(nanos % 1000) / 10_000.0)
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Per kind: its objects, whether it was listed, whether it is failing.
#[derive(Default)]
struct KindState {
    objects: Objects,
    listed: bool,
    failing: bool,
    secret: bool,
}

/// Owns what the readers read and publishes it, debounced.
struct Store {
    opts: WatchOptions,
    /// [`Watch::rebuilt`]'s last report, in microseconds.
    cost: Arc<AtomicU64>,
    tx: watch::Sender<View>,
    kinds: Vec<KindState>,
    /// Discovery has not succeeded yet.
    discovering: bool,
    status: Status,
    /// The first and the latest change not yet published.
    pending: Option<(Instant, Instant)>,
    version: u64,
    synced: bool,
}

impl Store {
    fn new(opts: WatchOptions, tx: watch::Sender<View>, cost: Arc<AtomicU64>) -> Self {
        let status = tx.borrow().status.clone();
        Self {
            opts,
            cost,
            tx,
            kinds: Vec::new(),
            discovering: true,
            status,
            pending: None,
            version: 0,
            synced: false,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            let deadline = self
                .pending
                .map(|(first, last)| (last + self.opts.quiet).min(first + self.longest_wait()));
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => return,
                },
                () = sleep_until(deadline) => {
                    self.publish();
                    continue;
                }
            };
            self.handle(msg);
            // Drain what else is queued before deciding anything: a list of 10,000 objects is
            // one message, but a burst of watch events is many.
            while let Ok(m) = rx.try_recv() {
                self.handle(m);
            }
            self.update_status();
            if !self.synced && !self.kinds.is_empty() && self.kinds.iter().all(|k| k.listed) {
                // The first full sync is published at once: readiness waits for it.
                self.synced = true;
                self.status.synced_at = Some(SystemTime::now());
                tracing::info!(server = %self.status.server, objects = self.count(), kinds = self.kinds.len(), "first full sync of the cluster");
                self.publish();
            }
        }
    }

    /// How long the first unpublished change may wait under a stream of changes.
    fn longest_wait(&self) -> Duration {
        longest_wait(&self.opts, Duration::from_micros(self.cost.load(Ordering::Relaxed)))
    }

    fn count(&self) -> usize {
        self.kinds.iter().map(|k| k.objects.len()).sum()
    }

    fn changed(&mut self) {
        let now = Instant::now();
        self.pending = Some(self.pending.map_or((now, now), |(first, _)| (first, now)));
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Kinds(names) => {
                self.kinds = names
                    .iter()
                    .map(|(_, secret)| KindState {
                        secret: *secret,
                        ..KindState::default()
                    })
                    .collect();
                self.status.kinds = names.into_iter().map(|(n, _)| n).collect();
            }
            Msg::Listed { kind, objects } => {
                let Some(k) = self.kinds.get_mut(kind) else { return };
                if k.listed {
                    self.status.relists += 1;
                }
                if !k.listed || k.objects != objects {
                    k.objects = objects;
                    self.changed();
                }
                let k = &mut self.kinds[kind];
                k.listed = true;
                k.failing = false;
            }
            Msg::Applied { kind, key, doc } => {
                let Some(k) = self.kinds.get_mut(kind) else { return };
                if k.objects.get(&key) != Some(&doc) {
                    k.objects.insert(key, doc);
                    self.changed();
                }
            }
            Msg::Deleted { kind, key } => {
                let Some(k) = self.kinds.get_mut(kind) else { return };
                if k.objects.remove(&key).is_some() {
                    self.changed();
                }
            }
            Msg::Healthy { kind: None } => self.discovering = false,
            Msg::Healthy { kind: Some(kind) } => {
                if let Some(k) = self.kinds.get_mut(kind) {
                    k.failing = false;
                }
            }
            Msg::Failed { kind, error, gone } => {
                if gone {
                    // Not an outage: the reader lists again at once.
                    self.status.gone += 1;
                    return;
                }
                self.status.failures += 1;
                self.status.error = Some(error);
                if let Some(k) = kind.and_then(|i| self.kinds.get_mut(i)) {
                    k.failing = true;
                }
            }
        }
    }

    /// Connected when discovery succeeded and every kind is listed and not failing; a status
    /// change is published at once, with the same documents.
    fn update_status(&mut self) {
        let connected =
            !self.discovering && !self.kinds.is_empty() && self.kinds.iter().all(|k| k.listed && !k.failing);
        if connected == self.status.connected {
            if !connected && self.tx.borrow().status.error != self.status.error {
                self.send_status();
            }
            return;
        }
        self.status.connected = connected;
        if connected {
            if let Some(since) = self.status.failing_since.take() {
                let down = SystemTime::now().duration_since(since).unwrap_or_default();
                tracing::info!(server = %self.status.server, after = ?down, "reconnected to the API server");
            }
            self.status.error = None;
        } else if self.synced {
            self.status.failing_since = Some(SystemTime::now());
            tracing::error!(server = %self.status.server, error = self.status.error.as_deref().unwrap_or("-"),
                objects = self.count(),
                "lost the API server: serving the last configuration read until it is back");
        }
        self.send_status();
    }

    fn send_status(&self) {
        let status = self.status.clone();
        self.tx.send_modify(|v| v.status = status);
    }

    fn publish(&mut self) {
        self.pending = None;
        if !self.synced {
            // A partial configuration is never published: it would look like deletions.
            return;
        }
        self.version += 1;
        // Secrets first: the configuration that names them is built once their files exist.
        if let Some(s) = &self.opts.secrets {
            let secrets: Vec<&Document> = self
                .kinds
                .iter()
                .filter(|k| k.secret)
                .flat_map(|k| k.objects.values())
                .collect();
            crate::secrets::write_all(&s.dir, &secrets);
        }
        let documents: Arc<[Document]> = self
            .kinds
            .iter()
            .filter(|k| !k.secret)
            .flat_map(|k| k.objects.values().cloned())
            .collect();
        let view = View {
            version: self.version,
            synced: true,
            documents,
            status: self.status.clone(),
        };
        self.tx.send_replace(view);
    }
}

fn longest_wait(opts: &WatchOptions, rebuild: Duration) -> Duration {
    (rebuild * 4).clamp(opts.quiet, opts.max_delay.max(opts.quiet))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_waits_longer_only_when_rebuilds_cost_more() {
        let opts = WatchOptions::default();
        let ms = Duration::from_millis;
        assert_eq!(longest_wait(&opts, Duration::ZERO), ms(100));
        assert_eq!(longest_wait(&opts, ms(5)), ms(100));
        assert_eq!(longest_wait(&opts, ms(50)), ms(200));
        assert_eq!(longest_wait(&opts, ms(400)), ms(1000));
        assert_eq!(longest_wait(&opts, Duration::from_secs(30)), ms(1000));
    }

    #[test]
    fn backoff_doubles_to_its_maximum_and_starts_over() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let waits: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        let bases = [100, 200, 400, 800, 1000, 1000];
        for (w, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*w >= base && *w <= base + base / 10, "{w:?} for {base:?}");
        }
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(100));
    }
}
