use std::process::ExitCode;

use meshentry_proxy::capture::{self, CaptureOptions, Family};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Capture this host's (or network namespace's) outbound TCP connections into the proxy.
    Install {
        /// The uid the proxy runs as: its own connections are never captured.
        #[arg(long)]
        proxy_uid: u32,
        /// The proxy's outbound (transparent) port.
        #[arg(long, default_value_t = 15001)]
        outbound_port: u16,
        /// Destination ports left alone (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude_ports: Vec<u16>,
        /// The outbound traffic policy the proxy enforces; with REGISTRY_ONLY, QUIC is
        /// blocked unless --block-quic=false says otherwise. Default: the --mesh-config's
        /// outboundTrafficPolicy, else ALLOW_ANY.
        #[arg(long, value_parser = ["ALLOW_ANY", "REGISTRY_ONLY"])]
        outbound_policy: Option<String>,
        #[command(flatten)]
        mesh: crate::cmd::mesh::MeshArgs,
        /// Reject the application's UDP to port 443 (QUIC, HTTP/3), which capture cannot route
        /// or check, so clients fall back to TCP. Default: on with REGISTRY_ONLY, off with
        /// ALLOW_ANY.
        #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
        block_quic: Option<bool>,
        /// Print the iptables commands instead of running them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly the rules `install` added.
    Remove,
}

/// Installs or removes capture for IPv4, and for IPv6 when ip6tables is present. Exit 1 when a
/// command fails (its stderr is printed); what a failed install added is removed again.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let families: Vec<Family> = [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| capture::available(*f))
        .collect();
    if families.is_empty() {
        anyhow::bail!("iptables is not installed");
    }
    for family in families {
        let result = match &args.action {
            Action::Install {
                proxy_uid,
                outbound_port,
                exclude_ports,
                outbound_policy,
                mesh,
                block_quic,
                dry_run,
            } => {
                let registry_only = match outbound_policy {
                    Some(p) => p == "REGISTRY_ONLY",
                    None => match crate::cmd::mesh::read(mesh)? {
                        Some(m) => m.outbound_policy == meshentry_api::model::OutboundTrafficPolicyMode::RegistryOnly,
                        None => return Ok(ExitCode::from(1)),
                    },
                };
                let o = CaptureOptions {
                    proxy_uid: *proxy_uid,
                    outbound_port: *outbound_port,
                    exclude_ports: exclude_ports.clone(),
                    block_quic: block_quic.unwrap_or(registry_only),
                };
                if *dry_run {
                    for rule in capture::install_rules(&o, family) {
                        println!("{} {}", family.binary(), rule.join(" "));
                    }
                    Ok(())
                } else {
                    capture::install(&o, family)
                }
            }
            Action::Remove => capture::remove(family),
        };
        if let Err(e) = result {
            eprintln!("meshentry: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
