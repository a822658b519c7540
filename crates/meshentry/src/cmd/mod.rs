//! One module per subcommand. Each `run` returns the process exit code; an `Err` is a usage or
//! I/O problem (exit 2).

pub mod ca;
pub mod explain;
pub mod explain_dns;
pub mod iptables;
pub mod kube;
pub mod mesh;
pub mod proxy;
pub mod registry;
pub mod validate;
