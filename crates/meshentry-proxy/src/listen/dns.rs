//! The DNS proxy (`proxy --dns ADDR`): UDP and TCP on one address, answering the names of the
//! snapshot's name table itself and forwarding every other query to the upstream resolvers,
//! whose answers it caches by their TTL.
//!
//! It runs on a thread of its own with a single-threaded runtime: a local answer or a cache
//! hit is a parse, a lookup and a write into a reused buffer, with no lock and no allocation;
//! the name table comes with the snapshot, swapped atomically on reload. Forwarded queries
//! are tasks on the same thread, each with a socket of its own (a random source port and a
//! random id, checked with the question on the way back, so a spoofed or stray datagram is
//! not taken for the answer). An answer too large for the client's UDP size is truncated
//! (TC), and an upstream's truncated answer is fetched again over TCP.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshentry_route::model::names::write_answer;
use meshentry_wire::dns::{
    CLASS_IN, Query, inspect_response, rtype, write_badvers, write_forward, write_refusal, write_servfail, write_stored,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

use crate::net::upstream::mark;
use crate::obs::dns_proxy::Outcome;
use crate::rt::shared::Shared;

/// Queries sent upstream at once; past it a query gets SERVFAIL at once rather than growing
/// memory without bound when the upstream is slow and clients keep asking.
const MAX_IN_FLIGHT: usize = 1024;
/// TCP clients at once.
const MAX_TCP_CLIENTS: usize = 256;
/// How long a TCP client may stay silent between queries (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Upstream answers kept.
const CACHE_ENTRIES: usize = 4096;
/// The longest an upstream answer is kept, whatever its TTL says.
const MAX_CACHE_TTL: u32 = 3600;

/// The bound sockets of the DNS listener: UDP and TCP on the same port.
pub struct DnsListener {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

impl DnsListener {
    /// Binds UDP and TCP on `addr` (port 0: a free port both can have).
    pub fn bind(addr: SocketAddr) -> io::Result<DnsListener> {
        let mut last = None;
        for _ in 0..if addr.port() == 0 { 20 } else { 1 } {
            let udp = std::net::UdpSocket::bind(addr)?;
            let port = udp.local_addr()?.port();
            match std::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
                Ok(tcp) => {
                    udp.set_nonblocking(true)?;
                    tcp.set_nonblocking(true)?;
                    return Ok(DnsListener { udp, tcp });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Where queries the name table does not answer go.
#[derive(Clone, Debug)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    /// How long one upstream may take before the next is asked (Istio: 5 s).
    pub timeout: Duration,
}

/// Starts the DNS proxy's thread, serving every one of `listeners`; it stops when `stop`
/// turns true.
pub fn spawn(
    listeners: Vec<DnsListener>,
    upstreams: Upstreams,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("meshentry-dns".into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let state = Rc::new(State {
                shared,
                upstreams,
                cache: RefCell::new(Cache::default()),
                turn: Cell::new(0),
                in_flight: Cell::new(0),
                tcp_clients: Cell::new(0),
                sent: RefCell::new(Vec::new()),
            });
            let mut tasks = Vec::new();
            for listener in listeners {
                match (UdpSocket::from_std(listener.udp), TcpListener::from_std(listener.tcp)) {
                    (Ok(udp), Ok(tcp)) => {
                        tasks.push(tokio::task::spawn_local(serve_udp(state.clone(), Rc::new(udp))));
                        tasks.push(tokio::task::spawn_local(serve_tcp(state.clone(), tcp)));
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "DNS proxy: cannot register its sockets");
                    }
                }
            }
            let _ = stop.wait_for(|s| *s).await;
            for t in tasks {
                t.abort();
            }
        });
    })
}

struct State {
    shared: Arc<Shared>,
    upstreams: Upstreams,
    cache: RefCell<Cache>,
    /// Turns the answers' address order and the first upstream asked.
    turn: Cell<usize>,
    in_flight: Cell<usize>,
    tcp_clients: Cell<usize>,
    /// The id and question of every query this proxy has sent upstream and not yet had
    /// answered: one of them arriving here is the proxy's own query come back (its upstream
    /// traffic captured again, or an upstream that is this listener by another address).
    sent: RefCell<Vec<(u16, u64)>>,
}

/// What to do with a message once [`State::answer`] has looked at it.
enum Step {
    /// `out` holds the answer.
    Reply,
    Drop,
    /// Not known here: ask upstream.
    Forward,
}

impl State {
    fn next_turn(&self) -> usize {
        let t = self.turn.get();
        self.turn.set(t.wrapping_add(1));
        t
    }

    /// Answers `msg` from the name table or the cache into `out`, or says to forward it.
    fn answer(&self, msg: &[u8], udp: bool, out: &mut Vec<u8>) -> Step {
        let stats = &self.shared.dns_proxy;
        let q = match Query::parse(msg) {
            Ok(q) => q,
            Err(r) => {
                stats.count(Outcome::Refused);
                return match write_refusal(out, r) {
                    true => Step::Reply,
                    false => Step::Drop,
                };
            }
        };
        if q.edns.is_some_and(|e| e.version > 0) {
            write_badvers(out, &q);
            stats.count(Outcome::Refused);
            return Step::Reply;
        }
        let limit = limit(&q, udp);
        if q.plain() && q.qclass == CLASS_IN && matches!(q.qtype, rtype::A | rtype::AAAA) {
            let live = self.shared.snapshot.load();
            if let Some(names) = &live.names
                && let Some(hit) = names.lookup(q.name())
            {
                write_answer(out, &q, hit, self.next_turn(), limit);
                stats.count(Outcome::Local);
                return Step::Reply;
            }
        }
        if q.plain()
            && let Some((stored, age)) = self.cache.borrow().get(&q, Instant::now())
        {
            write_stored(out, &stored.bytes, &stored.ttl_offsets, age, &q, limit);
            stats.count(Outcome::Cached);
            return Step::Reply;
        }
        if !self.sent.borrow().is_empty() && self.sent.borrow().contains(&self.question_key(&q)) {
            // Forwarding it again would loop until the in-flight bound; SERVFAIL ends it at
            // once, and the query this was answers its client with it.
            tracing::warn!(
                name = q.name(),
                "DNS proxy: its own upstream query came back to it (is its traffic captured? run it as the proxy uid, or give --dns-upstream)"
            );
            write_servfail(out, &q);
            stats.count(Outcome::Failed);
            return Step::Reply;
        }
        Step::Forward
    }

    fn question_key(&self, q: &Query<'_>) -> (u16, u64) {
        (q.id, self.cache.borrow().key(q))
    }

    /// Asks the upstreams for `msg` (a query [`State::answer`] said to forward) and writes
    /// the answer, or SERVFAIL, into `out`.
    async fn forward(&self, msg: &[u8], udp: bool, out: &mut Vec<u8>) {
        let Ok(q) = Query::parse(msg) else { return };
        let stats = &self.shared.dns_proxy;
        let limit = limit(&q, udp);
        if self.in_flight.get() >= MAX_IN_FLIGHT || self.upstreams.servers.is_empty() {
            write_servfail(out, &q);
            stats.count(Outcome::Failed);
            return;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let started = Instant::now();
        let servers = &self.upstreams.servers;
        let first = self.next_turn();
        let mut answer = None;
        for i in 0..servers.len() {
            let server = servers[(first + i) % servers.len()];
            stats
                .upstream_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = fastrand::u16(..);
            let key = (id, self.cache.borrow().key(&q));
            self.sent.borrow_mut().push(key);
            let result = exchange(server, msg, id, &q, self.upstreams.timeout).await;
            {
                let mut sent = self.sent.borrow_mut();
                if let Some(i) = sent.iter().position(|k| *k == key) {
                    sent.swap_remove(i);
                }
            }
            match result {
                Ok(a) => {
                    answer = Some(a);
                    break;
                }
                Err(e) => {
                    stats
                        .upstream_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(upstream = %server, name = q.name(), error = %e, "DNS upstream failed");
                }
            }
        }
        stats.observe_upstream(started.elapsed());
        self.in_flight.set(self.in_flight.get() - 1);
        match answer {
            Some((bytes, offsets, cache_ttl)) => {
                write_stored(out, &bytes, &offsets, 0, &q, limit);
                if q.plain()
                    && let Some(ttl) = cache_ttl.filter(|t| *t > 0)
                {
                    self.cache
                        .borrow_mut()
                        .insert(&q, bytes, offsets, ttl.min(MAX_CACHE_TTL), Instant::now());
                }
                stats.count(Outcome::Forwarded);
            }
            None => {
                write_servfail(out, &q);
                stats.count(Outcome::Failed);
            }
        }
    }
}

/// The largest answer `q` may get: its UDP size, or 64 KiB over TCP.
fn limit(q: &Query<'_>, udp: bool) -> usize {
    match udp {
        true => q.udp_limit(),
        false => u16::MAX as usize,
    }
}

async fn serve_udp(state: Rc<State>, udp: Rc<UdpSocket>) {
    let mut buf = vec![0u8; u16::MAX as usize];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, peer) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy: UDP receive failed");
                continue;
            }
        };
        match state.answer(&buf[..n], true, &mut out) {
            Step::Reply => {
                let _ = udp.send_to(&out, peer).await;
            }
            Step::Drop => {}
            Step::Forward => {
                let msg = buf[..n].to_vec();
                let (state, udp) = (state.clone(), udp.clone());
                tokio::task::spawn_local(async move {
                    let mut out = Vec::new();
                    state.forward(&msg, true, &mut out).await;
                    if !out.is_empty() {
                        let _ = udp.send_to(&out, peer).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(state: Rc<State>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy: TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if state.tcp_clients.get() >= MAX_TCP_CLIENTS {
            continue;
        }
        state.tcp_clients.set(state.tcp_clients.get() + 1);
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let _ = serve_tcp_client(&state, stream).await;
            state.tcp_clients.set(state.tcp_clients.get() - 1);
        });
    }
}

/// Length-prefixed queries (RFC 1035 4.2.2), answered in order until the client closes or
/// goes quiet.
async fn serve_tcp_client(state: &State, mut stream: TcpStream) -> io::Result<()> {
    let mut msg = Vec::new();
    let mut out = Vec::new();
    let mut framed = Vec::new();
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => len as usize,
            _ => return Ok(()),
        };
        msg.resize(len, 0);
        if tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg))
            .await
            .is_err()
        {
            return Ok(());
        }
        match state.answer(&msg, false, &mut out) {
            Step::Reply => {}
            // Not a query: nothing on this connection can be trusted any more.
            Step::Drop => return Ok(()),
            Step::Forward => state.forward(&msg, false, &mut out).await,
        }
        if out.is_empty() {
            return Ok(());
        }
        framed.clear();
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        stream.write_all(&framed).await?;
    }
}

