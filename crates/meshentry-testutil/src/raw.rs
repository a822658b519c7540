//! Raw HTTP/1.1 on both sides of a proxy, for tests that must see and choose every byte.
//!
//! - [`RawBackend`]: a scripted upstream. It records the exact bytes that arrive on each of its
//!   connections, parses them strictly into requests (finding each one's end by
//!   `Content-Length` or chunked framing), and answers each request with whatever bytes a
//!   closure of that request returns ([`Reply`]): one write or several, delays between them,
//!   then keep serving, close, or echo everything (after a `101`).
//! - [`RawClient`]: a client connection that reads responses with a strict parser
//!   ([`parse_response`]): status line, header fields, and a body delimited by
//!   `Content-Length`, chunked coding or the close. Anything ambiguous is an error, never a
//!   guess: bare LF or CR, obs-fold, whitespace before a colon, two `Content-Length` lines,
//!   `Content-Length` beside `Transfer-Encoding`, a length that is not plain digits, a
//!   `Connection` header naming a framing header, malformed chunks or trailers.
//!
//! The same strict rules parse requests on the backend ([`parse_request`]), so a test can assert
//! that the proxy sent exactly the requests it meant to, each framed once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::servers::{bind_tcp, lock};
use crate::tasks::TaskGuard;

/// Heads larger than this are refused by both parsers.
const MAX_HEAD: usize = 64 * 1024;

/// `bytes` as escaped ASCII (`\r\n` visible), cut to 4 KiB, for failure messages.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let mut s = String::new();
    for b in bytes.iter().take(MAX) {
        let _ = write!(s, "{}", std::ascii::escape_default(*b));
    }
    if bytes.len() > MAX {
        let _ = write!(s, "... ({} bytes in all)", bytes.len());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Strict parsing, shared by requests and responses

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a request without `Content-Length` or `Transfer-Encoding`, or a response to
    /// HEAD, a 1xx, 204 or 304.
    Empty,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response with neither: the body ends when the connection does.
    UntilClose,
}

/// A message head split into lines (the start line first), and its length in bytes.
type HeadLines<'a> = (Vec<&'a [u8]>, usize);

/// A body taken off the wire: the data (decoded), the trailer fields, and the bytes it took.
type TakenBody = (Vec<u8>, Vec<(String, String)>, usize);

/// The offset just past `\r\n` ending the line that starts `buf`; `Ok(None)` if it has not all
/// arrived. A LF without CR, or a CR without LF, is an error.
fn line_end(buf: &[u8]) -> Result<Option<usize>, String> {
    for (i, b) in buf.iter().enumerate() {
        match b {
            b'\n' => return Err(format!("bare LF in {:?}", show(&buf[..=i]))),
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(format!("bare CR in {:?}", show(&buf[..=i + 1]))),
                };
            }
            _ => {}
        }
    }
    Ok(None)
}

/// The lines of a message head (start line first) and the head's length including the empty
/// line; `Ok(None)` if the head is not complete yet.
fn head_lines(buf: &[u8]) -> Result<Option<HeadLines<'_>>, String> {
    let mut lines = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = line_end(&buf[at..])? else {
            if buf.len() > MAX_HEAD {
                return Err(format!("a head longer than {MAX_HEAD} bytes"));
            }
            return Ok(None);
        };
        let line = &buf[at..at + end];
        at += end + 2;
        if line.is_empty() {
            if lines.is_empty() {
                return Err("an empty line where the start line should be".into());
            }
            return Ok(Some((lines, at)));
        }
        lines.push(line);
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One header (or trailer) field line: `name: value`, the name a token right before the
/// colon, the value without surrounding whitespace and without control characters.
fn parse_field(line: &[u8]) -> Result<(String, String), String> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(format!("obs-fold (a continuation line): {:?}", show(line)));
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(|| format!("a field line without a colon: {:?}", show(line)))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(format!("a field name that is not a token: {:?}", show(line)));
    }
    let value = line[colon + 1..].trim_ascii();
    if value.iter().any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f) {
        return Err(format!("a control character in a field value: {:?}", show(line)));
    }
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

