//! HTTP/1.1 framing: how long a message's body is, whether the connection can carry another
//! message, and which header fields never cross the proxy.
//!
//! The rules, and where they are stricter than the RFC's minimum:
//! - `Content-Length` is `1*DIGIT` (no sign, no inner spaces, not empty, no overflow); several
//!   fields, or a comma list in a response, must all say the same number (RFC 9110 8.6).
//! - `Transfer-Encoding` in an HTTP/1.0 message makes its framing faulty (RFC 9112 6.1);
//!   a request whose final coding is not `chunked` has no determinable length (400, RFC 9112
//!   6.3); beside `Content-Length` in a request, `Transfer-Encoding` wins (as hyper, which
//!   serves such requests, decides) while in a response the pair is refused (as Envoy does).
//! - One `Host` field at most, with a valid authority and no userinfo (RFC 9112 3.2, RFC 9110
//!   4.2.4).
//! - `Connection` may not name `Content-Length`, `Transfer-Encoding` or `Host`: in a request
//!   those tokens are ignored (as HAProxy does), so framing and destination cannot be removed
//!   by the client; in a response they are refused.
//! - A `101` answers only a request that asked to upgrade; a status below 100 is no status.
//!
//! Where hyper (the general path) reads the same fields, the decisions here match its own, so
//! that both paths agree on where a message ends and whether the connection goes on:
//! a request with both `Transfer-Encoding` and `Content-Length` closes the connection after
//! it (RFC 9112 6.3); any `close` token wins over `keep-alive`; a `Connection` or
//! `Transfer-Encoding` value that is not visible ASCII says nothing (hyper cannot read it as
//! text), and the final coding is the last list element even when it is empty (`chunked,`
//! is not chunked). `tests/differential.rs` holds both to this, and lists where we are
//! deliberately stricter than hyper.

/// A header field: its name and value as they arrived (the value may carry surrounding
/// whitespace; it is trimmed here).
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// Fields a `Connection` header may not remove: a client could otherwise make the proxy send
/// a body without its length, or a request without its destination.
const PROTECTED: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"host"];

/// Connection-specific fields (RFC 9110 7.6.1), plus the proxy authentication fields addressed
/// to this hop. `Trailer` is not one: it is end to end (RFC 9110 6.6.2).
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"transfer-encoding",
    b"upgrade",
];

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// No body (`Content-Length: 0` or neither framing field).
    Empty,
    Length(u64),
    Chunked,
}

/// What a request head says about its framing and its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub body: RequestBody,
    /// The client asked for the connection to close after this exchange.
    pub close: bool,
    /// The one `Host` field's value (trimmed), if there is one and it is not empty.
    pub host: Option<&'a [u8]>,
    /// `Connection` lists `upgrade` and an `Upgrade` field is present.
    pub upgrade: bool,
}

/// A request no server of ours may serve, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("Content-Length fields that disagree")]
    ConflictingContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    NotChunked,
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("invalid Host")]
    InvalidHost,
    #[error("too many Connection fields")]
    InvalidConnection,
}

impl RequestError {
    /// The status to refuse with; the connection closes after it, since where the refused
    /// message ends is not known (or not trusted).
    pub fn status(self) -> u16 {
        400
    }

    /// The one-line reason for the client.
    pub fn reason(self) -> &'static str {
        match self {
            RequestError::InvalidContentLength => "meshentry: invalid Content-Length",
            RequestError::ConflictingContentLength => "meshentry: Content-Length fields that disagree",
            RequestError::TransferEncodingInHttp10 => "meshentry: Transfer-Encoding in an HTTP/1.0 request",
            RequestError::NotChunked => "meshentry: Transfer-Encoding whose final coding is not chunked",
            RequestError::DuplicateHost => "meshentry: more than one Host header",
            RequestError::InvalidHost => "meshentry: invalid Host header",
            RequestError::InvalidConnection => "meshentry: too many Connection header fields",
        }
    }
}