/// One upstream's answer to `msg`: its bytes, where their TTLs are and how long it may be
/// cached.
type Upstream = (Vec<u8>, Vec<u16>, Option<u32>);

/// Asks `server`: over UDP, then over TCP when the answer was truncated.
async fn exchange(server: SocketAddr, msg: &[u8], id: u16, q: &Query<'_>, timeout: Duration) -> io::Result<Upstream> {
    let mut query = Vec::with_capacity(msg.len());
    write_forward(&mut query, msg, id);
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "no answer in time");
    let (bytes, truncated) = tokio::time::timeout_at(deadline, udp_exchange(server, &query, id, q))
        .await
        .map_err(|_| timed_out())??;
    if !truncated {
        return Ok(bytes);
    }
    tokio::time::timeout_at(deadline, tcp_exchange(server, &query, id, q))
        .await
        .map_err(|_| timed_out())?
}

fn socket(server: SocketAddr, ty: socket2::Type, proto: socket2::Protocol) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(server), ty.nonblocking(), Some(proto))?;
    mark(&s);
    Ok(s)
}

async fn udp_exchange(server: SocketAddr, query: &[u8], id: u16, q: &Query<'_>) -> io::Result<(Upstream, bool)> {
    let s = socket(server, socket2::Type::DGRAM, socket2::Protocol::UDP)?;
    s.connect(&server.into())?;
    let s = UdpSocket::from_std(s.into())?;
    s.send(query).await?;
    let mut buf = vec![0u8; u16::MAX as usize];
    loop {
        let n = s.recv(&mut buf).await?;
        // Anything else (a late answer to another query, a forgery) is ignored.
        if let Some(i) = inspect_response(&buf[..n], q)
            && i.id == id
        {
            buf.truncate(n);
            return Ok(((buf, i.ttl_offsets, i.cache_ttl), i.truncated));
        }
    }
}

