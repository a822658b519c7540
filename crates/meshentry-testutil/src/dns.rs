//! An in-process DNS server that speaks the real wire protocol over UDP and TCP, so the proxy's
//! resolver (DNS-resolution ServiceEntries, `resolution: DNS`), hickory-resolver, `dig` and the
//! system resolver can all query it.
//!
//! Tests control it while it runs: records with TTLs (including `*.zone` wildcards), a delay to
//! prove a slow DNS server never blocks other traffic, forced failures such as SERVFAIL, and
//! per-name query counters to prove answers are cached for their TTL and no longer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA};
use hickory_resolver::proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

pub use hickory_resolver::proto::op::ResponseCode;
pub use hickory_resolver::proto::rr::RecordType;

use crate::tasks::{TaskGuard, Tasks};

/// The largest UDP answer we send when the client advertises EDNS; the DNS flag day 2020 value.
const EDNS_PAYLOAD: u16 = 1232;
/// The classic limit for UDP answers without EDNS (RFC 1035 §4.2.1).
const PLAIN_UDP_PAYLOAD: usize = 512;

#[derive(Debug, Clone)]
struct Entry {
    ips: Vec<IpAddr>,
    ttl: u32,
}

#[derive(Debug, Default)]
struct Zone {
    records: HashMap<String, Entry>,
    delay: Duration,
    delays: HashMap<String, Duration>,
    failure: Option<ResponseCode>,
    failures: HashMap<String, ResponseCode>,
    queries: HashMap<(String, RecordType), usize>,
    negative_ttl: u32,
}

/// Lowercase without the trailing dot: DNS names compare case-insensitively, and tests write
/// names both ways.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// The exact record, else the closest enclosing wildcard (`*.bar.com` for `a.b.bar.com` when
    /// neither `a.b.bar.com` nor `*.b.bar.com` exists).
    fn lookup(&self, name: &str) -> Option<&Entry> {
        if let Some(e) = self.records.get(name) {
            return Some(e);
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(e) = self.records.get(&format!("*.{parent}")) {
                return Some(e);
            }
            rest = parent;
        }
        None
    }
}

/// A DNS server on `ip:53` (or a random port when 53 cannot be bound), answering A and AAAA
/// queries from records the test sets. Unknown names get NXDOMAIN. Stops on drop.
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDns")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds UDP and TCP on the same port: port 53 first, as real resolvers (the system one, `dig`
/// without `-p`) need; any free port if that fails (not root, or 53 taken on this address).
fn bind(ip: IpAddr) -> (std::net::UdpSocket, std::net::TcpListener) {
    if let (Ok(udp), Ok(tcp)) = (
        std::net::UdpSocket::bind((ip, 53)),
        std::net::TcpListener::bind((ip, 53)),
    ) {
        return (udp, tcp);
    }
    let mut last_err = None;
    // The port UDP got may be taken for TCP; a few attempts make that vanishingly unlikely.
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("TestDns: cannot bind UDP {ip}:0: {e}"));
        let port = udp.local_addr().expect("bound UDP socket has an address").port();
        match std::net::TcpListener::bind((ip, port)) {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("TestDns: no port free for both UDP and TCP on {ip}: {last_err:?}");
}

impl TestDns {
    /// Starts the server on `ip`, listening when this returns. It runs on its own thread, so it
    /// works from sync and async tests alike.
    pub fn start(ip: impl Into<IpAddr>) -> TestDns {
        let ip = ip.into();
        let (udp, tcp) = bind(ip);
        let addr = udp.local_addr().expect("bound UDP socket has an address");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let guard = TaskGuard::new("dns");
        let tasks = guard.tasks().clone();
        let (udp, tcp) = {
            let _rt = tasks.enter();
            let nonblocking = udp.set_nonblocking(true).and(tcp.set_nonblocking(true));
            nonblocking.expect("setting DNS sockets non-blocking");
            (
                UdpSocket::from_std(udp).expect("registering the DNS UDP socket"),
                TcpListener::from_std(tcp).expect("registering the DNS TCP listener"),
            )
        };
        tasks.spawn(serve_udp(Arc::new(udp), zone.clone(), tasks.clone()));
        tasks.spawn(serve_tcp(tcp, zone.clone(), tasks.clone()));
        TestDns {
            addr,
            zone,
            _tasks: guard,
        }
    }

