//! Comments cite Istio's behaviour by rule id (`B8`, `(C9)`, `D1-D3`), and `docs/rules.md`
//! defines each id under a `### <id>` heading. This test reads every comment in
//! `crates/*/src` and fails on an id the document does not define, so every citation can be
//! looked up.
//!
//! An id is an upper-case letter and one or two digits, with no letter, digit or `_` on either
//! side, inside a `//`, `///`, `//!` or `/* */` comment; `A28-A32` and `B1..B11` cite every id
//! in the range. Code is never read (`UpstreamProtocol::H2` is a variant, not a citation), and
//! string literals only for ids in parentheses, as `explain` prints them (`"... (C5)"`), so
//! that text such as `"%C3%A9"` is not taken for one.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Tokens of an id's shape that comments use for something else. None may be a heading in
/// docs/rules.md, so a real rule id is never skipped.
const NOT_RULES: &[(&str, &str)] = &[
    ("H1", "HTTP/1"),
    ("H2", "HTTP/2"),
    ("H3", "HTTP/3"),
    ("L4", "network layer 4, a TCP or TLS rule"),
    ("L7", "network layer 7"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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

/// The `src` trees of every crate in the workspace.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    files.sort();
    files
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Text {
    Comment,
    Str,
}

/// The comments and string literals of Rust source, each with the line it starts on. A small
/// lexer rather than a line filter: `//` inside a string (`"http://..."`) is no comment, and a
/// `"` inside a comment or a char literal (`'"'`) starts no string.
fn texts(src: &str) -> Vec<(Text, usize, String)> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    // Moves past `c[i]`, counting lines.
    let step = |i: &mut usize, line: &mut usize| {
        if c[*i] == '\n' {
            *line += 1;
        }
        *i += 1;
    };
    while i < c.len() {
        let start = line;
        if at(i) == '/' && at(i + 1) == '/' {
            let mut text = String::new();
            while i < c.len() && c[i] != '\n' {
                text.push(c[i]);
                i += 1;
            }
            out.push((Text::Comment, start, text));
        } else if at(i) == '/' && at(i + 1) == '*' {
            let (mut depth, mut text) = (0, String::new());
            while i < c.len() {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    if depth == 0 {
                        i += 2;
                        break;
                    }
                }
                text.push(c[i]);
                step(&mut i, &mut line);
            }
            out.push((Text::Comment, start, text));
        } else if at(i) == '"' {
            let mut text = String::new();
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    text.push(c[i]);
                    step(&mut i, &mut line);
                }
                if i < c.len() {
                    text.push(c[i]);
                    step(&mut i, &mut line);
                }
            }
            i += 1;
            out.push((Text::Str, start, text));
        } else if at(i) == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
        {
            // A raw string, `r#"..."#`: it ends at a `"` followed by as many `#` as it opened with.
            let mut hashes = 0;
            i += 1;
            while at(i) == '#' {
                hashes += 1;
                i += 1;
            }
            if at(i) != '"' {
                continue; // `r#ident`, a raw identifier.
            }
            i += 1;
            let mut text = String::new();
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#')) {
                text.push(c[i]);
                step(&mut i, &mut line);
            }
            i += 1 + hashes;
            out.push((Text::Str, start, text));
        } else if at(i) == '\'' {
            // A char literal (`'"'`, `'\''`) is skipped whole; a lifetime (`'a`) is just a quote.
            if at(i + 1) == '\\' {
                i += 3; // The quote, the backslash and the escaped character, which may be a quote.
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else {
            step(&mut i, &mut line);
        }
    }
    out
}

/// An id starting at `t[i]`, as (letter, number, index after it), if one stands there.
fn id_at(t: &[char], i: usize) -> Option<(char, u32, usize)> {
    let boundary = |j: Option<&char>| j.is_none_or(|ch| !(ch.is_alphanumeric() || *ch == '_'));
    let letter = *t.get(i)?;
    if !letter.is_ascii_uppercase() || !boundary(i.checked_sub(1).and_then(|p| t.get(p))) {
        return None;
    }
    let digits = t[i + 1..].iter().take_while(|ch| ch.is_ascii_digit()).count();
    let end = i + 1 + digits;
    if !(1..=2).contains(&digits) || !boundary(t.get(end)) {
        return None;
    }
    let number = t[i + 1..end].iter().collect::<String>().parse().ok()?;
    Some((letter, number, end))
}

