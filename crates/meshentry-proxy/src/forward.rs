//! Getting a request or a byte stream to an upstream host: picking a host of the cluster (or the
//! original destination), connecting with failover, and sending over pooled HTTP/1.1
//! connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::Request;
use hyper::Response;
use hyper::body::Incoming;

use crate::cluster::{Cluster, HostAddr, NoHost};
use crate::dns::Dns;
use crate::lb::{InFlight, Tried};
use crate::server::Shared;
use crate::upstream::{self, ConnectError, PooledBody, RequestBody, Stream};

/// Why a request or tunnel could not reach an upstream. Each maps to an HTTP status, an Envoy
/// response flag and a human reason.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy upstream: {0}")]
    NoHost(#[from] NoHost),
    #[error("upstream connect error: {reason} (tried {tried} endpoint{s})", s = if *tried == 1 { "" } else { "s" })]
    Connect { reason: String, tried: u32 },
    #[error("upstream reset before response headers: {0}")]
    Reset(String),
    #[error("upstream request timeout: no response headers within {0:?}")]
    Timeout(std::time::Duration),
    #[error("DNS lookup failed: {0}")]
    Dns(String),
}

impl UpstreamError {
    /// The status a client gets: Envoy's choices (503 for connection failures and no hosts,
    /// 504 for timeouts), and 502 when the upstream broke the exchange.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamError::NoHost(_) | UpstreamError::Connect { .. } | UpstreamError::Dns(_) => 503,
            UpstreamError::Reset(_) => 502,
            UpstreamError::Timeout(_) => 504,
        }
    }

    /// Envoy's response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            UpstreamError::NoHost(NoHost::Dns(_)) | UpstreamError::Dns(_) => "DF",
            UpstreamError::NoHost(_) => "UH",
            UpstreamError::Connect { .. } => "UF",
            UpstreamError::Reset(_) => "UC",
            UpstreamError::Timeout(_) => "UT",
        }
    }
}

/// Where the application was going, for ORIGINAL_DST and passthrough.
#[derive(Clone, Debug)]
pub struct Original<'a> {
    pub host: &'a str,
    pub port: u16,
}

/// The addresses to try for an original destination: the IP itself, or the name's addresses.
async fn original_addrs(dns: &Arc<Dns>, dest: &Original<'_>) -> Result<Vec<SocketAddr>, UpstreamError> {
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, dest.port)]);
    }
    let entry = dns.dynamic_entry(dest.host);
    let answer = dns
        .resolve(&entry)
        .await
        .map_err(|e| UpstreamError::Dns(e.to_string()))?;
    Ok(answer.addrs.iter().map(|ip| SocketAddr::new(*ip, dest.port)).collect())
}

/// Opens a stream for a tunnel: to a host of `cluster` (failing over on refused
/// connections), or to the original destination.
pub async fn connect_stream(
    shared: &Shared,
    cluster: Option<&Cluster>,
    original: &Original<'_>,
) -> Result<(Stream, HostAddr), UpstreamError> {
    let timeout = shared.config.connect_timeout;
    if let Some(cluster) = cluster
        && cluster.original_dst_port().is_none()
    {
        cluster.stats.requests.fetch_add(1, Ordering::Relaxed);
        let set = cluster.hosts(&shared.dns).await?;
        let mut tried = Tried::default();
        let mut last = String::new();
        while let Some(i) = set.balancer.pick(&set.hosts, tried) {
            tried.add(i);
            let host = &set.hosts[i];
            host.stats.requests.fetch_add(1, Ordering::Relaxed);
            match upstream::connect(&host.addr, timeout).await {
                Ok(s) => {
                    host.stats.connections.fetch_add(1, Ordering::Relaxed);
                    return Ok((s, host.addr.clone()));
                }
                Err(e) => {
                    host.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    cluster.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    shared.stats.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cluster = %cluster.name, host = %host.addr, error = %e, "upstream connect failed");
                    last = e.to_string();
                }
            }
            if tried.count() as usize >= set.hosts.len() {
                break;
            }
        }
        return Err(UpstreamError::Connect {
            reason: last,
            tried: tried.count(),
        });
    }
    // ORIGINAL_DST (NONE, PASSTHROUGH) and PassthroughCluster.
    let port = cluster
        .and_then(|c| c.original_dst_port())
        .flatten()
        .unwrap_or(original.port);
    let dest = Original {
        host: original.host,
        port,
    };
    let addrs = original_addrs(&shared.dns, &dest).await?;
    let mut last = String::from("no addresses");
    let mut tried = 0;
    for addr in addrs {
        tried += 1;
        let addr = HostAddr::Ip(addr);
        match upstream::connect(&addr, timeout).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => {
                shared.stats.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                last = e.to_string();
            }
        }
    }
    Err(UpstreamError::Connect { reason: last, tried })
}

