//! An index of host names (services' or VirtualServices') for the three questions analysis asks
//! (B11): which entries name a host exactly, which cover it (`*.a.com` covers `b.a.com`), and
//! which it covers. Each answer costs a few hash lookups, not a scan; the index of the last
//! question is built on first use, since only wildcard references ask it.

use std::cell::OnceCell;

use crate::hash::FxHashMap as HashMap;
use crate::host;

pub(crate) use crate::host::normalize;

pub(crate) struct HostIndex<T> {
    entries: Vec<(Box<str>, T)>,
    /// Normalized host (wildcards verbatim) -> entries.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Partial wildcards (`*foo.a.com`): rare, so scanned.
    partial: Vec<u32>,
    /// `.a.com` -> the entries whose names lie under `*.a.com` (`b.a.com`, `*.b.a.com`,
    /// `*.a.com` itself).
    suffix: OnceCell<HashMap<Box<str>, Vec<u32>>>,
}

impl<T: Copy> HostIndex<T> {
    pub fn new<S: AsRef<str>>(items: impl IntoIterator<Item = (S, T)>) -> Self {
        let mut index = HostIndex {
            entries: Vec::new(),
            exact: HashMap::default(),
            partial: Vec::new(),
            suffix: OnceCell::new(),
        };
        for (h, value) in items {
            let h = normalize(h.as_ref());
            let i = index.entries.len() as u32;
            if h.starts_with('*') && !h.starts_with("*.") && *h != *"*" {
                index.partial.push(i);
            }
            index.exact.entry(Box::from(&*h)).or_default().push(i);
            index.entries.push((h.into(), value));
        }
        index
    }

    fn pick(&self, ids: Option<&Vec<u32>>, f: &mut impl FnMut(T) -> bool) -> Option<T> {
        ids?.iter().map(|&i| self.entries[i as usize].1).find(|&v| f(v))
    }

    /// The first entry `f` accepts that is named exactly `name`.
    pub fn find_exact(&self, name: &str, mut f: impl FnMut(T) -> bool) -> Option<T> {
        self.pick(self.exact.get(&*normalize(name)), &mut f)
    }

    /// The first entry `f` accepts whose host covers `name` (`host::subset_of(name, entry)`):
    /// the exact name first, then wildcards from the most specific.
    pub fn find_covering(&self, name: &str, mut f: impl FnMut(T) -> bool) -> Option<T> {
        let name = normalize(name);
        if let Some(v) = self.pick(self.exact.get(&*name), &mut f) {
            return Some(v);
        }
        let (tail, wild) = match name.strip_prefix('*') {
            Some(t) => (t, true),
            None => (&*name, false),
        };
        let mut key = String::with_capacity(name.len() + 1);
        for (i, _) in tail.match_indices('.') {
            if i == 0 && wild {
                continue; // `*` + the whole tail is `name` itself
            }
            key.clear();
            key.push('*');
            key.push_str(&tail[i..]);
            if let Some(v) = self.pick(self.exact.get(key.as_str()), &mut f) {
                return Some(v);
            }
        }
        if let Some(v) = self.pick(self.exact.get("*"), &mut f) {
            return Some(v);
        }
        self.partial
            .iter()
            .map(|&i| &self.entries[i as usize])
            .find(|(h, v)| host::subset_of(&name, h) && f(*v))
            .map(|(_, v)| *v)
    }

    /// The first entry `f` accepts whose host `pattern` covers (`host::subset_of(entry,
    /// pattern)`).
    pub fn find_under(&self, pattern: &str, mut f: impl FnMut(T) -> bool) -> Option<T> {
        let pattern = normalize(pattern);
        if *pattern == *"*" {
            return self.entries.iter().map(|(_, v)| *v).find(|&v| f(v));
        }
        if let Some(base) = pattern.strip_prefix('*') {
            if base.starts_with('.') {
                let ids = self.suffixes().get(base);
                return ids?
                    .iter()
                    .map(|&i| &self.entries[i as usize])
                    .find(|(h, v)| host::subset_of(h, &pattern) && f(*v))
                    .map(|(_, v)| *v);
            }
            return self
                .entries
                .iter()
                .find(|(h, v)| host::subset_of(h, &pattern) && f(*v))
                .map(|(_, v)| *v);
        }
        self.pick(self.exact.get(&*pattern), &mut f)
    }

