//! Reading the server name (SNI) and ALPN from the first bytes of a TLS connection, without
//! terminating TLS, so that passthrough traffic can be routed by name.
//!
//! The parser is pure: it is given whatever bytes have arrived so far and says whether they
//! hold a complete ClientHello, need more bytes, or are not TLS at all. It never reads past
//! the ClientHello, so the caller can replay the buffered bytes upstream unchanged. A
//! ClientHello may arrive split across many TCP segments and, rarely, fragmented across
//! several TLS records; both are handled.

use std::borrow::Cow;

/// A ClientHello larger than this is refused. Real ones are a few hundred bytes, up to ~2 KiB
/// with post-quantum key shares; the cap bounds what a client can make us buffer.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_HEARTBEAT: u8 = 24;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff<'a> {
    /// A complete ClientHello.
    Hello(ClientHello<'a>),
    /// Could be a ClientHello; more bytes are needed.
    Incomplete,
    /// Not TLS (the first bytes are not a TLS record header).
    NotTls,
    /// Starts like TLS but is malformed; the reason is for logs and refusals.
    Invalid(&'static str),
}

/// The parts of a ClientHello that routing uses.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct ClientHello<'a> {
    /// The `host_name` of the server_name extension, lower-cased; `None` when absent.
    pub server_name: Option<Cow<'a, str>>,
    /// Offered ALPN protocols, in the client's order.
    pub alpn: Vec<Cow<'a, [u8]>>,
    /// Bytes of `buf` up to the end of the ClientHello message (for a ClientHello split over
    /// several records, to the end of the last of them). Never more than `buf.len()`.
    pub consumed: usize,
}

/// Whether `first` could start a TLS record: a ChangeCipherSpec, alert, handshake,
/// application data or heartbeat record. Only a handshake (a ClientHello) may start a
/// connection; the others, followed by TLS's major version 3, are refused by [`sniff`].
pub fn starts_like_tls(first: u8) -> bool {
    (CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_HEARTBEAT).contains(&first)
}

/// Examines the start of a connection.
pub fn sniff(buf: &[u8]) -> Sniff<'_> {
    let Some(&first) = buf.first() else {
        return Sniff::Incomplete;
    };
    if first != CONTENT_HANDSHAKE {
        // RFC 8446 5: a client's ChangeCipherSpec may come only after its first ClientHello.
        // One first is not TLS starting; worse, a server that skips it would take the
        // ClientHello behind it, and its SNI, unseen by whoever routes or checks by SNI.
        if starts_like_tls(first) {
            return match buf.get(1) {
                None => Sniff::Incomplete,
                Some(3) => Sniff::Invalid("first TLS record is not a handshake"),
                Some(_) => Sniff::NotTls,
            };
        }
        return Sniff::NotTls;
    }
    if buf.len() >= 2 && buf[1] != 3 {
        return Sniff::NotTls;
    }
    if buf.len() < RECORD_HEADER {
        return Sniff::Incomplete;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record_len == 0 || record_len > 16384 + 2048 {
        return Sniff::Invalid("bad TLS record length");
    }
    // Fast path: the whole handshake message sits in the first record, as it nearly always
    // does; parse it in place.
    let rest = &buf[RECORD_HEADER..];
    let body = &rest[..rest.len().min(record_len)];
    if record_len >= 4 && body.len() >= 4 {
        if body[0] != HANDSHAKE_CLIENT_HELLO {
            return Sniff::Invalid("first handshake message is not a ClientHello");
        }
        let hs_len = u24(&body[1..4]);
        if hs_len + 4 > MAX_CLIENT_HELLO {
            return Sniff::Invalid("ClientHello too large");
        }
        if hs_len + 4 <= record_len {
            if body.len() < hs_len + 4 {
                return Sniff::Incomplete;
            }
            return match parse_hello(&body[4..4 + hs_len]) {
                Ok(mut hello) => {
                    // Not `RECORD_HEADER + record_len`: a record may declare bytes after the
                    // ClientHello that have not arrived yet.
                    hello.consumed = RECORD_HEADER + 4 + hs_len;
                    Sniff::Hello(hello)
                }
                Err(e) => Sniff::Invalid(e),
            };
        }
    }
    reassemble(buf)
}