async fn tcp_exchange(server: SocketAddr, query: &[u8], id: u16, q: &Query<'_>) -> io::Result<Upstream> {
    let s = socket(server, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    match s.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut stream = TcpStream::from_std(s.into())?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    match inspect_response(&buf, q) {
        Some(i) if i.id == id => Ok((buf, i.ttl_offsets, i.cache_ttl)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the TCP answer does not answer the query",
        )),
    }
}

/// Upstream answers by name, type, class and the EDNS flags that change them.
struct Cache {
    map: HashMap<u64, Stored>,
    hasher: RandomState,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            map: HashMap::with_capacity(CACHE_ENTRIES),
            hasher: RandomState::new(),
        }
    }
}

struct Stored {
    name: Box<str>,
    kind: (u16, u16, u8),
    bytes: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    at: Instant,
    ttl: u32,
}

/// What besides the name makes two queries' answers differ: type, class, and whether EDNS,
/// DNSSEC OK and checking disabled were asked for.
fn kind(q: &Query<'_>) -> (u16, u16, u8) {
    let flags = u8::from(q.edns.is_some())
        | u8::from(q.edns.is_some_and(|e| e.dnssec_ok)) << 1
        | u8::from(q.checking_disabled()) << 2;
    (q.qtype, q.qclass, flags)
}

