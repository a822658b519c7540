use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use meshentry_proxy::capture::{self, CaptureOptions, DnsCapture, DnsTargets, Family};

/// Where the nameservers DNS capture redirects are read from, as istio-iptables reads them. In
/// a network namespace made by `ip netns add NAME`, `ip netns exec` puts
/// /etc/netns/NAME/resolv.conf there.
const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Capture this host's (or network namespace's) outbound TCP connections into the proxy,
    /// and with --capture-dns its DNS.
    Install {
        /// The uid the proxy runs as: its own connections are never captured.
        #[arg(long)]
        proxy_uid: u32,
        /// The proxy's outbound (transparent) port.
        #[arg(long, default_value_t = 15001, value_parser = clap::value_parser!(u16).range(1..))]
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
        /// Redirect the application's UDP and TCP to port 53 of the nameservers in
        /// /etc/resolv.conf to the proxy's DNS listener (127.0.0.1 and ::1, --dns-port), as
        /// Istio's DNS capture does. Default: the --mesh-config's
        /// defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE, else off.
        #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
        capture_dns: Option<bool>,
        /// Redirect the application's port 53 whatever its destination, not only the
        /// nameservers' (Istio's CAPTURE_ALL_DNS, as istio-cni sets it). Implies --capture-dns.
        #[arg(long)]
        capture_all_dns: bool,
        /// The proxy's DNS listener port, where DNS capture redirects to.
        #[arg(long, default_value_t = 15053, value_parser = clap::value_parser!(u16).range(1..))]
        dns_port: u16,
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
    let (options, dry_run) = match &args.action {
        Action::Install {
            proxy_uid,
            outbound_port,
            exclude_ports,
            outbound_policy,
            mesh,
            block_quic,
            capture_dns,
            capture_all_dns,
            dns_port,
            dry_run,
        } => {
            let mesh_config = match crate::cmd::mesh::read(mesh)? {
                Some(m) => m,
                None => return Ok(ExitCode::from(1)),
            };
            let registry_only = match outbound_policy {
                Some(p) => p == "REGISTRY_ONLY",
                None => mesh_config.outbound_policy == meshentry_api::model::OutboundTrafficPolicyMode::RegistryOnly,
            };
            let dns_on = match (capture_dns, capture_all_dns) {
                (Some(false), true) => anyhow::bail!("--capture-all-dns contradicts --capture-dns=false"),
                (_, true) => true,
                (Some(on), false) => *on,
                // As istio-init follows the proxy's ISTIO_META_DNS_CAPTURE.
                (None, false) => mesh_config.dns_capture,
            };
            let dns = if dns_on {
                if exclude_ports.contains(&53) {
                    // istio-iptables lets the exclusion win and captures no DNS; saying so
                    // is kinder than leaving DNS uncaptured without a word.
                    anyhow::bail!("--exclude-ports 53 leaves no DNS to capture: drop one of the two");
                }
                let targets = if *capture_all_dns {
                    DnsTargets::All
                } else {
                    DnsTargets::Nameservers(nameservers(Path::new(RESOLV_CONF), &families)?)
                };
                Some(DnsCapture {
                    port: *dns_port,
                    targets,
                })
            } else {
                None
            };
            let options = CaptureOptions {
                proxy_uid: *proxy_uid,
                outbound_port: *outbound_port,
                exclude_ports: exclude_ports.clone(),
                block_quic: block_quic.unwrap_or(registry_only),
                dns,
            };
            (Some(options), *dry_run)
        }
        Action::Remove => (None, false),
    };
    for &family in &families {
        let result = match &options {
            Some(o) if dry_run => {
                for rule in capture::install_rules(o, family) {
                    println!("{} {}", family.binary(), rule.join(" "));
                }
                Ok(())
            }
            Some(o) => capture::install(o, family),
            None => capture::remove(family),
        };
        if let Err(e) = result {
            eprintln!("meshentry: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    if !dry_run {
        let tools = families.iter().map(|f| f.binary()).collect::<Vec<_>>().join(", ");
        match &options {
            Some(o) => println!("meshentry: capture installed ({tools}): {}", summary(o)),
            None => println!("meshentry: capture removed ({tools}): no MESHENTRY_* chain or jump is left"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What an installation does, in one line, so that the person who ran it knows without
/// reading the rules.
fn summary(o: &CaptureOptions) -> String {
    let mut parts = vec![format!(
        "outbound TCP redirected to port {} (not uid {}, mark {:#x}, loopback{})",
        o.outbound_port,
        o.proxy_uid,
        capture::PROXY_MARK,
        match o.exclude_ports.is_empty() {
            true => String::new(),
            false => format!(
                ", ports {}",
                o.exclude_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            ),
        }
    )];
    if let Some(dns) = &o.dns {
        parts.push(match &dns.targets {
            DnsTargets::All => format!("DNS (UDP and TCP port 53, any address) redirected to port {}", dns.port),
            DnsTargets::Nameservers(ns) => format!(
                "DNS (UDP and TCP port 53) to {} redirected to port {}",
                ns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                dns.port
            ),
        });
    }
    if o.block_quic {
        parts.push("the application's UDP 443 (QUIC) rejected".into());
    }
    parts.join("; ")
}

/// The nameservers of `path` that DNS capture can redirect with `families`. None is an error:
/// capture would silently do nothing (istio-iptables only warns), while the resolver would
/// fall back to 127.0.0.1, which the application then reaches uncaptured.
fn nameservers(path: &Path, families: &[Family]) -> anyhow::Result<Vec<std::net::IpAddr>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--capture-dns reads the nameservers from {}", path.display()))?;
    let (servers, invalid) = capture::parse_nameservers(&text);
    for value in invalid {
        eprintln!(
            "meshentry: {}: nameserver {value:?} is not an IP address; not captured",
            path.display()
        );
    }
    let usable = servers.iter().any(|ip| families.iter().any(|f| f.contains(ip)));
    if !usable {
        anyhow::bail!(
            "--capture-dns: {} names no nameserver {} can capture (--capture-all-dns captures port 53 to every address)",
            path.display(),
            families.iter().map(|f| f.binary()).collect::<Vec<_>>().join(" or ")
        );
    }
    Ok(servers)
}