fn values<'a, 'n>(fields: &'a [(String, String)], name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    fields
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The comma-separated tokens of every `name` field, trimmed and lowercase.
fn tokens(fields: &[(String, String)], name: &str) -> Vec<String> {
    values(fields, name)
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

/// A `Content-Length` value: one or more digits and nothing else (no sign, no spaces, no list).
fn parse_length(v: &str) -> Result<u64, String> {
    if v.is_empty() || v.len() > 15 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("Content-Length {v:?} is not a plain decimal number"));
    }
    v.parse().map_err(|e| format!("Content-Length {v:?}: {e}"))
}

/// The framing the header fields declare (RFC 9112 6), refusing every ambiguous combination.
/// `absent` is what a message with neither header gets.
fn declared_framing(fields: &[(String, String)], absent: Framing) -> Result<Framing, String> {
    let lengths: Vec<&str> = values(fields, "content-length").collect();
    let codings = tokens(fields, "transfer-encoding");
    if values(fields, "transfer-encoding").next().is_some() {
        if !lengths.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".into());
        }
        if codings.iter().any(String::is_empty) {
            return Err(format!("an empty transfer coding in {codings:?}"));
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(format!("Transfer-Encoding {codings:?} does not end with chunked"));
        }
        if codings.iter().filter(|c| *c == "chunked").count() > 1 {
            return Err(format!("chunked applied twice: {codings:?}"));
        }
        return Ok(Framing::Chunked);
    }
    match lengths.as_slice() {
        [] => Ok(absent),
        [one] => parse_length(one).map(Framing::Length),
        many => Err(format!("{} Content-Length field lines: {many:?}", many.len())),
    }
}

/// `Connection` naming a field that frames or routes the message: the next hop that honours
/// it reads a different message than the one before it did.
fn framing_in_connection(fields: &[(String, String)]) -> Result<(), String> {
    let listed = tokens(fields, "connection");
    for t in ["content-length", "transfer-encoding", "host"] {
        if listed.iter().any(|l| l == t) {
            return Err(format!("Connection names {t}: {listed:?}"));
        }
    }
    Ok(())
}

/// A decoded chunked body at the start of `buf`: (data, trailer fields, bytes used), or
/// `Ok(None)` if it has not all arrived.
fn decode_chunked(buf: &[u8]) -> Result<Option<TakenBody>, String> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let Some(end) = line_end(&buf[at..])? else {
            return Ok(None);
        };
        let line = &buf[at..at + end];
        let size_text = match line.iter().position(|b| *b == b';') {
            // Whitespace is allowed before an extension (BWS), not inside the size.
            Some(semi) => line[..semi].trim_ascii_end(),
            None => line,
        };
        if size_text.is_empty() || size_text.len() > 15 || !size_text.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("bad chunk size line {:?}", show(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_text).unwrap_or("x"), 16)
            .map_err(|e| format!("chunk size {:?}: {e}", show(size_text)))?;
        at += end + 2;
        if size == 0 {
            break;
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[at..at + size]);
        at += size;
        if &buf[at..at + 2] != b"\r\n" {
            return Err(format!(
                "chunk data not followed by CRLF: {:?}",
                show(&buf[at..(at + 16).min(buf.len())])
            ));
        }
        at += 2;
    }
    let mut trailers = Vec::new();
    loop {
        let Some(end) = line_end(&buf[at..])? else {
            return Ok(None);
        };
        let line = &buf[at..at + end];
        at += end + 2;
        if line.is_empty() {
            return Ok(Some((data, trailers, at)));
        }
        trailers.push(parse_field(line)?);
    }
}

/// A body of `framing` at the start of `buf`: (data, trailers, bytes used), or `Ok(None)` if
/// incomplete. `eof`: the connection has closed, which completes an [`Framing::UntilClose`] body.
fn take_body(buf: &[u8], framing: Framing, eof: bool) -> Result<Option<TakenBody>, String> {
    match framing {
        Framing::Empty => Ok(Some((Vec::new(), Vec::new(), 0))),
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| format!("Content-Length {n} is too large"))?;
            Ok((buf.len() >= n).then(|| (buf[..n].to_vec(), Vec::new(), n)))
        }
        Framing::Chunked => decode_chunked(buf),
        Framing::UntilClose => Ok(eof.then(|| (buf.to_vec(), Vec::new(), buf.len()))),
    }
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    values(fields, name).next()
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One request as a [`RawBackend`] received it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The backend connection it came on (1-based, in accept order).
    pub conn: usize,
    /// Its place on that connection (1-based).
    pub seq: usize,
    pub method: String,
    /// The request target as received (origin form from a proxy that rewrote it).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Every header field line in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// How the body was delimited.
    pub framing: Framing,
    /// The body, decoded if it was chunked.
    pub body: Vec<u8>,
    /// The trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// The message exactly as it arrived, head and body.
    pub raw: Vec<u8>,
}

