//! ServiceEntry check (Istio's `serviceentry.ConflictingServiceEntryProtocolAnalyzer`,
//! IST0177): ServiceEntries that give one host and port different protocols where some
//! namespace sees both. Only one protocol can be in effect for them (B8, B10).

use std::collections::BTreeMap;

use meshentry_api::model::ServiceEntry;

use super::msg::{self, quote};
use super::*;

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    // (scope, host as written, port) -> (protocol in upper case, ServiceEntry), in age order.
    type Key = (String, String, u32);
    let mut index: BTreeMap<Key, Vec<(String, &Resource)>> = BTreeMap::new();
    for &r in &cx.entries {
        let Spec::ServiceEntry(se) = &r.spec else { continue };
        for scope in scopes(se, &r.namespace) {
            for h in &se.hosts {
                for p in &se.ports {
                    index
                        .entry((scope.clone(), h.clone(), p.number))
                        .or_default()
                        .push((p.protocol.to_ascii_uppercase(), r));
                }
            }
        }
    }
    let mut reported: HashSet<*const Resource> = HashSet::new();
    for ((scope, host, port), entries) in &index {
        let mut all: Vec<&(String, &Resource)> = entries.iter().collect();
        if scope != "*"
            && let Some(public) = index.get(&("*".to_string(), host.clone(), *port))
        {
            all.extend(public.iter());
        }
        let mut protocols: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
        protocols.sort_unstable();
        protocols.dedup();
        if protocols.len() < 2 {
            continue;
        }
        let mut names: Vec<String> = all
            .iter()
            .map(|(_, r)| format!("{}/{}", r.namespace, r.meta.name))
            .collect();
        names.sort();
        names.dedup();
        for (_, r) in &all {
            if !reported.insert(*r) {
                continue;
            }
            out.report(
                r,
                "metadata.name",
                msg::CONFLICTING_SE_PROTOCOL,
                format!(
                    "Multiple ServiceEntries ({}) define the same host {} and port {port} with conflicting protocols ({}).",
                    names.join(", "),
                    quote(host),
                    protocols.join(", ")
                ),
                Some(
                    "a proxy uses one service per host (its own namespace's, else one exported to it by name, else the oldest; within a namespace the older ServiceEntry's port wins), so only one protocol applies; `meshentry registry --warnings` says which"
                        .into(),
                ),
            );
        }
    }
}

/// The scopes Istio's analyzer puts a ServiceEntry in: `*` when it is exported everywhere,
/// else each namespace of `exportTo` (`.` = its own).
fn scopes(se: &ServiceEntry, own: &str) -> Vec<String> {
    if se.export_to.is_empty() || se.export_to.iter().any(|e| e == "*") {
        return vec!["*".into()];
    }
    let mut out: Vec<String> = se
        .export_to
        .iter()
        .map(|e| if e == "." { own.to_string() } else { e.clone() })
        .collect();
    out.sort();
    out.dedup();
    out
}
