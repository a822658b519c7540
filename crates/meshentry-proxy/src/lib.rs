//! The data plane: listeners, sniffing, routing by SNI/Host/VIP/port, forwarding to static,
//! DNS-resolved or unix-socket endpoints, load balancing and the outbound policy.

pub mod dns;
pub mod lb;
pub mod sni;