/// The handshake message spans several records: gather its fragments.
fn reassemble(buf: &[u8]) -> Sniff<'static> {
    let mut msg: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        if buf.len() < at + RECORD_HEADER {
            return Sniff::Incomplete;
        }
        let header = &buf[at..at + RECORD_HEADER];
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
            return Sniff::Invalid("ClientHello interrupted by a non-handshake record");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Sniff::Invalid("bad TLS record length");
        }
        let Some(fragment) = buf.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            return Sniff::Incomplete;
        };
        msg.extend_from_slice(fragment);
        at += RECORD_HEADER + len;
        if msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Sniff::Invalid("first handshake message is not a ClientHello");
            }
            let hs_len = u24(&msg[1..4]);
            if hs_len + 4 > MAX_CLIENT_HELLO {
                return Sniff::Invalid("ClientHello too large");
            }
            if msg.len() >= hs_len + 4 {
                return match parse_hello(&msg[4..4 + hs_len]) {
                    Ok(hello) => Sniff::Hello(ClientHello {
                        server_name: hello.server_name.map(|s| Cow::Owned(s.into_owned())),
                        alpn: hello.alpn.into_iter().map(|a| Cow::Owned(a.into_owned())).collect(),
                        consumed: at,
                    }),
                    Err(e) => Sniff::Invalid(e),
                };
            }
        }
        if msg.len() > MAX_CLIENT_HELLO {
            return Sniff::Invalid("ClientHello too large");
        }
    }
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err(what);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, &'static str> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], &'static str> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
}

