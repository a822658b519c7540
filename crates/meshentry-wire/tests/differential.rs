//! meshentry_wire's HTTP/1 framing decisions against hyper's, on the same bytes.
//!
//! A proxy that frames a message differently from its peer hands one client's bytes to
//! another. The fast path decides with httparse + `meshentry_wire`; the general path is hyper
//! (server for clients, client for upstreams). Here both read generated messages (valid,
//! near-valid and hostile) and must agree:
//!
//! - requests: the bytes are fed to a hyper http1 server whose service reads the whole body
//!   and echoes it; a second, pipelined request follows each message, so whether (and which)
//!   later requests hyper serves tells where it thinks the message ended and whether it kept
//!   the connection;
//! - responses: a hyper http1 client sends a request to a peer that answers with the bytes,
//!   then (if the connection is kept) serves a second exchange;
//! - what the fast path writes upstream (the head with hop-by-hop fields removed, then the
//!   body) must read, by both, as exactly the one message it came from.
//!
//! Whenever both accept, they agree on the body and where it ends, and on keep-alive. We
//! never accept what hyper refuses. Where we refuse and hyper accepts, the case must be one
//! of the deliberate strictness rules listed in [`request_strictness`] and
//! [`response_strictness`]: anything else fails, so the list cannot grow unnoticed.
//!
//! `PROPTEST_CASES` sets the number of generated cases per property (default [`CASES`]).

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use meshentry_wire::chunked::ChunkScanner;
use meshentry_wire::h1::{self, Answering, RequestBody, RequestError, ResponseBody, ResponseError};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Cases per property unless `PROPTEST_CASES` says otherwise: enough to meet every menu item
/// below many times, and well under a minute in a debug build on two cores.
const CASES: u32 = 1000;

/// The fast path's (and hyper's default) header count limit.
const MAX_HEADERS: usize = 100;

/// The most `Connection` fields the fast path takes (`MAX_CONNECTION_FIELDS` in h1.rs).
const MAX_CONNECTION_FIELDS: usize = 8;

/// The loop-guard marker the fast path adds to every forwarded head.
const VIA_LINE: &[u8] = b"via: 1.1 meshentry-0123456789abcdef\r\n";

/// The request pipelined after every generated one.
const NEXT_REQUEST: &[u8] = b"GET /__next HTTP/1.1\r\nHost: next.example\r\n\r\n";
const NEXT_TARGET: &str = "/__next";

/// What the peer answers to a second request on a kept connection.
const NEXT_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext";

/// Only a disagreement can make hyper wait this long (it waits for bytes we think are not
/// part of the message, or for a close we think is not needed).
const HANG: Duration = Duration::from_secs(3);

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a disagreement runs hyper again per step; a few hundred steps are plenty.
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Our decisions: httparse + meshentry_wire, as crates/meshentry-proxy/src/h1.rs makes them.
// ---------------------------------------------------------------------------------------

/// Why we refuse a message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    /// httparse refused the head (hyper parses heads with httparse too).
    Head(httparse::Error),
    Request(RequestError),
    Response(ResponseError),
    Chunked(&'static str),
}

/// Our verdict on one request at the start of some bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OurRequest {
    Served {
        /// The target as hyper's `Uri` prints it, so the two sides compare.
        target: String,
        body: Vec<u8>,
        /// Where the message ends.
        len: usize,
        keep_alive: bool,
    },
    Refused(Refusal),
    /// The bytes end before the message does.
    Incomplete,
}

/// The authority of an absolute-form target, as the fast path's `split_target` reads it.
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = target
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"http://"))
        .map(|_| &target[7..])?;
    let end = rest.iter().position(|b| *b == b'/' || *b == b'?').unwrap_or(rest.len());
    Some(&rest[..end])
}

fn normalise_target(target: &[u8]) -> String {
    match std::str::from_utf8(target).ok().and_then(|t| t.parse::<Uri>().ok()) {
        Some(uri) => uri.to_string(),
        None => format!("unparsable {:?}", String::from_utf8_lossy(target)),
    }
}

/// Decodes a chunked body the scanner accepted (so its grammar is known good).
fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + body[at..].windows(2).position(|w| w == b"\r\n").unwrap();
        let line = &body[at..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let hex = std::str::from_utf8(&line[..digits]).unwrap();
        let size = usize::try_from(u64::from_str_radix(hex, 16).unwrap()).unwrap();
        at = line_end + 2;
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
}

/// Scans a chunked body: `Ok(Some(n))` when it ends after `n` bytes.
fn scan_chunked(bytes: &[u8]) -> Result<Option<usize>, Refusal> {
    ChunkScanner::default().feed(bytes).map_err(|e| Refusal::Chunked(e.0))
}

fn our_request(buf: &[u8]) -> OurRequest {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return OurRequest::Incomplete,
        Err(e) => return OurRequest::Refused(Refusal::Head(e)),
    };
    let target = req.path.unwrap_or("").as_bytes();
    let fields = req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let framing = match h1::request(req.version.unwrap_or(1), fields) {
        Ok(f) => f,
        Err(e) => return OurRequest::Refused(Refusal::Request(e)),
    };
    // As the fast path's `exchange`: an absolute-form authority is checked like a Host, and
    // more Connection fields than it reads are refused.
    if let Some(authority) = absolute_authority(target)
        && !authority.is_empty()
        && !h1::valid_authority(authority)
    {
        return OurRequest::Refused(Refusal::Request(RequestError::InvalidHost));
    }
    if req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .count()
        > MAX_CONNECTION_FIELDS
    {
        return OurRequest::Refused(Refusal::Request(RequestError::InvalidConnection));
    }
    let rest = &buf[head_len..];
    let (body, body_len) = match framing.body {
        RequestBody::Empty => (Vec::new(), 0),
        RequestBody::Length(n) => match usize::try_from(n).ok().filter(|n| *n <= rest.len()) {
            Some(n) => (rest[..n].to_vec(), n),
            None => return OurRequest::Incomplete,
        },
        RequestBody::Chunked => match scan_chunked(rest) {
            Err(r) => return OurRequest::Refused(r),
            Ok(None) => return OurRequest::Incomplete,
            Ok(Some(n)) => (dechunk(&rest[..n]), n),
        },
    };
    OurRequest::Served {
        target: normalise_target(target),
        body,
        len: head_len + body_len,
        keep_alive: !framing.close,
    }
}

