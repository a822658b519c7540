use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshentry_admin::AdminLimits;
use meshentry_proxy::Live;
use meshentry_proxy::Shared;
use meshentry_proxy::access_log::{AccessLog, Format as AccessLogFormat};
use meshentry_proxy::{Dns, DnsConfig};
use meshentry_route::base::addr::ListenAddr;
use meshentry_route::base::config::{IdentityFiles, Limits, OutboundPolicy, ProxyConfig};
use meshentry_route::model::snapshot::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use meshentry_proxy::reload;
use meshentry_proxy::workers::{self, Listen};

#[derive(clap::Args)]
pub struct Args {
    /// A file or directory of Istio resources (as for `validate`); repeat the flag for more
    /// (`-c a.yaml -c dir/`). Optional with --kubernetes; both may be given.
    #[arg(short, long = "config", value_name = "PATH", required_unless_present = "kubernetes")]
    pub config: Vec<PathBuf>,
    #[command(flatten)]
    pub kube: crate::cmd::kube::KubeArgs,
    /// With --kubernetes: also read the Secrets of this proxy's namespace, for
    /// `credentialName` (DestinationRule TLS origination, Gateway TLS servers), and follow their
    /// rotation. Off by default: the proxy's role then needs no access to Secrets.
    #[arg(long, requires = "kubernetes")]
    pub kubernetes_secrets: bool,
    /// With --kubernetes: read only these namespaces' objects (repeat the flag for more;
    /// Namespaces themselves are read whole), so that the role can be namespace-scoped and the
    /// proxy holds only what it may route to. Default: all namespaces, as an Istio sidecar
    /// sees what every namespace exports to it.
    #[arg(long, value_name = "NAMESPACE", requires = "kubernetes")]
    pub watch_namespace: Vec<String>,
    /// With --kubernetes: read only the Istio objects with these labels (a Kubernetes label
    /// selector, e.g. `meshentry.io/proxy=egress`), to give each group of proxies its share.
    #[arg(long, value_name = "SELECTOR", requires = "kubernetes")]
    pub watch_selector: Option<String>,
    /// Where --kubernetes-secrets keeps them, as files readable by this user only
    /// (NAME/tls.crt, tls.key, ca.crt). Default: a new directory in /dev/shm (memory), else
    /// the temporary directory, removed at exit.
    #[arg(long, value_name = "DIR", requires = "kubernetes_secrets")]
    pub secrets_dir: Option<PathBuf>,
    /// The namespace of resources (in --config files) that do not set metadata.namespace, as
    /// `kubectl apply -n` would put them. Default: `default`.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// This workload's namespace: it decides what the proxy sees (exportTo), which Sidecar and
    /// DestinationRules apply, and whose Secrets --kubernetes-secrets reads. Default:
    /// --namespace, else with --gateway the Gateway's namespace, else `default`.
    #[arg(long, value_name = "NAMESPACE")]
    pub workload_namespace: Option<String>,
    /// This workload's labels (k=v,k=v), for Sidecar and DestinationRule workload selectors.
    #[arg(long, default_value = "", value_parser = parse_labels)]
    pub labels: Labels,
    /// Run as the Gateway NAMESPACE/NAME (an ingress or egress gateway): listen on its
    /// servers' ports and route with the VirtualServices bound to it. Its `selector` must
    /// match --labels. The explicit proxy and transparent listeners are then off unless
    /// --http-proxy or --outbound name an address.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_gateway)]
    pub gateway: Option<String>,
    /// With --gateway: the IP address the ports of servers without a `bind` are bound to
    /// (0.0.0.0 for all). A server's own `bind` (an IP, or `unix://PATH`) is honoured.
    #[arg(long, default_value = "127.0.0.1", requires = "gateway")]
    pub gateway_bind: IpAddr,
    /// Where the explicit HTTP proxy listens (point HTTP_PROXY/HTTPS_PROXY here); `off` for
    /// none. Default 127.0.0.1:15080 (off with --gateway).
    #[arg(long, value_parser = parse_maybe_addr)]
    pub http_proxy: Option<MaybeAddr>,
    /// Where connections redirected by iptables arrive (`meshentry iptables install`); each is
    /// routed by its original destination and first bytes. Repeat for IPv6 (`[::1]:15001`);
    /// `off` for none. Default 127.0.0.1:15001 (off with --gateway).
    #[arg(long = "outbound", value_parser = parse_outbound)]
    pub outbound: Vec<Option<SocketAddr>>,
    /// How long the transparent listener waits for a client's first bytes when they decide
    /// the route (auto-detected ports); a client silent for longer is treated as TCP. 0: no
    /// wait.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub protocol_detection_timeout: Duration,
    /// Where the admin server listens.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Write an access log line per HTTP request and per TCP connection, when it ends, to this
    /// file (appended; `-` or /dev/stdout for standard output). Default: off, as in Istio's
    /// default profile.
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<PathBuf>,
    /// The access log's format: `text` (Istio's default Envoy format) or `json` (one object
    /// per line, with Istio's JSON keys).
    #[arg(long, default_value = "text", value_parser = parse_access_log_format, requires = "access_log")]
    pub access_log_format: AccessLogFormat,
    /// DNS server for DNS-resolved services (IP or IP:PORT); default: /etc/resolv.conf.
    #[arg(long, value_parser = parse_dns_server)]
    pub dns_server: Option<SocketAddr>,
    /// Answer DNS here, over UDP and TCP (Istio's DNS proxy, 127.0.0.1:15053): the mesh's
    /// names (ServiceEntry hosts with their addresses or auto-allocated ones, Kubernetes
    /// Services and their short names) from the configuration, every other name forwarded to
    /// --dns-upstream and cached. `meshentry iptables install --capture-dns` sends the
    /// application's DNS here. `off` for none. Default: off, or 127.0.0.1:15053 when
    /// --mesh-config sets ISTIO_META_DNS_CAPTURE.
    #[arg(long, value_parser = parse_maybe_addr)]
    pub dns: Vec<MaybeAddr>,
    /// Where --dns forwards the names it does not know (IP or IP:PORT; repeat for more, asked
    /// in turn). Default: --dns-server, else the nameservers of /etc/resolv.conf.
    #[arg(long, value_parser = parse_dns_server, requires = "dns")]
    pub dns_upstream: Vec<SocketAddr>,
    /// The applications' resolver search domains (repeat for more): a mesh name followed by
    /// one of them, as a resolver with `ndots:5` asks first, is answered at once. Default: the
    /// `search` line of /etc/resolv.conf.
    #[arg(long, value_name = "DOMAIN", requires = "dns")]
    pub dns_search: Vec<String>,
    /// How long --dns waits for one upstream resolver before asking the next (Istio: 5s).
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub dns_upstream_timeout: Duration,
    /// ALLOW_ANY or REGISTRY_ONLY; overrides any Sidecar and the mesh default (ALLOW_ANY).
    #[arg(long, value_parser = parse_policy)]
    pub outbound_policy: Option<OutboundPolicy>,
    /// Upstream connect timeout.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,
    /// How long an upstream may take to start its response before the client gets a 504.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub response_timeout: Duration,
    /// How long a client may take to send a request head: the first one from the moment it
    /// connects, later ones from their first byte. Too slow: 408 and close.
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,
    /// Client connections open at once, over all listeners and workers; one more is accepted
    /// and closed at once (counted as downstream_cx_overflow). Default: from the file
    /// descriptor limit (raised to its hard limit at startup), leaving room for an upstream
    /// and a pooled connection per client connection.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Admin connections open at once; more are closed at once (admin_cx_overflow), so the
    /// admin port can never use the descriptors the data plane needs. Default 64 (less under a
    /// small file descriptor limit: half the reserve --max-connections leaves).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_max_connections: Option<u64>,
    /// The largest request head (request line and headers) in KiB; larger gets a 431 (Envoy's
    /// max_request_headers_kb).
    #[arg(long, default_value = "60", value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub max_request_headers_kb: u32,
    /// The most header fields a request may have; more gets a 431 (Envoy's max_headers_count).
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub max_headers_count: u32,
    /// How long a client's HTTP connection may sit idle between requests before it is closed
    /// (Envoy's idle_timeout; kept longer than clients' own pool timeouts so the proxy never
    /// closes a connection a client is about to reuse).
    #[arg(long, default_value = "1h", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,
    /// How long a relayed TCP/TLS connection or CONNECT tunnel may carry no bytes either way
    /// before both sides are closed (Envoy's tcp_proxy idle_timeout).
    #[arg(long, default_value = "1h", value_parser = parse_positive_duration)]
    pub tcp_idle_timeout: Duration,
    /// How long a request may go without a byte of its body arriving from the client, or of its
    /// response body arriving from the upstream, before it is ended (Envoy's
    /// stream_idle_timeout): 408 if nothing was answered yet, else the connection is closed.
    #[arg(long, default_value = "5m", value_parser = parse_positive_duration)]
    pub stream_idle_timeout: Duration,
    /// Streams one HTTP/2 client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// more are refused with RST_STREAM REFUSED_STREAM, which clients retry. Envoy allows
    /// 2^31-1 unless configured; 100 is its edge recommendation and RFC 9113's smallest advised.
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u32).range(1..=2_147_483_647))]
    pub http2_max_concurrent_streams: u32,
    /// How many streams one HTTP/2 client connection may reset prematurely (within a second of
    /// opening them, before their response started) in a burst; the allowance refills at a
    /// tenth of this a second. Past it the connection gets GOAWAY ENHANCE_YOUR_CALM and is
    /// closed (the rapid reset attack, CVE-2023-44487; counted in
    /// downstream_rq_too_many_premature_resets).
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_premature_resets: u32,
    /// How long an idle pooled upstream connection is kept for reuse (Istio's DestinationRule
    /// connectionPool.http.idleTimeout, proxy-wide).
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration)]
    pub upstream_idle_timeout: Duration,
    /// This workload's certificate chain (PEM), for ISTIO_MUTUAL (`meshentry ca issue` writes
    /// cert-chain.pem, key.pem and root-cert.pem).
    #[arg(long, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The private key of `--cert`.
    #[arg(long, requires_all = ["cert", "ca"])]
    pub key: Option<PathBuf>,
    /// The mesh CA's certificates (PEM), trusted for ISTIO_MUTUAL upstreams.
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// The mesh's SPIFFE trust domain, for the identities ISTIO_MUTUAL expects of endpoints.
    /// Default: --mesh-config's trustDomain, else cluster.local.
    #[arg(long)]
    pub trust_domain: Option<String>,
    #[command(flatten)]
    pub mesh: crate::cmd::mesh::MeshArgs,
    #[command(flatten)]
    pub domain: crate::cmd::validate::DomainArgs,
    /// How often certificate files (DestinationRule TLS origination, Gateway TLS servers, the
    /// --cert/--key/--ca identity) are checked for changes; they are reloaded without dropping
    /// connections.
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    pub cert_check_interval: Duration,
    /// Worker threads (default: one per CPU this process may use).
    #[arg(long)]
    pub workers: Option<usize>,
    /// On SIGTERM or SIGINT: how long connections may take to finish (listeners are closed at
    /// once, HTTP/1 connections close after their current response, HTTP/2 ones get GOAWAY)
    /// before the ones left are closed and the proxy exits. Istio's terminationDrainDuration.
    /// 0: close them at once.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long the --config paths must be quiet after a change before it is reloaded (one
    /// save is often several events). SIGHUP reloads at once. 0: reload on the first event.
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    pub reload_debounce: Duration,
    /// Log level (error, warn, info, debug, trace, off), optionally with per-module directives
    /// (`info,meshentry_proxy=debug`); RUST_LOG, when set, overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Clone, Debug, Default)]