/// Reads a request head's framing. `minor_version` is the `x` of `HTTP/1.x`.
pub fn request<'a, I>(minor_version: u8, fields: I) -> Result<Request<'a>, RequestError>
where
    I: IntoIterator<Item = Field<'a>>,
{
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut host: Option<&'a [u8]> = None;
    let mut hosts = 0u32;
    let mut connection = Persistence::default();
    let mut connection_upgrade = false;
    let mut upgrade_field = false;
    for (name, value) in fields {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(value).ok_or(RequestError::InvalidContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(RequestError::ConflictingContentLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if minor_version == 0 {
                return Err(RequestError::TransferEncodingInHttp10);
            }
            // Several fields make one list: the last coding is the last field's last.
            te = Some(final_coding_is_chunked(value));
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                return Err(RequestError::DuplicateHost);
            }
            if !value.is_empty() {
                if !valid_authority(value) {
                    return Err(RequestError::InvalidHost);
                }
                host = Some(value);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.read(value);
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_field = true;
        }
    }
    let body = match (te, length) {
        (Some(false), _) => return Err(RequestError::NotChunked),
        (Some(true), _) => RequestBody::Chunked,
        (None, Some(0) | None) => RequestBody::Empty,
        (None, Some(n)) => RequestBody::Length(n),
    };
    Ok(Request {
        body,
        // Both framing fields: whichever a peer believed, the next request's start is in
        // doubt, so none is read after this one (RFC 9112 6.3; hyper closes too).
        close: connection.close(minor_version) || (te.is_some() && length.is_some()),
        host,
        upgrade: connection_upgrade && upgrade_field,
    })
}

/// How a response's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// None, whatever the fields say (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes: neither field, or a final coding other than chunked.
    UntilClose,
}

/// What a response head says about its framing and its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub body: ResponseBody,
    /// The upstream connection cannot carry another exchange after this one.
    pub close: bool,
    /// A response that has no body announced one (`HEAD` answered with a non-zero length, or a
    /// transfer coding): a server that then sends it anyway would hand those bytes to the
    /// next request on the connection, so the connection is not reused.
    pub announced_body: bool,
}

/// An upstream response that cannot be relayed safely (Envoy's UPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("Content-Length values that disagree")]
    ConflictingContentLength,
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("Connection names a framing field")]
    ConnectionNamesFraming,
    #[error("101 Switching Protocols to a request that did not ask to upgrade")]
    UnsolicitedUpgrade,
    #[error("status code below 100")]
    InvalidStatus,
}

/// What the request that a response answers changes about its framing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answering {
    pub head: bool,
    /// The request asked to upgrade (so a `101` is expected).
    pub upgrade: bool,
}

/// Reads a final (non-1xx, or 101) response head's framing. Interim responses (100, 102-199)
/// are the caller's to skip before this.
pub fn response<'a, I>(
    status: u16,
    minor_version: u8,
    answering: Answering,
    fields: I,
) -> Result<Response, ResponseError>
where
    I: IntoIterator<Item = Field<'a>>,
{
    if !(100..=999).contains(&status) {
        return Err(ResponseError::InvalidStatus);
    }
    if status == 101 && !answering.upgrade {
        return Err(ResponseError::UnsolicitedUpgrade);
    }
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut connection = Persistence::default();
    for (name, value) in fields {
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            // A response may repeat its length as a list (hyper and browsers accept "5, 5").
            for item in value.split(|b| *b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or(ResponseError::InvalidContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(ResponseError::ConflictingContentLength);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if minor_version == 0 {
                return Err(ResponseError::TransferEncodingInHttp10);
            }
            te = Some(final_coding_is_chunked(value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if connection.read_single(value) {
                continue;
            }
            if tokens(value).any(|t| PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p))) {
                return Err(ResponseError::ConnectionNamesFraming);
            }
            connection.read(value);
        }
    }
    let close = connection.close(minor_version);
    if te.is_some() && length.is_some() {
        return Err(ResponseError::LengthAndTransferEncoding);
    }
    let bodiless = answering.head || status == 101 || status == 204 || status == 304 || status < 200;
    let announced_body = bodiless && status != 304 && (te.is_some() || length.is_some_and(|n| n > 0));
    let body = if bodiless {
        ResponseBody::None
    } else {
        match (te, length) {
            (Some(true), _) => ResponseBody::Chunked,
            (Some(false), _) | (None, None) => ResponseBody::UntilClose,
            (None, Some(0)) => ResponseBody::None,
            (None, Some(n)) => ResponseBody::Length(n),
        }
    };
    Ok(Response {
        body,
        close: close || body == ResponseBody::UntilClose || status == 101,
        announced_body,
    })
}

/// Whether a field named `name` stays on this hop: the connection-specific fields, and any
/// other that a `Connection` field lists, except the [`PROTECTED`] ones. `connection` is every
/// `Connection` field's value.
pub fn is_hop_by_hop<'a>(name: &[u8], connection: impl IntoIterator<Item = &'a [u8]>) -> bool {
    if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
        return true;
    }
    if PROTECTED.iter().any(|p| name.eq_ignore_ascii_case(p)) {
        return false;
    }
    connection
        .into_iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Whether `name` is one of the fields [`is_hop_by_hop`] removes whatever `Connection` says.