/// Our verdicts on every message of a connection's bytes, with where each starts, up to the
/// first that is refused, incomplete or closes the connection.
fn our_requests(stream: &[u8]) -> Vec<(usize, OurRequest)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let verdict = our_request(&stream[at..]);
        let start = at;
        let go_on = match &verdict {
            OurRequest::Served { len, keep_alive, .. } => {
                at += len;
                *keep_alive
            }
            _ => false,
        };
        out.push((start, verdict));
        if !go_on {
            break;
        }
    }
    out
}

/// What the fast path writes upstream for the request at the start of `msg` (head, then the
/// body bytes), or `None` when the fast path would not forward it itself: refused, routed
/// nowhere, or one it hands to hyper. Mirrors `exchange` in crates/meshentry-proxy/src/h1.rs.
fn fast_path_upstream(msg: &[u8]) -> Option<Vec<u8>> {
    let OurRequest::Served { len, .. } = our_request(msg) else {
        return None;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(msg) else {
        return None;
    };
    let method = req.method?.as_bytes();
    let target = req.path?.as_bytes();
    // `needs_general_path`: these go to hyper, which re-frames them itself.
    let absolute = absolute_authority(target);
    if req.version != Some(1) || method == b"CONNECT" || !(target.starts_with(b"/") || absolute.is_some()) {
        return None;
    }
    let general = req.headers.iter().any(|h| {
        let n = h.name.as_bytes();
        n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"upgrade")
            || n.eq_ignore_ascii_case(b"expect")
            || (n.eq_ignore_ascii_case(b"connection") && h1::has_token(h.value, b"upgrade"))
    });
    if general {
        return None;
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value.trim_ascii());
    let (authority, path): (&[u8], &[u8]) = match absolute {
        Some(a) => {
            let rest = &target[7 + a.len()..];
            (a, if rest.is_empty() { b"/" } else { rest })
        }
        None => (host.unwrap_or(b""), target),
    };
    // `http://a?q`: hyper's, so that the upstream sees `/?q`.
    if !path.starts_with(b"/") {
        return None;
    }
    // A request with no destination is refused before anything is written upstream.
    if authority.is_empty() {
        return None;
    }
    let mut up = Vec::new();
    up.extend_from_slice(method);
    up.push(b' ');
    up.extend_from_slice(path);
    up.extend_from_slice(b" HTTP/1.1\r\n");
    if absolute.is_some() {
        up.extend_from_slice(b"host: ");
        up.extend_from_slice(authority);
        up.extend_from_slice(b"\r\n");
    }
    let connection: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if h1::is_hop_by_hop(name, connection.iter().copied())
            || (absolute.is_some() && name.eq_ignore_ascii_case(b"host"))
        {
            continue;
        }
        up.extend_from_slice(name);
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(VIA_LINE);
    up.extend_from_slice(b"\r\n");
    up.extend_from_slice(&msg[head_len..len]);
    Some(up)
}

/// Our verdict on a response to a request (`answering`), as the fast path's `roundtrip`
/// reads it: interim responses skipped, then the final one's framing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OurResponse {
    Accepted {
        status: u16,
        body: Vec<u8>,
        /// Where the message ends; `None`: at the close.
        end: Option<usize>,
        close: bool,
    },
    Refused(Refusal),
    Incomplete,
}

fn our_response(raw: &[u8], answering: Answering) -> OurResponse {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&raw[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return OurResponse::Incomplete,
            Err(e) => return OurResponse::Refused(Refusal::Head(e)),
        };
        let status = resp.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            at += head_len;
            continue;
        }
        let fields = resp.headers.iter().map(|h| (h.name.as_bytes(), h.value));
        let framing = match h1::response(status, resp.version.unwrap_or(0), answering, fields) {
            Ok(f) => f,
            Err(e) => return OurResponse::Refused(Refusal::Response(e)),
        };
        let start = at + head_len;
        let rest = &raw[start..];
        let (body, end) = match framing.body {
            ResponseBody::None => (Vec::new(), Some(start)),
            ResponseBody::Length(n) => match usize::try_from(n).ok().filter(|n| *n <= rest.len()) {
                Some(n) => (rest[..n].to_vec(), Some(start + n)),
                None => return OurResponse::Incomplete,
            },
            ResponseBody::Chunked => match scan_chunked(rest) {
                Err(r) => return OurResponse::Refused(r),
                Ok(None) => return OurResponse::Incomplete,
                Ok(Some(n)) => (dechunk(&rest[..n]), Some(start + n)),
            },
            ResponseBody::UntilClose => (rest.to_vec(), None),
        };
        return OurResponse::Accepted {
            status,
            body,
            end,
            close: framing.close,
        };
    }
}

// ---------------------------------------------------------------------------------------
// The deliberate strictness: where we refuse what hyper accepts, and why.
// ---------------------------------------------------------------------------------------

/// The head fields of the message at the start of `msg` (request or response), lower-cased
/// names, for the conditions below.
fn head_fields(msg: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(msg) {
        return req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = resp.parse(msg) {
        return resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
    }
    Vec::new()
}

fn has_field(msg: &[u8], name: &str) -> bool {
    head_fields(msg).iter().any(|(n, _)| n == name)
}

/// Chunked-body refusals hyper does not share (its decoder is more lenient there).
fn chunked_strictness(reason: &str) -> Option<&'static str> {
    match reason {
        "bare LF in trailer section" => Some(
            "a bare LF in the trailer section: hyper keeps reading to the next CRLF (and parses \
             the lines with httparse, which takes LF as a line end), so a lenient peer finds a \
             different end; RFC 9112 2.2 lets a recipient refuse a bare LF",
        ),
        "control character in chunk extension" => Some(
            "a control byte in a chunk extension: not in the chunk-ext grammar (RFC 9112 7.1.1); \
             hyper skips any byte but LF there",
        ),
        "chunk size line too long" => Some(
            "a chunk-size line over 4 KiB (size, whitespace and extensions): hyper only caps the \
             extensions of a whole body, at 16 KiB",
        ),
        _ => None,
    }
}