pub struct Labels(pub BTreeMap<String, String>);

pub(crate) fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not k=v"))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(Labels(out))
}

fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an IP or IP:PORT"))
}

fn parse_outbound(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| format!("{s:?} is not IP:PORT or off"))
}

/// An address, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct MaybeAddr(pub Option<SocketAddr>);

fn parse_maybe_addr(s: &str) -> Result<MaybeAddr, String> {
    parse_outbound(s).map(MaybeAddr)
}

fn parse_access_log_format(s: &str) -> Result<AccessLogFormat, String> {
    AccessLogFormat::parse(s).ok_or_else(|| format!("{s:?} is not text or json"))
}

fn parse_gateway(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

pub(crate) fn parse_policy(s: &str) -> Result<OutboundPolicy, String> {
    OutboundPolicy::parse(s).ok_or_else(|| format!("{s:?} is not ALLOW_ANY or REGISTRY_ONLY"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    meshentry_api::model::parse_duration(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be longer than 0")),
        d => Ok(d),
    }
}

/// Raises the soft file descriptor limit to the hard one, as Envoy and HAProxy deployments do
/// (the soft limit is often 1024, a few hundred connections); returns the limit in force.
fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the file descriptor limit to its hard limit");
                return limit.maximum;
            }
            Err(e) => tracing::warn!(error = %e, limit = ?limit.current, "cannot raise the file descriptor limit"),
        }
    }
    limit.current
}

