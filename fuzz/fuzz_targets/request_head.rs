#![no_main]
//! A request head from any client, read as the HTTP/1 fast path reads it (httparse, then
//! `meshentry_wire::h1::request`): nothing may panic, a Host it keeps is a valid authority,
//! and the head the fast path forwards upstream (the request line and every field that is not
//! hop-by-hop) reads as one complete head with the same framing and destination.

use libfuzzer_sys::fuzz_target;
use meshentry_wire::h1::{self, RequestBody};

/// The fast path's header count (hyper's default).
const MAX_HEADERS: usize = 100;

/// The fast path refuses a request with more Connection fields than this.
const MAX_CONNECTION_FIELDS: usize = 8;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        panic!("a complete head without its request line: {req:?}");
    };
    let fields: Vec<(&[u8], &[u8])> = req.headers.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
    let Ok(framing) = h1::request(minor, fields.iter().copied()) else {
        return;
    };
    if let Some(host) = framing.host {
        assert!(h1::valid_authority(host), "kept Host {host:?}");
    }
    // Chunked requests take the hyper path, which re-frames them; the fast path forwards the
    // others with their own framing fields.
    if framing.body == RequestBody::Chunked {
        return;
    }
    let connection: Vec<&[u8]> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .map(|(_, v)| *v)
        .collect();
    if connection.len() > MAX_CONNECTION_FIELDS {
        return;
    }
    let mut up = Vec::with_capacity(data.len());
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    up.extend_from_slice(target.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &fields {
        if h1::is_hop_by_hop(name, connection.iter().copied()) {
            continue;
        }
        up.extend_from_slice(name);
        up.extend_from_slice(b": ");
        up.extend_from_slice(value);
        up.extend_from_slice(b"\r\n");
    }
    // The loop guard's marker, added after the client's fields.
    up.extend_from_slice(b"via: 1.1 meshentry-0123456789abcdef\r\n");
    up.extend_from_slice(b"\r\n");

    // One more than was read: the marker.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
    let mut again = httparse::Request::new(&mut headers);
    match again.parse(&up) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, up.len(), "forwarded head is not one head: {up:?}"),
        other => panic!("forwarded head does not parse ({other:?}): {up:?}"),
    }
    let fields = again.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let forwarded = h1::request(1, fields).unwrap_or_else(|e| panic!("forwarded head refused ({e}): {up:?}"));
    assert_eq!(forwarded.body, framing.body, "framing changed on the way: {up:?}");
    assert_eq!(forwarded.host, framing.host, "destination changed on the way: {up:?}");
    assert!(
        !forwarded.close,
        "the upstream connection is the proxy's to keep: {up:?}"
    );
});
