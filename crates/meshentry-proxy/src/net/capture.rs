//! Transparent capture with iptables, as Istio's istio-iptables sets it up for outbound
//! traffic: every TCP connection the workload opens is redirected to the proxy's outbound
//! port, except the proxy's own (by uid, or by the mark its sockets carry), connections to
//! 127.0.0.1 / ::1, and excluded ports.
//!
//! All rules live in two chains of our own in the nat table, reached by one jump from
//! `OUTPUT`, so removing capture removes exactly what installing added.

use std::process::Command;

/// Our chain for outbound decisions.
pub const OUTPUT_CHAIN: &str = "MESHENTRY_OUTPUT";
/// Our chain that redirects to the proxy.
pub const REDIRECT_CHAIN: &str = "MESHENTRY_REDIRECT";
/// Our chain in the filter table that rejects the application's QUIC (UDP 443).
pub const QUIC_CHAIN: &str = "MESHENTRY_QUIC";

/// The mark the proxy puts on its upstream sockets when it may (as root, or with
/// CAP_NET_ADMIN), so that its own connections are not captured even if it does not run as
/// the exempted uid: 1337, Istio's proxy uid.
pub const PROXY_MARK: u32 = 0x539;

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureOptions {
    /// The proxy runs as this uid; its own connections are never captured (Istio: 1337).
    pub proxy_uid: u32,
    /// Where redirected connections go (Istio: 15001).
    pub outbound_port: u16,
    /// Destination ports left alone.
    pub exclude_ports: Vec<u16>,
    /// Reject the application's UDP to port 443. Only TCP is captured, so QUIC (HTTP/3)
    /// would otherwise leave unrouted and unchecked, past a REGISTRY_ONLY policy; a rejected
    /// QUIC attempt makes browsers and HTTP/3 clients fall back to TCP at once, and that is
    /// captured.
    pub block_quic: bool,
}

/// iptables or ip6tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
}

fn nat(args: &[&str]) -> Vec<String> {
    ["-w", "-t", "nat"].iter().chain(args).map(|s| s.to_string()).collect()
}