/// The default `--max-connections` for a file descriptor limit: a client connection takes
/// its own descriptor, one upstream, and at most one more pooled upstream connection, and a
/// reserve stays free for listeners, the admin server, DNS and certificate files.
fn default_max_connections(fd_limit: Option<u64>) -> u64 {
    let fds = fds_of(fd_limit);
    ((fds - fd_reserve(fds)) / 3).max(1)
}

/// No limit (RLIM_INFINITY) is bounded anyway: the kernel's fs.nr_open is 1Mi by default.
fn fds_of(fd_limit: Option<u64>) -> u64 {
    fd_limit.unwrap_or(1 << 20)
}

/// The descriptors kept out of `--max-connections`' share: a quarter of the limit, at most 256.
fn fd_reserve(fds: u64) -> u64 {
    (fds / 4).min(256)
}

/// The default admin connection cap: at most half the reserve, so that a flood of admin
/// connections leaves the other half (listeners, DNS, files) and the data plane's share alone.
fn default_admin_connections(fd_limit: Option<u64>) -> u64 {
    (fd_reserve(fds_of(fd_limit)) / 2).clamp(1, meshentry_admin::DEFAULT_MAX_CONNECTIONS)
}

/// Runs the proxy with one single-threaded runtime per worker (Envoy's model): each worker
/// accepts on its own `SO_REUSEPORT` socket, so a connection and its upstream connections live
/// on one thread and never contend with other workers. The first worker also runs the admin
/// server and signal handling.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    crate::logging::init(&args.log_level)?;
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")
    };
    let main = runtime()?;
    // Handled from before the listeners open: a signal that early must not kill the process.
    let (mut signals, hangup) = main.block_on(async {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        if let Err(e) = &hangup {
            tracing::warn!(error = %e, "cannot handle SIGHUP; configuration reloads on file changes only");
        }
        anyhow::Ok((Signals::new()?, hangup.ok()))
    })?;
    let Some(mut started) = main.block_on(start(args))? else {
        return Ok(ExitCode::from(1));
    };
    // What loading and building dropped goes back to the kernel before the first connection.
    let trimmed = meshentry_proxy::memory::trim();
    tracing::debug!(
        took_us = trimmed.as_micros() as u64,
        "free heap returned after the build"
    );
    let telemetry_owner = started.shared.clone();
    reload::publish_skipped(&started.shared, std::mem::take(&mut started.skipped));
    // Turns true when the drain is over: workers end, and with them what connections are left.
    let (exit, exited) = watch::channel(false);
    let (main_commands, main_queue) = mpsc::unbounded_channel();
    let mut commands = vec![main_commands];
    let mut threads = Vec::new();
    for i in 1..workers {
        let listeners = started
            .listeners
            .iter()
            .map(|(kind, addr, socket)| Ok((*kind, addr.clone(), socket.another(addr)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (tx, queue) = mpsc::unbounded_channel();
        commands.push(tx);
        let shared = started.shared.clone();
        let stopped = started.stopped.clone();
        let exited = exited.clone();
        let rt = runtime()?;
        threads.push(
            std::thread::Builder::new()
                .name(format!("meshentry-worker-{i}"))
                .spawn(move || rt.block_on(workers::run(listeners, shared, stopped, queue, exited)))
                .context("cannot start a worker thread")?,
        );
    }
    main.block_on(async move {
        let shared = started.shared;
        let bound: Vec<(Listen, ListenAddr)> = started.listeners.iter().map(|(k, a, _)| (*k, a.clone())).collect();
        let worker = tokio::spawn(workers::run(
            started.listeners,
            shared.clone(),
            started.stopped.clone(),
            main_queue,
            exited.clone(),
        ));
        let certs = tokio::spawn(reload::watch_certificates(
            shared.clone(),
            args.cert_check_interval,
            started.stopped.clone(),
        ));
        let dns_thread = match started.dns_proxy {
            Some((listener, upstreams, _)) => Some(
                meshentry_proxy::dns_proxy::spawn(listener, upstreams, shared.clone(), exited.clone())
                    .context("cannot start the DNS proxy thread")?,
            ),
            None => None,
        };
        let admin_addr = started.admin.local_addr()?;
        // The admin server answers through the drain (`/ready` says DRAINING) until the exit.
        let admin = tokio::spawn(meshentry_admin::serve(
            started.admin,
            shared.clone(),
            exited,
            started.admin_limits,
        ));
        let cluster_version = started
            .cluster
            .as_ref()
            .map(|watch| crate::cmd::kube::follow(watch, started.cluster_version, shared.clone(), started.stopped.clone()));
        let applied = reload::with_cluster(started.fingerprint, cluster_version.as_ref());
        let reloader = reload::Reloader::new(
            reload::Input {
                paths: args.config.clone(),
                load: {
                    // Read again on each reload, for the exportTo defaults it sets (the proxy
                    // settings it decides are read once, at startup).
                    let mesh = args.mesh.clone();
                    let namespace = resource_namespace(args).to_string();
                    let view = started.cluster.as_ref().map(meshentry_kube::Watch::view);
                    Arc::new(move |paths: &[std::path::PathBuf]| {
                        let documents = view.as_ref().map(|v| v.borrow().documents.clone());
                        load(paths, &namespace, &mesh, documents.as_deref()).map_err(Into::into)
                    })
                },
                gateway: args.gateway.clone(),
                labels: args.labels.0.clone(),
                cluster: cluster_version,
                per_object: meshentry_kube::is_cluster_origin,
                rebuilt: started.cluster.clone().map(|watch| {
                    Arc::new(move |took| watch.rebuilt(took)) as Arc<dyn Fn(Duration) + Send + Sync>
                }),
            },
            shared.clone(),
            commands,
            &bound,
            admin_addr,
            applied,
        );
        let reloads = tokio::spawn(reloader.run(args.reload_debounce, hangup, started.stopped.clone()));
        let name = signals.recv().await;
        tracing::info!(signal = name, drain_timeout = ?args.drain_timeout, "draining: listeners closed, connections finishing");
        let _ = started.stop.send(true);
        shared.lifecycle.start_drain();
        drain(&shared, args.drain_timeout, &mut signals).await;
        let _ = exit.send(true);
        let _ = worker.await;
        let _ = admin.await;
        let _ = certs.await;
        let _ = reloads.await;
        if let Some(t) = dns_thread {
            let _ = t.join();
        }
        anyhow::Ok(())
    })?;
    for t in threads {
        let _ = t.join();
    }
    telemetry_owner.telemetry.flush();
    Ok(ExitCode::SUCCESS)
}

/// Waits until no connection is left, `timeout` passes, or a second signal says not to wait.
async fn drain(shared: &Shared, timeout: Duration, signals: &mut Signals) {
    use std::sync::atomic::Ordering;
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    // Polled: a drain happens once, and counting connections on the data path is already done.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let left = shared.stats.downstream_active.load(Ordering::Relaxed)
            + shared.lifecycle.tunnels_active.load(Ordering::Relaxed);
        if left == 0 {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "drained: every connection finished"
            );
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(connections = left, drain_timeout = ?timeout, "drain timeout: closing the connections left");
                return;
            }
            name = signals.recv() => {
                tracing::warn!(signal = name, connections = left, "second signal: closing the connections left");
                return;
            }
        }
    }
}

