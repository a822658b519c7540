//! The TLS alerts the proxy sends a client it refuses before any handshake: one fatal alert
//! record, which every TLS stack reports with its reason, instead of a bare close.

/// `access_denied`: the destination is not allowed (REGISTRY_ONLY).
pub const ACCESS_DENIED: u8 = 49;
/// `decode_error`: what came first was not a usable ClientHello.
pub const DECODE_ERROR: u8 = 50;
/// `unrecognized_name`: the ClientHello names another host than the one asked for.
pub const UNRECOGNIZED_NAME: u8 = 112;

/// A fatal alert record with `description`, as TLS 1.2 frames it (TLS 1.3 clients read the
/// same record before any handshake).
pub const fn fatal(description: u8) -> [u8; 7] {
    // Content type 21 (alert), legacy version 3.3, length 2, level 2 (fatal), description.
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fatal_alert_record() {
        assert_eq!(fatal(ACCESS_DENIED), [21, 3, 3, 0, 2, 2, 49]);
    }
}