/// Requests we refuse and hyper serves, on purpose: `Some(why)`, else `None`. The list is
/// closed: a refusal hyper does not share and that is not here fails the test.
fn request_strictness(refusal: &Refusal, msg: &[u8]) -> Option<&'static str> {
    match refusal {
        Refusal::Request(RequestError::DuplicateHost) => Some(
            "two Host fields: RFC 9112 3.2 says 400; hyper serves the request and a peer could \
             route by either",
        ),
        Refusal::Request(RequestError::InvalidHost) => Some(
            "a Host, or absolute-form authority, that is not `host[:port]` (userinfo, a path, \
             spaces, a bad port): RFC 9110 4.2.3/7.2; hyper does not read Host",
        ),
        Refusal::Request(RequestError::InvalidConnection) => Some(
            "more than 8 Connection fields (the fast path reads that many): one past them could \
             name a field to remove that the proxy would forward; hyper has no such limit",
        ),
        Refusal::Request(RequestError::InvalidContentLength | RequestError::ConflictingContentLength)
            if has_field(msg, "transfer-encoding") =>
        {
            Some(
                "an invalid or disagreeing Content-Length beside Transfer-Encoding: hyper ignores \
                 every Content-Length after a Transfer-Encoding; we refuse a framing field we \
                 cannot read whatever else the head says",
            )
        }
        Refusal::Chunked(reason) => chunked_strictness(reason),
        _ => None,
    }
}

/// Responses we refuse (502, UPE) and hyper's client accepts, on purpose.
fn response_strictness(refusal: &Refusal, final_head: &[u8], answering: Answering) -> Option<&'static str> {
    let status = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let _ = resp.parse(final_head);
        resp.code.unwrap_or(0)
    };
    // hyper decides these have no body before it looks at any framing field.
    let bodiless = answering.head || matches!(status, 101 | 204 | 304);
    match refusal {
        Refusal::Response(ResponseError::LengthAndTransferEncoding) => Some(
            "Transfer-Encoding and Content-Length together: RFC 9112 6.3 calls it a possible \
             smuggling attempt; hyper lets Transfer-Encoding win; we refuse as Envoy does",
        ),
        Refusal::Response(ResponseError::ConnectionNamesFraming) => Some(
            "`Connection` naming Content-Length, Transfer-Encoding or Host: a hop that obeys it \
             strips the framing; hyper ignores the tokens",
        ),
        Refusal::Response(ResponseError::UnsolicitedUpgrade) => Some(
            "a 101 to a request that did not ask to upgrade: hyper hands the connection over; \
             we refuse to relay a protocol nobody asked for",
        ),
        Refusal::Response(ResponseError::TransferEncodingInHttp10) if bodiless => Some(
            "Transfer-Encoding in an HTTP/1.0 response to HEAD, or a 101/204/304: faulty framing \
             (RFC 9112 6.1) even where the body is known to be empty; hyper never reads it",
        ),
        Refusal::Response(ResponseError::InvalidContentLength | ResponseError::ConflictingContentLength)
            if bodiless || has_field(final_head, "transfer-encoding") =>
        {
            Some(
                "an invalid or disagreeing Content-Length where hyper does not read it (a \
                 bodiless response, or beside Transfer-Encoding): we refuse a framing field \
                 we cannot read wherever it is",
            )
        }
        Refusal::Chunked(reason) => chunked_strictness(reason),
        _ => None,
    }
}

/// The final response head in `raw` (after any interim ones), for the conditions above.
fn final_head(raw: &[u8]) -> &[u8] {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&raw[at..]) {
            Ok(httparse::Status::Complete(n)) if resp.code.is_some_and(|c| (100..200).contains(&c) && c != 101) => {
                at += n
            }
            _ => return &raw[at..],
        }
    }
}

// ---------------------------------------------------------------------------------------
// hyper's decisions.
// ---------------------------------------------------------------------------------------

/// One response hyper's server wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Served {
    status: u16,
    target: String,
    body: Vec<u8>,
}

/// Feeds `input` to a hyper http1 server (as one client connection that then half-closes)
/// whose service reads each request body whole and echoes it; returns every final response.
async fn hyper_server(input: Vec<u8>) -> Vec<Served> {
    let (client, server) = tokio::io::duplex(1 << 20);
    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
        let http10 = req.version() == Version::HTTP_10;
        let target = req.uri().to_string();
        let mut resp = match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            // A body hyper could not read: not served.
            Err(_) => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::from_u16(499).unwrap();
                r
            }
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(&target) {
            resp.headers_mut().insert("x-target", v);
        }
        // hyper closes an HTTP/1.0 connection unless the response says keep-alive; saying it
        // leaves the decision to the request, which is what is compared.
        if http10 {
            resp.headers_mut()
                .insert("connection", hyper::header::HeaderValue::from_static("keep-alive"));
        }
        Ok::<_, Infallible>(resp)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let serving = tokio::spawn(conn);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
        wr
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let (_wr, out) = tokio::time::timeout(HANG, async { tokio::join!(write, read) })
        .await
        .expect("hyper's server neither answered nor closed");
    let _ = serving.await;
    parse_served(&out)
}

/// The final responses in what hyper's server wrote (1xx skipped).
fn parse_served(mut out: &[u8]) -> Vec<Served> {
    let mut served = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("hyper wrote a response we cannot read ({other:?}): {out:?}"),
        };
        let status = resp.code.unwrap();
        let field = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        let len = field("content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let target = String::from_utf8_lossy(field("x-target").unwrap_or(b"")).into_owned();
        if !(100..200).contains(&status) {
            served.push(Served {
                status,
                target,
                body: out[n..n + len].to_vec(),
            });
        }
        out = &out[n + len..];
    }
    served
}

