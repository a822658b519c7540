//! An accepted client connection, whatever the socket.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// An accepted client connection, TCP or unix.
pub trait Conn: AsyncRead + AsyncWrite + crate::net::relay::Peer + Unpin + Send + 'static {
    /// The address it was accepted on; `None` for a unix socket.
    fn local(&self) -> Option<SocketAddr>;

    /// Sends small writes at once (TCP_NODELAY; nothing to do on a unix socket).
    fn no_delay(&self);
}

impl Conn for TcpStream {
    fn local(&self) -> Option<SocketAddr> {
        self.local_addr().ok()
    }

    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl Conn for UnixStream {
    fn local(&self) -> Option<SocketAddr> {
        None
    }

    fn no_delay(&self) {}
}
