#![no_main]
//! Configuration files come from users: loading and validating any bytes must never panic.

use libfuzzer_sys::fuzz_target;
use meshentry_api::{LoadOptions, load_str};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = load_str("fuzz.yaml", &text, &LoadOptions::default());
});
