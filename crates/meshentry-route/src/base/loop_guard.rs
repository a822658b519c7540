//! Refusing requests that would come back to this proxy (issue 13, item 4).
//!
//! Two independent guards, because neither is enough alone:
//! - [`SelfAddrs`]: whether an address reaches one of the proxy's own listeners. Comparing IPs
//!   exactly is not enough: `0.0.0.0:<port>` and `[::ffff:127.0.0.1]:<port>` reach a listener on
//!   `127.0.0.1:<port>`, and any address of the host reaches a listener on `0.0.0.0`. Checked on
//!   the request's target and again on every address actually dialled (after DNS, for every
//!   endpoint of a cluster), so a name that resolves to the proxy is caught too.
//! - [`Via`]: a hop marker (RFC 9110 7.6.3) with a per-process random token, added to every
//!   request sent upstream. A request that carries it again has gone round a loop, whatever
//!   addresses, names or other proxies it went through on the way.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue, Version};

/// The IP an address really is: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 address (a
/// dual-stack socket connecting to it makes an IPv4 connection).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `addr` with [`canonical_ip`].
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// Whether `ip` is an address of this host: loopback, or one a socket can be bound to (the
/// kernel only allows binding local addresses). Costs a few system calls, so it is only asked
/// when the port is one a proxy listener has on the unspecified address.
pub fn is_local_ip(ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The addresses of every listener of the proxy (explicit proxy, transparent, gateway ports,
/// admin), stored canonical.
#[derive(Clone, Debug, Default)]
pub struct SelfAddrs {
    addrs: Vec<SocketAddr>,
}

impl SelfAddrs {
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut addrs: Vec<SocketAddr> = addrs.into_iter().map(canonical).collect();
        addrs.sort_unstable();
        addrs.dedup();
        Self { addrs }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// One bit per listener port (`port % 64`): a request whose port's bit is clear is not for
    /// the proxy, which one relaxed load of [`PortFilter`] tells without looking further.
    pub fn port_bits(&self) -> u64 {
        self.addrs.iter().fold(0, |bits, a| bits | port_bit(a.port()))
    }

    /// Whether some listener has `port`: the cheap test everything else waits for.
    pub fn has_port(&self, port: u16) -> bool {
        self.addrs.iter().any(|a| a.port() == port)
    }

    /// Whether a connection to `dst` would reach one of the listeners: the same address
    /// (IPv4-mapped forms included), the unspecified address (Linux delivers a connection to
    /// `0.0.0.0` or `::` locally; nothing legitimate is ever proxied there), or any local
    /// address when the listener is bound to the unspecified address. An address of another
    /// interface or another loopback address is not the proxy when the listener is bound to a
    /// specific IP: tests and hosts run many services on the same port of different addresses.
    pub fn contains(&self, dst: SocketAddr) -> bool {
        let port = dst.port();
        if !self.has_port(port) {
            return false;
        }
        let ip = canonical_ip(dst.ip());
        let mut local = None;
        self.addrs.iter().filter(|a| a.port() == port).any(|a| {
            ip.is_unspecified()
                || a.ip() == ip
                || (a.ip().is_unspecified() && *local.get_or_insert_with(|| is_local_ip(ip)))
        })
    }

    /// Whether `host:port`, as a request names it, is one of the listeners: an IP literal as
    /// [`SelfAddrs::contains`] says, or a `localhost` name (RFC 6761: always loopback) on a
    /// listener's port. Other names are checked once resolved, when they are dialled.
    pub fn contains_host(&self, host: &str, port: u16) -> bool {
        if !self.has_port(port) {
            return false;
        }
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.contains(SocketAddr::new(ip, port)),
            Err(_) => is_localhost_name(host),
        }
    }
}

fn port_bit(port: u16) -> u64 {
    1 << (port % 64)
}

/// [`SelfAddrs::port_bits`] where every request can read it for the price of one relaxed load:
/// most requests go to ports no listener has (80, 443, 8080 and the proxy's 15000, 15001, 15080
/// all have bits of their own), and they never touch the address list.
#[derive(Debug, Default)]
pub struct PortFilter(AtomicU64);

impl PortFilter {
    pub fn new(addrs: &SelfAddrs) -> Self {
        Self(AtomicU64::new(addrs.port_bits()))
    }

    pub fn set(&self, addrs: &SelfAddrs) {
        self.0.store(addrs.port_bits(), Ordering::Relaxed);
    }

    /// Whether `port` may be a listener's (false: certainly not).
    pub fn may_have(&self, port: u16) -> bool {
        self.0.load(Ordering::Relaxed) & port_bit(port) != 0
    }
}

/// `localhost`, `localhost.` and names under it (RFC 6761 6.3).
fn is_localhost_name(host: &str) -> bool {
    const NAME: &[u8] = b"localhost";
    let b = host.strip_suffix('.').unwrap_or(host).as_bytes();
    let Some(at) = b.len().checked_sub(NAME.len()) else {
        return false;
    };
    b[at..].eq_ignore_ascii_case(NAME) && (at == 0 || b[at - 1] == b'.')
}

/// This process's `Via` marker: `1.1 meshentry-<16 hex digits>` (the received-by element is a
/// pseudonym, RFC 9110 7.6.3, random per process so that two proxies in a chain never share it).
#[derive(Debug)]
pub struct Via {
    /// `meshentry-<hex>`: what a request that went round a loop carries.
    token: String,
    /// The value to add, per protocol the request was received with (1.0, 1.1, 2).
    values: [HeaderValue; 3],
    /// `via: 1.1 meshentry-<hex>\r\n`, for writers of raw HTTP/1.1 heads.
    line: Vec<u8>,
}

impl Via {
    /// A fresh random token.
    pub fn random() -> Self {
        Self::with_token(&format!("meshentry-{:016x}", fastrand::u64(..)))
    }

    fn with_token(token: &str) -> Self {
        let value = |proto: &str| {
            HeaderValue::from_str(&format!("{proto} {token}")).unwrap_or(HeaderValue::from_static("1.1 meshentry"))
        };
        Self {
            token: token.to_string(),
            values: [value("1.0"), value("1.1"), value("2")],
            line: format!("via: 1.1 {token}\r\n").into_bytes(),
        }
    }

    /// The token (`meshentry-<hex>`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The value to append to a request received as `version`.
    pub fn value(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_09 | Version::HTTP_10 => &self.values[0],
            Version::HTTP_2 | Version::HTTP_3 => &self.values[2],
            _ => &self.values[1],
        }
    }

    /// A complete header line (`via: 1.1 meshentry-<hex>\r\n`) to write into an HTTP/1.1
    /// request head.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// Whether one `Via` field value (possibly a comma-separated list) names this process.
    /// Exact bytes: the proxy writes the token itself, and intermediaries copy it.
    pub fn is_in(&self, value: &[u8]) -> bool {
        let token = self.token.as_bytes();
        if value.len() < token.len() {
            return false;
        }
        (0..=value.len() - token.len()).any(|i| {
            value[i] == token[0]
                && &value[i..i + token.len()] == token
                && (i == 0 || !is_token_char(value[i - 1]))
                && value.get(i + token.len()).is_none_or(|b| !is_token_char(*b))
        })
    }

    /// Whether any `Via` header of `headers` names this process.
    pub fn is_in_headers(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(http::header::VIA)
            .iter()
            .any(|v| self.is_in(v.as_bytes()))
    }

    /// Appends this process's marker for a request received as `version` (after any the
    /// client sent, which stay: each hop adds its own).
    pub fn append(&self, headers: &mut HeaderMap, version: Version) {
        headers.append(http::header::VIA, self.value(version).clone());
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_address() {
        assert_eq!(canonical(sa("[::ffff:127.0.0.1]:80")), sa("127.0.0.1:80"));
        assert_eq!(canonical(sa("[::ffff:7f02:304]:80")), sa("127.2.3.4:80"));
        assert_eq!(canonical(sa("[::1]:80")), sa("[::1]:80"));
        assert_eq!(canonical(sa("10.0.0.1:80")), sa("10.0.0.1:80"));
        // IPv4-compatible (deprecated, `::a.b.c.d`) is a different address.
        assert_eq!(canonical(sa("[::127.0.0.1]:80")), sa("[::127.0.0.1]:80"));
    }

    #[test]
    fn a_specific_listener_is_reached_by_its_address_in_any_form_and_by_unspecified() {
        let me = SelfAddrs::new([sa("127.9.8.7:15080"), sa("127.9.8.7:15000")]);
        for a in [
            "127.9.8.7:15080",
            "[::ffff:127.9.8.7]:15080",
            "0.0.0.0:15080",
            "[::]:15000",
            "[::ffff:0.0.0.0]:15000",
        ] {
            assert!(me.contains(sa(a)), "{a}");
        }
        // Another port, or another address on the port: another service.
        for a in [
            "127.9.8.7:8080",
            "127.9.8.6:15080",
            "127.0.0.1:15080",
            "[::1]:15080",
            "0.0.0.0:80",
        ] {
            assert!(!me.contains(sa(a)), "{a}");
        }
    }

    #[test]
    fn a_listener_on_the_unspecified_address_is_reached_by_every_local_address() {
        let me = SelfAddrs::new([sa("0.0.0.0:15001"), sa("[::ffff:127.0.0.1]:15000")]);
        assert!(me.contains(sa("127.0.0.1:15001")));
        assert!(me.contains(sa("127.200.1.1:15001")));
        assert!(me.contains(sa("[::ffff:127.3.3.3]:15001")));
        assert!(me.contains(sa("[::1]:15001")));
        // 192.0.2.0/24 is TEST-NET-1: never an address of this host.
        assert!(!me.contains(sa("192.0.2.1:15001")));
        // The listener given as IPv4-mapped is stored as IPv4.
        assert!(me.contains(sa("127.0.0.1:15000")));
        assert_eq!(me.addrs(), &[sa("0.0.0.0:15001"), sa("127.0.0.1:15000")]);
    }

    #[test]
    fn the_port_filter_lets_through_every_listener_port_and_few_others() {
        let me = SelfAddrs::new([sa("127.0.0.1:15000"), sa("127.0.0.1:15001"), sa("0.0.0.0:15080")]);
        let filter = PortFilter::new(&me);
        for port in [15000, 15001, 15080] {
            assert!(filter.may_have(port));
        }
        for port in [80, 443, 8080, 8443, 3306, 5432, 6379, 9090] {
            assert!(!filter.may_have(port), "{port}");
        }
        filter.set(&SelfAddrs::new([sa("127.0.0.1:80")]));
        assert!(filter.may_have(80));
        assert!(!filter.may_have(15080));
    }

    #[test]
    fn hosts_as_requests_name_them() {
        let me = SelfAddrs::new([sa("127.9.8.7:15080")]);
        assert!(me.contains_host("127.9.8.7", 15080));
        assert!(me.contains_host("0.0.0.0", 15080));
        assert!(me.contains_host("::ffff:127.9.8.7", 15080));
        assert!(me.contains_host("[::ffff:127.9.8.7]", 15080));
        assert!(me.contains_host("localhost", 15080));
        assert!(me.contains_host("LocalHost.", 15080));
        assert!(me.contains_host("a.localhost", 15080));
        assert!(!me.contains_host("notlocalhost", 15080));
        assert!(!me.contains_host("localhost.example", 15080));
        assert!(!me.contains_host("localhost", 8080));
        assert!(!me.contains_host("example.com", 15080));
    }

    #[test]
    fn the_via_token_is_found_only_whole() {
        let via = Via::with_token("meshentry-00112233aabbccdd");
        assert_eq!(via.value(Version::HTTP_11), "1.1 meshentry-00112233aabbccdd");
        assert_eq!(via.value(Version::HTTP_2), "2 meshentry-00112233aabbccdd");
        assert_eq!(via.value(Version::HTTP_10), "1.0 meshentry-00112233aabbccdd");
        assert_eq!(via.line(), b"via: 1.1 meshentry-00112233aabbccdd\r\n");
        assert!(via.is_in(b"1.1 meshentry-00112233aabbccdd"));
        assert!(via.is_in(b"1.0 fred, 1.1 meshentry-00112233aabbccdd (meshentry)"));
        assert!(via.is_in(b"1.1 meshentry-00112233aabbccdd,2 other"));
        assert!(!via.is_in(b"1.1 meshentry-00112233aabbccdd0"));
        assert!(!via.is_in(b"1.1 xmeshentry-00112233aabbccdd"));
        assert!(!via.is_in(b"1.1 meshentry-00112233aabbccde"));
        assert!(!via.is_in(b"1.1 meshentry"));
        assert!(!via.is_in(b""));
        let mut headers = HeaderMap::new();
        headers.append(http::header::VIA, HeaderValue::from_static("1.1 other"));
        assert!(!via.is_in_headers(&headers));
        via.append(&mut headers, Version::HTTP_11);
        assert!(via.is_in_headers(&headers));
        let all: Vec<_> = headers.get_all(http::header::VIA).iter().collect();
        assert_eq!(all, ["1.1 other", "1.1 meshentry-00112233aabbccdd"]);
    }

    #[test]
    fn every_process_has_its_own_token() {
        let (a, b) = (Via::random(), Via::random());
        assert_ne!(a.token(), b.token());
        assert_eq!(a.token().len(), "meshentry-".len() + 16);
        assert!(a.is_in(a.value(Version::HTTP_11).as_bytes()));
        assert!(!a.is_in(b.value(Version::HTTP_11).as_bytes()));
    }
}