/// What hyper's client made of a response.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientSaw {
    /// The status and whole body, or `None` when hyper refused the head or the body.
    first: Option<(u16, Vec<u8>)>,
    /// With `probe`: whether a second exchange went through on the same connection.
    kept: Option<bool>,
}

/// A hyper http1 client sends a `method` request to a peer that answers with `raw`; the peer
/// then closes (`close_after`), or waits for a second request and answers it with
/// [`NEXT_RESPONSE`]. With `probe`, the client tries that second exchange.
async fn hyper_client(raw: Vec<u8>, method: Method, close_after: bool, probe: bool) -> ClientSaw {
    let (client, server) = tokio::io::duplex(1 << 20);
    let peer = tokio::spawn(async move {
        let mut server = server;
        let mut seen = Vec::new();
        if !read_heads(&mut server, &mut seen, 1).await {
            return;
        }
        let _ = server.write_all(&raw).await;
        if !close_after && read_heads(&mut server, &mut seen, 2).await {
            let _ = server.write_all(NEXT_RESPONSE).await;
        }
        let _ = server.shutdown().await;
        // Until the client is gone, so that it never sees a reset instead of the bytes.
        let mut sink = [0u8; 1024];
        while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let saw = tokio::time::timeout(HANG, async move {
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let request = |method: Method| {
            Request::builder()
                .method(method)
                .uri("/")
                .header("host", "upstream.example")
                .body(Empty::new())
                .unwrap()
        };
        let first = match sender.send_request(request(method)).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                resp.into_body()
                    .collect()
                    .await
                    .ok()
                    .map(|b| (status, b.to_bytes().to_vec()))
            }
            Err(_) => None,
        };
        let kept = if probe && first.is_some() {
            let second = match sender.ready().await {
                Ok(()) => match sender.send_request(request(Method::GET)).await {
                    Ok(resp) => resp.into_body().collect().await.ok().map(|b| b.to_bytes()),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            Some(second.as_deref() == Some(b"next"))
        } else {
            None
        };
        drop(sender);
        let _ = conn.await;
        ClientSaw { first, kept }
    })
    .await
    .expect("hyper's client neither finished nor failed");
    let _ = peer.await;
    saw
}

/// Reads until `seen` holds `n` request heads (ends of head); `false` if the client left.
async fn read_heads(io: &mut tokio::io::DuplexStream, seen: &mut Vec<u8>, n: usize) -> bool {
    loop {
        if seen.windows(4).filter(|w| *w == b"\r\n\r\n").count() >= n {
            return true;
        }
        let mut buf = [0u8; 1024];
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => seen.extend_from_slice(&buf[..k]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The comparisons.
// ---------------------------------------------------------------------------------------

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// Both readings of a connection's bytes, message by message.
fn compare_requests(rt: &tokio::runtime::Runtime, stream: &[u8]) -> Result<(), TestCaseError> {
    let ours = our_requests(stream);
    let theirs = rt.block_on(hyper_server(stream.to_vec()));
    let served = |i: usize| theirs.get(i).filter(|s| s.status == 200);
    for (i, (start, verdict)) in ours.iter().enumerate() {
        match verdict {
            OurRequest::Served {
                target,
                body,
                keep_alive,
                ..
            } => {
                let Some(s) = served(i) else {
                    return Err(TestCaseError::fail(format!(
                        "we serve message {i} and hyper does not ({:?}) in {}",
                        theirs.get(i),
                        show(stream)
                    )));
                };
                prop_assert_eq!(&s.target, target, "message {} target in {}", i, show(stream));
                prop_assert_eq!(&s.body, body, "message {} body in {}", i, show(stream));
                if !keep_alive {
                    prop_assert_eq!(
                        theirs.len(),
                        i + 1,
                        "we close after message {}, hyper goes on: {:?} in {}",
                        i,
                        theirs,
                        show(stream)
                    );
                    return Ok(());
                }
            }
            OurRequest::Refused(refusal) => {
                if served(i).is_some() {
                    let msg = &stream[*start..];
                    prop_assert!(
                        request_strictness(refusal, msg).is_some(),
                        "we refuse message {} ({:?}) and hyper serves it, not a listed strictness: {}",
                        i,
                        refusal,
                        show(msg)
                    );
                }
                return Ok(());
            }
            OurRequest::Incomplete => {
                prop_assert!(
                    served(i).is_none(),
                    "message {} is incomplete to us and hyper serves it: {:?} in {}",
                    i,
                    theirs.get(i),
                    show(stream)
                );
                return Ok(());
            }
        }
    }
    prop_assert_eq!(
        theirs.iter().filter(|s| s.status == 200).count(),
        ours.len(),
        "hyper serves more messages than we find in {}: {:?}",
        show(stream),
        theirs
    );
    Ok(())
}

/// The request at the start of `msg`, as the fast path would forward it, reads as exactly
/// one message with the same body to us and to hyper.
fn compare_forwarded(rt: &tokio::runtime::Runtime, msg: &[u8]) -> Result<bool, TestCaseError> {
    let Some(up) = fast_path_upstream(msg) else {
        return Ok(false);
    };
    let OurRequest::Served { body, .. } = our_request(msg) else {
        unreachable!("fast_path_upstream forwards only served requests");
    };
    // To us: one message, all of the bytes, the same body, and the connection kept.
    match our_requests(&up).as_slice() {
        [
            (
                0,
                OurRequest::Served {
                    body: b,
                    len,
                    keep_alive,
                    ..
                },
            ),
        ] => {
            prop_assert_eq!(b, &body, "forwarded body of {}", show(msg));
            prop_assert_eq!(
                *len,
                up.len(),
                "forwarded {} is not one message: {}",
                show(msg),
                show(&up)
            );
            prop_assert!(*keep_alive, "forwarded {} closes: {}", show(msg), show(&up));
        }
        other => {
            return Err(TestCaseError::fail(format!(
                "forwarded {} reads as {other:?}: {}",
                show(msg),
                show(&up)
            )));
        }
    }
    // To hyper: that message, then the next one on the same connection.
    let mut stream = up.clone();
    stream.extend_from_slice(NEXT_REQUEST);
    let theirs = rt.block_on(hyper_server(stream));
    prop_assert_eq!(theirs.len(), 2, "hyper on forwarded {}: {:?}", show(&up), theirs);
    prop_assert_eq!(theirs[0].status, 200, "hyper on forwarded {}", show(&up));
    prop_assert_eq!(&theirs[0].body, &body, "hyper on forwarded {}", show(&up));
    prop_assert_eq!(&theirs[1].target, NEXT_TARGET, "hyper on forwarded {}", show(&up));
    Ok(true)
}

fn compare_response(rt: &tokio::runtime::Runtime, raw: &[u8], method: &Method) -> Result<(), TestCaseError> {
    let answering = Answering {
        head: method == Method::HEAD,
        upgrade: false,
    };
    let ours = our_response(raw, answering);
    // The peer closes after the bytes when the message (to us) ends only there, or never.
    let (close_after, probe) = match &ours {
        OurResponse::Accepted { end: Some(end), .. } => (false, *end == raw.len()),
        _ => (true, false),
    };
    let saw = rt.block_on(hyper_client(raw.to_vec(), method.clone(), close_after, probe));
    match &ours {
        OurResponse::Accepted {
            status, body, close, ..
        } => {
            let Some((s, b)) = &saw.first else {
                return Err(TestCaseError::fail(format!(
                    "we accept a response to {method} that hyper refuses: {}",
                    show(raw)
                )));
            };
            prop_assert_eq!(s, status, "status of {}", show(raw));
            prop_assert_eq!(b, body, "body of the response to {} in {}", method, show(raw));
            if let Some(kept) = saw.kept {
                prop_assert_eq!(kept, !close, "keep-alive after {}", show(raw));
            }
        }
        OurResponse::Refused(refusal) => {
            if saw.first.is_some() {
                prop_assert!(
                    response_strictness(refusal, final_head(raw), answering).is_some(),
                    "we refuse ({:?}) a response to {} that hyper accepts, not a listed strictness: {}",
                    refusal,
                    method,
                    show(raw)
                );
            }
        }
        OurResponse::Incomplete => {
            prop_assert!(
                saw.first.is_none(),
                "a response to {} is incomplete to us and hyper reads it ({:?}): {}",
                method,
                saw.first,
                show(raw)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Generators: menus of valid, near-valid and hostile pieces.
// ---------------------------------------------------------------------------------------

/// A Content-Length value: a pattern where `{}` is the real body length, or an offset.
#[derive(Clone, Debug)]
enum Length {
    Pattern(&'static str),
    Off(i64),
}

impl Length {
    fn render(&self, len: usize) -> Vec<u8> {
        match self {
            Length::Pattern(p) => p.replace("{}", &len.to_string()).into_bytes(),
            Length::Off(d) => (len as i64 + d).to_string().into_bytes(),
        }
    }
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        8 => Just(Length::Pattern("{}")),
        3 => prop::sample::select(vec![
            "0{}", "00{}", " {} ", "+{}", "-{}", "{}, {}", "{},{}", "{}, ", ",{}", "{} {}", "", " ", "{}x",
            "0x{}", "{};", "{}\t", "{}.0", "{}\x00",
        ])
        .prop_map(Length::Pattern),
        1 => (-2i64..=3).prop_map(Length::Off),
        1 => prop::sample::select(vec![
            "0", "18446744073709551615", "18446744073709551614", "18446744073709551616",
            "99999999999999999999999", "4294967296", "1, 2",
        ])
        .prop_map(Length::Pattern),
    ]
}

fn transfer_encoding() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        6 => Just(&b"chunked"[..]),
        3 => prop::sample::select(vec![
            &b"Chunked"[..], b"CHUNKED", b" chunked", b"chunked ", b"gzip, chunked", b"gzip,chunked",
            b"chunked, gzip", b"gzip", b"identity", b"chunked,", b",chunked", b"chunked, ", b"chunked, chunked",
            b"", b"chunked;q=1", b"x-chunked", b"chunk", b"chunked\t", b"\x80chunked", b"gzip\x80, chunked",
            b"chunked, identity", b"deflate , chunked",
        ]),
    ]
}

fn host() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => Just("svc.example"),
        3 => prop::sample::select(vec![
            "svc.example:8080", "[::1]:80", "10.0.0.1", "SVC.Example", "", "user@svc.example", "svc.example/x",
            "svc example", "a:99999", ":80", "svc.example:", "[zz]", "svc.example:80x", "[::1", "svc_1.example",
            "svc.example, other.example",
        ]),
    ]
}

fn connection() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b"close"[..],
        b"keep-alive",
        b"Keep-Alive",
        b"close, keep-alive",
        b"keep-alive, close",
        b"content-length",
        b"Content-Length, close",
        b"transfer-encoding",
        b"host",
        b"Host, x-trace",
        b"upgrade",
        b"x-trace",
        b"te",
        b"",
        b", close",
        b"close\x80",
        b"\x80, close",
        b"keep-alive, \x80",
        b"CLOSE",
        b"close ,",
    ])
}

/// One header field of a generated head.
#[derive(Clone, Debug)]
enum Field {
    Length(Length),
    Encoding(&'static [u8]),
    Host(&'static str),
    Connection(&'static [u8]),
    /// A whole field line (or lines), end of line excluded.
    Line(&'static [u8]),
}

/// Fields that are neither framing nor Host: hop-by-hop ones, obs-fold, odd spacing.
fn other_line() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        4 => prop::sample::select(vec![
            &b"X-Trace: 1"[..],
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"Trailer: x-sum",
            b"Proxy-Authorization: Basic eA==",
            b"User-Agent: t",
            b"Expect: 100-continue",
            b"Upgrade: websocket",
            b"X-Empty:",
            b"X-Tab:\tv\t",
            b"X-Obs: \x80\xff",
            // One more Connection field than the fast path reads.
            b"Connection: a\r\nConnection: b\r\nConnection: c\r\nConnection: d\r\nConnection: e\r\n\
              Connection: f\r\nConnection: g\r\nConnection: h\r\nConnection: i",
        ]),
        // Lines httparse (so both sides) refuses: obs-fold, space before the colon.
        1 => prop::sample::select(vec![
            &b"X-Fold: a\r\n b"[..],
            b"X-Space : v",
            b"Content-Length : 5",
            b" Content-Length: 5",
            b"Transfer-Encoding : chunked",
            b"Content-Length:\r\n 5",
        ]),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        2 => length().prop_map(Field::Length),
        2 => transfer_encoding().prop_map(Field::Encoding),
        1 => host().prop_map(Field::Host),
        3 => connection().prop_map(Field::Connection),
        2 => other_line().prop_map(Field::Line),
    ]
}

/// Extra fields: none in most cases (so that valid messages are common), a few in others.
fn extra_fields() -> impl Strategy<Value = Vec<Field>> {
    prop_oneof![
        2 => Just(Vec::new()),
        2 => prop::collection::vec(field(), 1..2),
        1 => prop::collection::vec(field(), 2..5),
    ]
}

fn render_field(f: &Field, body_len: usize) -> Vec<u8> {
    let (name, value): (&[u8], Vec<u8>) = match f {
        Field::Length(l) => (b"Content-Length", l.render(body_len)),
        Field::Encoding(v) => (b"Transfer-Encoding", v.to_vec()),
        Field::Host(v) => (b"Host", v.as_bytes().to_vec()),
        Field::Connection(v) => (b"Connection", v.to_vec()),
        Field::Line(line) => return line.to_vec(),
    };
    let mut line = name.to_vec();
    line.extend_from_slice(b": ");
    line.extend_from_slice(&value);
    line
}

/// One chunk of a chunked body.
#[derive(Clone, Debug)]
struct Chunk {
    data: Vec<u8>,
    /// The size as written: `None` for the data's length in lower-case hex.
    size: Option<Size>,
    ext: Option<Vec<u8>>,
    size_eol: &'static [u8],
    data_eol: &'static [u8],
}

#[derive(Clone, Debug)]
enum Size {
    Upper,
    Zeros(usize),
    Space(&'static str),
    Off(i64),
    Literal(&'static str),
}

#[derive(Clone, Debug)]
struct Chunked {
    chunks: Vec<Chunk>,
    last: &'static str,
    last_ext: Option<Vec<u8>>,
    trailers: Vec<Trailer>,
    end: &'static [u8],
}

#[derive(Clone, Debug)]
enum Trailer {
    Line(&'static [u8]),
    /// One field whose value makes the trailer section this many bytes long (hyper caps it).
    Sized(usize),
    /// This many small fields (hyper caps their count).
    Many(usize),
}

fn eol() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![12 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b"\r"[..])]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![8 => b'a'..=b'z', 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => any::<u8>()],
        0..24,
    )
}

fn extension() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![
            &b";a=b"[..], b";a", b"; a=b", b";a=\"q v\"", b" ;a=b", b"\t;a", b";a=b;c", b";\x01", b";a\nb", b";a\rb",
            b";\x7f", b";\xff", b";=", b";a=\"x\\\"y\"",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => (4080usize..4110).prop_map(|n| {
            let mut e = b";".to_vec();
            e.resize(n, b'x');
            e
        }),
    ]
}

fn size() -> impl Strategy<Value = Option<Size>> {
    prop_oneof![
        10 => Just(None),
        1 => Just(Some(Size::Upper)),
        1 => prop_oneof![0usize..4, 4090usize..4100].prop_map(|n| Some(Size::Zeros(n))),
        1 => prop::sample::select(vec![" ", "\t", "  ", " \t"]).prop_map(|s| Some(Size::Space(s))),
        1 => (-1i64..=1).prop_map(|d| Some(Size::Off(d))),
        1 => prop::sample::select(vec!["ffffffffffffffff", "10000000000000000", "-1", "0x5", " 5", ""])
            .prop_map(|s| Some(Size::Literal(s))),
    ]
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (data(), size(), prop::option::weighted(0.2, extension()), eol(), eol()).prop_map(
        |(data, size, ext, size_eol, data_eol)| Chunk {
            data,
            size,
            ext,
            size_eol,
            data_eol,
        },
    )
}

fn trailer() -> impl Strategy<Value = Trailer> {
    prop_oneof![
        6 => prop::sample::select(vec![
            &b"X-Sum: 1"[..], b"x-b:\t2 ", b"X-T: a\nHTTP/1.1 200 OK", b"no-colon", b": empty", b"x: a\x00b",
            b"X-Fold: a\r\n b", b"Content-Length: 5", b"x : y", b"x: y\r", b"x:", b"x: \x80", b"x: a\x7fb", b"\nx: y",
        ])
        .prop_map(Trailer::Line),
        1 => (16370usize..16390).prop_map(Trailer::Sized),
        1 => (97usize..104).prop_map(Trailer::Many),
    ]
}

fn chunked() -> impl Strategy<Value = Chunked> {
    (
        prop::collection::vec(chunk(), 0..4),
        prop_oneof![8 => Just("0"), 1 => Just("000"), 1 => Just("0 "), 1 => Just("00000000000000000000")],
        prop::option::weighted(0.15, extension()),
        prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(trailer(), 1..3)],
        prop_oneof![10 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..]), 1 => Just(&b""[..])],
    )
        .prop_map(|(chunks, last, last_ext, trailers, end)| Chunked {
            chunks,
            last,
            last_ext,
            trailers,
            end,
        })
}

