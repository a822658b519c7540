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
//! - [`chunked`]: finding the end of a chunked body without decoding it;
//! - [`dns`]: DNS queries read without allocating, answers written into a reused buffer;
//! - [`sni`], [`detect`]: what a connection's first bytes are (a TLS ClientHello and its
//!   server name, an HTTP/1.x request line, the HTTP/2 preface), for routing before any
//!   protocol is terminated.
//!
//! No I/O and no runtime: every function here is tested, and fuzzed (`fuzz/`), on plain
//! bytes; `tests/differential.rs` checks the HTTP/1 decisions against hyper's.

pub mod chunked;
pub mod detect;
pub mod dns;
pub mod h1;
pub mod sni;
