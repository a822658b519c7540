//! Test support for meshentry's end-to-end tests: it owns everything a test needs around the
//! proxy, and nothing of the proxy itself.
//!
//! Every helper uses real sockets on loopback only. Each test takes its own address with
//! [`ip::unique_loopback`] (any `127.0.0.0/8` address is local on Linux), so tests can bind the
//! fixed ports a ServiceEntry names (80, 443, 3306, ...) without colliding with each other or with
//! other test processes. Around that address the crate provides a per-test PKI ([`pki`]), an
//! in-process DNS server that speaks the real wire protocol ([`dns`]), upstream servers that
//! record what they saw ([`servers`]), a scripted raw HTTP/1.1 upstream and a strict raw client
//! for byte-exact framing tests ([`raw`]), polling helpers ([`wait`]), a runner for child
//! processes ([`process`]), the one launcher of the proxy binary ([`proxy`]) and the check of
//! meshentry's JSON documents against their schemas ([`schema`]). Every server
//! stops when its handle is dropped, so no test shares state. A test that cannot run on this
//! machine says so and is counted ([`skip`]), never passes silently.
//!
//! Transparent-capture tests run all of this inside a network namespace of their own
//! ([`netns`]), where iptables redirects an application's connections to the proxy.

pub mod curl;
pub mod dns;
pub mod ip;
pub mod kube;
pub mod kube_front;
pub mod netns;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod schema;
pub mod servers;
pub mod skip;
mod tasks;
pub mod wait;

pub use curl::{curl_command, isolate_curl};
pub use dns::TestDns;
pub use ip::unique_loopback;
pub use kube::KubeApi;
pub use kube_front::KubeFront;
pub use netns::{Netns, PROXY_UID, make_accessible};
pub use pki::{Leaf, LeafSpec, PemDir, TestCa};
pub use process::ProxyProcess;
pub use proxy::{Proxy, ProxyBuilder};
pub use raw::{RawBackend, RawClient, RawRequest, RawResponse, Reply};
pub use servers::{
    HttpUpstream, Reset, SeenRequest, Stall, TcpBanner, TcpEcho, TlsEcho, TlsSeen, TlsUpstream, closed_port,
};
pub use wait::{eventually, free_port, settled};

/// The crypto provider every TLS helper uses. meshentry picks ring as its single rustls provider,
/// so the test PKI must never pull in the default aws-lc one.
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
