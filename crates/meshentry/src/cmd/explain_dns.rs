//! `meshentry explain dns://NAME[?type=AAAA]`: what the DNS proxy (`proxy --dns`) answers for
//! a name and why, from the same name table the proxy builds ([`NameTable`]); or that the
//! name is forwarded upstream, and why the mesh does not answer it when a service has it.

use std::io::Write;
use std::net::IpAddr;

use meshentry_registry::{AutoAddresses, Resolution, Service};
use meshentry_route::model::names::{Hit, Match, NameTable, Origin, TTL};
use meshentry_route::model::snapshot::Snapshot;
use serde::Serialize;

/// A `dns://` target: the name (lower-case, no trailing dot) and the type asked.
pub struct DnsTarget {
    pub name: String,
    pub qtype: &'static str,
}

/// `Some` for a `dns://` target; an error when it is one but malformed.
pub fn parse(s: &str) -> anyhow::Result<Option<DnsTarget>> {
    let Some(rest) = s.strip_prefix("dns://").or_else(|| s.strip_prefix("DNS://")) else {
        return Ok(None);
    };
    let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
    let name = name.trim_end_matches('/').trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| l.is_empty() || l.len() > 63) {
        anyhow::bail!("target {s:?}: dns:// needs a name (dns://NAME[?type=A|AAAA])");
    }
    let qtype = match query
        .strip_prefix("type=")
        .unwrap_or(query)
        .to_ascii_uppercase()
        .as_str()
    {
        "" | "A" => "A",
        "AAAA" => "AAAA",
        other => anyhow::bail!(
            "target {s:?}: type {other:?}: the DNS proxy answers A and AAAA itself (others are forwarded)"
        ),
    };
    Ok(Some(DnsTarget { name, qtype }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    name: String,
    #[serde(rename = "type")]
    rtype: &'static str,
    ttl: u32,
    data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DnsExplanation {
    name: String,
    #[serde(rename = "type")]
    qtype: &'static str,
    namespace: String,
    /// `local` (the proxy answers) or `forwarded` (to the upstream resolvers).
    outcome: &'static str,
    /// NOERROR with the records, or, locally, NOERROR without (NODATA).
    answers: Vec<Record>,
    service: Option<String>,
    reasons: Vec<String>,
}

fn service_name(snap: &Snapshot, s: &Service) -> String {
    let source = snap
        .registry
        .sources()
        .get(s.source as usize)
        .map_or_else(|| "?".to_string(), |src| src.display_name.clone());
    format!("{} (host {}, namespace {})", source, s.host, s.namespace)
}

/// Explains `t` as a proxy with `snap` (built with DNS on) answers it; writes text or JSON.
pub fn explain(snap: &Snapshot, t: &DnsTarget, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let empty = NameTable::default();
    let names = snap.names.as_deref().unwrap_or(&empty);
    let view = snap.registry.view(&snap.namespace);
    let mut ex = DnsExplanation {
        name: t.name.clone(),
        qtype: t.qtype,
        namespace: snap.namespace.to_string(),
        outcome: "forwarded",
        answers: Vec::new(),
        service: None,
        reasons: Vec::new(),
    };
    match names.lookup(&t.name) {
        Some(hit) => local(snap, names, &mut ex, hit, t),
        None => {
            ex.reasons.push("not a name of the mesh: forwarded as asked to the upstream resolvers (--dns-upstream, else /etc/resolv.conf), whose answer is relayed and cached by its TTL".into());
            if let Some(s) = view.lookup_host(&t.name) {
                ex.service = Some(service_name(snap, s));
                ex.reasons.push(why_not(s));
            }
        }
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &ex)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "query: {} {} (a proxy in namespace {})",
        ex.name, ex.qtype, ex.namespace
    )?;
    writeln!(out, "outcome: {}", ex.outcome)?;
    if let Some(s) = &ex.service {
        writeln!(out, "service: {s}")?;
    }
    for r in &ex.reasons {
        writeln!(out, "  {r}")?;
    }
    if ex.outcome == "local" {
        if ex.answers.is_empty() {
            writeln!(out, "answer: NOERROR, no {} record (NODATA): the name exists", ex.qtype)?;
        } else {
            writeln!(out, "answer: NOERROR, authoritative")?;
        }
        for r in &ex.answers {
            writeln!(out, "  {}.\t{}\tIN\t{}\t{}", r.name, r.ttl, r.rtype, r.data)?;
        }
    }
    Ok(())
}

fn local(snap: &Snapshot, names: &NameTable, ex: &mut DnsExplanation, hit: Hit<'_>, t: &DnsTarget) {
    ex.outcome = "local";
    let e = hit.entry;
    let view = snap.registry.view(&snap.namespace);
    if let Some(s) = view.lookup_host(&e.host) {
        ex.service = Some(service_name(snap, s));
    }
    let mut owner = t.name.clone();
    if let (Some(len), Some(search)) = (hit.cname_to, hit.search) {
        let target = t.name[..len].to_string();
        ex.reasons.push(format!(
            "{} is {target} followed by the search domain {search} (what a resolver with ndots:5 asks first): a CNAME to {target}, so the search ends here (search domains: {})",
            t.name,
            names.search().join(", ")
        ));
        ex.answers.push(Record {
            name: t.name.clone(),
            rtype: "CNAME",
            ttl: TTL,
            data: format!("{target}."),
        });
        owner = target;
    }
    match (hit.how, e.alias) {
        (Match::Wildcard, _) => ex.reasons.push(format!("{owner} is under the wildcard host {}", e.host)),
        (Match::Exact, true) => ex.reasons.push(format!(
            "{owner} is a short name of the Kubernetes Service {} (name.namespace, name.namespace.svc, and name in its own namespace)",
            e.host
        )),
        (Match::Exact, false) => {}
    }
    ex.reasons.push(match e.origin {
        Origin::Addresses => "answered with the service's addresses (spec.addresses; a CIDR by the IP it was written with)".to_string(),
        Origin::Allocated { by_istiod: true } => "no spec.addresses: answered with the address istiod allocated (status.addresses)".to_string(),
        Origin::Allocated { by_istiod: false } => "no spec.addresses: answered with the address meshentry allocates (Istio's ranges 240.240.0.0/16 and 2001:2::/48, from a hash of namespace/host, the same on every proxy); connections to it are routed to this service".to_string(),
        Origin::Endpoints => "headless (resolution NONE, no addresses): answered with its endpoints' IPs".to_string(),
    });
    let ips: Vec<IpAddr> = match t.qtype {
        "A" => e.v4.iter().map(|ip| IpAddr::V4(*ip)).collect(),
        _ => e.v6.iter().map(|ip| IpAddr::V6(*ip)).collect(),
    };
    for ip in ips {
        ex.answers.push(Record {
            name: owner.clone(),
            rtype: t.qtype,
            ttl: TTL,
            data: ip.to_string(),
        });
    }
}

/// Why a service the namespace sees has no local answer.
fn why_not(s: &Service) -> String {
    if s.host.starts_with('*') {
        return format!(
            "{} is a wildcard host without an address that is an IP: nothing to answer with",
            s.host
        );
    }
    match (s.resolution, s.auto) {
        (Resolution::None, _) => "resolution NONE without addresses or endpoint IPs: nothing to answer with, as in Istio (give it addresses, or resolve the name elsewhere)".into(),
        (_, AutoAddresses::NotUsed) if s.addresses.is_empty() => "no addresses, and auto-allocation does not apply (the ServiceEntry opts out with networking.istio.io/enable-autoallocate-ip: \"false\")".into(),
        (_, AutoAddresses::Wanted) => "no addresses and none allocated: auto-allocation is off (PILOT_ENABLE_IP_AUTOALLOCATE: \"false\" in the mesh config)".into(),
        _ => "its addresses are ranges without a host IP: nothing to answer with".into(),
    }
}
