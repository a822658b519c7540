//! Byte-level rules with no I/O beyond `meshentry_wire`: the SNI of a ClientHello, the TLS
//! alerts sent on refusal.

pub mod alert;
pub mod sni;
