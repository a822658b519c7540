//! The accept loop of each Gateway listener (a TCP address or a unix socket).

use std::sync::Arc;

use tokio::sync::watch;

use crate::base::addr::ListenAddr;
use crate::listen::server::Listening;
use crate::rt::shared::Shared;
use crate::serve::gateway::handle;

/// Accepts connections on the gateway listener at `addr` (a TCP or a unix socket) until
/// `shutdown` turns true.
pub async fn serve_gateway<L: Listening>(
    listener: L,
    addr: ListenAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    crate::listen::server::serve_listener(listener, shared, shutdown, move |stream, peer, shared| {
        handle(stream, peer, addr.clone(), shared)
    })
    .await;
}
