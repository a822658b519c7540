#![no_main]
//! The chunked scanner reads bodies as they arrive, in pieces of any size: where it finds the
//! end (or that the body is malformed, and why) must not depend on how the bytes were split.
//!
//! The first two bytes seed the split; the rest is the body.

use libfuzzer_sys::fuzz_target;
use meshentry_wire::chunked::{ChunkError, ChunkScanner};

/// Feeds `body` in pieces whose sizes come from `seed`; what the scanner says at the end.
fn scan_split(body: &[u8], mut seed: u32) -> Result<Option<usize>, ChunkError> {
    let mut scanner = ChunkScanner::default();
    let mut start = 0;
    while start < body.len() {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        // Mostly tiny pieces (every state boundary), sometimes large ones.
        let step = match (seed >> 16) % 8 {
            0 => 1 + (seed >> 8) as usize % 4096,
            _ => 1 + (seed >> 8) as usize % 7,
        };
        let end = (start + step).min(body.len());
        match scanner.feed(&body[start..end])? {
            Some(n) => {
                assert!(n <= end - start, "an end past the piece");
                return Ok(Some(start + n));
            }
            None => start = end,
        }
    }
    Ok(None)
}

fuzz_target!(|data: &[u8]| {
    let (seed, body) = match data {
        [a, b, rest @ ..] => (u32::from(*a) << 8 | u32::from(*b), rest),
        _ => return,
    };
    let whole = ChunkScanner::default().feed(body);
    assert_eq!(scan_split(body, seed), whole, "split {seed} of {body:?}");
    assert_eq!(
        scan_split(body, seed ^ 0x5555),
        whole,
        "split {} of {body:?}",
        seed ^ 0x5555
    );
    if let Ok(Some(end)) = whole {
        assert!(end <= body.len());
        // The end is where the body ends, whatever follows it.
        assert_eq!(ChunkScanner::default().feed(&body[..end]), Ok(Some(end)));
        assert_eq!(ChunkScanner::default().feed(&body[..end - 1]), Ok(None));
    }
});