fn filter(args: &[&str]) -> Vec<String> {
    ["-w", "-t", "filter"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// The invocations that install capture, in order, assuming our chains do not exist. The
/// jump from `OUTPUT` comes last, so capture starts only once its chains are complete.
pub fn install_rules(o: &CaptureOptions, family: Family) -> Vec<Vec<String>> {
    let uid = o.proxy_uid.to_string();
    let port = o.outbound_port.to_string();
    let mut rules = vec![
        nat(&["-N", REDIRECT_CHAIN]),
        nat(&["-A", REDIRECT_CHAIN, "-p", "tcp", "-j", "REDIRECT", "--to-ports", &port]),
        nat(&["-N", OUTPUT_CHAIN]),
        nat(&["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
        nat(&[
            "-A",
            OUTPUT_CHAIN,
            "-m",
            "mark",
            "--mark",
            &format!("{PROXY_MARK:#x}"),
            "-j",
            "RETURN",
        ]),
        nat(&["-A", OUTPUT_CHAIN, "-d", family.loopback(), "-j", "RETURN"]),
    ];
    for p in &o.exclude_ports {
        let p = p.to_string();
        rules.push(nat(&["-A", OUTPUT_CHAIN, "-p", "tcp", "--dport", &p, "-j", "RETURN"]));
    }
    rules.push(nat(&["-A", OUTPUT_CHAIN, "-j", REDIRECT_CHAIN]));
    rules.push(nat(&["-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN]));
    if o.block_quic {
        let mark = format!("{PROXY_MARK:#x}");
        rules.extend([
            filter(&["-N", QUIC_CHAIN]),
            // The proxy itself may speak QUIC; only the application's is refused.
            filter(&["-A", QUIC_CHAIN, "-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
            filter(&["-A", QUIC_CHAIN, "-m", "mark", "--mark", &mark, "-j", "RETURN"]),
            filter(&["-A", QUIC_CHAIN, "-d", family.loopback(), "-j", "RETURN"]),
            // An ICMP port-unreachable makes the client give up on QUIC at once, where a
            // silent drop would make it wait for its handshake timeout first.
            filter(&["-A", QUIC_CHAIN, "-j", "REJECT"]),
            filter(&["-A", "OUTPUT", "-p", "udp", "--dport", "443", "-j", QUIC_CHAIN]),
        ]);
    }
    rules
}

/// The jump to the QUIC chain (for `-C` and `-D`).
fn quic_jump(op: &str) -> Vec<String> {
    filter(&[op, "OUTPUT", "-p", "udp", "--dport", "443", "-j", QUIC_CHAIN])
}

/// The jump from `OUTPUT` (for `-C` and `-D`).
fn jump(op: &str) -> Vec<String> {
    nat(&[op, "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN])
}

/// A capture command that failed.
#[derive(Debug, thiserror::Error)]
#[error("{command} failed: {reason}")]
pub struct CaptureError {
    pub command: String,
    pub reason: String,
}

fn run(binary: &str, args: &[String]) -> Result<(), CaptureError> {
    let command = format!("{binary} {}", args.join(" "));
    match Command::new(binary).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(CaptureError {
            command,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Err(e) => Err(CaptureError {
            command,
            reason: e.to_string(),
        }),
    }
}

/// Installs capture for `family`, replacing any earlier installation of ours (so running it
/// twice leaves one set of rules). On a failure, what was added is removed again.
pub fn install(o: &CaptureOptions, family: Family) -> Result<(), CaptureError> {
    remove(family)?;
    for args in install_rules(o, family) {
        if let Err(e) = run(family.binary(), &args) {
            let _ = remove(family);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes our jump and chains; nothing else is touched. Removing twice is not an error.
pub fn remove(family: Family) -> Result<(), CaptureError> {
    let binary = family.binary();
    // Every copy of the jump, in case one was added by hand too.
    while run(binary, &jump("-C")).is_ok() {
        run(binary, &jump("-D"))?;
    }
    for chain in [OUTPUT_CHAIN, REDIRECT_CHAIN] {
        if run(binary, &nat(&["-L", chain, "-n"])).is_ok() {
            run(binary, &nat(&["-F", chain]))?;
            run(binary, &nat(&["-X", chain]))?;
        }
    }
    while run(binary, &quic_jump("-C")).is_ok() {
        run(binary, &quic_jump("-D"))?;
    }
    if run(binary, &filter(&["-L", QUIC_CHAIN, "-n"])).is_ok() {
        run(binary, &filter(&["-F", QUIC_CHAIN]))?;
        run(binary, &filter(&["-X", QUIC_CHAIN]))?;
    }
    Ok(())
}

/// Whether `family`'s binary is installed (ip6tables may not be).
pub fn available(family: Family) -> bool {
    Command::new(family.binary())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_in_order() {
        let o = CaptureOptions {
            proxy_uid: 1337,
            outbound_port: 15001,
            exclude_ports: vec![22, 15000],
            block_quic: false,
        };
        let lines: Vec<String> = install_rules(&o, Family::V4).iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "-w -t nat -N MESHENTRY_REDIRECT",
                "-w -t nat -A MESHENTRY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-w -t nat -N MESHENTRY_OUTPUT",
                "-w -t nat -A MESHENTRY_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -m mark --mark 0x539 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -p tcp --dport 22 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -p tcp --dport 15000 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -j MESHENTRY_REDIRECT",
                "-w -t nat -A OUTPUT -p tcp -j MESHENTRY_OUTPUT",
            ]
        );
        let v6 = install_rules(&o, Family::V6);
        assert!(v6.iter().any(|r| r.join(" ").contains("-d ::1/128 -j RETURN")));
    }

    #[test]
    fn quic_is_rejected_for_the_application_only() {
        let o = CaptureOptions {
            proxy_uid: 1337,
            outbound_port: 15001,
            exclude_ports: vec![],
            block_quic: true,
        };
        let lines: Vec<String> = install_rules(&o, Family::V4).iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines[lines.len() - 6..],
            [
                "-w -t filter -N MESHENTRY_QUIC",
                "-w -t filter -A MESHENTRY_QUIC -m owner --uid-owner 1337 -j RETURN",
                "-w -t filter -A MESHENTRY_QUIC -m mark --mark 0x539 -j RETURN",
                "-w -t filter -A MESHENTRY_QUIC -d 127.0.0.1/32 -j RETURN",
                "-w -t filter -A MESHENTRY_QUIC -j REJECT",
                "-w -t filter -A OUTPUT -p udp --dport 443 -j MESHENTRY_QUIC",
            ]
        );
        // The TCP capture comes first and is unchanged.
        assert_eq!(lines[lines.len() - 7], "-w -t nat -A OUTPUT -p tcp -j MESHENTRY_OUTPUT");
    }
}