impl Chunked {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.chunks {
            let n = c.data.len();
            let size = match &c.size {
                None => format!("{n:x}"),
                Some(Size::Upper) => format!("{n:X}"),
                Some(Size::Zeros(z)) => format!("{}{n:x}", "0".repeat(*z)),
                Some(Size::Space(s)) => format!("{n:x}{s}"),
                Some(Size::Off(d)) => format!("{:x}", (n as i64 + d).max(0)),
                Some(Size::Literal(s)) => (*s).to_string(),
            };
            out.extend_from_slice(size.as_bytes());
            out.extend_from_slice(c.ext.as_deref().unwrap_or(b""));
            out.extend_from_slice(c.size_eol);
            out.extend_from_slice(&c.data);
            out.extend_from_slice(c.data_eol);
        }
        out.extend_from_slice(self.last.as_bytes());
        out.extend_from_slice(self.last_ext.as_deref().unwrap_or(b""));
        out.extend_from_slice(b"\r\n");
        for t in &self.trailers {
            match t {
                Trailer::Line(line) => {
                    out.extend_from_slice(line);
                    out.extend_from_slice(b"\r\n");
                }
                Trailer::Sized(total) => {
                    // The field, its CRLF and the final CRLF make `total` bytes.
                    let mut line = b"x-big: ".to_vec();
                    line.resize(total.saturating_sub(4).max(line.len()), b'v');
                    out.extend_from_slice(&line);
                    out.extend_from_slice(b"\r\n");
                }
                Trailer::Many(n) => {
                    for i in 0..*n {
                        out.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
                    }
                }
            }
        }
        out.extend_from_slice(self.end);
        out
    }
}