impl RawRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of header `name`, one per field line.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name).collect()
    }

    /// The first value of trailer field `name`.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        header(&self.trailers, name)
    }

    /// The test's label for the request: its `x-id` header, `-` without one.
    pub fn id(&self) -> &str {
        self.header("x-id").unwrap_or("-")
    }

    /// The path of the target, for origin and absolute form alike.
    pub fn path(&self) -> &str {
        let t = self.target.as_str();
        match t.find("://") {
            Some(i) => t[i + 3..].find('/').map_or("/", |p| &t[i + 3 + p..]),
            None => t,
        }
    }
}

/// Parses the request at the start of `buf`: the request (with `conn` and `seq` 0) and its
/// length in bytes, or `Ok(None)` if it has not all arrived.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RawRequest, usize)>, String> {
    let Some((lines, head_len)) = head_lines(buf)? else {
        return Ok(None);
    };
    let start = lines[0];
    let parts: Vec<&[u8]> = start.split(|b| *b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(format!("a request line that is not three parts: {:?}", show(start)));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(format!("a method that is not a token: {:?}", show(start)));
    }
    if target.is_empty() || target.iter().any(|b| *b <= b' ' || *b == 0x7f) {
        return Err(format!("a bad request target: {:?}", show(start)));
    }
    if *version != b"HTTP/1.1" && *version != b"HTTP/1.0" {
        return Err(format!("a request line without HTTP/1.x: {:?}", show(start)));
    }
    let headers = lines[1..]
        .iter()
        .map(|l| parse_field(l))
        .collect::<Result<Vec<_>, _>>()?;
    let framing = declared_framing(&headers, Framing::Empty)?;
    let Some((body, trailers, body_len)) = take_body(&buf[head_len..], framing, false)? else {
        return Ok(None);
    };
    let len = head_len + body_len;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let request = RawRequest {
        conn: 0,
        seq: 0,
        method: text(method),
        target: text(target),
        version: text(version),
        headers,
        framing,
        body,
        trailers,
        raw: buf[..len].to_vec(),
    };
    Ok(Some((request, len)))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// One response as a [`RawClient`] read it.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub reason: String,
    /// Every header field line in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// How the body was delimited.
    pub framing: Framing,
    /// The body, decoded if it was chunked.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The message exactly as it arrived.
    pub raw: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of header `name`, one per field line.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name).collect()
    }

    /// Whether the comma-separated list of every `name` field has `token` (case-insensitive),
    /// e.g. `has_token("connection", "close")`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        tokens(&self.headers, name)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses the response at the start of `buf` to a request with method `method` (a HEAD
/// response has no body): the response and its length, or `Ok(None)` if it has not all arrived.
/// `eof`: the connection has closed, which ends a body delimited by the close.
pub fn parse_response(buf: &[u8], method: &str, eof: bool) -> Result<Option<(RawResponse, usize)>, String> {
    let Some((mut response, head_len)) = parse_response_head(buf, method)? else {
        return Ok(None);
    };
    let Some((body, trailers, body_len)) = take_body(&buf[head_len..], response.framing, eof)? else {
        return Ok(None);
    };
    let len = head_len + body_len;
    response.body = body;
    response.trailers = trailers;
    response.raw = buf[..len].to_vec();
    Ok(Some((response, len)))
}

