//! A shared proxy never mixes clients (issue 13): end-to-end proofs, on real sockets, that no
//! client of `meshentry proxy` can make it hand another client's bytes to anyone, and that the
//! upstream receives exactly the requests the proxy allowed, each framed once.
//!
//! Every test runs the real binary with `--workers 1` and `--outbound-policy REGISTRY_ONLY`, so
//! all requests share one worker's upstream connection pool (a connection one client spoiled is
//! the one the next client gets) and nothing can leave loopback. Clients are raw sockets that
//! read responses strictly ([`RawClient`]); upstreams are [`RawBackend`]s that record every byte
//! each connection received and answer with bytes the test chooses. Each backend echoes the
//! request line and the client's `x-id` in its body, so a client can tell whether a response
//! is its own. Cases that could spoil a pooled connection have a service and backend of their
//! own, so one case's damage cannot hide or cause another's; a test runs all its cases and
//! reports every one that went wrong, with every byte its backends received and sent.
//!
//! | issue 13 defect | test |
//! |---|---|
//! | 1. smuggling via `Connection` | [`connection_cannot_unframe_a_request_on_the_explicit_listener`], [`connection_cannot_unframe_a_request_on_the_transparent_listener`] |
//! | 2. pooled connection with unread bytes | [`late_upstream_bytes_never_reach_a_later_client`] |
//! | 3. lenient response framing | [`hostile_response_framing_is_a_502_upe_and_the_upstream_connection_is_closed`] |
//! | 6. two `Host` headers | [`two_host_headers_are_refused_with_400`] |
//! | 7. malformed chunked request body | [`a_malformed_chunked_request_body_is_the_clients_error`] |
//! | 8. fast-path correctness gaps | [`bodies_trailers_host_and_upgrades_arrive_intact`] |
//!
//! The transparent-listener test needs root, iproute2 and iptables (scripts/test installs
//! them), like `proxy_capture.rs`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshentry_testutil::raw::{self, RawBackend, RawClient, RawRequest, RawResponse, Reply, show};
use meshentry_testutil::{Netns, PROXY_UID, Proxy, unique_loopback};

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");

/// For what must work: a response, a connection.
const PATIENCE: Duration = Duration::from_secs(5);
/// For what a broken proxy may never deliver (a response it relays until a close that never
/// comes): long enough for a loaded machine, short enough that a test with many failing cases
/// still ends in reasonable time.
const SHORT: Duration = Duration::from_secs(3);

/// The flags of every proxy here: one worker, so one upstream pool.
const FLAGS: [&str; 4] = ["--outbound-policy", "REGISTRY_ONLY", "--workers", "1"];

// ---------------------------------------------------------------------------------------------
// Services and backends

