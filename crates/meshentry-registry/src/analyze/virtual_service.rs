//! VirtualService checks: the gateways it names (IST0101, E2), whether they serve its hosts
//! (IST0132) and see it (F2), match-level gateways it is not bound to, hosts no service
//! matches (E1), route and mirror destinations, their ports and subsets (IST0101, D1, D2),
//! and hosts claimed by several mesh VirtualServices (IST0109, E3).

use meshentry_api::model::Destination;
use meshentry_api::resource::KubeGateway;
use meshentry_api::suggest::did_you_mean;

use super::*;
use crate::host;

/// How a gateway reference was written (E2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `ns/name`.
    Qualified,
    /// `./name`.
    Dot,
    /// `name`.
    Bare,
    /// `name.ns[.svc.cluster.local]`.
    Legacy,
}

#[derive(Debug, PartialEq, Eq)]
struct GatewayName {
    ns: String,
    name: String,
    form: Form,
}

/// E2 (Istio's `resolveGatewayName`): `None` for `mesh`; `./name` and a bare `name` are in the
/// VirtualService's namespace; the legacy `name.ns...` is `ns/name`.
fn resolve_gateway(written: &str, vs_ns: &str) -> Option<GatewayName> {
    if written == "mesh" {
        return None;
    }
    let (ns, name, form) = match written.split_once('/') {
        Some((".", name)) => (vs_ns, name, Form::Dot),
        Some((ns, name)) => (ns, name, Form::Qualified),
        None => match written.split_once('.') {
            Some((name, rest)) => (rest.split('.').next().unwrap_or(rest), name, Form::Legacy),
            None => (vs_ns, written, Form::Bare),
        },
    };
    Some(GatewayName {
        ns: ns.to_string(),
        name: name.to_string(),
        form,
    })
}

/// Where a rule applies: sidecars (the `mesh` gateway) or one Gateway's proxies.
#[derive(Clone, Copy)]
enum Applies<'c, 'a> {
    Mesh,
    Gateway(&'c Gw<'a>),
}

/// The references one rule makes.
struct Rule<'v> {
    /// `spec.http[0]`.
    path: String,
    /// Each match block's `gateways`.
    matches: Vec<&'v [String]>,
    /// `(path, destination, is a mirror)`.
    destinations: Vec<(String, &'v Destination, bool)>,
}

fn l4_rule<'v>(
    kind: &str,
    i: usize,
    matches: Vec<&'v [String]>,
    route: &'v [meshentry_api::model::RouteDestination],
) -> Rule<'v> {
    let path = format!("spec.{kind}[{i}]");
    Rule {
        matches,
        destinations: route
            .iter()
            .enumerate()
            .filter_map(|(j, d)| Some((format!("{path}.route[{j}].destination"), d.destination.as_ref()?, false)))
            .collect(),
        path,
    }
}

fn rules(vs: &VirtualService) -> Vec<Rule<'_>> {
    let mut out = Vec::new();
    for (i, h) in vs.http.iter().enumerate() {
        let path = format!("spec.http[{i}]");
        let mut destinations: Vec<(String, &Destination, bool)> = h
            .route
            .iter()
            .enumerate()
            .filter_map(|(j, d)| Some((format!("{path}.route[{j}].destination"), d.destination.as_ref()?, false)))
            .collect();
        if let Some(m) = &h.mirror {
            destinations.push((format!("{path}.mirror"), m, true));
        }
        for (k, m) in h.mirrors.iter().enumerate() {
            if let Some(d) = &m.destination {
                destinations.push((format!("{path}.mirrors[{k}].destination"), d, true));
            }
        }
        out.push(Rule {
            matches: h.r#match.iter().map(|m| m.gateways.as_slice()).collect(),
            destinations,
            path,
        });
    }
    for (i, t) in vs.tls.iter().enumerate() {
        out.push(l4_rule(
            "tls",
            i,
            t.r#match.iter().map(|m| m.gateways.as_slice()).collect(),
            &t.route,
        ));
    }
    for (i, t) in vs.tcp.iter().enumerate() {
        out.push(l4_rule(
            "tcp",
            i,
            t.r#match.iter().map(|m| m.gateways.as_slice()).collect(),
            &t.route,
        ));
    }
    out
}

/// E2: gateways omitted = `[mesh]`.
fn mesh_bound(vs: &VirtualService) -> bool {
    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
}

