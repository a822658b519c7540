//! Transparent capture with iptables, as Istio's istio-iptables sets it up for outbound
//! traffic: every TCP connection the workload opens is redirected to the proxy's outbound
//! port, except the proxy's own (by uid, or by the mark its sockets carry), connections to
//! 127.0.0.1 / ::1, and excluded ports. With DNS capture, the workload's UDP and TCP to port
//! 53 of its nameservers (or of any address) goes to the proxy's DNS listener instead.
//!
//! All rules live in chains of our own, each reached by its own jumps from a built-in chain,
//! so removing capture removes exactly what installing added.

use std::net::IpAddr;
use std::process::Command;

/// Our chain for outbound decisions.
pub const OUTPUT_CHAIN: &str = "MESHENTRY_OUTPUT";
/// Our chain that redirects to the proxy.
pub const REDIRECT_CHAIN: &str = "MESHENTRY_REDIRECT";
/// Our chain in the filter table that rejects the application's QUIC (UDP 443).
pub const QUIC_CHAIN: &str = "MESHENTRY_QUIC";
/// Our chain in the nat table that redirects the application's DNS to the proxy, and, in the
/// raw table, the one that puts DNS packets leaving the host into their conntrack zones.
pub const DNS_CHAIN: &str = "MESHENTRY_DNS";
/// Our chain in the raw table that puts the nameservers' answers into the proxy's zone.
pub const DNS_REPLY_CHAIN: &str = "MESHENTRY_DNS_REPLY";

/// The conntrack zone of the proxy's own DNS exchanges with the nameservers (Istio's 1).
const ZONE_PROXY_UPSTREAM: &str = "1";
/// The conntrack zone of the application's redirected DNS exchanges with the proxy (Istio's 2).
const ZONE_APP_PROXY: &str = "2";

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
    /// Send the application's DNS to the proxy's DNS listener.
    pub dns: Option<DnsCapture>,
}

/// DNS capture, as istio-iptables' `--redirect-dns` (ISTIO_META_DNS_CAPTURE) sets it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsCapture {
    /// The proxy's DNS listener port (Istio: 15053); REDIRECT sends to it on 127.0.0.1 or ::1.
    pub port: u16,
    /// Whose port 53 is redirected.
    pub targets: DnsTargets,
}

/// The destinations whose port 53 DNS capture redirects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsTargets {
    /// The nameservers of `/etc/resolv.conf`, as istio-iptables captures by default. A local
    /// resolver the application does not use directly (dnsmasq behind another nameserver,
    /// say) is left alone, so its own queries upstream never come back to the proxy.
    Nameservers(Vec<IpAddr>),
    /// Every destination (Istio's CAPTURE_ALL_DNS, which istio-cni sets), for when the
    /// nameservers are not known where the rules are installed.
    All,
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

    /// Whether `ip` is of this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        match self {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }

    /// `ip` as iptables' `-d`/`-s` prints it back.
    fn host(self, ip: &IpAddr) -> String {
        match self {
            Family::V4 => format!("{ip}/32"),
            Family::V6 => format!("{ip}/128"),
        }
    }
}

/// The `nameserver` addresses of a resolv.conf, in order and without repeats, and the values
/// that are not addresses (which the resolver ignores too). A scope (`fe80::1%eth0`) is dropped:
/// iptables matches addresses only.
pub fn parse_nameservers(resolv_conf: &str) -> (Vec<IpAddr>, Vec<String>) {
    let mut servers = Vec::new();
    let mut invalid = Vec::new();
    for line in resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else {
            continue;
        };
        let address = value.split('%').next().unwrap_or(value);
        match address.parse::<IpAddr>() {
            Ok(ip) if !servers.contains(&ip) => servers.push(ip),
            Ok(_) => {}
            Err(_) => invalid.push(value.to_string()),
        }
    }
    (servers, invalid)
}

fn in_table(table: &str, args: &[&str]) -> Vec<String> {
    ["-w", "-t", table].iter().chain(args).map(|s| s.to_string()).collect()
}

fn nat(args: &[&str]) -> Vec<String> {
    in_table("nat", args)
}

fn filter(args: &[&str]) -> Vec<String> {
    in_table("filter", args)
}

