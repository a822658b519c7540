#![no_main]
//! Protocol detection reads a connection's first bytes as they arrive and acts on its first
//! verdict: nothing may panic, and a verdict on a prefix must be the verdict on the whole (more
//! bytes never turn HTTP into TLS, nor one server name into another).

use libfuzzer_sys::fuzz_target;
use meshentry_wire::detect::{Detected, classify, give_up};

fuzz_target!(|data: &[u8]| {
    let verdict = classify(data);
    let _ = give_up(data);
    for n in [1, data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        if n == 0 || n >= data.len() {
            continue;
        }
        match classify(&data[..n]) {
            None => {}
            // A cap on what is buffered, not a reading of the bytes: a ClientHello cut into
            // tiny records can pass it before it is whole.
            Some(Detected::BadTls("ClientHello too large")) => {}
            Some(early) => assert_eq!(Some(&early), verdict.as_ref(), "{n} of {} bytes", data.len()),
        }
    }
});
