#![no_main]
//! The SNI parser sees attacker-controlled bytes first: it must never panic, and every prefix of
//! an input it accepts must read as incomplete (never as a different answer).

use libfuzzer_sys::fuzz_target;
use meshentry_wire::sni::{Sniff, sniff};

fuzz_target!(|data: &[u8]| {
    if let Sniff::Hello(hello) = sniff(data) {
        assert!(hello.consumed <= data.len());
        for n in [0, hello.consumed / 2, hello.consumed.saturating_sub(1)] {
            if n < hello.consumed {
                assert!(
                    !matches!(sniff(&data[..n]), Sniff::Hello(_)),
                    "prefix {n} of {} parsed",
                    hello.consumed
                );
            }
        }
    }
});
