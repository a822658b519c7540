//! Where the proxy listens.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

/// Where a listener listens: a TCP address, or a unix socket (a Gateway server's
/// `bind: unix://PATH`; a PATH of `@NAME` is NAME in Linux's abstract namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(Arc<str>),
}

impl ListenAddr {
    /// The TCP address, for the loop guard (a unix socket is never dialled by a request).
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => a.fmt(f),
            ListenAddr::Unix(path) => write!(f, "unix://{path}"),
        }
    }
}

/// What a unix socket client is logged as: it has no IP address.
pub const UNIX_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
