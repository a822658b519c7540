//! Host name matching (B11), as Istio's `host.Name` does it: a wildcard `*suffix` covers the
//! names ending in `suffix` (`*.a.com` covers `b.a.com` and `x.b.a.com`, not `a.com`), and `*`
//! covers everything.

/// Symmetric `Matches`: the two host sets intersect (VirtualService and gateway host binding).
pub fn matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => a.eq_ignore_ascii_case(b),
        (Some(sa), None) => ends_with_ci(b, sa),
        (None, Some(sb)) => ends_with_ci(a, sb),
        (Some(sa), Some(sb)) => {
            if sa.len() >= sb.len() {
                ends_with_ci(sa, sb)
            } else {
                ends_with_ci(sb, sa)
            }
        }
    }
}

/// One-way `SubsetOf`: every name `a` covers, `b` covers too (Sidecar imports, sniHosts).
pub fn subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (_, Some(sb)) => ends_with_ci(a.strip_prefix('*').unwrap_or(a), sb),
        (Some(_), None) => false,
        (None, None) => a.eq_ignore_ascii_case(b),
    }
}

fn ends_with_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len() && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The domain of Kubernetes Service hosts (`name.ns.svc.cluster.local`).
pub const CLUSTER_SUFFIX: &str = ".svc.cluster.local";

/// Lower case, one trailing dot dropped: the form hosts are compared in.
pub fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

/// E1/D1: a host without a dot is short for `<host>.<namespace>.svc.cluster.local`.
/// Normalized ([`normalize`]); `*` and IP addresses stay as they are. [`expand_in`] for
/// another cluster domain.
pub fn expand(host: &str, namespace: &str) -> String {
    expand_in(host, namespace, &meshentry_api::ClusterDomain::default())
}

/// [`expand`] in cluster domain `domain`: `<host>.<namespace>.svc.<domain>` (Istio's
/// `ResolveShortnameToFQDN` with the proxy's `DNSDomain`).
pub fn expand_in(host: &str, namespace: &str, domain: &meshentry_api::ClusterDomain) -> String {
    let host = normalize(host);
    if host.contains('.') || *host == *"*" || host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        host.into_owned()
    } else {
        domain.service_host(&host, namespace)
    }
}

/// B11 one name at a time: `pattern` is `name`, or `*suffix` with `name` longer and ending in
/// `suffix` (`*.a.com` covers `b.a.com`, not `a.com`), or `*`. Both already normalized.
pub fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    #[test_case("a.com", "a.com", true, true; "same")]
    #[test_case("b.a.com", "*.a.com", true, true; "name under wildcard")]
    #[test_case("x.b.a.com", "*.a.com", true, true; "two labels under wildcard")]
    #[test_case("a.com", "*.a.com", false, false; "wildcard does not cover its base")]
    #[test_case("*.a.com", "b.a.com", true, false; "wildcard is not a subset of a name")]
    #[test_case("*.b.a.com", "*.a.com", true, true; "narrower wildcard")]
    #[test_case("*.a.com", "*.b.a.com", true, false; "wider wildcard")]
    #[test_case("anything.org", "*", true, true; "star")]
    #[test_case("B.A.com", "*.a.COM", true, true; "case")]
    fn host_matching(a: &str, b: &str, m: bool, s: bool) {
        assert_eq!(matches(a, b), m, "matches({a}, {b})");
        assert_eq!(matches(b, a), m, "matches is symmetric");
        assert_eq!(subset_of(a, b), s, "subset_of({a}, {b})");
    }

    #[test]
    fn short_names_expand_in_one_normal_form() {
        // The proxy's DestinationRule and VirtualService tables once expanded with different
        // case rules: `Reviews` stayed upper case in one and matched no service.
        assert_eq!(expand("Reviews", "ns"), "reviews.ns.svc.cluster.local");
        assert_eq!(
            expand("reviews.ns.svc.cluster.local.", "x"),
            "reviews.ns.svc.cluster.local"
        );
        assert_eq!(expand("A.COM", "ns"), "a.com");
        assert_eq!(expand("*", "ns"), "*");
        assert_eq!(expand("10.0.0.1", "ns"), "10.0.0.1");
        assert!(covers("*.a.com", "b.a.com"));
        assert!(!covers("*.a.com", "a.com"));
        assert!(covers("*", "a.com"));
        assert!(covers("a.com", "a.com"));
    }
}