/// Sends an HTTP request: to a host of `cluster` (over a pooled connection when one is idle,
/// failing over to the next host when a connection is refused), or to the original
/// destination.
pub async fn send_request(
    shared: &Shared,
    cluster: Option<&Cluster>,
    original: &Original<'_>,
    req: Request<RequestBody>,
) -> Result<(Response<PooledBody>, HostAddr), UpstreamError> {
    let timeout = shared.config.connect_timeout;
    let idle = shared.config.pool_idle_timeout;
    let mut req = req;

    if let Some(cluster) = cluster
        && cluster.original_dst_port().is_none()
    {
        cluster.stats.requests.fetch_add(1, Ordering::Relaxed);
        let set = cluster.hosts(&shared.dns).await?;
        let mut tried = Tried::default();
        let mut last = String::new();
        while let Some(i) = set.balancer.pick(&set.hosts, tried) {
            tried.add(i);
            let host = &set.hosts[i];
            host.stats.requests.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight::start(&host.load);
            match exchange(shared, &host.addr, req, idle, timeout, Some(&host.stats.connections)).await {
                Ok((resp, sender)) => {
                    let reusable = !wants_close(resp.headers());
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody::new(body, host.addr.clone(), sender, reusable);
                    return Ok((Response::from_parts(parts, body), host.addr.clone()));
                }
                Err(Exchange::ConnectFailed(e, back)) => {
                    host.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    cluster.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    shared.stats.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(cluster = %cluster.name, host = %host.addr, error = %e, "upstream connect failed");
                    last = e.to_string();
                    req = *back;
                }
                Err(Exchange::Failed(e)) => return Err(e),
            }
            if tried.count() as usize >= set.hosts.len() {
                break;
            }
        }
        return Err(UpstreamError::Connect {
            reason: last,
            tried: tried.count(),
        });
    }

    let port = cluster
        .and_then(|c| c.original_dst_port())
        .flatten()
        .unwrap_or(original.port);
    let dest = Original {
        host: original.host,
        port,
    };
    let mut last = String::from("no addresses");
    let mut tried = 0;
    for addr in original_addrs(&shared.dns, &dest).await? {
        tried += 1;
        let addr = HostAddr::Ip(addr);
        match exchange(shared, &addr, req, idle, timeout, None).await {
            Ok((resp, sender)) => {
                let reusable = !wants_close(resp.headers());
                let (parts, body) = resp.into_parts();
                return Ok((
                    Response::from_parts(parts, PooledBody::new(body, addr.clone(), sender, reusable)),
                    addr,
                ));
            }
            Err(Exchange::ConnectFailed(e, back)) => {
                shared.stats.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                last = e.to_string();
                req = *back;
            }
            Err(Exchange::Failed(e)) => return Err(e),
        }
    }
    Err(UpstreamError::Connect { reason: last, tried })
}

enum Exchange {
    /// Connecting failed; the request was not sent and comes back for the next host.
    ConnectFailed(ConnectError, Box<Request<RequestBody>>),
    Failed(UpstreamError),
}

type Sender = hyper::client::conn::http1::SendRequest<RequestBody>;

/// One request/response exchange with `addr`. A pooled connection that turns out to be closed
/// (the upstream timed it out) is replaced by a fresh one without the client noticing.
/// `opened` counts the new connections this makes (Envoy's `cx_total`).
async fn exchange(
    shared: &Shared,
    addr: &HostAddr,
    req: Request<RequestBody>,
    idle: std::time::Duration,
    connect_timeout: std::time::Duration,
    opened: Option<&std::sync::atomic::AtomicU64>,
) -> Result<(Response<Incoming>, Sender), Exchange> {
    let response_timeout = shared.config.response_timeout;
    let mut req = req;
    if let Some(mut sender) = upstream::checkout(addr, idle) {
        match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
            Err(_) => return Err(Exchange::Failed(UpstreamError::Timeout(response_timeout))),
            Ok(Ok(resp)) => return Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(Exchange::Failed(UpstreamError::Reset(e.into_error().to_string()))),
            },
        }
    }
    let stream = match upstream::connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(e) => return Err(Exchange::ConnectFailed(e, Box::new(req))),
    };
    if let Some(opened) = opened {
        opened.fetch_add(1, Ordering::Relaxed);
    }
    let mut sender = upstream::handshake(stream)
        .await
        .map_err(|e| Exchange::Failed(UpstreamError::Reset(e.to_string())))?;
    match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Exchange::Failed(UpstreamError::Timeout(response_timeout))),
        Ok(Ok(resp)) => Ok((resp, sender)),
        Ok(Err(e)) => Err(Exchange::Failed(UpstreamError::Reset(e.into_error().to_string()))),
    }
}

fn wants_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}