/// The ids `text` cites. In a string literal only an id in parentheses counts.
fn ids_in(kind: Text, text: &str) -> Vec<String> {
    let t: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let Some((letter, first, end)) = id_at(&t, i) else {
            i += 1;
            continue;
        };
        if kind == Text::Str && !(i > 0 && t[i - 1] == '(' && t.get(end) == Some(&')')) {
            i = end;
            continue;
        }
        // `D1-D3`, `B1..B11`: the range cites the ids between its ends too.
        let sep = if t.get(end) == Some(&'-') {
            1
        } else if t.get(end) == Some(&'.') && t.get(end + 1) == Some(&'.') {
            2
        } else {
            0
        };
        let last = match id_at(&t, end + sep) {
            Some((l, n, after)) if sep > 0 && l == letter && n > first => {
                i = after;
                n
            }
            _ => {
                i = end;
                first
            }
        };
        out.extend((first..=last).map(|n| format!("{letter}{n}")));
    }
    out
}

/// Every id cited in the workspace's sources, with where: `path:line`.
fn citations() -> BTreeMap<String, Vec<String>> {
    let mut cited: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let root = root().canonicalize().unwrap();
    for file in source_files() {
        let src = std::fs::read_to_string(&file).unwrap();
        let rel = file.canonicalize().unwrap();
        let rel = rel.strip_prefix(&root).unwrap().display().to_string();
        for (kind, line, text) in texts(&src) {
            for id in ids_in(kind, &text) {
                if NOT_RULES.iter().all(|(skip, _)| *skip != id) {
                    cited.entry(id).or_default().push(format!("{rel}:{line}"));
                }
            }
        }
    }
    cited
}

/// The ids docs/rules.md defines: its `### <id>` headings.
fn defined() -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("docs/rules.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::trim)
        .filter(|h| {
            let t: Vec<char> = h.chars().collect();
            id_at(&t, 0).is_some_and(|(_, _, end)| end == t.len())
        })
        .map(String::from)
        .collect()
}

#[test]
fn every_rule_id_cited_in_a_comment_is_defined_in_docs_rules_md() {
    let defined = defined();
    let unique: BTreeSet<&String> = defined.iter().collect();
    assert_eq!(
        unique.len(),
        defined.len(),
        "docs/rules.md defines an id twice: {defined:?}"
    );
    for (skip, meaning) in NOT_RULES {
        assert!(
            !unique.contains(&skip.to_string()),
            "{skip} ({meaning}) is skipped but docs/rules.md defines it"
        );
    }

    let cited = citations();
    // The scan finds the ids the code is known to cite; an empty result would pass vacuously.
    for id in ["A0", "A36", "B11", "C5", "D1", "D2", "E7", "F4"] {
        assert!(
            cited.contains_key(id),
            "the scan no longer finds {id}; is it reading the sources?"
        );
    }
    let missing: Vec<String> = cited
        .iter()
        .filter(|(id, _)| !unique.contains(id))
        .map(|(id, at)| format!("{id} (cited at {})", at.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "rule ids cited in comments but not defined in docs/rules.md (add a `### <id>` entry, \
         or if the token is no rule id, add it to NOT_RULES):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_scan_reads_ids_in_comments_only() {
    let src = r##"
//! Sidecar validation (A36), and (C9): `D1-D3`, A0/A11, B1..B3, F2-F1.
/// Not H2_PREFACE, 0xA1, E2E, SHA256 or X509.
/* block B7 /* nested C1 */ E3 */
fn f<'a>(x: &'a str) -> char {
    let _ = UpstreamProtocol::H2; // after code: E4
    let _ = "http://example.com/ C3 %C3%A9 (C5)";
    let _ = r#"raw "quoted" (B2)"#;
    let _ = '"'; // D8
    '\'' // A5
}
"##;
    let found: Vec<(Text, usize, String)> = texts(src)
        .into_iter()
        .flat_map(|(kind, line, text)| ids_in(kind, &text).into_iter().map(move |id| (kind, line, id)))
        .collect();
    let ids: Vec<&str> = found.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "A36", "C9", "D1", "D2", "D3", "A0", "A11", "B1", "B2", "B3", "F2", "F1", "B7", "C1", "E3", "E4", "C5",
            "B2", "D8", "A5"
        ]
    );
    // Lines are counted through block comments and strings.
    let line_of = |id: &str| found.iter().find(|(_, _, i)| i == id).map(|(_, line, _)| *line);
    assert_eq!(line_of("E3"), Some(4));
    assert_eq!(line_of("D8"), Some(9));
}