#[derive(Clone, Debug)]
enum Body {
    None,
    Raw(Vec<u8>),
    Chunked(Chunked),
}

impl Body {
    fn encode(&self) -> Vec<u8> {
        match self {
            Body::None => Vec::new(),
            Body::Raw(b) => b.clone(),
            Body::Chunked(c) => c.encode(),
        }
    }
}

/// A generated message head and body. The framing fields usually match the body (so most
/// cases are valid and reach the body and keep-alive checks); extra fields add the doubt.
#[derive(Clone, Debug)]
struct Message {
    start_line: Vec<u8>,
    fields: Vec<Field>,
    /// Line ends of the head: CRLF, or (rarely) bare LF.
    eol: &'static [u8],
    body: Body,
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let body = self.body.encode();
        let mut out = self.start_line.clone();
        out.extend_from_slice(self.eol);
        for f in &self.fields {
            out.extend_from_slice(&render_field(f, body.len()));
            out.extend_from_slice(self.eol);
        }
        out.extend_from_slice(self.eol);
        out.extend_from_slice(&body);
        out
    }
}

/// A body and the fields that frame it (mostly right, sometimes not).
fn framed_body() -> impl Strategy<Value = (Body, Vec<Field>)> {
    prop_oneof![
        2 => Just((Body::None, Vec::new())),
        1 => Just((Body::None, vec![Field::Length(Length::Pattern("0"))])),
        4 => (data(), length()).prop_map(|(d, l)| (Body::Raw(d), vec![Field::Length(l)])),
        4 => (chunked(), transfer_encoding()).prop_map(|(c, te)| (Body::Chunked(c), vec![Field::Encoding(te)])),
        1 => (chunked(), transfer_encoding(), length())
            .prop_map(|(c, te, l)| (Body::Chunked(c), vec![Field::Length(l), Field::Encoding(te)])),
        1 => (chunked(), transfer_encoding(), length())
            .prop_map(|(c, te, l)| (Body::Chunked(c), vec![Field::Encoding(te), Field::Length(l)])),
    ]
}