impl Cache {
    fn key(&self, q: &Query<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        q.name().hash(&mut h);
        kind(q).hash(&mut h);
        h.finish()
    }

    /// The stored answer and its age in seconds, while younger than its TTL.
    fn get(&self, q: &Query<'_>, now: Instant) -> Option<(&Stored, u32)> {
        let s = self.map.get(&self.key(q))?;
        let age = now.saturating_duration_since(s.at).as_secs();
        (s.name.as_ref() == q.name() && s.kind == kind(q) && age < u64::from(s.ttl)).then_some((s, age as u32))
    }

    fn insert(&mut self, q: &Query<'_>, bytes: Vec<u8>, ttl_offsets: Vec<u16>, ttl: u32, now: Instant) {
        if self.map.len() >= CACHE_ENTRIES {
            self.map
                .retain(|_, s| now.saturating_duration_since(s.at).as_secs() < u64::from(s.ttl));
            // Full of live answers: start again rather than pay a scan on every insert.
            if self.map.len() >= CACHE_ENTRIES * 9 / 10 {
                self.map.clear();
            }
        }
        let key = self.key(q);
        self.map.insert(
            key,
            Stored {
                name: q.name().into(),
                kind: kind(q),
                bytes: bytes.into(),
                ttl_offsets: ttl_offsets.into(),
                at: now,
                ttl,
            },
        );
    }
}

/// What a resolv.conf says: its nameservers and search domains (the last `search` or
/// `domain` line wins, as in glibc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A link-local IPv6 server may carry its zone (`fe80::1%eth0`).
                    if let Some(ip) = words
                        .next()
                        .and_then(|w| w.split('%').next())
                        .and_then(|w| w.parse().ok())
                    {
                        out.nameservers.push(ip);
                    }
                }
                Some("search" | "domain") => {
                    out.search = words.map(str::to_string).collect();
                }
                _ => {}
            }
        }
        out
    }

    /// `/etc/resolv.conf`, or nothing when it cannot be read.
    pub fn system() -> ResolvConf {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| ResolvConf::parse(&t))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_and_the_last_search_line() {
        let r = ResolvConf::parse(
            "# comment\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nsearch a.example\n\
             search default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        );
        assert_eq!(
            r.nameservers,
            vec![
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fe80::1".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(
            r.search,
            ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        );
    }
}