    /// Where the server listens (the same port for UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        // Zone updates cannot panic halfway, so a poisoned lock still holds consistent data.
        self.zone.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the addresses of `name` (replacing any), answered with `ttl_secs`. `name` may be a
    /// wildcard such as `*.bar.com`. IPv4 addresses answer A queries and IPv6 ones AAAA queries;
    /// a name with addresses of one family answers the other with NOERROR and no records.
    pub fn set(&self, name: &str, ips: &[IpAddr], ttl_secs: u32) {
        self.zone().records.insert(
            normalize(name),
            Entry {
                ips: ips.to_vec(),
                ttl: ttl_secs,
            },
        );
    }

    /// Removes `name`; it answers NXDOMAIN from then on (unless a wildcard covers it).
    pub fn remove(&self, name: &str) {
        self.zone().records.remove(&normalize(name));
    }

    /// Delays every answer by `delay` (`Duration::ZERO` to stop). Queries are answered
    /// concurrently, so each waits `delay` from its own arrival.
    pub fn set_delay(&self, delay: Duration) {
        self.zone().delay = delay;
    }

    /// Delays the answers for one name only, overriding [`TestDns::set_delay`]; for tests where a
    /// slow name must not hold up a fast one.
    pub fn set_delay_for(&self, name: &str, delay: Duration) {
        self.zone().delays.insert(normalize(name), delay);
    }

    /// Answers every query with `code` (e.g. `ResponseCode::ServFail`) and no records; `None`
    /// answers normally again.
    pub fn set_failure(&self, code: Option<ResponseCode>) {
        self.zone().failure = code;
    }

    /// Like [`TestDns::set_failure`], for one name; it wins over the global setting.
    pub fn set_failure_for(&self, name: &str, code: Option<ResponseCode>) {
        let mut zone = self.zone();
        match code {
            Some(code) => zone.failures.insert(normalize(name), code),
            None => zone.failures.remove(&normalize(name)),
        };
    }

    /// The TTL of negative answers (NXDOMAIN, or no records of the asked type), carried in the
    /// SOA of the authority section as RFC 2308 asks. Defaults to 0: negative answers are not
    /// cached, so a name a test adds later resolves at once.
    pub fn set_negative_ttl(&self, ttl_secs: u32) {
        self.zone().negative_ttl = ttl_secs;
    }

    /// How many queries of any type arrived for `name` (counted on arrival, also when failing
    /// or delayed). For a wildcard match this counts the queried name, not `*.zone`.
    pub fn queries(&self, name: &str) -> usize {
        let name = normalize(name);
        self.zone()
            .queries
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, c)| c)
            .sum()
    }

    /// How many queries of type `rtype` arrived for `name`.
    pub fn queries_of(&self, name: &str, rtype: RecordType) -> usize {
        self.zone().queries.get(&(normalize(name), rtype)).copied().unwrap_or(0)
    }

    /// How many queries arrived in total.
    pub fn total_queries(&self) -> usize {
        self.zone().queries.values().sum()
    }

    /// A hickory name server entry (UDP and TCP) pointing at this server.
    pub fn name_server_config(&self) -> NameServerConfig {
        let mut ns = NameServerConfig::udp_and_tcp(self.addr.ip());
        for conn in &mut ns.connections {
            conn.port = self.addr.port();
        }
        ns
    }

    /// A hickory resolver configuration with this server as its only name server.
    pub fn resolver_config(&self) -> ResolverConfig {
        ResolverConfig::from_name_servers(vec![self.name_server_config()])
    }
}

/// What the query asked, decided under the lock; the answer is sent after any delay without it.
struct Plan {
    delay: Duration,
    response: Message,
}