fn request() -> impl Strategy<Value = Message> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        prop::sample::select(vec![
            "/",
            "/a/b?c=d",
            "http://svc.example/x",
            "http://svc.example:8080",
            "HTTP://svc.example/",
            "http://user@svc.example/",
            "http://[::1]:8080/p",
            "http://svc.example?q",
            "*",
        ]),
        prop_oneof![5 => Just(1u8), 1 => Just(0u8)],
        prop_oneof![5 => Just(Some(Field::Host("svc.example"))), 1 => Just(None)],
        framed_body(),
        extra_fields(),
        any::<prop::sample::Index>(),
        prop_oneof![15 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..])],
    )
        .prop_map(|(method, target, minor, host, (body, framing), extra, at, eol)| {
            let mut fields: Vec<Field> = host.into_iter().chain(framing).collect();
            // Extra fields anywhere, so that order-dependent readings differ.
            let at = at.index(fields.len() + 1);
            for (i, f) in extra.into_iter().enumerate() {
                fields.insert((at + i).min(fields.len()), f);
            }
            Message {
                start_line: format!("{method} {target} HTTP/1.{minor}").into_bytes(),
                fields,
                eol,
                body,
            }
        })
}

/// A generated response, the method of the request it answers, and an optional interim
/// response before it.
#[derive(Clone, Debug)]
struct GenResponse {
    method: Method,
    interim: &'static [u8],
    message: Message,
    /// Bytes the peer sends after the message (a late body, another response).
    after: &'static [u8],
}

impl GenResponse {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.interim.to_vec();
        out.extend_from_slice(&self.message.encode());
        out.extend_from_slice(self.after);
        out
    }
}

