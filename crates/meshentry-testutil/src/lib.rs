//! Test helpers: certificates, echo servers, DNS servers, spawning the proxy.