fn plan(request: &Message, zone: &Mutex<Zone>) -> Plan {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    // We answer as a recursive resolver would, so `dig` and stub resolvers accept the answers
    // without warnings.
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        response.edns = Some(edns);
    }
    let fail = |mut response: Message, code| {
        response.metadata.response_code = code;
        Plan {
            delay: Duration::ZERO,
            response,
        }
    };
    if request.metadata.message_type != MessageType::Query {
        return fail(response, ResponseCode::FormErr);
    }
    if request.metadata.op_code != OpCode::Query {
        return fail(response, ResponseCode::NotImp);
    }
    let [query] = request.queries.as_slice() else {
        return fail(response, ResponseCode::FormErr);
    };
    let name = normalize(&query.name.to_ascii());
    let mut zone = zone.lock().unwrap_or_else(|e| e.into_inner());
    *zone.queries.entry((name.clone(), query.query_type)).or_default() += 1;
    let delay = zone.delays.get(&name).copied().unwrap_or(zone.delay);
    if let Some(code) = zone.failures.get(&name).copied().or(zone.failure) {
        response.metadata.response_code = code;
        return Plan { delay, response };
    }
    let negative_ttl = zone.negative_ttl;
    match zone.lookup(&name) {
        None => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.authorities.push(soa(negative_ttl));
        }
        Some(entry) => {
            for ip in &entry.ips {
                let rdata = match (ip, query.query_type) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                response
                    .answers
                    .push(Record::from_rdata(query.name.clone(), entry.ttl, rdata));
            }
            if response.answers.is_empty() {
                response.authorities.push(soa(negative_ttl));
            }
        }
    }
    Plan { delay, response }
}

/// The SOA a negative answer carries; resolvers take its TTL/minimum as the negative cache time.
fn soa(ttl: u32) -> Record {
    let rdata = SOA::new(
        Name::from_ascii("ns.meshentry.test.").expect("static name is valid"),
        Name::from_ascii("hostmaster.meshentry.test.").expect("static name is valid"),
        1,
        3600,
        600,
        86_400,
        ttl,
    );
    Record::from_rdata(Name::root(), ttl, RData::SOA(rdata))
}

/// Runs the plan: waits out the delay, then encodes. Over UDP an answer larger than the client
/// can take is sent empty with TC set, so the client retries over TCP.
async fn answer(request: Message, zone: Arc<Mutex<Zone>>, udp: bool) -> Option<Vec<u8>> {
    let Plan { delay, mut response } = plan(&request, &zone);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let bytes = match response.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("TestDns: cannot encode answer: {e}");
            return None;
        }
    };
    let limit = match &request.edns {
        Some(edns) => usize::from(edns.max_payload()).max(PLAIN_UDP_PAYLOAD),
        None => PLAIN_UDP_PAYLOAD,
    };
    if udp && bytes.len() > limit {
        response.answers.clear();
        response.authorities.clear();
        response.metadata.truncation = true;
        return response.to_vec().ok();
    }
    Some(bytes)
}

async fn serve_udp(sock: Arc<UdpSocket>, zone: Arc<Mutex<Zone>>, tasks: Tasks) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                tracing::debug!("TestDns: UDP receive error: {e}");
                continue;
            }
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let (sock, zone) = (sock.clone(), zone.clone());
        tasks.spawn(async move {
            if let Some(bytes) = answer(request, zone, true).await {
                let _ = sock.send_to(&bytes, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>, tasks: Tasks) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tasks.spawn(serve_tcp_conn(stream, zone.clone(), tasks.clone()));
    }
}

/// Answers pipelined queries on one connection concurrently (RFC 7766 allows out-of-order
/// answers), so a delayed name does not hold up the others.
async fn serve_tcp_conn(stream: TcpStream, zone: Arc<Mutex<Zone>>, tasks: Tasks) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    tasks.spawn(async move {
        while let Some(bytes) = rx.recv().await {
            let Ok(len) = u16::try_from(bytes.len()) else {
                continue;
            };
            if wr.write_all(&len.to_be_bytes()).await.is_err() || wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    loop {
        let Ok(len) = rd.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if rd.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&buf) else {
            return;
        };
        let (tx, zone) = (tx.clone(), zone.clone());
        tasks.spawn(async move {
            if let Some(bytes) = answer(request, zone, false).await {
                let _ = tx.send(bytes).await;
            }
        });
    }
}