/// Parses the head of the response at the start of `buf` with the same rules as
/// [`parse_response`]: the response with its framing decided and no body (`raw` is the head),
/// and the head's length; `Ok(None)` if the head has not all arrived.
pub fn parse_response_head(buf: &[u8], method: &str) -> Result<Option<(RawResponse, usize)>, String> {
    let Some((lines, head_len)) = head_lines(buf)? else {
        return Ok(None);
    };
    let start = lines[0];
    let bad = || format!("a bad status line: {:?}", show(start));
    // status-line = HTTP-version SP status-code SP [ reason-phrase ]
    if start.len() < 13 || !start.starts_with(b"HTTP/1.") || start[8] != b' ' || start[12] != b' ' {
        return Err(bad());
    }
    if start[7] != b'1' && start[7] != b'0' {
        return Err(bad());
    }
    let code = &start[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status: u16 = std::str::from_utf8(code)
        .map_err(|_| bad())?
        .parse()
        .map_err(|_| bad())?;
    if !(100..600).contains(&status) {
        return Err(bad());
    }
    let reason = String::from_utf8_lossy(&start[13..]).into_owned();
    if reason.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad());
    }
    let headers = lines[1..]
        .iter()
        .map(|l| parse_field(l))
        .collect::<Result<Vec<_>, _>>()?;
    framing_in_connection(&headers)?;
    // RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    if start[7] == b'0' && values(&headers, "transfer-encoding").next().is_some() {
        return Err("an HTTP/1.0 response with Transfer-Encoding".into());
    }
    let declared = declared_framing(&headers, Framing::UntilClose)?;
    let informational = (100..200).contains(&status);
    if (informational || status == 204) && declared != Framing::UntilClose {
        return Err(format!(
            "a {status} response with a Content-Length or Transfer-Encoding"
        ));
    }
    // RFC 9110 9.3.6: a 2xx to CONNECT makes the connection a tunnel right after the head; a
    // proxy must not send framing fields with it (a client would have to ignore them).
    let tunnel = method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&status);
    if tunnel && declared != Framing::UntilClose {
        return Err(format!(
            "a {status} response to CONNECT with a Content-Length or Transfer-Encoding"
        ));
    }
    let framing = if method.eq_ignore_ascii_case("HEAD") || informational || tunnel || status == 204 || status == 304 {
        Framing::Empty
    } else {
        declared
    };
    let response = RawResponse {
        status,
        reason,
        headers,
        framing,
        body: Vec::new(),
        trailers: Vec::new(),
        raw: buf[..head_len].to_vec(),
    };
    Ok(Some((response, head_len)))
}

/// A client connection that writes raw bytes and reads responses strictly.
#[derive(Debug)]
pub struct RawClient<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    eof: bool,
}

