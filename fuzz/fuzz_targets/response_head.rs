#![no_main]
//! An upstream's response head, read as the HTTP/1 fast path reads it (httparse, then
//! `meshentry_wire::h1::response`): nothing may panic, the framing is consistent with the
//! status and the request, and the head relayed to the client (every field that is not
//! hop-by-hop, Transfer-Encoding kept with its body) frames the body the same way.
//!
//! The first byte says what the request was: bit 0 HEAD, bit 1 asked to upgrade.

use libfuzzer_sys::fuzz_target;
use meshentry_wire::h1::{self, Answering, ResponseBody, ResponseError};

const MAX_HEADERS: usize = 100;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let answering = Answering {
        head: flags & 1 != 0,
        upgrade: flags & 2 != 0,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = resp.parse(raw) else {
        return;
    };
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(0);
    let fields: Vec<(&[u8], &[u8])> = resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)).collect();
    let framing = match h1::response(status, minor, answering, fields.iter().copied()) {
        Ok(f) => f,
        Err(ResponseError::UnsolicitedUpgrade) => {
            assert!(status == 101 && !answering.upgrade);
            return;
        }
        Err(ResponseError::InvalidStatus) => {
            assert!(status < 100);
            return;
        }
        Err(_) => return,
    };
    let bodiless = answering.head || status < 200 || status == 204 || status == 304;
    if bodiless {
        assert_eq!(framing.body, ResponseBody::None, "status {status}, {answering:?}");
    }
    if framing.body == ResponseBody::UntilClose || status == 101 {
        assert!(
            framing.close,
            "a body that ends at the close cannot leave the connection open"
        );
    }

    // The head as relayed to the client: HTTP/1.1, the same status, the fields that cross.
    let connection: Vec<&[u8]> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .map(|(_, v)| *v)
        .collect();
    let mut out = format!("HTTP/1.1 {status} OK\r\n").into_bytes();
    for (name, value) in &fields {
        let te = name.eq_ignore_ascii_case(b"transfer-encoding");
        if !te && h1::is_hop_by_hop(name, connection.iter().copied()) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if framing.body == ResponseBody::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // One more than was read: the relay may add `connection: close`.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
    let mut again = httparse::Response::new(&mut headers);
    match again.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "relayed head is not one head: {out:?}"),
        other => panic!("relayed head does not parse ({other:?}): {out:?}"),
    }
    let fields = again.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let relayed =
        h1::response(status, 1, answering, fields).unwrap_or_else(|e| panic!("relayed head refused ({e}): {out:?}"));
    assert_eq!(relayed.body, framing.body, "framing changed on the way: {out:?}");
});