/// A note for messages: "port 80 only" is all sidecars give a host no service matches (E1).
const PORT_80_ONLY: &str = "sidecars apply this VirtualService to it only for HTTP on port 80";

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for vs in &cx.vss {
        check_one(cx, vs, out);
    }
    conflicting_mesh_hosts(cx, out);
}

fn check_one(cx: &Context<'_>, vs: &Vs<'_>, out: &mut Findings<'_>) {
    let r = vs.r;
    let ns = r.namespace.as_str();
    let spec = vs.spec;
    let on_mesh = mesh_bound(spec);

    // Top-level gateways: each must exist, see this VirtualService and serve one of its hosts.
    let mut named: Vec<(String, String)> = Vec::new();
    let mut bound: Vec<&Gw<'_>> = Vec::new();
    let mut all_exist = true;
    let mut served = vec![false; vs.hosts.len()];
    for (i, written) in spec.gateways.iter().enumerate() {
        let Some(name) = resolve_gateway(written, ns) else {
            continue;
        };
        let path = format!("spec.gateways[{i}]");
        named.push((name.ns.clone(), name.name.clone()));
        let Some(gw) = cx.gateway(&name.ns, &name.name) else {
            // Istio's analyzer looks for a Gateway API Gateway of that name next.
            if let Some(kube) = out.loaded.kube_gateway(&name.ns, &name.name) {
                kube_gateway_hosts(vs, kube, &mut served, &path, out);
                continue;
            }
            all_exist = false;
            out.warn(r, &path, missing_gateway(cx, &name, written));
            continue;
        };
        if bound.iter().any(|b| std::ptr::eq(*b, gw)) {
            continue;
        }
        if !vs.export.is_visible(gw.ns()) {
            out.warn(
                r,
                &path,
                format!(
                    "Gateway {} is in namespace {}, to which this VirtualService is not exported (it is exported to {}): the gateway's proxies ignore it",
                    gw.full_name(),
                    gw.ns(),
                    describe_scope(&vs.export)
                ),
            );
            continue;
        }
        bound.push(gw);
        if vs.hosts.is_empty() {
            continue;
        }
        let admitted = |sns: &str| sns == "*" || sns == ns;
        let mut any = false;
        for (k, h) in vs.hosts.iter().enumerate() {
            if gw.hosts.iter().any(|(sns, sh)| admitted(sns) && host::matches(h, sh)) {
                served[k] = true;
                any = true;
            }
        }
        if !any {
            let mut msg = format!(
                "one or more host [{}] defined in VirtualService {ns}/{} not found in Gateway {} (IST0132)",
                spec.hosts.join(" "),
                r.meta.name,
                gw.full_name()
            );
            if let Some((sns, sh)) = gw
                .hosts
                .iter()
                .find(|(sns, sh)| !admitted(sns) && vs.hosts.iter().any(|h| host::matches(h, sh)))
            {
                msg.push_str(&format!(
                    "; its server host \"{sns}/{sh}\" admits only VirtualServices of namespace {sns}"
                ));
            }
            out.warn(r, &path, msg);
        }
    }

    // Hosts that nothing serves.
    if !vs.hosts.is_empty() {
        if on_mesh {
            for (k, h) in vs.hosts.iter().enumerate() {
                if let Some(msg) = mesh_host(cx, vs, &spec.hosts[k], h) {
                    out.warn(r, &format!("spec.hosts[{k}]"), msg);
                }
            }
        } else if all_exist && served.iter().any(|&s| s) {
            let names: Vec<String> = bound.iter().map(|g| g.full_name()).collect();
            for (k, _) in served.iter().enumerate().filter(|(_, s)| !**s) {
                out.warn(
                    r,
                    &format!("spec.hosts[{k}]"),
                    format!(
                        "host {:?} matches no server host of the VirtualService's gateways ({}), so no gateway routes it",
                        spec.hosts[k],
                        names.join(", ")
                    ),
                );
            }
        }
    }

    // Rules: match-level gateways, then destinations where the rule applies.
    for rule in rules(spec) {
        for (j, gateways) in rule.matches.iter().enumerate() {
            for (k, written) in gateways.iter().enumerate() {
                let path = format!("{}.match[{j}].gateways[{k}]", rule.path);
                match resolve_gateway(written, ns) {
                    None if !on_mesh => out.warn(
                        r,
                        &path,
                        "\"mesh\" is not in spec.gateways, so this match never applies".into(),
                    ),
                    None => {}
                    Some(name)
                        if cx.gateway(&name.ns, &name.name).is_none()
                            && out.loaded.kube_gateway(&name.ns, &name.name).is_none() =>
                    {
                        out.warn(r, &path, missing_gateway(cx, &name, written))
                    }
                    Some(name) if !named.iter().any(|(n, g)| *n == name.ns && *g == name.name) => out.warn(
                        r,
                        &path,
                        format!(
                            "gateway \"{}/{}\" is not in spec.gateways, so this match never applies",
                            name.ns, name.name
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        let applies = applies_to(cx, ns, on_mesh, &bound, &named, &rule.matches);
        for (path, d, mirror) in &rule.destinations {
            check_destination(cx, vs, &applies, path, d, *mirror, out);
        }
    }
}

/// Where a rule applies: the top-level binding for a rule with no match or a match without
/// `gateways`, and the match-level gateways that are also bound at the top (E2).
fn applies_to<'c, 'a>(
    cx: &'c Context<'a>,
    ns: &str,
    on_mesh: bool,
    bound: &[&'c Gw<'a>],
    named: &[(String, String)],
    matches: &[&[String]],
) -> Vec<Applies<'c, 'a>> {
    let mut out: Vec<Applies<'c, 'a>> = Vec::new();
    let mut add = |a: Applies<'c, 'a>| {
        let seen = out.iter().any(|b| match (a, b) {
            (Applies::Mesh, Applies::Mesh) => true,
            (Applies::Gateway(x), Applies::Gateway(y)) => std::ptr::eq(x, *y),
            _ => false,
        });
        if !seen {
            out.push(a);
        }
    };
    if matches.is_empty() || matches.iter().any(|g| g.is_empty()) {
        if on_mesh {
            add(Applies::Mesh);
        }
        for g in bound {
            add(Applies::Gateway(g));
        }
    }
    for gateways in matches {
        for written in *gateways {
            match resolve_gateway(written, ns) {
                None if on_mesh => add(Applies::Mesh),
                None => {}
                Some(name) => {
                    let bound_here = named.iter().any(|(n, g)| *n == name.ns && *g == name.name);
                    if bound_here
                        && let Some(gw) = cx.gateway(&name.ns, &name.name)
                        && bound.iter().any(|b| std::ptr::eq(*b, gw))
                    {
                        add(Applies::Gateway(gw));
                    }
                }
            }
        }
    }
    out
}

/// IST0132 for a Gateway API Gateway, as Istio's analyzer checks it: a listener without a
/// hostname serves every host; otherwise some listener hostname must match some host as
/// written. Marks the hosts it serves.
fn kube_gateway_hosts(vs: &Vs<'_>, kube: &KubeGateway, served: &mut [bool], path: &str, out: &mut Findings<'_>) {
    let spec = vs.spec;
    let mut any = false;
    for (k, h) in spec.hosts.iter().enumerate() {
        let hit = kube
            .hostnames
            .iter()
            .any(|l| l.as_deref().is_none_or(|l| host::matches(h, l)));
        if hit {
            any = true;
            if let Some(s) = served.get_mut(k) {
                *s = true;
            }
        }
    }
    if !any && !spec.hosts.is_empty() {
        let msg = format!(
            "one or more host [{}] defined in VirtualService {}/{} not found in Gateway {}/{} (IST0132)",
            spec.hosts.join(" "),
            vs.r.namespace,
            vs.r.meta.name,
            kube.namespace,
            kube.name
        );
        out.warn(vs.r, path, msg);
    }
}

/// IST0101 for a gateway reference that names no Gateway, with the likely intended one.
fn missing_gateway(cx: &Context<'_>, name: &GatewayName, written: &str) -> String {
    let full = format!("{}/{}", name.ns, name.name);
    let mut msg = format!("Referenced gateway not found: {full:?} (IST0101)");
    let why = match name.form {
        Form::Bare => Some("a gateway name without a namespace means the VirtualService's namespace".to_string()),
        Form::Dot => Some("\"./\" means the VirtualService's namespace".to_string()),
        Form::Legacy => Some(format!("the legacy name {written:?} means {full:?}")),
        Form::Qualified => None,
    };
    let elsewhere = cx.gateway_namespaces.get(name.name.as_str());
    if let Some(list) = elsewhere.filter(|l| !l.is_empty()) {
        let ns = list.iter().find(|n| **n == cx.root_namespace).unwrap_or(&list[0]);
        msg.push_str("; ");
        if let Some(why) = why {
            msg.push_str(&why);
            msg.push_str(": ");
        }
        msg.push_str(&format!("did you mean \"{ns}/{}\"?", name.name));
    } else {
        let in_ns = cx
            .gateways
            .get(name.ns.as_str())
            .into_iter()
            .flat_map(|m| m.keys().copied());
        if let Some(close) = did_you_mean(&name.name, in_ns) {
            msg.push_str(&format!("; did you mean \"{}/{close}\"?", name.ns));
        }
    }
    msg
}

/// A host of a mesh-bound VirtualService that no service visible to it matches (E1).
fn mesh_host(cx: &Context<'_>, vs: &Vs<'_>, written: &str, h: &str) -> Option<String> {
    if h == "*" || h.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let scope = scope_namespaces(&vs.export, &vs.r.namespace);
    if cx
        .services
        .find_matching(h, |s| scope.iter().any(|n| s.is_visible_to(n)))
        .is_some()
    {
        return None;
    }
    let seen_by = list_namespaces(scope.iter().copied());
    if let Some(s) = cx.services.find_matching(h, |_| true) {
        return Some(format!(
            "host {written:?} matches no service visible to {seen_by} ({}); {PORT_80_ONLY}",
            cx.invisible_service(s, h)
        ));
    }
    if is_cluster_local(h) {
        return cx
            .short_name_trap(written, h)
            .map(|hint| format!("host {written:?} matches no service: {hint}; {PORT_80_ONLY}"));
    }
    Some(format!(
        "host {written:?} matches no service visible to {seen_by}; {PORT_80_ONLY}"
    ))
}

/// What to say about a destination host no service matches where the rule applies.
enum Missing {
    Report(String),
    /// In the cluster domain: a Kubernetes Service meshentry cannot see.
    Kubernetes,
}

fn missing_host(cx: &Context<'_>, written: &str, h: &str, label: &str, who: &str) -> Missing {
    if let Some(s) = cx.services.find_covering(h, |_| true) {
        return Missing::Report(format!(
            "Referenced {label} not found: {written:?} (IST0101); {}, so {who} do not see it",
            cx.invisible_service(s, h)
        ));
    }
    if is_cluster_local(h) {
        return match cx.short_name_trap(written, h) {
            Some(hint) => Missing::Report(format!("Referenced {label} not found: {written:?} (IST0101); {hint}")),
            None => Missing::Kubernetes,
        };
    }
    Missing::Report(format!("Referenced {label} not found: {written:?} (IST0101)"))
}

/// The proxy namespaces where a rule applies, and who they are, for messages.
fn proxies(a: Applies<'_, '_>, scope: &[&str]) -> (Vec<String>, String) {
    match a {
        Applies::Mesh => (
            scope.iter().map(|n| n.to_string()).collect(),
            format!("sidecars in {}", list_namespaces(scope.iter().copied())),
        ),
        Applies::Gateway(g) => (
            vec![g.ns().to_string()],
            format!("proxies of Gateway {} (namespace {})", g.full_name(), g.ns()),
        ),
    }
}

fn check_destination(
    cx: &Context<'_>,
    vs: &Vs<'_>,
    applies: &[Applies<'_, '_>],
    path: &str,
    d: &Destination,
    mirror: bool,
    out: &mut Findings<'_>,
) {
    if d.host.is_empty() || applies.is_empty() {
        return;
    }
    let ns = vs.r.namespace.as_str();
    let h = expand_host(&d.host, ns);
    let scope = scope_namespaces(&vs.export, ns);
    let label = if mirror { "mirror host" } else { "host" };
    let mut service = None;
    for &a in applies {
        let (nss, who) = proxies(a, &scope);
        match cx
            .services
            .find_covering(&h, |s| nss.iter().any(|n| s.is_visible_to(n)))
        {
            Some(s) => {
                service.get_or_insert(s);
            }
            None => match missing_host(cx, &d.host, &h, label, &who) {
                Missing::Report(msg) => {
                    out.warn(vs.r, &format!("{path}.host"), msg);
                    return;
                }
                Missing::Kubernetes => {}
            },
        }
    }
    if let (Some(s), Some(port)) = (service, &d.port)
        && port.number != 0
        && s.port(port.number).is_none()
    {
        let ports: Vec<String> = s.ports.iter().map(|p| p.number.to_string()).collect();
        out.warn(
            vs.r,
            &format!("{path}.port.number"),
            format!(
                "Referenced host:port not found: \"{}:{}\" (IST0101); {} declares {} {}",
                d.host,
                port.number,
                cx.describe_service(s, &h),
                if ports.len() == 1 { "port" } else { "ports" },
                ports.join(", ")
            ),
        );
    }
    if !d.subset.is_empty() {
        check_subset(cx, vs, applies, path, d, &h, out);
    }
}

/// D1/D2: the subset must be defined by the DestinationRule that applies to the destination's
/// service in each proxy namespace where the rule applies.
fn check_subset(
    cx: &Context<'_>,
    vs: &Vs<'_>,
    applies: &[Applies<'_, '_>],
    path: &str,
    d: &Destination,
    h: &str,
    out: &mut Findings<'_>,
) {
    let scope = scope_namespaces(&vs.export, &vs.r.namespace);
    for &a in applies {
        let (nss, _) = proxies(a, &scope);
        for p in &nss {
            let (svc_host, svc_ns) = match cx.registry.view(p).lookup_host(h) {
                Some(s) => (normalize(&s.host).into_owned(), s.namespace.to_string()),
                None if is_cluster_local(h) => (h.to_string(), cluster_namespace(h).unwrap_or(p).to_string()),
                None => continue,
            };
            let rules = cx.applicable_drs(p, &svc_host, &svc_ns);
            let mut subsets: Vec<&str> = Vec::new();
            for dr in &rules {
                for s in &dr.spec.subsets {
                    if !subsets.contains(&s.name.as_str()) {
                        subsets.push(&s.name);
                    }
                }
            }
            if subsets.contains(&d.subset.as_str()) {
                continue;
            }
            let mut msg = format!(
                "Referenced host+subset in destinationrule not found: \"{}+{}\" (IST0101); ",
                d.host, d.subset
            );
            if rules.is_empty() {
                msg.push_str(&format!("no DestinationRule for {svc_host} applies to namespace {p}"));
            } else {
                let names: Vec<String> = rules.iter().map(|dr| dr.r.display_name()).collect();
                let defined = if subsets.is_empty() {
                    "no subsets".to_string()
                } else {
                    format!("subsets {}", subsets.join(", "))
                };
                msg.push_str(&format!(
                    "{} for {svc_host} {} to namespace {p} and {} {defined}",
                    names.join(", "),
                    if names.len() == 1 { "applies" } else { "apply" },
                    if names.len() == 1 { "defines" } else { "define" },
                ));
            }
            let other = cx.drs_by_host.get(svc_host.as_str()).and_then(|ids| {
                ids.iter().map(|&i| &cx.drs[i as usize]).find(|dr| {
                    !rules.iter().any(|r| std::ptr::eq(*r, *dr)) && dr.spec.subsets.iter().any(|s| s.name == d.subset)
                })
            });
            if let Some(dr) = other {
                msg.push_str(&format!(
                    "; {} defines {:?} but does not apply there (a DestinationRule applies from the proxy's namespace, else the service's, else {})",
                    dr.r.display_name(),
                    d.subset,
                    cx.root_namespace
                ));
            }
            out.warn(vs.r, &format!("{path}.subset"), msg);
            return;
        }
    }
}

impl<'a> Context<'a> {
    /// D1: the DestinationRules a proxy in namespace `p` uses for the service `svc_host` of
    /// namespace `svc_ns`: those of `p` exported to it, else those of the service's namespace
    /// exported to `p`, else those of the root namespace; within the first namespace that has
    /// any, the most specific host (D2 merges the rules of that host).
    fn applicable_drs(&self, p: &str, svc_host: &str, svc_ns: &str) -> Vec<&Dr<'a>> {
        let mut steps: Vec<(&str, bool)> = vec![(p, true)];
        for ns in [svc_ns, self.root_namespace] {
            if !steps.iter().any(|(n, _)| *n == ns) {
                steps.push((ns, false));
            }
        }
        let (tail, wild) = match svc_host.strip_prefix('*') {
            Some(t) => (t, true),
            None => (svc_host, false),
        };
        let mut keys: Vec<String> = vec![svc_host.to_string()];
        for (i, _) in tail.match_indices('.') {
            if i > 0 || !wild {
                keys.push(format!("*{}", &tail[i..]));
            }
        }
        for (ns, own) in steps {
            let Some(rules) = self.drs_by_ns.get(ns) else { continue };
            let usable = |i: &u32| {
                let dr = &self.drs[*i as usize];
                dr.export.is_visible(p) && (own || dr.spec.workload_selector.is_none())
            };
            let partial = rules
                .partial
                .iter()
                .map(|k| &**k)
                .filter(|k| host::subset_of(svc_host, k));
            let ordered = keys.iter().map(String::as_str).chain(partial).chain(["*"]);
            for key in ordered {
                if let Some(ids) = rules.by_host.get(key) {
                    let found: Vec<&Dr<'a>> = ids
                        .iter()
                        .filter(|i| usable(i))
                        .map(|&i| &self.drs[i as usize])
                        .collect();
                    if !found.is_empty() {
                        return found;
                    }
                }
            }
        }
        Vec::new()
    }
}

/// IST0109: two VirtualServices bound to the mesh with the same host, seen together by some
/// namespace; a sidecar uses only one of them for the host (E3).
fn conflicting_mesh_hosts(cx: &Context<'_>, out: &mut Findings<'_>) {
    let mut by_host: HashMap<&str, Vec<(usize, usize)>> = HashMap::default();
    for (i, vs) in cx.vss.iter().enumerate() {
        if !mesh_bound(vs.spec) {
            continue;
        }
        for (k, h) in vs.hosts.iter().enumerate() {
            let list = by_host.entry(h.as_str()).or_default();
            if list.last().is_none_or(|(j, _)| *j != i) {
                list.push((i, k));
            }
        }
    }
    let mut groups: Vec<(&str, Vec<(usize, usize)>)> = by_host.into_iter().filter(|(_, l)| l.len() > 1).collect();
    groups.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (h, members) in groups {
        // Who shares a namespace with another member: linear, with counts per namespace.
        let mut public = 0usize;
        let mut per_ns: HashMap<&str, usize> = HashMap::default();
        for &(i, _) in &members {
            match &cx.vss[i].export.scope {
                Scope::Public => public += 1,
                Scope::Nobody => {}
                Scope::Namespaces(names) => {
                    for n in names.iter() {
                        *per_ns.entry(&**n).or_default() += 1;
                    }
                }
            }
        }
        let others_seen = members.len()
            - members
                .iter()
                .filter(|(i, _)| cx.vss[*i].export.scope == Scope::Nobody)
                .count();
        let conflicting: Vec<(usize, usize)> = members
            .into_iter()
            .filter(|&(i, _)| match &cx.vss[i].export.scope {
                Scope::Public => others_seen > 1,
                Scope::Nobody => false,
                Scope::Namespaces(names) => public > 0 || names.iter().any(|n| per_ns[&**n] > 1),
            })
            .collect();
        if conflicting.len() < 2 {
            continue;
        }
        let names: Vec<String> = conflicting
            .iter()
            .map(|&(i, _)| format!("{}/{}", cx.vss[i].r.namespace, cx.vss[i].r.meta.name))
            .collect();
        let names = names.join(",");
        for (i, k) in conflicting {
            out.warn(
                cx.vss[i].r,
                &format!("spec.hosts[{k}]"),
                format!(
                    "The VirtualServices {names} associated with mesh gateway define the same host {h} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource (IST0109); a sidecar applies only the first of them it sees (its own namespace's, else the oldest)"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_resolve_as_istio_does() {
        let n = |ns: &str, name: &str, form| {
            Some(GatewayName {
                ns: ns.into(),
                name: name.into(),
                form,
            })
        };
        assert_eq!(resolve_gateway("mesh", "a"), None);
        assert_eq!(resolve_gateway("gw", "a"), n("a", "gw", Form::Bare));
        assert_eq!(resolve_gateway("./gw", "a"), n("a", "gw", Form::Dot));
        assert_eq!(resolve_gateway("b/gw", "a"), n("b", "gw", Form::Qualified));
        assert_eq!(
            resolve_gateway("gw.b.svc.cluster.local", "a"),
            n("b", "gw", Form::Legacy)
        );
        assert_eq!(resolve_gateway("gw.b", "a"), n("b", "gw", Form::Legacy));
    }
}