struct Started {
    shared: Arc<Shared>,
    /// Each listener's kind, its bound address (the flag may say port 0) and the first
    /// worker's socket; the other workers get theirs with [`workers::Socket::another`].
    listeners: Vec<(Listen, ListenAddr, workers::Socket)>,
    admin: TcpListener,
    admin_limits: AdminLimits,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    /// The fingerprint of the configuration files loaded, so that a reload of the same bytes
    /// does nothing.
    fingerprint: Option<u64>,
    /// The cluster followed with --kubernetes, synced once, and the version of its objects
    /// loaded.
    cluster: Option<meshentry_kube::Watch>,
    cluster_version: u64,
    /// The errors of the cluster's objects left out of the first configuration.
    skipped: Vec<meshentry_api::Finding>,
    /// Where --kubernetes-secrets keeps them; removed when dropped, at exit.
    _secrets: Option<crate::cmd::kube::SecretsDir>,
    /// The DNS proxy's sockets and upstreams (--dns), and its address.
    dns_proxy: Option<(
        Vec<meshentry_proxy::dns_proxy::DnsListener>,
        meshentry_proxy::dns_proxy::Upstreams,
        Vec<SocketAddr>,
    )>,
}

/// Where resources without metadata.namespace go.
fn resource_namespace(args: &Args) -> &str {
    args.namespace.as_deref().unwrap_or("default")
}