    /// The first entry `f` accepts whose host intersects `host` (B11's symmetric `Matches`).
    pub fn find_matching(&self, host: &str, mut f: impl FnMut(T) -> bool) -> Option<T> {
        self.find_covering(host, &mut f).or_else(|| {
            if host.starts_with('*') {
                self.find_under(host, &mut f)
            } else {
                None
            }
        })
    }

    fn suffixes(&self) -> &HashMap<Box<str>, Vec<u32>> {
        self.suffix.get_or_init(|| {
            let mut map: HashMap<Box<str>, Vec<u32>> = HashMap::default();
            for (i, (h, _)) in self.entries.iter().enumerate() {
                if **h == *"*" {
                    continue;
                }
                let (tail, wild) = match h.strip_prefix('*') {
                    Some(t) => (t, true),
                    None => (&**h, false),
                };
                for (at, _) in tail.match_indices('.') {
                    if at > 0 || wild {
                        map.entry(tail[at..].into()).or_default().push(i as u32);
                    }
                }
            }
            map
        })
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    fn index() -> HostIndex<&'static str> {
        let hosts = [
            "a.com",
            "B.a.com",
            "x.b.a.com",
            "*.a.com",
            "*.b.a.com",
            "*.org",
            "*-api.example.net",
            "other.net.",
        ];
        HostIndex::new(hosts.map(|h| (h, h)))
    }

    /// Every entry a `find_*` call visits: the filter records each and accepts none.
    fn all(f: impl Fn(&mut dyn FnMut(&'static str) -> bool) -> Option<&'static str>) -> Vec<&'static str> {
        let mut seen = Vec::new();
        let found = f(&mut |v| {
            seen.push(v);
            false
        });
        assert_eq!(found, None);
        seen.sort_unstable();
        seen
    }

    #[test_case("b.a.com", &["*.a.com", "B.a.com"]; "exact and wildcard, case-insensitive")]
    #[test_case("q.b.a.com", &["*.a.com", "*.b.a.com"]; "two wildcards")]
    #[test_case("a.com", &["a.com"]; "wildcard does not cover its base")]
    #[test_case("*.b.a.com", &["*.a.com", "*.b.a.com"]; "wildcard name")]
    #[test_case("x-api.example.net", &["*-api.example.net"]; "partial wildcard")]
    #[test_case("other.net", &["other.net."]; "trailing dot")]
    #[test_case("nothing.io", &[]; "none")]
    fn covering(name: &str, want: &[&str]) {
        let idx = index();
        assert_eq!(all(|f| idx.find_covering(name, f)), want);
    }

    #[test_case("*.a.com", &["*.a.com", "*.b.a.com", "B.a.com", "x.b.a.com"]; "wildcard covers names and narrower wildcards")]
    #[test_case("*.b.a.com", &["*.b.a.com", "x.b.a.com"]; "narrower")]
    #[test_case("*", &["*-api.example.net", "*.a.com", "*.b.a.com", "*.org", "B.a.com", "a.com", "other.net.", "x.b.a.com"]; "star")]
    #[test_case("*api.example.net", &["*-api.example.net"]; "partial pattern")]
    #[test_case("*.example.net", &["*-api.example.net"]; "partial entry under a wildcard")]
    #[test_case("a.com", &["a.com"]; "a name covers itself only")]
    fn under(pattern: &str, want: &[&str]) {
        let idx = index();
        assert_eq!(all(|f| idx.find_under(pattern, f)), want);
    }

    #[test]
    fn matching_is_symmetric() {
        let idx = index();
        assert_eq!(idx.find_matching("*.b.a.com", |h| h == "x.b.a.com"), Some("x.b.a.com"));
        assert_eq!(idx.find_matching("y.b.a.com", |h| h == "*.a.com"), Some("*.a.com"));
        assert_eq!(idx.find_matching("y.c.com", |_| true), None);
        assert_eq!(idx.find_exact("B.A.COM", |_| true), Some("B.a.com"));
    }
}
