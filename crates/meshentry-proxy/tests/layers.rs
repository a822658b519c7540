//! The proxy's modules are layers (src/lib.rs): a module may use its own layer and the ones
//! below it, never one above, and no group of modules may use each other in a circle. The
//! four lowest are the crate `meshentry-route`, which must stay free of I/O. This test reads
//! every `crate::` path in both crates' sources (outside comments and `#[cfg(test)]` modules,
//! whose fixtures may come from any layer), so the rule holds as the code changes.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first: the pure crate's, then the proxy's.
const PURE: [&str; 4] = ["base", "wire", "model", "route"];
const LAYERS: [&str; 10] = [
    "base", "wire", "model", "route", "live", "obs", "rt", "net", "serve", "listen",
];

/// The two crates' source folders: the pure one first.
fn src_dirs() -> [PathBuf; 2] {
    let proxy = Path::new(env!("CARGO_MANIFEST_DIR"));
    [proxy.join("../meshentry-route/src"), proxy.join("src")]
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `serve::http` for src/serve/http.rs, `route` for src/route/mod.rs.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).filter(|p| *p != "mod").collect();
    parts.join("::")
}

/// The code of a file without comment lines and without its test module.
fn production_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` path in `code`, as `(a, b)`.
fn crate_paths(code: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
        let first = ident(rest);
        let after = &rest[first.len()..];
        let second = after.strip_prefix("::").map(ident).unwrap_or_default();
        out.push((first, second));
    }
    out
}

struct Sources {
    /// Module -> its production code.
    modules: BTreeMap<String, String>,
}

fn sources() -> Sources {
    let mut modules = BTreeMap::new();
    for src in src_dirs() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in &files {
            let module = module_of(&src, f);
            let code = production_code(&std::fs::read_to_string(f).unwrap());
            // Both crates have a lib.rs; no other module name is in both.
            if module != "lib" {
                assert!(
                    modules.insert(module.clone(), code).is_none(),
                    "{module} in both crates"
                );
            }
        }
    }
    Sources { modules }
}

/// `lib.rs` of each crate, the pure one first.
fn lib_texts() -> Vec<String> {
    src_dirs()
        .iter()
        .map(|d| std::fs::read_to_string(d.join("lib.rs")).unwrap())
        .collect()
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

#[test]
fn every_module_is_in_a_layer() {
    let s = sources();
    let outside: Vec<&String> = s
        .modules
        .keys()
        .filter(|m| rank(m.split("::").next().unwrap()).is_none())
        .collect();
    assert!(outside.is_empty(), "modules outside the layer folders: {outside:?}");
    // Every layer is a module of its crate, and the lib.rs files document them in this order.
    let texts = lib_texts();
    let declared: BTreeSet<&str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod ")))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(declared, BTreeSet::from(LAYERS));
    let pure_declared: BTreeSet<&str> = texts[0]
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod ")))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(pure_declared, BTreeSet::from(PURE));
    let documented: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("//! "))
        .filter_map(|l| l.split_once(". [`"))
        .filter(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        .filter_map(|(_, rest)| rest.split_once("`]").map(|(name, _)| name))
        .collect();
    assert_eq!(documented, LAYERS);
}

#[test]
fn no_module_uses_a_higher_layer() {
    let s = sources();
    let mut upward = BTreeSet::new();
    for (module, code) in &s.modules {
        let Some(own) = rank(module.split("::").next().unwrap()) else {
            continue;
        };
        // A grouped `use crate::{...}` would hide which layers it reaches.
        assert!(
            !code.contains("crate::{"),
            "{module}: write one `use crate::layer::...` per path"
        );
        for (first, second) in crate_paths(code) {
            if let Some(r) = rank(&first)
                && r > own
            {
                upward.insert(format!("{module} -> {first}::{second}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules using a higher layer:\n{}",
        upward.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// Module -> the modules its production code uses (by `crate::layer::module` path).
fn graph(s: &Sources) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &s.modules {
        let uses = edges.entry(module.clone()).or_default();
        for (first, second) in crate_paths(code) {
            let full = format!("{first}::{second}");
            let target = if s.modules.contains_key(&full) {
                full
            } else if s.modules.contains_key(&first) {
                first
            } else {
                continue;
            };
            if target != *module {
                uses.insert(target);
            }
        }
    }
    edges
}

/// The strongly connected groups of more than one module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: BTreeSet<Vec<String>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a str) {
        let i = st.index.len();
        st.index.insert(v, i);
        st.low.insert(v, i);
        st.stack.push(v);
        st.on_stack.insert(v);
        let edges = st.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if st.on_stack.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut group = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack.remove(w);
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                st.found.insert(group);
            }
        }
    }
    let mut st = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: BTreeSet::new(),
    };
    for v in edges.keys() {
        if !st.index.contains_key(v.as_str()) {
            visit(&mut st, v);
        }
    }
    st.found
}

#[test]
fn no_modules_use_each_other_in_a_circle() {
    let found = cycles(&graph(&sources()));
    assert!(found.is_empty(), "module cycles: {found:?}");
}

/// The pure crate depends on nothing that does I/O or runs tasks: no async runtime, no HTTP
/// stack, no resolver, no TLS stack, no sockets (its tests may use them).
#[test]
fn the_routing_crate_has_no_io_dependencies() {
    let manifest = std::fs::read_to_string(src_dirs()[0].join("../Cargo.toml")).unwrap();
    let deps: Vec<&str> = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|n| !n.is_empty() && !n.starts_with('#'))
        .collect();
    assert!(deps.contains(&"meshentry-registry"), "{deps:?}");
    for io in [
        "tokio",
        "tokio-rustls",
        "hyper",
        "hyper-util",
        "h2",
        "hickory-resolver",
        "rustls",
        "socket2",
        "libc",
        "notify",
        "arc-swap",
    ] {
        assert!(!deps.contains(&io), "meshentry-route depends on {io}: {deps:?}");
    }
}

/// ARCHITECTURE.md gives every source file its one-line purpose: a file with code of its own
/// (not only `mod` lines and docs) and no row there fails, so the table follows the code.
#[test]
fn every_source_file_has_its_row_in_architecture_md() {
    let doc = std::fs::read_to_string(src_dirs()[1].join("../../../ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for src in src_dirs() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let has_code = text.lines().any(|l| {
                let l = l.trim();
                !(l.is_empty()
                    || l.starts_with("//")
                    || l.starts_with("pub mod ")
                    || l.starts_with("pub(crate) mod ")
                    || l.starts_with("mod ")
                    || l.starts_with("#[cfg(test)]"))
            });
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            if has_code && rel != "lib.rs" && !doc.contains(&format!("| `{rel}` |")) {
                missing.push(rel);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files without a row in ARCHITECTURE.md: {missing:?}"
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let edges: BTreeMap<String, BTreeSet<String>> = [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(
        cycles(&edges),
        BTreeSet::from([vec!["a".to_string(), "b".into(), "c".into()]])
    );
    assert_eq!(
        crate_paths("use crate::serve::http::{A, B};\nlet x = crate::base::lock(&m);"),
        [
            ("serve".to_string(), "http".to_string()),
            ("base".into(), "lock".into())
        ]
    );
}
