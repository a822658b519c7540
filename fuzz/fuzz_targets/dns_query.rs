#![no_main]
//! The DNS proxy reads every datagram an application (or anyone who can reach its port) sends:
//! nothing may panic, a query it accepts must have a name it can look up and echo (one
//! question, at most 255 bytes on the wire), and whatever it writes back (an answer with
//! records, a truncated one, a refusal) must be a well-formed response to that query that its
//! own response reader accepts, within the size the query allows.

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use meshentry_wire::dns::{
    Answer, HEADER_LEN, MAX_NAME_WIRE, Owner, Query, inspect_response, rcode, write_refusal, write_stored,
};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let q = match Query::parse(data) {
        Ok(q) => q,
        Err(r) => {
            if write_refusal(&mut out, r) {
                assert_eq!(out.len(), HEADER_LEN);
                assert_eq!(&out[..2], &data[..2], "the id is echoed");
                assert!(out[2] & 0x80 != 0, "a refusal is a response");
            }
            return;
        }
    };
    assert!(q.question().len() <= MAX_NAME_WIRE + 4);
    assert!(q.name().len() < MAX_NAME_WIRE);
    // A local answer: a CNAME to a prefix of the name, then addresses; it must read back.
    let labels = q.question().len() - 4;
    let n = (data.len() % 7) as u8;
    for limit in [q.udp_limit(), usize::from(u16::MAX)] {
        Answer::begin(&mut out, &q, rcode::NOERROR, true);
        let owner = if labels > 1 && data.len() % 2 == 0 {
            Answer::cname_to_prefix(&mut out, &q, labels - 1, 30)
        } else {
            Owner::QUESTION
        };
        for i in 0..n {
            Answer::address(&mut out, owner, IpAddr::from([10, 0, 0, i]), 30);
            Answer::address(
                &mut out,
                owner,
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)]),
                30,
            );
        }
        Answer::finish(&mut out, &q, limit);
        assert!(out.len() <= limit.max(HEADER_LEN + q.question().len() + 11));
        let read = inspect_response(&out, &q).expect("our own answer reads back");
        assert_eq!(read.id, q.id);
        // Served again from the cache, aged: the same size, the same reading.
        let stored = out.clone();
        let mut again = Vec::new();
        write_stored(&mut again, &stored, &read.ttl_offsets, 7, &q, limit);
        assert_eq!(again.len(), stored.len());
        assert!(inspect_response(&again, &q).is_some());
    }
});