pub fn is_connection_specific(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a `Connection` field may name `token` as a field to remove.
pub fn may_be_nominated(token: &[u8]) -> bool {
    !PROTECTED.iter().any(|p| token.eq_ignore_ascii_case(p))
}

/// The comma-separated tokens of a list field, trimmed, empty elements skipped.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a list field holds `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The largest body length read: hyper keeps the two values above it for "chunked" and
/// "until close" and refuses them as lengths, so a length it refuses is refused here too.
pub const MAX_LENGTH: u64 = u64::MAX - 2;

/// `1*DIGIT` as a u64 up to [`MAX_LENGTH`]: no sign, no whitespace, no overflow.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (n <= MAX_LENGTH).then_some(n)
}

/// What the `Connection` fields of a message say about the connection after it.
#[derive(Default)]
struct Persistence {
    close: bool,
    keep_alive: bool,
}

impl Persistence {
    /// The value most messages carry, a single `keep-alive` or `close`, read without
    /// splitting it into a list; `false` when it is anything else.
    fn read_single(&mut self, value: &[u8]) -> bool {
        if value.eq_ignore_ascii_case(b"keep-alive") {
            self.keep_alive = true;
        } else if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
        } else {
            return false;
        }
        true
    }

    fn read(&mut self, value: &[u8]) {
        if self.read_single(value) {
            return;
        }
        // A value that is not text says nothing: hyper reads none of its tokens either, and
        // the two paths must agree on whether the connection goes on.
        if !is_visible_ascii(value) {
            return;
        }
        for token in tokens(value) {
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// `close` anywhere wins, whatever its order with `keep-alive`; HTTP/1.0 closes unless
    /// asked not to (RFC 9112 9.3).
    fn close(&self, minor_version: u8) -> bool {
        self.close || (minor_version == 0 && !self.keep_alive)
    }
}

/// Field-value text as `http::HeaderValue::to_str` accepts it: visible ASCII, SP and HTAB.
fn is_visible_ascii(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked` (case ignored; RFC 9112 7
/// allows chunked no parameters). The last list element counts even when empty, and a value
/// that is not text has no coding hyper could read: either way, not chunked.
fn final_coding_is_chunked(value: &[u8]) -> bool {
    is_visible_ascii(value)
        && value
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// `host [ ":" port ]` as RFC 9110 4.2.3 and RFC 3986 3.2 allow it in `Host` or an
/// absolute-form target: a reg-name (unreserved, percent-encoded or sub-delims), an IPv4
/// address or a bracketed IP literal, and an optional port of digits. No userinfo (`@`), no
/// path, no whitespace.
/// The bytes a reg-name may hold: unreserved, `%` of percent-encoding, and sub-delims.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

pub fn valid_authority(authority: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        let after = &rest[end + 1..];
        match after {
            [] => return true,
            [b':', port @ ..] => (&b""[..], port),
            _ => return false,
        }
    } else {
        match authority.iter().rposition(|b| *b == b':') {
            Some(i) => (&authority[..i], &authority[i + 1..]),
            None => (authority, &b""[..]),
        }
    };
    // A table lookup per byte: this runs on every request's Host.
    let host_ok = host.iter().all(|&b| REG_NAME[usize::from(b)]);
    let port_ok = port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
    // An empty host is only possible with a bracketed literal, checked above.
    host_ok && port_ok && (!host.is_empty() || authority.starts_with(b"["))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(minor: u8, fields: &[(&str, &str)]) -> Result<Request<'static>, RequestError> {
        let owned: Vec<(&'static [u8], &'static [u8])> = fields
            .iter()
            .map(|(n, v)| {
                let n: &'static str = Box::leak(n.to_string().into_boxed_str());
                let v: &'static str = Box::leak(v.to_string().into_boxed_str());
                (n.as_bytes(), v.as_bytes())
            })
            .collect();
        request(minor, owned)
    }

    fn resp(status: u16, minor: u8, answering: Answering, fields: &[(&str, &str)]) -> Result<Response, ResponseError> {
        response(
            status,
            minor,
            answering,
            fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        )
    }

    #[test]
    fn request_lengths() {
        assert_eq!(req(1, &[]).unwrap().body, RequestBody::Empty);
        assert_eq!(req(1, &[("Content-Length", "0")]).unwrap().body, RequestBody::Empty);
        assert_eq!(
            req(1, &[("content-length", " 12 ")]).unwrap().body,
            RequestBody::Length(12)
        );
        assert_eq!(
            req(1, &[("content-length", "5"), ("Content-Length", "5")])
                .unwrap()
                .body,
            RequestBody::Length(5)
        );
        for bad in ["+5", "-5", "1 0", "", "5,5", "0x5", "18446744073709551616", "5;"] {
            assert_eq!(
                req(1, &[("content-length", bad)]),
                Err(RequestError::InvalidContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            req(1, &[("content-length", "5"), ("content-length", "6")]),
            Err(RequestError::ConflictingContentLength)
        );
    }

    #[test]
    fn request_transfer_encoding() {
        assert_eq!(
            req(1, &[("transfer-encoding", "chunked")]).unwrap().body,
            RequestBody::Chunked
        );
        assert_eq!(
            req(1, &[("transfer-encoding", "gzip, Chunked")]).unwrap().body,
            RequestBody::Chunked
        );
        // Transfer-Encoding wins over Content-Length, as in hyper, which serves these.
        assert_eq!(
            req(1, &[("content-length", "3"), ("transfer-encoding", "chunked")])
                .unwrap()
                .body,
            RequestBody::Chunked
        );
        assert_eq!(
            req(1, &[("transfer-encoding", "chunked, gzip")]),
            Err(RequestError::NotChunked)
        );
        assert_eq!(req(1, &[("transfer-encoding", "")]), Err(RequestError::NotChunked));
        assert_eq!(
            req(0, &[("transfer-encoding", "chunked")]),
            Err(RequestError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn request_host() {
        assert_eq!(
            req(1, &[("host", "a.example:8080")]).unwrap().host,
            Some(&b"a.example:8080"[..])
        );
        assert_eq!(req(1, &[("host", "[::1]:80")]).unwrap().host, Some(&b"[::1]:80"[..]));
        assert_eq!(req(1, &[("host", "")]).unwrap().host, None);
        assert_eq!(
            req(1, &[("host", "a.example"), ("host", "a.example")]),
            Err(RequestError::DuplicateHost)
        );
        for bad in [
            "user@a.example",
            "a.example/x",
            "a b",
            "a.example:80x",
            "[::1",
            "[zz]",
            ":80",
            "a:123456",
        ] {
            assert_eq!(req(1, &[("host", bad)]), Err(RequestError::InvalidHost), "{bad:?}");
        }
    }

    #[test]
    fn request_connection() {
        assert!(!req(1, &[]).unwrap().close);
        assert!(req(1, &[("connection", "Keep-Alive, close")]).unwrap().close);
        assert!(req(0, &[]).unwrap().close);
        assert!(!req(0, &[("connection", "keep-alive")]).unwrap().close);
        assert!(
            req(1, &[("connection", "upgrade"), ("upgrade", "websocket")])
                .unwrap()
                .upgrade
        );
        assert!(!req(1, &[("upgrade", "websocket")]).unwrap().upgrade);
    }

    #[test]
    fn connection_never_removes_framing_or_host() {
        let conn: [&[u8]; 1] = [b"Content-Length, transfer-encoding, HOST, x-trace"];
        assert!(!is_hop_by_hop(b"content-length", conn));
        assert!(
            is_hop_by_hop(b"transfer-encoding", conn),
            "connection-specific on its own"
        );
        assert!(!is_hop_by_hop(b"Host", conn));
        assert!(is_hop_by_hop(b"X-Trace", conn));
        assert!(!is_hop_by_hop(b"trailer", conn), "Trailer is end to end");
        assert!(is_hop_by_hop(b"keep-alive", []));
        assert!(!is_hop_by_hop(b"x-kept", [&b"close"[..]]));
    }

    #[test]
    fn response_framing() {
        let get = Answering::default();
        let head = Answering {
            head: true,
            upgrade: false,
        };
        let r = resp(200, 1, get, &[("content-length", "5")]).unwrap();
        assert_eq!(
            (r.body, r.close, r.announced_body),
            (ResponseBody::Length(5), false, false)
        );
        assert_eq!(
            resp(200, 1, get, &[("content-length", "5, 5")]).unwrap().body,
            ResponseBody::Length(5)
        );
        assert_eq!(
            resp(200, 1, get, &[("transfer-encoding", "chunked")]).unwrap().body,
            ResponseBody::Chunked
        );
        let r = resp(200, 1, get, &[("transfer-encoding", "gzip")]).unwrap();
        assert_eq!((r.body, r.close), (ResponseBody::UntilClose, true));
        let r = resp(200, 1, get, &[]).unwrap();
        assert_eq!((r.body, r.close), (ResponseBody::UntilClose, true));
        assert!(resp(200, 0, get, &[("content-length", "1")]).unwrap().close);
        assert!(
            !resp(200, 0, get, &[("content-length", "1"), ("connection", "keep-alive")])
                .unwrap()
                .close
        );
        let r = resp(200, 1, head, &[("content-length", "75")]).unwrap();
        assert_eq!((r.body, r.announced_body), (ResponseBody::None, true));
        assert!(!resp(200, 1, head, &[("content-length", "0")]).unwrap().announced_body);
        assert!(!resp(304, 1, get, &[("content-length", "75")]).unwrap().announced_body);
        assert_eq!(resp(204, 1, get, &[]).unwrap().body, ResponseBody::None);
    }

    #[test]
    fn hostile_responses_are_refused() {
        let get = Answering::default();
        let cases: [(&[(&str, &str)], ResponseError); 8] = [
            (
                &[("content-length", "5"), ("content-length", "6")],
                ResponseError::ConflictingContentLength,
            ),
            (&[("content-length", "5, 6")], ResponseError::ConflictingContentLength),
            (&[("content-length", "+5")], ResponseError::InvalidContentLength),
            (&[("content-length", "1 0")], ResponseError::InvalidContentLength),
            (&[("content-length", "")], ResponseError::InvalidContentLength),
            (
                &[("content-length", "3"), ("transfer-encoding", "chunked")],
                ResponseError::LengthAndTransferEncoding,
            ),
            (
                &[("connection", "content-length"), ("content-length", "3")],
                ResponseError::ConnectionNamesFraming,
            ),
            (
                &[("Connection", "close, Transfer-Encoding")],
                ResponseError::ConnectionNamesFraming,
            ),
        ];
        for (fields, want) in cases {
            assert_eq!(resp(200, 1, get, fields), Err(want), "{fields:?}");
        }
        assert_eq!(
            resp(200, 0, get, &[("transfer-encoding", "chunked")]),
            Err(ResponseError::TransferEncodingInHttp10)
        );
        assert_eq!(
            resp(101, 1, get, &[("upgrade", "websocket")]),
            Err(ResponseError::UnsolicitedUpgrade)
        );
        let upgrade = Answering {
            head: false,
            upgrade: true,
        };
        let r = resp(101, 1, upgrade, &[("upgrade", "websocket")]).unwrap();
        assert_eq!((r.body, r.close), (ResponseBody::None, true));
    }

    // Found by tests/differential.rs: hyper serves a request with both framing fields but
    // closes the connection after it, so a pipelined request behind it is not read by hyper
    // while we would have read it.
    #[test]
    fn both_framing_fields_close_the_connection() {
        let r = req(1, &[("content-length", "3"), ("transfer-encoding", "chunked")]).unwrap();
        assert_eq!((r.body, r.close), (RequestBody::Chunked, true));
        let r = req(1, &[("transfer-encoding", "chunked"), ("content-length", "3")]).unwrap();
        assert_eq!((r.body, r.close), (RequestBody::Chunked, true));
        assert!(!req(1, &[("transfer-encoding", "chunked")]).unwrap().close);
    }

    // Found by tests/differential.rs: `close` then `keep-alive` left an HTTP/1.0 connection
    // open here and closed in hyper.
    #[test]
    fn close_wins_over_keep_alive_in_any_order() {
        for fields in [
            &[("connection", "close, keep-alive")][..],
            &[("connection", "keep-alive, close")],
            &[("connection", "close"), ("connection", "keep-alive")],
            &[("connection", "keep-alive"), ("connection", "close")],
        ] {
            assert!(req(0, fields).unwrap().close, "{fields:?}");
            assert!(req(1, fields).unwrap().close, "{fields:?}");
            assert!(resp(200, 0, Answering::default(), fields).unwrap().close, "{fields:?}");
        }
    }

    // Found by tests/differential.rs: hyper reads a field value as text or not at all, so a
    // `close` beside obs-text closes nothing there; the two paths must agree.
    #[test]
    fn a_connection_value_that_is_not_text_says_nothing() {
        let fields: [(&[u8], &[u8]); 1] = [(b"connection", b"\x80, close")];
        assert!(!request(1, fields).unwrap().close);
        assert!(request(0, fields).unwrap().close, "HTTP/1.0 closes by default");
        let fields: [(&[u8], &[u8]); 1] = [(b"connection", b"keep-alive, \xff")];
        assert!(request(0, fields).unwrap().close);
    }

    // Found by tests/differential.rs: the last list element is the final coding even when it
    // is empty, and a value that is not text has no coding (hyper refuses both requests; we
    // read them as chunked).
    #[test]
    fn the_final_coding_is_the_last_element_of_readable_text() {
        for bad in ["chunked,", "chunked, ", "chunked ,", "\u{80}chunked"] {
            assert_eq!(
                req(1, &[("transfer-encoding", bad)]),
                Err(RequestError::NotChunked),
                "{bad:?}"
            );
            assert_eq!(
                resp(200, 1, Answering::default(), &[("transfer-encoding", bad)])
                    .unwrap()
                    .body,
                ResponseBody::UntilClose,
                "{bad:?}"
            );
        }
        let fields: [(&[u8], &[u8]); 1] = [(b"transfer-encoding", b"gzip\x80, chunked")];
        assert_eq!(request(1, fields), Err(RequestError::NotChunked));
        assert_eq!(
            req(1, &[("transfer-encoding", ",chunked")]).unwrap().body,
            RequestBody::Chunked
        );
    }

    // Found by tests/differential.rs: httparse reads any three digits, so `099` reached the
    // framing rules as a bodiless 1xx; hyper refuses it.
    #[test]
    fn a_status_below_100_is_refused() {
        for status in [0, 99] {
            assert_eq!(
                resp(status, 1, Answering::default(), &[("content-length", "0")]),
                Err(ResponseError::InvalidStatus)
            );
        }
        assert!(resp(999, 1, Answering::default(), &[("content-length", "0")]).is_ok());
    }

    #[test]
    fn lengths() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"007"), Some(7));
        assert_eq!(parse_length(b"18446744073709551613"), Some(u64::MAX - 2));
        // Found by tests/differential.rs: hyper refuses the two largest values (it keeps them
        // for its own markers) even beside Transfer-Encoding, where we read the request.
        assert_eq!(parse_length(b"18446744073709551614"), None);
        assert_eq!(parse_length(b"18446744073709551615"), None);
        assert_eq!(parse_length(b"18446744073709551616"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b" 1"), None);
    }
}
