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
}