/// A STATIC HTTP ServiceEntry for `host`, port 80, with one endpoint.
fn service(host: &str, endpoint: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP}}]\n\
         \x20 endpoints: [{{address: \"{ip}\", ports: {{http: {port}}}}}]\n---\n",
        name = host.replace('.', "-"),
        ip = endpoint.ip(),
        port = endpoint.port(),
    )
}

/// A service and the raw backend behind it.
struct Site {
    host: String,
    backend: RawBackend,
}

impl Site {
    /// `host` served by a backend that answers with `respond`.
    fn new<F>(host: &str, respond: F) -> Site
    where
        F: Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    {
        let backend = RawBackend::start(SocketAddr::new(IpAddr::V4(unique_loopback()), 80), respond);
        Site {
            host: host.to_owned(),
            backend,
        }
    }

    /// `host` served by a backend that answers every request with [`raw::echo`].
    fn echo(host: &str) -> Site {
        Site::new(host, raw::echo)
    }

    fn yaml(&self) -> String {
        service(&self.host, self.backend.addr())
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and expectations

/// How a request names its destination.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `GET http://host/path` (and `Host`), as HTTP_PROXY clients send it.
    Absolute,
    /// `GET /path` with `Host`.
    Origin,
}

/// A request line and a `Host` line, with the CRLFs.
fn start(form: Form, method: &str, host: &str, path: &str) -> String {
    match form {
        Form::Absolute => format!("{method} http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n"),
        Form::Origin => format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n"),
    }
}

/// A bodiless request labelled `id`.
fn simple(form: Form, method: &str, host: &str, path: &str, id: &str) -> Vec<u8> {
    format!("{}x-id: {id}\r\n\r\n", start(form, method, host, path)).into_bytes()
}

/// `body` in chunked coding, in chunks of at most 16 bytes.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(16) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One request the backend must receive: method, path (as the backend sees it) and `x-id`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Want(String);

impl Want {
    fn new(method: &str, path: &str, id: &str) -> Want {
        Want(format!("{method} {path} id={id}"))
    }

    fn of(r: &RawRequest) -> Want {
        Want::new(&r.method, r.path(), r.id())
    }
}

/// `resp` must be the backend's echo of the client's own `method path` labelled `id` (with
/// `path` as the backend received it).
fn own(resp: &RawResponse, want: &Want) -> Result<(), String> {
    let prefix = format!("{} ", want.0);
    if resp.status == 200 && resp.text().starts_with(&prefix) {
        Ok(())
    } else {
        Err(format!(
            "expected the echo of its own request `{}`, got {:?}",
            want.0,
            show(&resp.raw)
        ))
    }
}

/// Connects, sends `req`, reads one response to `method`: nothing may have arrived after it.
async fn exchange(
    proxy: SocketAddr,
    req: &[u8],
    method: &str,
    within: Duration,
) -> Result<(RawClient, RawResponse), String> {
    let mut c = RawClient::connect(proxy).await?;
    c.send(req).await?;
    let resp = c.read_response(method, within).await?;
    if !c.buffered().is_empty() && resp.status != 101 {
        return Err(format!(
            "more bytes after its response {:?}: {:?}",
            show(&resp.raw),
            show(c.buffered())
        ));
    }
    Ok((c, resp))
}

/// A GET on a fresh connection that must come back as the echo of itself; `echoed` is the path
/// the backend sees (after any rewrite). Returns the request the backend must receive (whatever
/// the client got back), and whether the client got its own response.
async fn own_get(
    proxy: SocketAddr,
    form: Form,
    host: &str,
    path: &str,
    echoed: &str,
    id: &str,
) -> (Want, Result<(), String>) {
    let want = Want::new("GET", echoed, id);
    let got = exchange(proxy, &simple(form, "GET", host, path, id), "GET", PATIENCE)
        .await
        .and_then(|(_, resp)| own(&resp, &want))
        .map_err(|e| format!("client {id}: {e}"));
    (want, got)
}

/// The clients after an attack, each on a connection of its own: `n` one after another, then
/// `n` at once. Every one must get the echo of its own request. Problems go to `problems`;
/// the requests the backend must have received go to `want`.
async fn later_clients(
    proxy: SocketAddr,
    form: Form,
    host: &str,
    tag: &str,
    n: usize,
    problems: &mut Vec<String>,
    want: &mut Vec<Want>,
) {
    for i in 0..n {
        let path = format!("/later/{tag}/seq/{i}");
        let id = format!("{tag}-seq-{i}");
        let (w, got) = own_get(proxy, form, host, &path, &path, &id).await;
        want.push(w);
        problems.extend(got.err());
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (host, tag) = (host.to_owned(), tag.to_owned());
        set.spawn(async move {
            let path = format!("/later/{tag}/par/{i}");
            let id = format!("{tag}-par-{i}");
            own_get(proxy, form, &host, &path, &path, &id).await
        });
    }
    while let Some(r) = set.join_next().await {
        let (w, got) = r.unwrap();
        want.push(w);
        problems.extend(got.err());
    }
}

/// The backend of `site` received exactly the requests `want` (in any order), each with one
/// `Host: <site host>`, and no bytes it could not parse as requests. A request the proxy began
/// and could not finish (a client's broken body) is no request, but the proxy must then close
/// that upstream connection: left open, the next request would complete it.
async fn received_exactly(site: &Site, want: &[Want], problems: &mut Vec<String>) {
    let left_open = |b: &RawBackend| -> Vec<usize> {
        b.connections()
            .iter()
            .filter(|c| !c.unfinished.is_empty() && !c.peer_closed)
            .map(|c| c.id)
            .collect()
    };
    if !becomes(SHORT, || left_open(&site.backend).is_empty()).await {
        problems.push(format!(
            "the proxy left part of a request on backend connection(s) {:?} and did not close them",
            left_open(&site.backend)
        ));
    }
    let got = site.backend.requests();
    let mut got_list: Vec<Want> = got.iter().map(Want::of).collect();
    let mut want_list = want.to_vec();
    got_list.sort();
    want_list.sort();
    if got_list != want_list {
        let got: Vec<&str> = got_list.iter().map(|w| w.0.as_str()).collect();
        let want: Vec<&str> = want_list.iter().map(|w| w.0.as_str()).collect();
        problems.push(format!(
            "the backend received {got:#?}\nbut exactly {want:#?} were allowed"
        ));
    }
    for r in &got {
        let hosts = r.header_all("host");
        if hosts != [site.host.as_str()] {
            problems.push(format!(
                "`{}` reached the backend with Host {hosts:?}, not [{:?}]",
                Want::of(r).0,
                site.host
            ));
        }
    }
    for (conn, e) in site.backend.errors() {
        problems.push(format!("backend connection {conn} got bytes that are no request: {e}"));
    }
}

/// Polls `cond` every 20 ms for up to `within`: whether it became true.
async fn becomes(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every case's problems, reported together at the end of a test.
#[derive(Default)]
struct Report {
    failed: Vec<String>,
    cases: usize,
}

impl Report {
    /// Records `case`'s problems, with its backends' records when there are any.
    fn case(&mut self, case: &str, problems: Vec<String>, sites: &[&Site]) {
        self.cases += 1;
        if problems.is_empty() {
            return;
        }
        let mut text = format!("[{case}]\n  - {}", problems.join("\n  - "));
        for s in sites {
            text.push_str(&format!("\n  {} {}", s.host, s.backend.describe()));
        }
        self.failed.push(text);
    }

    fn finish(self, what: &str) {
        if !self.failed.is_empty() {
            panic!(
                "{what}: {} of {} cases failed:\n\n{}",
                self.failed.len(),
                self.cases,
                self.failed.join("\n\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy

async fn start_proxy(yaml: &str, extra: &[&str]) -> Proxy {
    Proxy::builder(BIN)
        .config(yaml)
        .args(FLAGS)
        .args(extra.iter().copied())
        .start()
        .await
}

// ---------------------------------------------------------------------------------------------
// 1. Request smuggling via `Connection`

/// What the attacker's `Connection` header names.
#[derive(Clone, Copy, Debug)]
enum Smuggle {
    /// `Connection: content-length`, Content-Length body.
    ContentLength,
    /// `Connection: keep-alive, Content-Length`: another token first, another case.
    ContentLengthMixed,
    /// `Connection: transfer-encoding`, chunked body.
    TransferEncoding,
    /// `Connection: host`, Content-Length body.
    Host,
    /// All three at once, Content-Length body.
    All,
}

const SMUGGLES: [Smuggle; 5] = [
    Smuggle::ContentLength,
    Smuggle::ContentLengthMixed,
    Smuggle::TransferEncoding,
    Smuggle::Host,
    Smuggle::All,
];

/// The attack: `POST /a` whose body is itself a request for `/b`. Returns it and the body.
fn smuggling_request(case: Smuggle, form: Form, host: &str) -> (Vec<u8>, Vec<u8>) {
    let body = format!("GET /b HTTP/1.1\r\nHost: {host}\r\nx-id: smuggled\r\n\r\n").into_bytes();
    let mut head = start(form, "POST", host, "/a");
    head.push_str("x-id: attacker\r\n");
    let connection = match case {
        Smuggle::ContentLength => "content-length",
        Smuggle::ContentLengthMixed => "keep-alive, Content-Length",
        Smuggle::TransferEncoding => "transfer-encoding",
        Smuggle::Host => "host",
        Smuggle::All => "host, content-length, transfer-encoding",
    };
    head.push_str(&format!("Connection: {connection}\r\n"));
    let req = match case {
        Smuggle::TransferEncoding => {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let mut r = head.into_bytes();
            r.extend_from_slice(&chunked(&body));
            r
        }
        _ => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            let mut r = head.into_bytes();
            r.extend_from_slice(&body);
            r
        }
    };
    (req, body)
}

/// One smuggling attempt against `site` (which echoes), then later clients. The backend must
/// see the POST with its whole body and nothing else of the attacker's; the attacker gets one
/// response, its own; every later client gets its own.
async fn smuggling_case(proxy: SocketAddr, site: &Site, case: Smuggle, form: Form) -> Vec<String> {
    let mut problems = Vec::new();
    let mut want = Vec::new();
    let host = site.host.as_str();
    let (attack, body) = smuggling_request(case, form, host);
    let attacker_want = Want::new("POST", "/a", "attacker");
    want.push(attacker_want.clone());
    match exchange(proxy, &attack, "POST", SHORT).await {
        Err(e) => problems.push(format!("attacker: {e}")),
        Ok((mut attacker, resp)) => {
            if let Err(e) = own(&resp, &attacker_want) {
                problems.push(format!("attacker: {e}"));
            }
            // Exactly one response: the next thing on the attacker's connection is the answer
            // to its next request (or a clean close).
            let next = simple(form, "GET", host, "/attacker/next", "attacker-next");
            let next_want = Want::new("GET", "/attacker/next", "attacker-next");
            let answer = match attacker.send(&next).await {
                Ok(()) => attacker.read_response("GET", SHORT).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(r) => {
                    want.push(next_want.clone());
                    if let Err(e) = own(&r, &next_want) {
                        problems.push(format!("attacker's second request: {e}"));
                    }
                }
                // Closed after its one response, with nothing more: allowed.
                Err(_) if attacker.closed() && attacker.buffered().is_empty() => {}
                Err(e) => {
                    want.push(next_want);
                    problems.push(format!("attacker's second request: {e}"));
                }
            }
        }
    }
    later_clients(proxy, form, host, "victim", 3, &mut problems, &mut want).await;
    received_exactly(site, &want, &mut problems).await;
    if let Some(post) = site.backend.requests().iter().find(|r| r.id() == "attacker")
        && post.body != body
    {
        problems.push(format!(
            "the POST reached the backend with body {:?}, not its {} bytes {:?}",
            show(&post.body),
            body.len(),
            show(&body)
        ));
    }
    problems
}

fn smuggle_host(case: Smuggle, form: Form) -> String {
    format!("{case:?}-{form:?}.smuggle.test").to_ascii_lowercase()
}

/// Issue 13, defect 1, explicit listener: `Connection` naming `Content-Length`,
/// `Transfer-Encoding` or `Host` must not change how the request is framed or where it goes,
/// in absolute form and in origin form.
#[tokio::test]
async fn connection_cannot_unframe_a_request_on_the_explicit_listener() {
    let cases: Vec<(Smuggle, Form)> = [Form::Absolute, Form::Origin]
        .into_iter()
        .flat_map(|f| SMUGGLES.map(|s| (s, f)))
        .collect();
    let sites: Vec<Site> = cases.iter().map(|(s, f)| Site::echo(&smuggle_host(*s, *f))).collect();
    let yaml: String = sites.iter().map(Site::yaml).collect();
    let proxy = start_proxy(&yaml, &[]).await;
    let mut report = Report::default();
    for ((case, form), site) in cases.iter().zip(&sites) {
        let problems = smuggling_case(proxy.http(), site, *case, *form).await;
        report.case(&format!("{case:?}, {form:?} form"), problems, &[site]);
    }
    report.finish("smuggling via Connection (explicit listener)");
}

/// Where a captured connection was going: TEST-NET-2, routed to a device that drops it, so
/// only capture can make the connection work.
fn nowhere(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

/// `meshentry proxy` in `ns` as [`PROXY_UID`] on `yaml`, with `--workers 1`, once it is
/// ready; its listeners are on 127.0.0.1 and ::1, which capture leaves alone.
async fn start_captured_proxy(ns: &Netns, yaml: &str) -> Proxy {
    Proxy::builder(BIN)
        .netns(ns, PROXY_UID)
        .ip(Ipv4Addr::LOCALHOST)
        .outbound(["127.0.0.1:15001".parse().unwrap(), "[::1]:15001".parse().unwrap()])
        .config(yaml)
        .args(FLAGS)
        .start()
        .await
}

/// Issue 13, defect 1, transparent listener: the same attacks from an application whose
/// connections iptables captures (origin form, as applications send it).
#[test]
fn connection_cannot_unframe_a_request_on_the_transparent_listener() {
    let ns = Netns::new("me-integ");
    ns.run(&[BIN, "iptables", "install", "--proxy-uid", &PROXY_UID.to_string()]);
    ns.block_on(|| async {
        let sites: Vec<Site> = SMUGGLES
            .iter()
            .map(|s| Site::echo(&smuggle_host(*s, Form::Origin)))
            .collect();
        let yaml: String = sites.iter().map(Site::yaml).collect();
        let _proxy = start_captured_proxy(&ns, &yaml).await;
        // The application dials an address that leads nowhere; the Host picks the service.
        let dst = SocketAddr::new(IpAddr::V4(nowhere(13)), 80);
        let mut report = Report::default();
        for (case, site) in SMUGGLES.iter().zip(&sites) {
            let problems = smuggling_case(dst, site, *case, Form::Origin).await;
            report.case(&format!("{case:?}, captured"), problems, &[site]);
        }
        report.finish("smuggling via Connection (transparent listener)");
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Pooled upstream connections reused with unread bytes

/// Exactly `len` bytes that look like a whole HTTP response whose body starts with `marker`
/// (another client's echo).
fn forged_response(len: usize, marker: &str) -> Vec<u8> {
    let head_for = |body_len: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n\r\n");
    let mut body_len = len.saturating_sub(head_for(len).len());
    // The head's length depends on the number of digits of the body's.
    while head_for(body_len).len() + body_len != len {
        body_len = len - head_for(body_len).len();
    }
    let mut body = marker.as_bytes().to_vec();
    assert!(
        body.len() <= body_len,
        "{len} bytes cannot hold a response with {marker:?}"
    );
    body.resize(body_len, b'.');
    let mut out = head_for(body_len).into_bytes();
    out.extend_from_slice(&body);
    assert_eq!(out.len(), len);
    out
}

/// Issue 13, defect 2: a response that ended where its framing says, followed ~50 ms later by
/// 75 more bytes (a whole forged response) while the connection sits in the pool. No later
/// client may ever get those bytes: every one gets its own response. Three responses end
/// early: a HEAD answered `Content-Length: 75` with no body (the case), a 204, and a
/// `Content-Length` body.
#[tokio::test]
async fn late_upstream_bytes_never_reach_a_later_client() {
    const LATE: usize = 75;
    let late = |first: Vec<u8>| {
        move |r: &RawRequest| {
            if r.path() == "/late" {
                Reply::bytes(first.clone())
                    .then_sleep(Duration::from_millis(50))
                    .then_write(forged_response(LATE, "HEAD /late id=early-end "))
            } else {
                raw::echo(r)
            }
        }
    };
    // (case, method, what the backend answers at once, the status and body the client gets)
    let cases: [(&str, &str, Vec<u8>, u16, &str); 3] = [
        (
            "HEAD answered Content-Length 75, body 50 ms later",
            "HEAD",
            format!("HTTP/1.1 200 OK\r\nContent-Length: {LATE}\r\n\r\n").into_bytes(),
            200,
            "",
        ),
        (
            "204 followed 50 ms later by 75 bytes",
            "GET",
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            204,
            "",
        ),
        (
            "a complete Content-Length response followed 50 ms later by 75 bytes",
            "GET",
            raw::response(200, "OK", &[], b"done"),
            200,
            "done",
        ),
    ];
    let sites: Vec<Site> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, _, first, _, _))| Site::new(&format!("late-{i}.pool.test"), late(first.clone())))
        .collect();
    let yaml: String = sites.iter().map(Site::yaml).collect();
    let proxy = start_proxy(&yaml, &[]).await;
    let mut report = Report::default();
    for ((name, method, _, status, body), site) in cases.iter().zip(&sites) {
        let mut problems = Vec::new();
        let host = site.host.as_str();
        let mut want = vec![Want::new(method, "/late", "early-end")];
        let req = simple(Form::Absolute, method, host, "/late", "early-end");
        match exchange(proxy.http(), &req, method, PATIENCE).await {
            Err(e) => problems.push(format!("first client: {e}")),
            Ok((mut first, resp)) => {
                if resp.status != *status || resp.body != body.as_bytes() {
                    problems.push(format!("first client got {:?}", show(&resp.raw)));
                }
                // The late bytes are written (and so in the proxy's socket) before anyone else
                // asks.
                let written = becomes(PATIENCE, || {
                    site.backend.connection(1).is_some_and(|c| c.replies_done >= 1)
                })
                .await;
                assert!(written, "{name}: the backend never finished its reply");
                // The same client's next request, then other clients.
                let next = simple(Form::Absolute, "GET", host, "/first/next", "first-next");
                let next_want = Want::new("GET", "/first/next", "first-next");
                want.push(next_want.clone());
                let answer = match first.send(&next).await {
                    Ok(()) => first.read_response("GET", SHORT).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = answer.and_then(|r| own(&r, &next_want)) {
                    problems.push(format!("first client's next request: {e}"));
                }
            }
        }
        later_clients(proxy.http(), Form::Absolute, host, "later", 3, &mut problems, &mut want).await;
        received_exactly(site, &want, &mut problems).await;
        report.case(name, problems, &[site]);
    }
    report.finish("late upstream bytes");
}

// ---------------------------------------------------------------------------------------------
// 3. Lenient response framing

/// Issue 13, defect 3: each hostile response head gets the client a `502` with
/// `x-meshentry-response-flags: UPE`, and the proxy closes that upstream connection: the next
/// request arrives on a new one, and its client gets its own response.
#[tokio::test]
async fn hostile_response_framing_is_a_502_upe_and_the_upstream_connection_is_closed() {
    let forged = forged_response(80, "GET /hostile id=hostile ");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two differing Content-Length values", {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello",
                5 + forged.len()
            )
            .into_bytes();
            r.extend_from_slice(&forged);
            r
        }),
        (
            "Content-Length: +5",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello".to_vec(),
        ),
        (
            "Content-Length: 1 0",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1 0\r\n\r\n0123456789".to_vec(),
        ),
        (
            "an empty Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nhello".to_vec(),
        ),
        (
            "a chunked trailer section with a bare LF hiding a second response",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-note: a\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n"
                .to_vec(),
        ),
        (
            "Connection: content-length in the response",
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        ("an unsolicited 101 to a plain GET", {
            let mut r =
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec();
            r.extend_from_slice(&forged);
            r
        }),
    ];
    let sites: Vec<Site> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, hostile))| {
            let hostile = hostile.clone();
            Site::new(&format!("hostile-{i}.framing.test"), move |r| {
                if r.path() == "/hostile" {
                    // Kept open: closing it is the proxy's job.
                    Reply::bytes(hostile.clone())
                } else {
                    raw::echo(r)
                }
            })
        })
        .collect();
    let yaml: String = sites.iter().map(Site::yaml).collect();
    let proxy = start_proxy(&yaml, &[]).await;
    let mut report = Report::default();
    for ((name, _), site) in cases.iter().zip(&sites) {
        let mut problems = Vec::new();
        let host = site.host.as_str();
        let mut want = vec![Want::new("GET", "/hostile", "hostile")];
        let req = simple(Form::Absolute, "GET", host, "/hostile", "hostile");
        let first = match exchange(proxy.http(), &req, "GET", SHORT).await {
            Err(e) => {
                problems.push(format!("the client of the hostile response: {e}"));
                None
            }
            Ok((c, resp)) => {
                let flags = resp.header("x-meshentry-response-flags");
                if resp.status != 502 || flags != Some("UPE") {
                    problems.push(format!(
                        "the client of the hostile response got {} with flags {flags:?}, not 502 UPE: {:?}",
                        resp.status,
                        show(&resp.raw)
                    ));
                }
                Some(c)
            }
        };
        // A later client on the same worker: its own response, over a new upstream connection.
        let (w, got) = own_get(proxy.http(), Form::Absolute, host, "/after", "/after", "after").await;
        want.push(w);
        problems.extend(got.err());
        let requests = site.backend.requests();
        let conn_of = |id: &str| requests.iter().find(|r| r.id() == id).map(|r| r.conn);
        if let (Some(h), Some(a)) = (conn_of("hostile"), conn_of("after"))
            && h == a
        {
            problems.push(format!(
                "the next request reused the upstream connection ({h}) that sent the hostile response"
            ));
        }
        if let Some(h) = conn_of("hostile") {
            let closed = becomes(SHORT, || site.backend.connection(h).is_some_and(|c| c.peer_closed)).await;
            if !closed {
                problems.push(format!(
                    "the proxy did not close the upstream connection ({h}) that sent the hostile response"
                ));
            }
        }
        drop(first);
        received_exactly(site, &want, &mut problems).await;
        report.case(name, problems, &[site]);
    }
    report.finish("hostile response framing");
}

// ---------------------------------------------------------------------------------------------
// 6. Two Host headers

/// Issue 13, defect 6: a request with two `Host` field lines is refused with `400` (RFC 9112
/// 3.2), whether they differ or not, and reaches no backend; the next client is served.
#[tokio::test]
async fn two_host_headers_are_refused_with_400() {
    let main = Site::echo("main.hosts.test");
    let other = Site::echo("other.hosts.test");
    let proxy = start_proxy(&(main.yaml() + &other.yaml()), &[]).await;
    let (m, o) = (main.host.as_str(), other.host.as_str());
    let cases = [
        (
            "two differing Host lines, origin form",
            format!("GET /two-hosts HTTP/1.1\r\nHost: {m}\r\nHost: {o}\r\nx-id: two-hosts-0\r\n\r\n"),
        ),
        (
            "the same Host line twice, origin form",
            format!("GET /two-hosts HTTP/1.1\r\nHost: {m}\r\nHost: {m}\r\nx-id: two-hosts-1\r\n\r\n"),
        ),
        (
            "two differing Host lines after an absolute-form target",
            format!("GET http://{m}/two-hosts HTTP/1.1\r\nHost: {m}\r\nHost: {o}\r\nx-id: two-hosts-2\r\n\r\n"),
        ),
    ];
    let mut report = Report::default();
    let mut want_main = Vec::new();
    for (i, (name, req)) in cases.iter().enumerate() {
        let mut problems = Vec::new();
        match exchange(proxy.http(), req.as_bytes(), "GET", SHORT).await {
            Ok((_, resp)) if resp.status == 400 => {}
            Ok((_, resp)) => problems.push(format!("answered {:?}, not 400", show(&resp.raw))),
            Err(e) => problems.push(e),
        }
        let path = format!("/after/{i}");
        let (w, got) = own_get(proxy.http(), Form::Origin, m, &path, &path, &format!("after-{i}")).await;
        want_main.push(w);
        problems.extend(got.err());
        for site in [&main, &other] {
            let leaked: Vec<String> = site
                .backend
                .requests()
                .iter()
                .filter(|r| r.id() == format!("two-hosts-{i}"))
                .map(|r| show(&r.raw))
                .collect();
            if !leaked.is_empty() {
                problems.push(format!("{} received {leaked:?}", site.host));
            }
        }
        report.case(name, problems, &[&main, &other]);
    }
    let mut problems = Vec::new();
    received_exactly(&main, &want_main, &mut problems).await;
    received_exactly(&other, &[], &mut problems).await;
    report.case("the backends, at the end", problems, &[&main, &other]);
    report.finish("two Host headers");
}

// ---------------------------------------------------------------------------------------------
// 7. A malformed chunked request body

/// A VirtualService whose one rule rewrites the path, so requests to `host` take the general
/// (hyper) path instead of the fast path.
fn rewrite_rule(host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  hosts: [{host}]\n  http:\n  - name: rewrite\n    match: [{{uri: {{prefix: /}}}}]\n\
         \x20   rewrite: {{uri: /rewritten/}}\n    route: [{{destination: {{host: {host}}}}}]\n---\n",
        name = host.replace('.', "-")
    )
}

/// The JSON access log line of the request with `x-request-id: id`, once written.
async fn log_entry(log: &std::path::Path, id: &str) -> Option<serde_json::Value> {
    let mut found = None;
    becomes(PATIENCE, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["request_id"] == id);
        found.is_some()
    })
    .await;
    found
}

