//! DestinationRule checks: a host that matches no service (IST0174), and subsets whose labels
//! select none of the service's endpoints (IST0173, D4).

use super::*;
use crate::model::Resolution;

pub(super) fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for dr in &cx.drs {
        check_one(cx, dr, out);
    }
}

fn check_one(cx: &Context<'_>, dr: &Dr<'_>, out: &mut Findings<'_>) {
    let ns = dr.r.namespace.as_str();
    let h = dr.host.as_str();
    if h.is_empty() || h == "*" {
        return;
    }
    // A rule applies to the services whose host it names or covers (Istio matches rules to
    // services by SubsetOf since istio/istio#19459), and only where the service is seen: from
    // the rule's namespace, or (D1) as the rule of the service's own namespace; a rule of the
    // root namespace applies everywhere.
    let applies = |s: &Service| ns == cx.root_namespace || *s.namespace == *ns || s.is_visible_to(ns);
    if cx.services.find_under(h, applies).is_none() {
        if let Some(msg) = unknown_host(cx, dr, applies) {
            out.warn(dr.r, "spec.host", msg);
        }
        return;
    }
    if !h.starts_with('*') {
        subsets_select_endpoints(cx, dr, applies, out);
    }
}

/// IST0174, with why.
fn unknown_host(cx: &Context<'_>, dr: &Dr<'_>, applies: impl Fn(&Service) -> bool) -> Option<String> {
    let h = dr.host.as_str();
    let ns = dr.r.namespace.as_str();
    let base = format!(
        "The host {} defined in the DestinationRule does not match any services in the mesh (IST0174)",
        dr.spec.host
    );
    if let Some(s) = cx.services.find_under(h, |_| true) {
        return Some(format!("{base}; {}, not to namespace {ns}", cx.invisible_service(s, h)));
    }
    if let Some(s) = cx.services.find_covering(h, applies) {
        return Some(format!(
            "{base}; {} has host {:?}, which covers it, but a DestinationRule applies only to the services whose host it names or covers: write host {:?}",
            cx.source_of(s),
            &*s.host,
            &*s.host
        ));
    }
    if is_cluster_local(h) {
        return cx
            .short_name_trap(&dr.spec.host, h)
            .map(|hint| format!("{base}; {hint}"));
    }
    Some(base)
}

/// IST0173 (D4): a subset's endpoints are the service's endpoints whose labels contain the
/// subset's; none means every request routed to the subset fails. Only for services whose
/// endpoints are used: not NONE (original destination).
fn subsets_select_endpoints(cx: &Context<'_>, dr: &Dr<'_>, applies: impl Fn(&Service) -> bool, out: &mut Findings<'_>) {
    let services: Vec<&Service> = cx
        .services
        .exact(&dr.host)
        .filter(|s| applies(s) && s.resolution != Resolution::None && !s.endpoints.is_empty())
        .collect();
    if services.is_empty() {
        return;
    }
    for (i, subset) in dr.spec.subsets.iter().enumerate() {
        if subset.labels.is_empty() {
            continue;
        }
        let selects = services.iter().any(|s| {
            s.endpoints
                .iter()
                .any(|e| subset.labels.iter().all(|(k, v)| e.workload.labels.get(k) == Some(v)))
        });
        if selects {
            continue;
        }
        let labels: Vec<String> = subset.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let owners: Vec<&str> = services.iter().map(|s| cx.source_of(s)).collect();
        out.warn(
            dr.r,
            &format!("spec.subsets[{i}].labels"),
            format!(
                "The Subset {} defined in the DestinationRule does not select any pods (IST0173); no endpoint of {} has the labels {}, so requests routed to subset {} fail with 503 (no healthy upstream)",
                subset.name,
                owners.join(", "),
                labels.join(","),
                subset.name
            ),
        );
    }
}
