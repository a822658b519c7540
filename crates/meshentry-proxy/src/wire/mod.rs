//! Byte-level rules with no I/O beyond `meshentry_wire`: the SNI of a ClientHello.

pub mod sni;
