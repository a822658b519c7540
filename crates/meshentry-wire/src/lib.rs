//! Where an HTTP/1.1 message ends and what its header fields may say: the framing decisions
//! of every meshentry data path, made here once, strictly (RFC 9110, RFC 9112).
//!
//! A shared proxy that frames a message differently from its client or its upstream hands one
//! client's bytes to another (request smuggling, response splitting). So the HTTP/1 fast path
//! and the hyper path both take their accept/refuse decisions from [`h1`], and anything this
//! crate cannot vouch for is refused.
//!
//! - [`h1`]: request and response framing (Content-Length, Transfer-Encoding, Host,
//!   Connection) and the hop-by-hop rule;
//! - [`chunked`]: finding the end of a chunked body without decoding it.
//!
//! No I/O and no runtime: every function here is tested, and fuzzed, on plain bytes.

pub mod chunked;
pub mod h1;