fn raw(args: &[&str]) -> Vec<String> {
    in_table("raw", args)
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
    if let Some(dns) = &o.dns {
        rules.extend(dns_rules(dns, &uid, family));
    }
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

/// DNS capture for `family`: nothing when it has no nameserver to capture. Its jumps come
/// before the TCP capture's in `nat OUTPUT`: the TCP capture would otherwise take TCP port 53
/// to the outbound port (or let it through, for 127.0.0.1) before DNS capture saw it.
fn dns_rules(dns: &DnsCapture, uid: &str, family: Family) -> Vec<Vec<String>> {
    let servers: Vec<String> = match &dns.targets {
        DnsTargets::All => Vec::new(),
        DnsTargets::Nameservers(all) => {
            let mine: Vec<String> = all
                .iter()
                .filter(|ip| family.contains(ip))
                .map(|ip| family.host(ip))
                .collect();
            if mine.is_empty() {
                return Vec::new();
            }
            mine
        }
    };
    // A rule per nameserver (its `-d` or `-s`), or one rule for every address.
    let each: Vec<Option<&str>> = if servers.is_empty() {
        vec![None]
    } else {
        servers.iter().map(|s| Some(s.as_str())).collect()
    };
    let port = dns.port.to_string();
    let mark = format!("{PROXY_MARK:#x}");
    // Istio exempts the proxy's gid as well, and defaults that gid to its uid.
    let proxy: [[&str; 3]; 3] = [
        ["owner", "--uid-owner", uid],
        ["owner", "--gid-owner", uid],
        ["mark", "--mark", &mark],
    ];

    let mut rules = vec![nat(&["-N", DNS_CHAIN])];
    for [module, option, value] in proxy {
        rules.push(nat(&["-A", DNS_CHAIN, "-m", module, option, value, "-j", "RETURN"]));
    }
    for dest in &each {
        for proto in ["udp", "tcp"] {
            let mut rule = vec!["-A", DNS_CHAIN];
            if let Some(d) = dest {
                rule.extend(["-d", d]);
            }
            rule.extend(["-p", proto, "--dport", "53", "-j", "REDIRECT", "--to-ports", &port]);
            rules.push(nat(&rule));
        }
    }

    // UDP conntrack zones (Istio's fix for istio/istio#33469): a redirected query's conntrack
    // entry outlives it (30 s), and were the proxy to query the same nameserver from the same
    // address and port later, its packet would match that entry and be redirected back to
    // itself. The application's exchanges with the proxy go to one zone and the proxy's with
    // the nameservers to another, so the two never share an entry. The first CT target that
    // applies to a packet decides, so the proxy's rules come first.
    rules.push(raw(&["-N", DNS_CHAIN]));
    for [module, option, value] in proxy {
        rules.push(raw(&[
            "-A",
            DNS_CHAIN,
            "-p",
            "udp",
            "--dport",
            "53",
            "-m",
            module,
            option,
            value,
            "-j",
            "CT",
            "--zone",
            ZONE_PROXY_UPSTREAM,
        ]));
        // The proxy's answers to the application, which conntrack must undo the redirect on.
        rules.push(raw(&[
            "-A",
            DNS_CHAIN,
            "-p",
            "udp",
            "--sport",
            &port,
            "-m",
            module,
            option,
            value,
            "-j",
            "CT",
            "--zone",
            ZONE_APP_PROXY,
        ]));
    }
    for dest in &each {
        let mut rule = vec!["-A", DNS_CHAIN];
        if let Some(d) = dest {
            rule.extend(["-d", d]);
        }
        rule.extend(["-p", "udp", "--dport", "53", "-j", "CT", "--zone", ZONE_APP_PROXY]);
        rules.push(raw(&rule));
    }
    // The nameservers' answers to the proxy arrive from outside (a nameserver on this host
    // answers through lo, where the packet keeps the entry it left with).
    rules.push(raw(&["-N", DNS_REPLY_CHAIN]));
    for src in &each {
        let mut rule = vec!["-A", DNS_REPLY_CHAIN];
        if let Some(s) = src {
            rule.extend(["-s", s]);
        }
        rule.extend(["-p", "udp", "--sport", "53", "-j", "CT", "--zone", ZONE_PROXY_UPSTREAM]);
        rules.push(raw(&rule));
    }
    // Zones first, then the redirect, so no redirected entry is made outside its zone.
    rules.extend(dns_jumps("-A"));
    rules
}

/// The jumps into the DNS chains, in the order `install` adds them (for `-A`, `-C` and `-D`).
fn dns_jumps(op: &str) -> [Vec<String>; 4] {
    [
        raw(&[op, "OUTPUT", "-p", "udp", "-j", DNS_CHAIN]),
        raw(&[op, "PREROUTING", "-p", "udp", "--sport", "53", "-j", DNS_REPLY_CHAIN]),
        nat(&[op, "OUTPUT", "-p", "udp", "--dport", "53", "-j", DNS_CHAIN]),
        nat(&[op, "OUTPUT", "-p", "tcp", "--dport", "53", "-j", DNS_CHAIN]),
    ]
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

/// Removes our jumps and chains; nothing else is touched. Removing twice is not an error.
pub fn remove(family: Family) -> Result<(), CaptureError> {
    let binary = family.binary();
    // The jumps first (a chain cannot be deleted while a jump leads to it); every copy of
    // each, in case one was added by hand too. DNS capture's first, the reverse of install.
    let mut jumps: Vec<(Vec<String>, Vec<String>)> = dns_jumps("-C").into_iter().zip(dns_jumps("-D")).rev().collect();
    jumps.push((jump("-C"), jump("-D")));
    jumps.push((quic_jump("-C"), quic_jump("-D")));
    for (check, delete) in &jumps {
        while run(binary, check).is_ok() {
            run(binary, delete)?;
        }
    }
    let chains = [
        ("nat", DNS_CHAIN),
        ("raw", DNS_CHAIN),
        ("raw", DNS_REPLY_CHAIN),
        ("nat", OUTPUT_CHAIN),
        ("nat", REDIRECT_CHAIN),
        ("filter", QUIC_CHAIN),
    ];
    for (table, chain) in chains {
        if run(binary, &in_table(table, &["-L", chain, "-n"])).is_ok() {
            run(binary, &in_table(table, &["-F", chain]))?;
            run(binary, &in_table(table, &["-X", chain]))?;
        }
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
            dns: None,
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
            dns: None,
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

    fn lines(o: &CaptureOptions, family: Family) -> Vec<String> {
        install_rules(o, family).iter().map(|r| r.join(" ")).collect()
    }

    fn with_dns(targets: DnsTargets) -> CaptureOptions {
        CaptureOptions {
            proxy_uid: 1337,
            outbound_port: 15001,
            exclude_ports: vec![22],
            block_quic: false,
            dns: Some(DnsCapture { port: 15053, targets }),
        }
    }

    fn nameservers() -> DnsTargets {
        DnsTargets::Nameservers(vec![
            "127.0.0.53".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
            "fd00::a".parse().unwrap(),
        ])
    }

    #[test]
    fn dns_capture_redirects_the_nameservers_port_53_before_the_tcp_capture() {
        assert_eq!(
            lines(&with_dns(nameservers()), Family::V4),
            [
                "-w -t nat -N MESHENTRY_REDIRECT",
                "-w -t nat -A MESHENTRY_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-w -t nat -N MESHENTRY_OUTPUT",
                "-w -t nat -A MESHENTRY_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -m mark --mark 0x539 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -p tcp --dport 22 -j RETURN",
                "-w -t nat -A MESHENTRY_OUTPUT -j MESHENTRY_REDIRECT",
                "-w -t nat -N MESHENTRY_DNS",
                "-w -t nat -A MESHENTRY_DNS -m owner --uid-owner 1337 -j RETURN",
                "-w -t nat -A MESHENTRY_DNS -m owner --gid-owner 1337 -j RETURN",
                "-w -t nat -A MESHENTRY_DNS -m mark --mark 0x539 -j RETURN",
                "-w -t nat -A MESHENTRY_DNS -d 127.0.0.53/32 -p udp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t nat -A MESHENTRY_DNS -d 127.0.0.53/32 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t nat -A MESHENTRY_DNS -d 10.96.0.10/32 -p udp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t nat -A MESHENTRY_DNS -d 10.96.0.10/32 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t raw -N MESHENTRY_DNS",
                "-w -t raw -A MESHENTRY_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
                "-w -t raw -A MESHENTRY_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2",
                "-w -t raw -A MESHENTRY_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1",
                "-w -t raw -A MESHENTRY_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2",
                "-w -t raw -A MESHENTRY_DNS -p udp --dport 53 -m mark --mark 0x539 -j CT --zone 1",
                "-w -t raw -A MESHENTRY_DNS -p udp --sport 15053 -m mark --mark 0x539 -j CT --zone 2",
                "-w -t raw -A MESHENTRY_DNS -d 127.0.0.53/32 -p udp --dport 53 -j CT --zone 2",
                "-w -t raw -A MESHENTRY_DNS -d 10.96.0.10/32 -p udp --dport 53 -j CT --zone 2",
                "-w -t raw -N MESHENTRY_DNS_REPLY",
                "-w -t raw -A MESHENTRY_DNS_REPLY -s 127.0.0.53/32 -p udp --sport 53 -j CT --zone 1",
                "-w -t raw -A MESHENTRY_DNS_REPLY -s 10.96.0.10/32 -p udp --sport 53 -j CT --zone 1",
                "-w -t raw -A OUTPUT -p udp -j MESHENTRY_DNS",
                "-w -t raw -A PREROUTING -p udp --sport 53 -j MESHENTRY_DNS_REPLY",
                "-w -t nat -A OUTPUT -p udp --dport 53 -j MESHENTRY_DNS",
                "-w -t nat -A OUTPUT -p tcp --dport 53 -j MESHENTRY_DNS",
                // Last, so TCP to a nameserver's port 53 is taken to the DNS listener before
                // the TCP capture would take it to the outbound port.
                "-w -t nat -A OUTPUT -p tcp -j MESHENTRY_OUTPUT",
            ]
        );
        // IPv6: its own nameservers only.
        let v6 = lines(&with_dns(nameservers()), Family::V6);
        let dns: Vec<&String> = v6.iter().filter(|l| l.contains("MESHENTRY_DNS")).collect();
        assert_eq!(
            dns.iter()
                .filter(|l| l.contains(" -d ") || l.contains(" -s "))
                .map(|l| l.as_str())
                .collect::<Vec<_>>(),
            [
                "-w -t nat -A MESHENTRY_DNS -d fd00::a/128 -p udp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t nat -A MESHENTRY_DNS -d fd00::a/128 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t raw -A MESHENTRY_DNS -d fd00::a/128 -p udp --dport 53 -j CT --zone 2",
                "-w -t raw -A MESHENTRY_DNS_REPLY -s fd00::a/128 -p udp --sport 53 -j CT --zone 1",
            ]
        );
        assert_eq!(
            v6.last().map(String::as_str),
            Some("-w -t nat -A OUTPUT -p tcp -j MESHENTRY_OUTPUT")
        );
    }

    #[test]
    fn dns_capture_leaves_the_other_rules_as_they_were() {
        let mut o = with_dns(nameservers());
        o.block_quic = true;
        let with: Vec<String> = lines(&o, Family::V4)
            .into_iter()
            .filter(|l| !l.contains("MESHENTRY_DNS"))
            .collect();
        o.dns = None;
        assert_eq!(with, lines(&o, Family::V4));
    }

    #[test]
    fn capture_all_dns_redirects_every_destination() {
        let all = lines(&with_dns(DnsTargets::All), Family::V6);
        let dns: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|l| l.contains("MESHENTRY_DNS") && !l.contains("owner") && !l.contains("mark"))
            .collect();
        assert_eq!(
            dns,
            [
                "-w -t nat -N MESHENTRY_DNS",
                "-w -t nat -A MESHENTRY_DNS -p udp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t nat -A MESHENTRY_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-w -t raw -N MESHENTRY_DNS",
                "-w -t raw -A MESHENTRY_DNS -p udp --dport 53 -j CT --zone 2",
                "-w -t raw -N MESHENTRY_DNS_REPLY",
                "-w -t raw -A MESHENTRY_DNS_REPLY -p udp --sport 53 -j CT --zone 1",
                "-w -t raw -A OUTPUT -p udp -j MESHENTRY_DNS",
                "-w -t raw -A PREROUTING -p udp --sport 53 -j MESHENTRY_DNS_REPLY",
                "-w -t nat -A OUTPUT -p udp --dport 53 -j MESHENTRY_DNS",
                "-w -t nat -A OUTPUT -p tcp --dport 53 -j MESHENTRY_DNS",
            ]
        );
    }

    #[test]
    fn a_family_without_nameservers_gets_no_dns_rules() {
        let v4_only = with_dns(DnsTargets::Nameservers(vec!["10.96.0.10".parse().unwrap()]));
        let mut none = v4_only.clone();
        none.dns = None;
        assert_eq!(lines(&v4_only, Family::V6), lines(&none, Family::V6));
        assert_ne!(lines(&v4_only, Family::V4), lines(&none, Family::V4));
    }

    #[test]
    fn nameservers_from_resolv_conf() {
        let (servers, invalid) = parse_nameservers(
            "# generated\nsearch default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
             nameserver\tfe80::1%eth0\n  nameserver 10.96.0.10\nnameserver dns.example\n\
             ; nameserver 1.1.1.1\noptions ndots:5\nnameserver ::1 # local\n",
        );
        assert_eq!(
            servers,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "::1".parse().unwrap(),
            ]
        );
        assert_eq!(invalid, ["dns.example"]);
        assert_eq!(parse_nameservers("search x\n"), (vec![], vec![]));
    }
}
