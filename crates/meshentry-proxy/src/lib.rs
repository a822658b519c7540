//! The data plane: listeners, routing by SNI/Host/VIP/port, forwarding, TLS origination.