/// The files, and the cluster's objects when there is a cluster.
fn load(
    paths: &[PathBuf],
    namespace: &str,
    mesh: &crate::cmd::mesh::MeshArgs,
    documents: Option<&[meshentry_kube::Document]>,
) -> anyhow::Result<meshentry_api::Loaded> {
    crate::cmd::validate::load_from(paths, namespace, mesh, |loaded, opts| {
        if let Some(documents) = documents {
            meshentry_kube::add_documents(loaded, documents, opts);
        }
        Ok(())
    })
}

/// Loads the configuration and binds the admin port; `None` when the configuration is invalid
/// (its errors are printed).
async fn start(args: &Args) -> anyhow::Result<Option<Started>> {
    let namespace = match (&args.workload_namespace, &args.namespace, &args.gateway) {
        (Some(ns), _, _) | (None, Some(ns), _) => ns.clone(),
        (None, None, Some(gw)) => gw.split_once('/').map_or("default", |(ns, _)| ns).to_string(),
        (None, None, None) => "default".to_string(),
    };
    let secrets = match args.kubernetes_secrets {
        true => Some(crate::cmd::kube::secrets_dir(args.secrets_dir.as_deref())?),
        false => None,
    };
    let cluster = match args.kube.kubernetes {
        true => {
            let opts = meshentry_kube::WatchOptions {
                secrets: secrets.as_ref().map(|dir| meshentry_kube::SecretsOptions {
                    namespace: namespace.clone(),
                    dir: dir.path().to_path_buf(),
                }),
                namespaces: args.watch_namespace.clone(),
                label_selector: args.watch_selector.clone(),
                ..meshentry_kube::WatchOptions::default()
            };
            Some(crate::cmd::kube::first_sync(&args.kube, opts).await?)
        }
        false => None,
    };
    let view = cluster.as_ref().map(|c| c.view().borrow().clone());
    // Taken before loading: a change in between makes the next reload see different bytes.
    let fingerprint = reload::fingerprint(&args.config);
    let loaded = load(
        &args.config,
        resource_namespace(args),
        &args.mesh,
        view.as_ref().map(|v| &*v.documents),
    )?;
    let (errors, skipped) = reload::split_errors(&loaded, meshentry_kube::is_cluster_origin);
    if !errors.is_empty() {
        for f in &errors {
            eprintln!("{f}");
        }
        eprintln!("meshentry: refusing to start with an invalid configuration");
        return Ok(None);
    }
    for n in &loaded.notices {
        tracing::info!("{n}");
    }
    let valid: Vec<_> = loaded.valid().collect();
    if let Some(name) = &args.gateway
        && let Err(e) = meshentry_route::model::gateway::check(&valid, name, &args.labels.0)
    {
        eprintln!("meshentry: --gateway {name}: {e}");
        return Ok(None);
    }
    let (data_limits, admin_limits) = limits(args);
    let mut config = ProxyConfig {
        namespace,
        gateway: args.gateway.clone(),
        labels: args.labels.0.clone(),
        policy_override: args.outbound_policy,
        connect_timeout: args.connect_timeout,
        response_timeout: args.response_timeout,
        header_read_timeout: args.header_read_timeout,
        sniff_timeout: args.protocol_detection_timeout,
        pool_idle_timeout: args.upstream_idle_timeout,
        limits: data_limits,
        identity: match (&args.cert, &args.key, &args.ca) {
            (Some(cert), Some(key), Some(ca)) => Some(IdentityFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            _ => None,
        },
        gateway_bind: args.gateway_bind,
        credentials: secrets.as_ref().map(|d| d.path().to_path_buf()),
        cluster_domain: args.domain.cluster_domain.clone(),
        ..ProxyConfig::default()
    };
    crate::cmd::mesh::proxy_config(&loaded.mesh, &mut config);
    if let Some(td) = &args.trust_domain {
        config.trust_domain.clone_from(td);
    }
    let resolv = meshentry_proxy::dns_proxy::ResolvConf::system();
    let dns_addrs: Vec<SocketAddr> = match &args.dns[..] {
        // Istio's agent answers DNS on 15053 when the mesh turns DNS capture on, on ::1 too
        // when there are IPv6 nameservers (whose queries capture sends there).
        [] if loaded.mesh.dns_capture => {
            let mut v = vec![SocketAddr::from(([127, 0, 0, 1], 15053))];
            if resolv.nameservers.iter().any(IpAddr::is_ipv6) {
                v.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 15053)));
            }
            v
        }
        list => list.iter().filter_map(|m| m.0).collect(),
    };
    if let Some(any) = dns_addrs.iter().find(|a| a.ip().is_unspecified()) {
        // Without IP_PKTINFO, a UDP answer leaves from the address routing picks, not the one
        // the client asked, and resolvers drop it as a forgery.
        anyhow::bail!(
            "--dns {any}: give a specific address (repeat --dns for several), as a UDP answer must come from the address the client asked"
        );
    }
    let mut dns_proxy = None;
    if !dns_addrs.is_empty() {
        config.dns = Some(meshentry_route::base::config::DnsProxy {
            search: match args.dns_search.is_empty() {
                true => resolv.search.clone(),
                false => args.dns_search.clone(),
            },
        });
        let mut listeners = Vec::new();
        let mut local = Vec::new();
        for addr in &dns_addrs {
            let listener = meshentry_proxy::dns_proxy::DnsListener::bind(*addr)
                .with_context(|| format!("cannot listen on {addr} (--dns)"))?;
            local.push(listener.local_addr()?);
            listeners.push(listener);
        }
        let servers: Vec<SocketAddr> = match (&args.dns_upstream[..], args.dns_server) {
            ([], Some(server)) => vec![server],
            ([], None) => resolv.nameservers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect(),
            (list, _) => list.to_vec(),
        };
        if let Some(own) = servers.iter().find(|s| local.contains(s)) {
            eprintln!("meshentry: --dns {own} would forward to itself: give the real resolvers with --dns-upstream");
            return Ok(None);
        }
        if servers.is_empty() {
            tracing::warn!(
                "--dns: no upstream resolver (none in /etc/resolv.conf, no --dns-upstream): names the mesh does not know get SERVFAIL"
            );
        }
        dns_proxy = Some((
            listeners,
            meshentry_proxy::dns_proxy::Upstreams {
                servers,
                timeout: args.dns_upstream_timeout,
            },
            local,
        ));
    }
    let dns = Dns::new(DnsConfig {
        server: args.dns_server,
        ..DnsConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot set up DNS: {e}"))?;
    let snapshot = Live::new(Snapshot::build(&valid, &config, 1), &dns);
    for w in snapshot.registry.warnings() {
        tracing::warn!("{}", w.unlabelled());
    }
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    let sidecar = args.gateway.is_none();
    let http_proxy = match args.http_proxy {
        Some(a) => a.0,
        None if sidecar => Some(SocketAddr::from(([127, 0, 0, 1], 15080))),
        None => None,
    };
    let outbound: Vec<SocketAddr> = if args.outbound.is_empty() {
        if sidecar {
            vec![SocketAddr::from(([127, 0, 0, 1], 15001))]
        } else {
            Vec::new()
        }
    } else {
        args.outbound.iter().flatten().copied().collect()
    };
    let mut wanted: Vec<(Listen, ListenAddr)> = http_proxy
        .iter()
        .map(|a| (Listen::HttpProxy, ListenAddr::Tcp(*a)))
        .collect();
    wanted.extend(outbound.iter().map(|a| (Listen::Outbound, ListenAddr::Tcp(*a))));
    if let Some(gw) = &snapshot.gateway {
        for l in &gw.listeners {
            if let Some(reason) = snapshot.listener_error(l) {
                eprintln!("meshentry: Gateway {} port {}: {reason}", gw.name, l.port);
                eprintln!("meshentry: refusing to start a gateway that cannot serve its servers");
                return Ok(None);
            }
            if !l.served() {
                continue;
            }
            tracing::info!(gateway = %gw.name, port = l.port, bind = %l.bind, protocol = %l.protocol, serves = %l.describe(),
                vhosts = %l.vhosts().map(|(h, r)| format!("{h} ({})", r.vs)).collect::<Vec<_>>().join(", "),
                "gateway server");
            wanted.push((Listen::Gateway, l.addr()));
        }
    }
    // A gateway may get its servers' ports with a later reload; anything else would serve
    // nothing, ever.
    if wanted.is_empty() && dns_proxy.is_none() && args.gateway.is_none() {
        eprintln!(
            "meshentry: nothing to listen on (--http-proxy off and --outbound off, no --gateway, no --dns): the proxy would serve nothing"
        );
        return Ok(None);
    }
    // Bind once to learn the ports (the flags may say :0); other workers bind them again.
    let mut listeners = Vec::new();
    for (kind, addr) in wanted {
        let socket = workers::Socket::bind(&addr)?;
        listeners.push((kind, socket.local(&addr)?, socket));
    }
    let admin = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", args.admin))?;
    let mut local: Vec<SocketAddr> = listeners.iter().filter_map(|(_, _, s)| s.tcp_addr()).collect();
    local.push(admin.local_addr()?);
    let of_kind = |f: fn(&Listen) -> bool| {
        listeners
            .iter()
            .filter(|(k, _, _)| f(k))
            .map(|(_, a, _)| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    tracing::info!(
        http_proxy = %of_kind(|k| matches!(k, Listen::HttpProxy)), outbound = %of_kind(|k| matches!(k, Listen::Outbound)),
        dns = %dns_proxy.as_ref().map_or_else(|| "off".to_string(), |(_, _, a)| a.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
        gateway = %args.gateway.as_deref().unwrap_or("-"), gateway_listeners = %of_kind(|k| matches!(k, Listen::Gateway)), admin = %admin.local_addr()?, namespace = %config.namespace,
        services = snapshot.registry.services().len(), policy = %snapshot.policy, policy_source = %snapshot.policy_source,
        scope = %snapshot.scope.as_ref().map_or_else(|| "-".to_string(), |s| s.source()),
        "meshentry proxy started"
    );
    let shared = Shared::new(snapshot, dns, config, local);
    if let Some(path) = &args.access_log {
        let log = AccessLog::open(path, args.access_log_format)
            .with_context(|| format!("cannot open the access log {}", path.display()))?;
        let _ = shared.telemetry.set_access_log(log);
    }
    let (stop, stopped) = watch::channel(false);
    Ok(Some(Started {
        shared,
        listeners,
        admin,
        admin_limits,
        stop,
        stopped,
        fingerprint,
        cluster_version: view.as_ref().map_or(0, |v| v.version),
        cluster,
        skipped,
        _secrets: secrets,
        dns_proxy,
    }))
}

/// The limits the flags ask for, the data plane's and the admin server's; the connection
/// limits default from the fd limit.
fn limits(args: &Args) -> (Limits, AdminLimits) {
    let fds = raise_fd_limit();
    let max_connections = match args.max_connections {
        Some(n) => {
            tracing::info!(max_connections = n, fd_limit = ?fds, "connection limit (from --max-connections)");
            n
        }
        None => {
            let n = default_max_connections(fds);
            tracing::info!(max_connections = n, fd_limit = ?fds, "connection limit (from the file descriptor limit; set it with --max-connections)");
            n
        }
    };
    let admin = AdminLimits {
        max_connections: args
            .admin_max_connections
            .unwrap_or_else(|| default_admin_connections(fds)),
        ..AdminLimits::default()
    };
    if let Some(fds) = fds
        && !fits(fds, max_connections, admin.max_connections)
    {
        tracing::warn!(
            max_connections,
            admin_max_connections = admin.max_connections,
            fd_limit = fds,
            "the connection limits do not fit the file descriptor limit (3 per client connection, 1 per admin connection, and a reserve): under load accepts will fail and back off; lower --max-connections or raise the limit"
        );
    }
    let limits = Limits {
        max_connections,
        max_head_bytes: args.max_request_headers_kb as usize * 1024,
        max_headers: args.max_headers_count as usize,
        idle_timeout: args.idle_timeout,
        tcp_idle_timeout: args.tcp_idle_timeout,
        stream_idle_timeout: args.stream_idle_timeout,
        http2_max_concurrent_streams: args.http2_max_concurrent_streams,
        http2_max_premature_resets: args.http2_max_premature_resets,
    };
    (limits, admin)
}

/// Whether the data plane's connections (a client, its upstream and a pooled one each) and the
/// admin server's fit under `fds` with room left for listeners, DNS and files (the part of
/// [`fd_reserve`] the admin cap does not take).
fn fits(fds: u64, max_connections: u64, admin: u64) -> bool {
    let rest = fd_reserve(fds) - fd_reserve(fds) / 2;
    max_connections
        .saturating_mul(3)
        .saturating_add(admin)
        .saturating_add(rest)
        <= fds
}

/// SIGTERM and SIGINT: the first starts the drain, a second ends it.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_room_for_upstreams_and_a_reserve() {
        // A common soft limit that could not be raised: 256 reserved, then a third each.
        assert_eq!(default_max_connections(Some(1024)), 256);
        assert_eq!(default_max_connections(Some(1 << 20)), ((1 << 20) - 256) / 3);
        // Tiny limits keep a quarter in reserve and still admit someone.
        assert_eq!(default_max_connections(Some(16)), 4);
        assert_eq!(default_max_connections(Some(1)), 1);
        assert_eq!(default_max_connections(None), ((1 << 20) - 256) / 3);
    }

    #[test]
    fn the_admin_cap_comes_out_of_the_reserve_and_everything_fits_the_fd_limit() {
        assert_eq!(default_admin_connections(Some(1024)), 64);
        assert_eq!(default_admin_connections(Some(600)), 64);
        assert_eq!(default_admin_connections(None), 64);
        assert_eq!(default_admin_connections(Some(100)), 12);
        assert_eq!(default_admin_connections(Some(16)), 2);
        assert_eq!(default_admin_connections(Some(1)), 1);
        for fds in [16, 100, 600, 1024, 4096, 1 << 20] {
            let (data, admin) = (default_max_connections(Some(fds)), default_admin_connections(Some(fds)));
            assert!(fits(fds, data, admin), "{fds}: {data} + admin {admin}");
        }
        // An explicit limit the descriptors cannot carry is reported.
        assert!(!fits(600, 1000, 64));
        assert!(!fits(1024, 256, 1000));
    }

    #[test]
    fn zero_is_not_a_timeout() {
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_positive_duration("1h"), Ok(Duration::from_secs(3600)));
    }
}