/// Issue 13, defect 7: a chunked request body that breaks the chunked grammar is the client's
/// error: `400`, response flag `DPE` in the access log, counted in `bad_requests_total` and not
/// in `upstream_errors_total`; no complete request reaches the backend, and the next client is
/// served. For a destination served by the fast path and for one whose VirtualService
/// `rewrite` sends it through the general (hyper) path.
#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_clients_error() {
    let fast = Site::echo("fast.chunked.test");
    let general = Site::echo("general.chunked.test");
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("access.log");
    let log_arg = log.display().to_string();
    let yaml = fast.yaml() + &general.yaml() + &rewrite_rule(&general.host);
    let proxy = start_proxy(&yaml, &["--access-log", &log_arg, "--access-log-format", "json"]).await;
    let bodies: [(&str, &[u8]); 3] = [
        ("the chunk size `zz`", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("more chunk data than its size says", b"3\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF after the chunk size", b"5\nhello\r\n0\r\n\r\n"),
    ];
    let mut report = Report::default();
    let mut n = 0;
    for (site, rewritten) in [(&fast, false), (&general, true)] {
        let mut want = Vec::new();
        for (what, body) in bodies {
            n += 1;
            let mut problems = Vec::new();
            let id = format!("bad-chunks-{n}");
            let bad_before = proxy.stat("bad_requests_total").await;
            let upstream_before = proxy.stat("upstream_errors_total").await;
            let mut req = start(Form::Absolute, "POST", &site.host, "/upload").into_bytes();
            req.extend_from_slice(
                format!("x-id: {id}\r\nx-request-id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
            );
            req.extend_from_slice(body);
            match exchange(proxy.http(), &req, "POST", SHORT).await {
                Ok((_, resp)) if resp.status == 400 => {}
                Ok((_, resp)) => problems.push(format!("answered {:?}, not 400", show(&resp.raw))),
                Err(e) => problems.push(e),
            }
            match log_entry(&log, &id).await {
                None => problems.push("no access log line".into()),
                Some(e) if e["response_code"] == 400 && e["response_flags"] == "DPE" => {}
                Some(e) => problems.push(format!(
                    "logged with code {} and flags {}, not 400 DPE: {e}",
                    e["response_code"], e["response_flags"]
                )),
            }
            if !stat_becomes(&proxy, "bad_requests_total", bad_before + 1).await {
                let now = proxy.stat("bad_requests_total").await;
                problems.push(format!(
                    "bad_requests_total went from {bad_before} to {now}, not up by 1"
                ));
            }
            let upstream_now = proxy.stat("upstream_errors_total").await;
            if upstream_now != upstream_before {
                problems.push(format!(
                    "counted as an upstream error: upstream_errors_total went from {upstream_before} to {upstream_now}"
                ));
            }
            let path = format!("/after/{n}");
            let echoed = if rewritten {
                format!("/rewritten/after/{n}")
            } else {
                path.clone()
            };
            let id = format!("after-{n}");
            let (w, got) = own_get(proxy.http(), Form::Absolute, &site.host, &path, &echoed, &id).await;
            want.push(w);
            problems.extend(got.err());
            let route = if rewritten { "general path" } else { "fast path" };
            report.case(&format!("{what}, {route}"), problems, &[site]);
        }
        let mut problems = Vec::new();
        received_exactly(site, &want, &mut problems).await;
        report.case(&format!("{}: the backend, at the end", site.host), problems, &[site]);
    }
    report.finish("malformed chunked request bodies");
}

/// Whether counter `name` reaches `value` within [`PATIENCE`] (it is counted as the request
/// ends, which may be a moment after the client has its response).
async fn stat_becomes(proxy: &Proxy, name: &str, value: u64) -> bool {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = proxy.stat(name).await;
        if now == value {
            return true;
        }
        if now > value || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Correctness of what the fast path hands on

/// A backend that accepts a WebSocket upgrade (`101`, then echoes every byte) and refuses any
/// request without one with `426`.
fn websocket_backend(r: &RawRequest) -> Reply {
    let upgrade = r.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let connection = r
        .header_all("connection")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if upgrade && connection {
        Reply::bytes(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .then_echo()
    } else {
        Reply::bytes(raw::response(
            426,
            "Upgrade Required",
            &[("Upgrade", "websocket")],
            b"no upgrade arrived",
        ))
    }
}

/// Issue 13, defect 8: what the fast path used to lose arrives whole: a GET's chunked body,
/// declared request trailers, `Host` when `Connection` names it, and a WebSocket upgrade in an
/// absolute-form request (the client gets the `101` and the echo works). Each case is followed
/// by another client that must get its own response.
#[tokio::test]
async fn bodies_trailers_host_and_upgrades_arrive_intact() {
    let get_body = Site::echo("get-body.intact.test");
    let trailers = Site::echo("trailers.intact.test");
    let conn_host = Site::echo("conn-host.intact.test");
    let ws = Site::new("ws.intact.test", websocket_backend);
    let yaml = get_body.yaml() + &trailers.yaml() + &conn_host.yaml() + &ws.yaml();
    let proxy = start_proxy(&yaml, &[]).await;
    let mut report = Report::default();

    // A GET with a chunked body.
    {
        let site = &get_body;
        let mut problems = Vec::new();
        let mut req = start(Form::Absolute, "GET", &site.host, "/get-body").into_bytes();
        req.extend_from_slice(b"x-id: get-body\r\nTransfer-Encoding: chunked\r\n\r\n");
        req.extend_from_slice(&chunked(b"hello, chunked GET"));
        let mut want = vec![Want::new("GET", "/get-body", "get-body")];
        match exchange(proxy.http(), &req, "GET", SHORT).await {
            Ok((_, resp)) => problems.extend(own(&resp, &want[0]).err()),
            Err(e) => problems.push(e),
        }
        match site.backend.requests().iter().find(|r| r.id() == "get-body") {
            Some(r) if r.body == b"hello, chunked GET" => {}
            Some(r) => problems.push(format!("the GET arrived with body {:?}", show(&r.body))),
            None => problems.push("the GET never arrived".into()),
        }
        let (w, got) = own_get(proxy.http(), Form::Absolute, &site.host, "/next", "/next", "next").await;
        want.push(w);
        problems.extend(got.err());
        received_exactly(site, &want, &mut problems).await;
        report.case("a GET with a chunked body", problems, &[site]);
    }

    // Declared request trailers.
    {
        let site = &trailers;
        let mut problems = Vec::new();
        let mut req = start(Form::Absolute, "POST", &site.host, "/trailers").into_bytes();
        req.extend_from_slice(b"x-id: trailers\r\nTrailer: x-sum\r\nTransfer-Encoding: chunked\r\n\r\n");
        req.extend_from_slice(b"5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n");
        let mut want = vec![Want::new("POST", "/trailers", "trailers")];
        match exchange(proxy.http(), &req, "POST", SHORT).await {
            Ok((_, resp)) => problems.extend(own(&resp, &want[0]).err()),
            Err(e) => problems.push(e),
        }
        match site.backend.requests().iter().find(|r| r.id() == "trailers") {
            Some(r) if r.body == b"hello" && r.trailer("x-sum") == Some("1") => {}
            Some(r) => problems.push(format!(
                "the POST arrived with body {:?} and trailers {:?}, not `hello` and x-sum: 1",
                show(&r.body),
                r.trailers
            )),
            None => problems.push("the POST never arrived".into()),
        }
        let (w, got) = own_get(proxy.http(), Form::Absolute, &site.host, "/next", "/next", "next").await;
        want.push(w);
        problems.extend(got.err());
        received_exactly(site, &want, &mut problems).await;
        report.case("declared request trailers", problems, &[site]);
    }

    // `Connection: host`, origin form and absolute form: the backend still gets `Host`
    // (received_exactly checks there is exactly one, the service's).
    {
        let site = &conn_host;
        let mut problems = Vec::new();
        let mut want = Vec::new();
        for (form, id) in [(Form::Origin, "origin"), (Form::Absolute, "absolute")] {
            let req = format!(
                "{}x-id: {id}\r\nConnection: host\r\n\r\n",
                start(form, "GET", &site.host, "/conn-host")
            );
            let w = Want::new("GET", "/conn-host", id);
            match exchange(proxy.http(), req.as_bytes(), "GET", SHORT).await {
                Ok((_, resp)) => match own(&resp, &w) {
                    Ok(()) => want.push(w),
                    Err(e) => problems.push(format!("{form:?} form: {e}")),
                },
                Err(e) => problems.push(format!("{form:?} form: {e}")),
            }
        }
        let (w, got) = own_get(proxy.http(), Form::Absolute, &site.host, "/next", "/next", "next").await;
        want.push(w);
        problems.extend(got.err());
        received_exactly(site, &want, &mut problems).await;
        report.case("Connection: host", problems, &[site]);
    }

    // A WebSocket upgrade in an absolute-form request.
    {
        let site = &ws;
        let mut problems = Vec::new();
        let req = format!(
            "GET http://{h}/chat HTTP/1.1\r\nHost: {h}\r\nx-id: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            h = site.host
        );
        match exchange(proxy.http(), req.as_bytes(), "GET", SHORT).await {
            Ok((mut c, resp)) if resp.status == 101 => {
                let msg = b"bytes through the upgraded connection";
                let echoed = match c.send(msg).await {
                    Ok(()) => c.read_exact(msg.len(), SHORT).await,
                    Err(e) => Err(e),
                };
                match echoed {
                    Ok(back) if back == msg => {}
                    Ok(back) => problems.push(format!("the echo came back as {:?}", show(&back))),
                    Err(e) => problems.push(format!("no echo after the 101: {e}")),
                }
            }
            Ok((_, resp)) => problems.push(format!("answered {:?}, not 101", show(&resp.raw))),
            Err(e) => problems.push(e),
        }
        match site.backend.requests().iter().find(|r| r.id() == "ws") {
            Some(r) if r.header("upgrade").is_some() => {}
            Some(r) => problems.push(format!(
                "the request reached the backend without Upgrade: {:?}",
                show(&r.raw)
            )),
            None => problems.push("the request never arrived".into()),
        }
        report.case("a WebSocket upgrade in absolute form", problems, &[site]);
    }
    report.finish("fast-path correctness");
}