fn response() -> impl Strategy<Value = GenResponse> {
    (
        prop_oneof![4 => Just(Method::GET), 1 => Just(Method::HEAD)],
        prop_oneof![
            8 => Just(&b""[..]),
            1 => prop::sample::select(vec![
                &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n",
                b"HTTP/1.1 102 Processing\r\nTransfer-Encoding: chunked\r\n\r\n",
            ]),
        ],
        prop_oneof![5 => Just(1u8), 1 => Just(0u8)],
        prop_oneof![
            8 => Just("200 OK"),
            1 => prop::sample::select(vec![
                "204 No Content", "304 Not Modified", "101 Switching Protocols", "404 Not Found", "500 Oops",
                "099 Low", "000 Zero", "999 High", "199 Interim", "205 Reset Content",
            ]),
        ],
        framed_body(),
        extra_fields(),
        prop_oneof![15 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..])],
        prop_oneof![
            10 => Just(&b""[..]),
            1 => prop::sample::select(vec![&b"late"[..], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]),
        ],
    )
        .prop_map(
            |(method, interim, minor, status, (body, mut fields), extra, eol, after)| {
                fields.extend(extra);
                GenResponse {
                    method,
                    interim,
                    message: Message {
                        start_line: format!("HTTP/1.{minor} {status}").into_bytes(),
                        fields,
                        eol,
                        body,
                    },
                    after,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn requests_frame_as_hyper_frames_them(msg in request()) {
        let rt = runtime();
        let mut stream = msg.encode();
        stream.extend_from_slice(NEXT_REQUEST);
        compare_requests(&rt, &stream)?;
        compare_forwarded(&rt, &stream)?;
    }

    #[test]
    fn responses_frame_as_hyper_frames_them(resp in response()) {
        let rt = runtime();
        compare_response(&rt, &resp.encode(), &resp.method)?;
    }
}

// ---------------------------------------------------------------------------------------
// Fixed cases: one per deliberate strictness rule (each must still be one: we refuse, hyper
// accepts), and hostile messages every run meets.
// ---------------------------------------------------------------------------------------

/// Every request strictness rule, shown: we refuse for that reason and hyper serves it.
#[test]
fn each_request_strictness_is_real() {
    let rt = runtime();
    let long = long_size_line(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    let many_connections = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "Connection: keep-alive\r\n".repeat(MAX_CONNECTION_FIELDS + 1)
    );
    let cases: [(&[u8], Refusal); 9] = [
        (
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            Refusal::Request(RequestError::DuplicateHost),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
            Refusal::Request(RequestError::InvalidHost),
        ),
        (
            b"GET http://user@a.example/ HTTP/1.1\r\n\r\n",
            Refusal::Request(RequestError::InvalidHost),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: +1\r\n\r\n0\r\n\r\n",
            Refusal::Request(RequestError::InvalidContentLength),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
            Refusal::Request(RequestError::ConflictingContentLength),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            Refusal::Chunked("bare LF in trailer section"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;\x01\r\nx\r\n0\r\n\r\n",
            Refusal::Chunked("control character in chunk extension"),
        ),
        (&long, Refusal::Chunked("chunk size line too long")),
        (
            many_connections.as_bytes(),
            Refusal::Request(RequestError::InvalidConnection),
        ),
    ];
    for (msg, want) in cases {
        let mut stream = msg.to_vec();
        stream.extend_from_slice(NEXT_REQUEST);
        assert_eq!(our_request(&stream), OurRequest::Refused(want.clone()), "{}", show(msg));
        let theirs = rt.block_on(hyper_server(stream.clone()));
        assert_eq!(
            theirs.first().map(|s| s.status),
            Some(200),
            "hyper must serve {}",
            show(msg)
        );
        assert!(request_strictness(&want, &stream).is_some(), "{want:?} is not listed");
    }
}

/// A chunked message whose first chunk-size line is over 4 KiB of leading zeros.
fn long_size_line(head: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    out.resize(head.len() + 4100, b'0');
    out.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
    out
}

/// Every response strictness rule, shown: we refuse for that reason and hyper accepts it.
#[test]
fn each_response_strictness_is_real() {
    let rt = runtime();
    let get = Method::GET;
    let long = long_size_line(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    let cases: [(&[u8], Method, Refusal); 9] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            get.clone(),
            Refusal::Response(ResponseError::LengthAndTransferEncoding),
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabc",
            get.clone(),
            Refusal::Response(ResponseError::ConnectionNamesFraming),
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            get.clone(),
            Refusal::Response(ResponseError::UnsolicitedUpgrade),
        ),
        (
            b"HTTP/1.0 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            get.clone(),
            Refusal::Response(ResponseError::TransferEncodingInHttp10),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            Method::HEAD,
            Refusal::Response(ResponseError::InvalidContentLength),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1, 2\r\n\r\n0\r\n\r\n",
            get.clone(),
            Refusal::Response(ResponseError::ConflictingContentLength),
        ),
        (
            // hyper takes the LF as the start of a trailer line and the next response as
            // trailer text.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nHTTP/1.1 200 OK\r\n\r\n",
            get.clone(),
            Refusal::Chunked("bare LF in trailer section"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;\x7f\r\nx\r\n0\r\n\r\n",
            get.clone(),
            Refusal::Chunked("control character in chunk extension"),
        ),
        (&long, get.clone(), Refusal::Chunked("chunk size line too long")),
    ];
    for (raw, method, want) in cases {
        let answering = Answering {
            head: method == Method::HEAD,
            upgrade: false,
        };
        assert_eq!(
            our_response(raw, answering),
            OurResponse::Refused(want.clone()),
            "{}",
            show(raw)
        );
        let saw = rt.block_on(hyper_client(raw.to_vec(), method.clone(), true, false));
        assert!(saw.first.is_some(), "hyper must accept {}: {saw:?}", show(raw));
        assert!(
            response_strictness(&want, final_head(raw), answering).is_some(),
            "{want:?} is not listed"
        );
    }
}

/// The attacks of issue 13 and their neighbours, each run on every test run.
#[test]
fn hostile_requests() {
    let rt = runtime();
    let cases: [&[u8]; 14] = [
        // Connection may not remove the framing: the body is one request's bytes, not a request.
        b"POST http://svc/a HTTP/1.1\r\nConnection: content-length\r\nContent-Length: 30\r\n\r\nGET /b HTTP/1.1\r\nHost: svc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: host\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: svc\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        b"POST / HTTP/1.1\nHost: svc\nContent-Length: 2\n\nhi",
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-Fold: a\r\n b\r\n\r\n",
    ];
    for msg in cases {
        let mut stream = msg.to_vec();
        stream.extend_from_slice(NEXT_REQUEST);
        compare_requests(&rt, &stream).unwrap();
        compare_forwarded(&rt, &stream).unwrap();
    }
}

#[test]
fn hostile_responses() {
    let rt = runtime();
    let cases: [(&[u8], Method); 10] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            Method::GET,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", Method::GET),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", Method::GET),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 75\r\n\r\n", Method::HEAD),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx: y\nHTTP/1.1 200 OK\r\n\r\n",
            Method::GET,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil close",
            Method::GET,
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Method::GET,
        ),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi",
            Method::GET,
        ),
        (b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", Method::GET),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n",
            Method::GET,
        ),
    ];
    for (raw, method) in cases {
        compare_response(&rt, raw, &method).unwrap();
    }
}
