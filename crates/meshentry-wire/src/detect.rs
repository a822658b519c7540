//! What a client speaks, from its first bytes: a TLS ClientHello (and its SNI), an HTTP/1.x
//! request line, the HTTP/2 prior-knowledge preface, something else, or not enough bytes to
//! tell yet.
//!
//! Only the verdict on bytes already read lives here (pure, so it is fuzzed on plain bytes);
//! reading them, with a timeout, is the proxy's.

use crate::sni::{MAX_CLIENT_HELLO, Sniff, sniff, starts_like_tls};

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with (RFC 9113 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest request line taken for HTTP/1 detection; longer lines are not HTTP to us.
const MAX_REQUEST_LINE: usize = 16 * 1024;

/// What the first bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// A complete TLS ClientHello; `sni` lower-cased.
    Tls { sni: Option<String> },
    /// Starts like TLS but is not a valid ClientHello (including one cut short, and a record
    /// of another type first, such as a ChangeCipherSpec).
    BadTls(&'static str),
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    H2c,
    /// Bytes that are none of the above.
    Other,
    /// Nothing before the timeout, or the upstream spoke first: a server-first protocol.
    Nothing,
    /// The client closed (or failed) before sending anything.
    Closed,
}

impl Detected {
    /// For logs and counters.
    pub fn as_str(&self) -> &'static str {
        match self {
            Detected::Tls { .. } => "tls",
            Detected::BadTls(_) => "bad_tls",
            Detected::Http1 => "http1",
            Detected::H2c => "h2c",
            Detected::Other => "tcp",
            Detected::Nothing => "none",
            Detected::Closed => "closed",
        }
    }
}

/// The verdict when no more bytes will come (or we stop waiting for them).
pub fn give_up(buf: &[u8]) -> Detected {
    match buf.first() {
        None => Detected::Nothing,
        Some(0x16) if matches!(sniff(buf), Sniff::Incomplete) => Detected::BadTls("ClientHello cut short"),
        Some(_) => Detected::Other,
    }
}

/// What `buf` holds, or `None` when more bytes are needed to tell.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    let first = *buf.first()?;
    if starts_like_tls(first) {
        return match sniff(buf) {
            Sniff::Hello(h) => Some(Detected::Tls {
                sni: h.server_name.map(|s| s.into_owned()),
            }),
            Sniff::NotTls => Some(Detected::Other),
            Sniff::Invalid(reason) => Some(Detected::BadTls(reason)),
            Sniff::Incomplete if buf.len() > MAX_CLIENT_HELLO + 1024 => Some(Detected::BadTls("ClientHello too large")),
            Sniff::Incomplete => None,
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::H2c);
    }
    match request_line(buf) {
        Some(true) => Some(Detected::Http1),
        Some(false) => Some(Detected::Other),
        None => None,
    }
}

/// Whether `buf` starts with an HTTP/1.x request line (`token SP target SP HTTP/1.d CRLF`):
/// `None` while the bytes so far could still become one.
fn request_line(buf: &[u8]) -> Option<bool> {
    let method = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method == buf.len() {
        return if method <= 32 { None } else { Some(false) };
    }
    if method == 0 || method > 32 || buf[method] != b' ' {
        return Some(false);
    }
    let rest = &buf[method + 1..];
    let target = rest.iter().take_while(|b| b.is_ascii_graphic()).count();
    if target > MAX_REQUEST_LINE {
        return Some(false);
    }
    if target == rest.len() {
        return None;
    }
    if target == 0 || rest[target] != b' ' {
        return Some(false);
    }
    let version = &rest[target + 1..];
    const V: &[u8] = b"HTTP/1.";
    let n = version.len().min(V.len());
    if version[..n] != V[..n] {
        return Some(false);
    }
    match version.get(V.len()..) {
        None | Some([]) => None,
        Some([d, tail @ ..]) if d.is_ascii_digit() => match tail {
            [] | [b'\r'] => None,
            [b'\r', b'\n', ..] | [b'\n', ..] => Some(true),
            _ => Some(false),
        },
        Some(_) => Some(false),
    }
}

/// RFC 9110 5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x?y HTTP/1.0\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GET http://a.com/ HTTP/1.1\n"), Some(Detected::Http1));
        // Every prefix of a request line is undecided, so a line split across segments waits.
        let line = b"OPTIONS * HTTP/1.1\r\n";
        for i in 1..line.len() - 1 {
            assert_eq!(classify(&line[..i]), None, "{:?}", String::from_utf8_lossy(&line[..i]));
        }
    }

    #[test]
    fn things_that_are_not_http1() {
        // A Redis inline command looks like a method and a target but has no version.
        assert_eq!(classify(b"GET key\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"\x00\x00\x00\x01"), Some(Detected::Other));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Detected::Other));
        assert_eq!(classify(b"GET / HTTP/1.1x"), Some(Detected::Other));
        assert_eq!(classify(b" GET"), Some(Detected::Other));
        assert_eq!(classify(&[b'A'; 40]), Some(Detected::Other));
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn h2_preface() {
        assert_eq!(classify(H2_PREFACE), Some(Detected::H2c));
        for i in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..i]), None);
        }
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n\r\nXX"), Some(Detected::Other));
    }

    /// A ChangeCipherSpec before the ClientHello is malformed TLS, never TLS with the SNI of
    /// the hello behind it.
    #[test]
    fn a_change_cipher_spec_first_is_bad_tls() {
        let mut bytes = vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
        bytes.extend_from_slice(&crate::sni::tests::hello_bytes(Some("evil.example.com"), &[]));
        assert_eq!(
            classify(&bytes),
            Some(Detected::BadTls("first TLS record is not a handshake"))
        );
        assert_eq!(classify(&bytes[..1]), None, "one byte cannot tell yet");
        assert_eq!(give_up(&bytes[..1]), Detected::Other);
    }

    #[test]
    fn tls_needs_a_whole_hello() {
        assert_eq!(classify(&[0x16, 0x03, 0x01]), None);
        assert_eq!(give_up(&[0x16, 0x03, 0x01]), Detected::BadTls("ClientHello cut short"));
        assert_eq!(give_up(b"GET / HT"), Detected::Other);
        assert_eq!(give_up(b""), Detected::Nothing);
    }
}