fn parse_hello(body: &[u8]) -> Result<ClientHello<'_>, &'static str> {
    let mut r = Reader { buf: body };
    let version = r.u16("truncated ClientHello version")?;
    if version >> 8 != 3 {
        return Err("unsupported ClientHello version");
    }
    r.take(32, "truncated ClientHello random")?;
    let session = r.vec8("truncated session id")?;
    if session.len() > 32 {
        return Err("session id too long");
    }
    let suites = r.vec16("truncated cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suite list");
    }
    let compression = r.vec8("truncated compression methods")?;
    if compression.is_empty() {
        return Err("no compression methods");
    }
    let mut hello = ClientHello::default();
    if r.buf.is_empty() {
        // Extensions are optional in a pre-TLS 1.2 ClientHello; then there is no SNI.
        return Ok(hello);
    }
    let mut exts = Reader {
        buf: r.vec16("truncated extensions")?,
    };
    if !r.buf.is_empty() {
        return Err("trailing bytes after extensions");
    }
    let mut seen_sni = false;
    while !exts.buf.is_empty() {
        let kind = exts.u16("truncated extension")?;
        let data = exts.vec16("truncated extension")?;
        match kind {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err("duplicate server_name extension");
                }
                seen_sni = true;
                hello.server_name = parse_server_name(data)?;
            }
            EXT_ALPN => {
                let mut list = Reader { buf: data };
                let mut protos = Reader {
                    buf: list.vec16("truncated ALPN list")?,
                };
                while !protos.buf.is_empty() {
                    let p = protos.vec8("truncated ALPN protocol")?;
                    if p.is_empty() {
                        return Err("empty ALPN protocol");
                    }
                    hello.alpn.push(Cow::Borrowed(p));
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_server_name(data: &[u8]) -> Result<Option<Cow<'_, str>>, &'static str> {
    if data.is_empty() {
        // A server's empty acknowledgement; a client should not send it, but it means "none".
        return Ok(None);
    }
    let mut r = Reader { buf: data };
    let mut list = Reader {
        buf: r.vec16("truncated server name list")?,
    };
    let mut name = None;
    while !list.buf.is_empty() {
        let kind = list.u8("truncated server name")?;
        let value = list.vec16("truncated server name")?;
        if kind == 0 && name.is_none() {
            name = Some(host_name(value)?);
        }
    }
    Ok(name)
}

/// RFC 6066: ASCII, no trailing dot. We accept what DNS names can hold and lower-case it so
/// routing lookups can be exact.
fn host_name(raw: &[u8]) -> Result<Cow<'_, str>, &'static str> {
    if raw.is_empty() || raw.len() > 253 {
        return Err("bad server name length");
    }
    if !raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
    {
        return Err("server name is not a host name");
    }
    let text = std::str::from_utf8(raw).map_err(|_| "server name is not a host name")?;
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(text.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(text))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello built field by field, so tests control every length.
    pub(crate) fn hello_bytes(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            let mut list = (entry.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&entry);
            exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        if !alpn.is_empty() {
            let mut protos = Vec::new();
            for p in alpn {
                protos.push(p.len() as u8);
                protos.extend_from_slice(p.as_bytes());
            }
            let mut list = (protos.len() as u16).to_be_bytes().to_vec();
            list.extend_from_slice(&protos);
            exts.extend_from_slice(&EXT_ALPN.to_be_bytes());
            exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
            exts.extend_from_slice(&list);
        }
        // An unknown extension, to check it is skipped.
        exts.extend_from_slice(&[0xff, 0x01, 0, 1, 0]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        records(&hs, usize::MAX)
    }

    /// Wraps a handshake message in records of at most `max` bytes each.
    pub(crate) fn records(hs: &[u8], max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in hs.chunks(max.min(16384)) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn name(s: Sniff<'_>) -> Option<String> {
        match s {
            Sniff::Hello(h) => h.server_name.map(|n| n.into_owned()),
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    #[test]
    fn reads_sni_and_alpn() {
        let bytes = hello_bytes(Some("api.dropboxapi.com"), &["h2", "http/1.1"]);
        match sniff(&bytes) {
            Sniff::Hello(h) => {
                assert_eq!(h.server_name.as_deref(), Some("api.dropboxapi.com"));
                assert_eq!(h.alpn, vec![Cow::Borrowed(&b"h2"[..]), Cow::Borrowed(&b"http/1.1"[..])]);
                assert_eq!(h.consumed, bytes.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_sni_is_not_an_error() {
        assert_eq!(name(sniff(&hello_bytes(None, &[]))), None);
    }

    #[test]
    fn upper_case_and_trailing_dot_are_normalised() {
        assert_eq!(
            name(sniff(&hello_bytes(Some("WWW.GoogleAPIs.com."), &[]))).as_deref(),
            Some("www.googleapis.com")
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let bytes = hello_bytes(Some("www.googleapis.com"), &["h2"]);
        for n in 0..bytes.len() {
            assert_eq!(sniff(&bytes[..n]), Sniff::Incomplete, "prefix of {n} bytes");
        }
        // Bytes after the hello (early data, the next record) are not the parser's business.
        let mut more = bytes.clone();
        more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
        assert_eq!(name(sniff(&more)).as_deref(), Some("www.googleapis.com"));
    }

    #[test]
    fn handshake_fragmented_across_records() {
        let one = hello_bytes(Some("api.facebook.com"), &["http/1.1"]);
        let hs = &one[RECORD_HEADER..];
        for max in [1, 3, 10, 64] {
            let many = records(hs, max);
            match sniff(&many) {
                Sniff::Hello(h) => {
                    assert_eq!(h.server_name.as_deref(), Some("api.facebook.com"), "max {max}");
                    assert_eq!(h.consumed, many.len());
                }
                other => panic!("max {max}: {other:?}"),
            }
            for n in 0..many.len() {
                assert_eq!(sniff(&many[..n]), Sniff::Incomplete, "max {max}, prefix {n}");
            }
        }
    }

    /// Found by the fuzzer: a record that declares more bytes than its ClientHello, with only
    /// the ClientHello received, must not claim more bytes than were given.
    #[test]
    fn consumed_never_exceeds_the_input() {
        let one = hello_bytes(Some("a.com"), &[]);
        let hs = &one[RECORD_HEADER..];
        let mut bytes = vec![CONTENT_HANDSHAKE, 3, 1];
        bytes.extend_from_slice(&((hs.len() + 100) as u16).to_be_bytes());
        bytes.extend_from_slice(hs);
        match sniff(&bytes) {
            Sniff::Hello(h) => {
                assert_eq!(h.server_name.as_deref(), Some("a.com"));
                assert_eq!(h.consumed, bytes.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_tls() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotTls);
        assert_eq!(sniff(b"\x16\x01"), Sniff::NotTls);
        assert_eq!(sniff(&[0x16, 3, 1, 0, 0]), Sniff::Invalid("bad TLS record length"));
        assert_eq!(sniff(b"\x14\x01"), Sniff::NotTls);
    }

    /// A ChangeCipherSpec (or any record but a handshake) first: refused, whatever follows,
    /// so the ClientHello behind it is never read for routing.
    #[test]
    fn a_record_before_the_client_hello_is_refused() {
        let hello = hello_bytes(Some("evil.example.com"), &[]);
        for first in [
            &[0x14, 3, 3, 0, 1, 1][..],
            &[0x15, 3, 3, 0, 2, 1, 0],
            &[0x17, 3, 3, 0, 1, 0],
            &[0x18, 3, 3, 0, 1, 0],
        ] {
            let mut bytes = first.to_vec();
            bytes.extend_from_slice(&hello);
            assert_eq!(
                sniff(&bytes),
                Sniff::Invalid("first TLS record is not a handshake"),
                "{first:?}"
            );
            assert_eq!(sniff(&bytes[..1]), Sniff::Incomplete, "{first:?}");
        }
    }

    #[test]
    fn malformed() {
        let mut bytes = hello_bytes(Some("a.com"), &[]);
        bytes[RECORD_HEADER] = 2; // ServerHello
        assert_eq!(
            sniff(&bytes),
            Sniff::Invalid("first handshake message is not a ClientHello")
        );

        // An extension whose length runs past the extension block.
        let mut bytes = hello_bytes(Some("a.com"), &[]);
        let n = bytes.len();
        bytes[n - 2] = 0x7f;
        assert_eq!(sniff(&bytes), Sniff::Invalid("truncated extension"));

        let bad = hello_bytes(Some("a b.com"), &[]);
        assert_eq!(sniff(&bad), Sniff::Invalid("server name is not a host name"));

        // A declared handshake length beyond the cap is refused without waiting for it.
        let huge = [
            CONTENT_HANDSHAKE,
            3,
            1,
            0x40,
            0x00,
            HANDSHAKE_CLIENT_HELLO,
            0x01,
            0x00,
            0x00,
        ];
        assert_eq!(sniff(&huge), Sniff::Invalid("ClientHello too large"));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
                let _ = sniff(&bytes);
            }

            #[test]
            fn handshake_prefixed_garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..600), len in 0u16..700) {
                let mut bytes = vec![CONTENT_HANDSHAKE, 3, 1];
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.push(HANDSHAKE_CLIENT_HELLO);
                bytes.extend_from_slice(&tail);
                let _ = sniff(&bytes);
            }

            #[test]
            fn any_fragmentation_reads_the_same_name(
                label in "[a-z0-9]{1,20}",
                max in 1usize..300,
                cut in any::<prop::sample::Index>(),
            ) {
                let host = format!("{label}.wikipedia.org");
                let one = hello_bytes(Some(&host), &["h2"]);
                let many = records(&one[RECORD_HEADER..], max);
                let got = match sniff(&many) {
                    Sniff::Hello(h) => h.server_name.map(|n| n.into_owned()),
                    other => panic!("{other:?}"),
                };
                prop_assert_eq!(got.as_deref(), Some(host.as_str()));
                let n = cut.index(many.len());
                prop_assert_eq!(sniff(&many[..n]), Sniff::Incomplete);
            }
        }
    }
}
