//! `unique_loopback` claims its address blocks in the process's own network namespace even when
//! the first address is asked for from a thread inside another one. A claim made inside the
//! namespace is invisible to other processes, so they would hand the same addresses to their
//! tests in the main namespace while this process's other tests use them there too (a
//! connection to a port "nobody listens on" was once accepted this way). This file holds a
//! single test so that its call is the process's first. Needs root, as `Netns` does.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use meshentry_testutil::{Netns, unique_loopback};

#[test]
fn a_first_address_asked_for_inside_a_namespace_is_claimed_outside_it() {
    let ns = Netns::new("tu-claim");
    let ip = ns.block_on(|| async { unique_loopback() });
    let [_, x, y, _] = ip.octets();
    // The claim socket is `127.x.y.255`, UDP port 9: held by this process in this namespace.
    let claim = SocketAddrV4::new(Ipv4Addr::new(127, x, y, 255), 9);
    assert!(
        UdpSocket::bind(claim).is_err(),
        "the block of {ip} must be claimed in the process's namespace"
    );
    // And the next address comes from the same, claimed block.
    let next = unique_loopback();
    assert_eq!(next.octets()[..3], ip.octets()[..3]);
}