impl RawClient<TcpStream> {
    /// Connects to `addr` (within 10 s).
    pub async fn connect(addr: SocketAddr) -> Result<RawClient<TcpStream>, String> {
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(RawClient::new(s)),
            Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
            Err(_) => Err(format!("connect to {addr}: timed out")),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    pub fn new(stream: S) -> RawClient<S> {
        RawClient {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes`.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).await.map_err(|e| format!("write: {e}"))
    }

    /// Bytes read and not yet taken by a response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether the peer has closed the connection (as far as reads went).
    pub fn closed(&self) -> bool {
        self.eof
    }

    /// Reads more within `deadline`; `Ok(false)` at end of stream (a reset counts as one).
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<bool, ()> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                Ok(false)
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
        }
    }

    /// Reads the next response to a `method` request within `within`, strictly. The error says
    /// what was wrong and shows every byte received for it.
    pub async fn read_response(&mut self, method: &str, within: Duration) -> Result<RawResponse, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match parse_response(&self.buf, method, self.eof) {
                Ok(Some((resp, len))) => {
                    self.buf.drain(..len);
                    return Ok(resp);
                }
                Ok(None) if self.eof => {
                    return Err(format!(
                        "the connection closed before a complete response; received {:?}",
                        show(&self.buf)
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("malformed response: {e}; received {:?}", show(&self.buf))),
            }
            if self.fill(deadline).await.is_err() {
                return Err(format!(
                    "no complete response within {within:?}; received {:?}",
                    show(&self.buf)
                ));
            }
        }
    }

    /// Reads the head of the next response to a `method` request within `within`, strictly,
    /// and leaves its body in the buffer: for a body that is streamed, stalls or is cut short.
    /// [`RawResponse::framing`] says how the body is delimited.
    pub async fn read_response_head(&mut self, method: &str, within: Duration) -> Result<RawResponse, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match parse_response_head(&self.buf, method) {
                Ok(Some((resp, len))) => {
                    self.buf.drain(..len);
                    return Ok(resp);
                }
                Ok(None) if self.eof => {
                    return Err(format!(
                        "the connection closed before a complete response head; received {:?}",
                        show(&self.buf)
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(format!("malformed response: {e}; received {:?}", show(&self.buf))),
            }
            if self.fill(deadline).await.is_err() {
                return Err(format!(
                    "no complete response head within {within:?}; received {:?}",
                    show(&self.buf)
                ));
            }
        }
    }

    /// Reads exactly `n` bytes (after whatever is buffered) within `within`.
    pub async fn read_exact(&mut self, n: usize, within: Duration) -> Result<Vec<u8>, String> {
        let deadline = tokio::time::Instant::now() + within;
        while self.buf.len() < n {
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => return Err(format!("closed after {:?}, wanted {n} bytes", show(&self.buf))),
                Err(()) => return Err(format!("{n} bytes not there within {within:?}: {:?}", show(&self.buf))),
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads until the peer closes or `within` passes, whichever is first: what arrived, and
    /// whether it closed.
    pub async fn read_for(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.eof {
            if self.fill(deadline).await.is_err() {
                break;
            }
        }
        (std::mem::take(&mut self.buf), self.eof)
    }

    /// The stream, e.g. to shut it down.
    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The stream and the bytes read but not taken by a response: after a `2xx` to CONNECT or
    /// a `101`, the start of the tunnel.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }
}

/// Sends `CONNECT target` to the proxy at `proxy` and reads the response strictly: the
/// response, and the client, whose [`RawClient::buffered`] bytes are the start of the tunnel
/// when the status is `2xx`.
pub async fn connect_request(
    proxy: SocketAddr,
    target: &str,
    within: Duration,
) -> Result<(RawResponse, RawClient<TcpStream>), String> {
    let mut c = RawClient::connect(proxy).await?;
    c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let r = c.read_response("CONNECT", within).await?;
    Ok((r, c))
}

/// A CONNECT tunnel through the proxy at `proxy` to `target`: the stream after a `200`, for a
/// client-first protocol (any byte that arrives with the head is an error).
pub async fn tunnel(proxy: SocketAddr, target: &str, within: Duration) -> Result<TcpStream, String> {
    let (r, c) = connect_request(proxy, target, within).await?;
    if r.status != 200 {
        return Err(format!("CONNECT {target}: {} {}: {}", r.status, r.reason, show(&r.raw)));
    }
    let (stream, early) = c.into_parts();
    if !early.is_empty() {
        return Err(format!(
            "CONNECT {target}: tunnel bytes before the client sent any: {:?}",
            show(&early)
        ));
    }
    Ok(stream)
}

/// Connects to `addr`, sends `request` (whose first word is the method) and reads one
/// response strictly, within `within` for each step.
pub async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> Result<RawResponse, String> {
    let method = request
        .split(|b| *b == b' ')
        .next()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .unwrap_or_default();
    let mut c = RawClient::connect(addr).await?;
    c.send(request).await?;
    c.read_response(&method, within).await
}

// ---------------------------------------------------------------------------------------------
// The scripted backend

#[derive(Debug, Clone)]
enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
}

/// What the connection does once a reply's steps are done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum After {
    /// Read and answer the next request.
    #[default]
    KeepAlive,
    /// Close the connection (after reading whatever the peer still sends, for the record).
    Close,
    /// Echo every byte that arrives from now on (a tunnel after `101`), bytes already
    /// buffered first.
    Echo,
}

/// A [`RawBackend`]'s answer to one request: writes and pauses in order, then [`After`].
#[derive(Debug, Clone, Default)]
pub struct Reply {
    steps: Vec<Step>,
    after: After,
}

impl Reply {
    /// Writes `bytes`, then serves the next request.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::silence().then_write(bytes)
    }

    /// Writes nothing and serves the next request.
    pub fn silence() -> Reply {
        Reply::default()
    }

    /// Then writes `bytes` (a separate write).
    pub fn then_write(mut self, bytes: impl Into<Vec<u8>>) -> Reply {
        self.steps.push(Step::Write(bytes.into()));
        self
    }

    /// Then waits `delay` (before the next write, or before reading the next request).
    pub fn then_sleep(mut self, delay: Duration) -> Reply {
        self.steps.push(Step::Sleep(delay));
        self
    }

    /// Then closes the connection.
    pub fn then_close(mut self) -> Reply {
        self.after = After::Close;
        self
    }

    /// Then echoes everything that arrives.
    pub fn then_echo(mut self) -> Reply {
        self.after = After::Echo;
        self
    }
}

/// A response with a `Content-Length` body (the length is added; `headers` must not have one).
pub fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (n, v) in headers {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body [`echo`] answers: `<method> <target> id=<x-id> len=<body length> conn=<n> seq=<n>`,
/// so a client can tell that a response is the answer to its own request.
pub fn echo_body(req: &RawRequest) -> String {
    format!(
        "{} {} id={} len={} conn={} seq={}",
        req.method,
        req.target,
        req.id(),
        req.body.len(),
        req.conn,
        req.seq
    )
}

/// `200` with [`echo_body`] (a HEAD gets the length and no body), then the next request.
pub fn echo(req: &RawRequest) -> Reply {
    let body = echo_body(req);
    if req.method == "HEAD" {
        let len = body.len().to_string();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: {len}\r\n\r\n");
        return Reply::bytes(head);
    }
    Reply::bytes(response(200, "OK", &[("content-type", "text/plain")], body.as_bytes()))
}

/// What happened on one backend connection.
#[derive(Debug, Clone, Default)]
pub struct RawConn {
    /// 1-based, in accept order.
    pub id: usize,
    /// Every byte that arrived, in order.
    pub received: Vec<u8>,
    /// Every byte the backend wrote.
    pub sent: Vec<u8>,
    /// Complete requests parsed.
    pub requests: usize,
    /// Replies whose steps have all run (including delayed writes).
    pub replies_done: usize,
    /// The peer closed or reset the connection.
    pub peer_closed: bool,
    /// The backend closed its end (a reply that ends with [`Reply::then_close`], or bytes
    /// that are no request).
    pub shut: bool,
    /// Bytes that did not parse as a request, and why; the backend stops answering then.
    pub error: Option<String>,
    /// The bytes of a request that has started arriving and is not complete (yet, or ever if
    /// the peer closed).
    pub unfinished: Vec<u8>,
}

#[derive(Default)]
struct State {
    conns: Vec<RawConn>,
    requests: Vec<RawRequest>,
}

type Respond = dyn Fn(&RawRequest) -> Reply + Send + Sync;

/// A scripted HTTP/1.1 upstream on raw sockets: records each connection's bytes and requests
/// and answers each request with the [`Reply`] a closure picks. Stops (listener and
/// connections) when dropped.
pub struct RawBackend {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _tasks: TaskGuard,
}

impl std::fmt::Debug for RawBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBackend")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RawBackend {
    /// Starts on `addr` (port 0 picks one), answering each request with `respond(request)`.
    pub fn start<F>(addr: SocketAddr, respond: F) -> RawBackend
    where
        F: Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    {
        let guard = TaskGuard::new("RawBackend");
        let tasks = guard.tasks().clone();
        let (listener, local) = bind_tcp(addr, "RawBackend", &tasks);
        let state = Arc::new(Mutex::new(State::default()));
        let respond: Arc<Respond> = Arc::new(respond);
        let (st, t) = (state.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = {
                    let mut st = lock(&st);
                    let id = st.conns.len() + 1;
                    st.conns.push(RawConn {
                        id,
                        ..RawConn::default()
                    });
                    id
                };
                t.spawn(serve(stream, id, st.clone(), respond.clone()));
            }
        });
        RawBackend {
            addr: local,
            state,
            _tasks: guard,
        }
    }

    /// Starts on `addr`, answering every request with [`echo`].
    pub fn echo(addr: SocketAddr) -> RawBackend {
        RawBackend::start(addr, echo)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every complete request, in arrival order (over all connections).
    pub fn requests(&self) -> Vec<RawRequest> {
        lock(&self.state).requests.clone()
    }

    /// Every connection so far, in accept order.
    pub fn connections(&self) -> Vec<RawConn> {
        lock(&self.state).conns.clone()
    }

    /// Connection `id` (1-based).
    pub fn connection(&self, id: usize) -> Option<RawConn> {
        lock(&self.state).conns.get(id.wrapping_sub(1)).cloned()
    }

    /// The framing errors, by connection.
    pub fn errors(&self) -> Vec<(usize, String)> {
        lock(&self.state)
            .conns
            .iter()
            .filter_map(|c| c.error.clone().map(|e| (c.id, e)))
            .collect()
    }

    /// Every connection's bytes in and out, for failure messages.
    pub fn describe(&self) -> String {
        let st = lock(&self.state);
        let mut s = format!("backend {} ({} connections)\n", self.addr, st.conns.len());
        for c in &st.conns {
            let _ = writeln!(
                s,
                "  conn {}: {} requests, peer closed: {}, backend closed: {}, error: {:?}, unfinished request: {:?}\n    received: {:?}\n    sent: {:?}",
                c.id,
                c.requests,
                c.peer_closed,
                c.shut,
                c.error,
                show(&c.unfinished),
                show(&c.received),
                show(&c.sent)
            );
        }
        s
    }
}

/// Serves one backend connection.
async fn serve(mut s: TcpStream, id: usize, state: Arc<Mutex<State>>, respond: Arc<Respond>) {
    let conn = |state: &Mutex<State>, f: &mut dyn FnMut(&mut RawConn)| {
        let mut st = lock(state);
        f(&mut st.conns[id - 1]);
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut seq = 0;
    loop {
        loop {
            match parse_request(&buf) {
                Ok(Some((mut req, len))) => {
                    seq += 1;
                    req.conn = id;
                    req.seq = seq;
                    buf.drain(..len);
                    {
                        let mut st = lock(&state);
                        st.conns[id - 1].requests += 1;
                        st.conns[id - 1].unfinished.clone_from(&buf);
                        st.requests.push(req.clone());
                    }
                    let reply = respond(&req);
                    for step in reply.steps {
                        match step {
                            Step::Write(bytes) => {
                                if s.write_all(&bytes).await.is_err() {
                                    conn(&state, &mut |c| c.peer_closed = true);
                                    return;
                                }
                                conn(&state, &mut |c| c.sent.extend_from_slice(&bytes));
                            }
                            Step::Sleep(d) => tokio::time::sleep(d).await,
                        }
                    }
                    conn(&state, &mut |c| c.replies_done += 1);
                    match reply.after {
                        After::KeepAlive => {}
                        After::Close => {
                            let _ = s.shutdown().await;
                            conn(&state, &mut |c| c.shut = true);
                            record_rest(s, id, &state).await;
                            return;
                        }
                        After::Echo => {
                            echo_rest(s, buf, id, &state).await;
                            return;
                        }
                    }
                }
                Ok(None) => {
                    conn(&state, &mut |c| c.unfinished.clone_from(&buf));
                    break;
                }
                Err(e) => {
                    conn(&state, &mut |c| {
                        c.error = Some(format!("{e}; unparsed: {:?}", show(&buf)))
                    });
                    let _ = s.shutdown().await;
                    conn(&state, &mut |c| c.shut = true);
                    record_rest(s, id, &state).await;
                    return;
                }
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                conn(&state, &mut |c| c.peer_closed = true);
                return;
            }
            Ok(n) => {
                conn(&state, &mut |c| c.received.extend_from_slice(&chunk[..n]));
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// Records what still arrives until the peer closes.
async fn record_rest(mut s: TcpStream, id: usize, state: &Mutex<State>) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                lock(state).conns[id - 1].peer_closed = true;
                return;
            }
            Ok(n) => lock(state).conns[id - 1].received.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Echoes `pending`, then everything that arrives, until the peer closes.
async fn echo_rest(mut s: TcpStream, pending: Vec<u8>, id: usize, state: &Mutex<State>) {
    if !pending.is_empty() {
        if s.write_all(&pending).await.is_err() {
            lock(state).conns[id - 1].peer_closed = true;
            return;
        }
        lock(state).conns[id - 1].sent.extend_from_slice(&pending);
    }
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                lock(state).conns[id - 1].received.extend_from_slice(&chunk[..n]);
                if s.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
                lock(state).conns[id - 1].sent.extend_from_slice(&chunk[..n]);
            }
        }
    }
    lock(state).conns[id - 1].peer_closed = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> Result<Option<(RawRequest, usize)>, String> {
        parse_request(bytes)
    }

    fn resp(bytes: &[u8], method: &str, eof: bool) -> Result<Option<(RawResponse, usize)>, String> {
        parse_response(bytes, method, eof)
    }

    #[test]
    fn requests_end_where_their_framing_says() {
        let two = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let (a, n) = req(two).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.target.as_str(), &a.body[..]),
            ("POST", "/a", &b"hello"[..])
        );
        let (b, m) = req(&two[n..]).unwrap().unwrap();
        assert_eq!((b.method.as_str(), b.path(), b.body.len()), ("GET", "/b", 0));
        assert_eq!(n + m, two.len());

        let chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n1\r\n!\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        let (c, n) = req(chunked).unwrap().unwrap();
        assert_eq!((&c.body[..], c.trailer("x-sum")), (&b"hello!"[..], Some("1")));
        assert_eq!(&chunked[n..], b"NEXT");
        assert_eq!(c.framing, Framing::Chunked);
        assert!(req(&chunked[..chunked.len() - 8]).unwrap().is_none(), "incomplete");
    }

    #[test]
    fn ambiguous_requests_are_errors() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 1 0\r\n\r\n0123456789",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx: y\n\r\n",
        ] {
            assert!(req(bad).is_err(), "accepted {:?}", show(bad));
        }
    }

    #[test]
    fn responses_are_read_strictly() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n";
        let (a, n) = resp(r, "GET", false).unwrap().unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"ok"[..]));
        let (b, _) = resp(&r[n..], "GET", false).unwrap().unwrap();
        assert_eq!((b.status, b.framing), (204, Framing::Empty));

        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 75\r\n\r\n";
        let (h, n) = resp(head, "HEAD", false).unwrap().unwrap();
        assert_eq!((h.status, h.body.len(), n), (200, 0, head.len()));

        let until_close = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        assert!(resp(until_close, "GET", false).unwrap().is_none());
        let (c, _) = resp(until_close, "GET", true).unwrap().unwrap();
        assert_eq!(c.body, b"all of it");

        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx: y\n\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 099 Early\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 600 Later\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert!(resp(bad, "GET", true).is_err(), "accepted {:?}", show(bad));
        }

        // A 2xx to CONNECT ends at its head: what follows is the tunnel, not a body.
        let tunnel = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01";
        let (t, n) = resp(tunnel, "CONNECT", false).unwrap().unwrap();
        assert_eq!(
            (t.status, t.framing, &tunnel[n..]),
            (200, Framing::Empty, &b"\x16\x03\x01"[..])
        );
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
        let (r, _) = resp(refused, "CONNECT", false).unwrap().unwrap();
        assert_eq!(r.body, b"no");
        let framed = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(resp(framed, "CONNECT", false).is_err(), "a 2xx to CONNECT with framing");
    }

    #[tokio::test]
    async fn the_backend_answers_and_records_each_connection() {
        let backend = RawBackend::start(SocketAddr::new(crate::unique_loopback().into(), 0), |r| {
            if r.path() == "/late" {
                Reply::bytes(response(200, "OK", &[], b"first"))
                    .then_sleep(Duration::from_millis(20))
                    .then_write("LATE")
            } else {
                echo(r)
            }
        });
        let mut c = RawClient::connect(backend.addr()).await.unwrap();
        c.send(b"GET /a HTTP/1.1\r\nHost: h\r\nx-id: one\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let a = c.read_response("GET", Duration::from_secs(5)).await.unwrap();
        assert_eq!(a.text(), "GET /a id=one len=0 conn=1 seq=1");
        let b = c.read_response("POST", Duration::from_secs(5)).await.unwrap();
        assert_eq!(b.text(), "POST /b id=- len=2 conn=1 seq=2");
        c.send(b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let late = c.read_response("GET", Duration::from_secs(5)).await.unwrap();
        assert_eq!(late.text(), "first");
        assert_eq!(c.read_exact(4, Duration::from_secs(5)).await.unwrap(), b"LATE");
        drop(c);
        crate::eventually(Duration::from_secs(5), || async {
            backend.connection(1).is_some_and(|c| c.peer_closed)
        })
        .await;
        let conn = backend.connection(1).unwrap();
        assert_eq!((conn.requests, conn.replies_done), (3, 3));
        assert!(conn.received.ends_with(b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(backend.errors().is_empty());
    }
}
