//! Istio's verdicts on Istio-style inputs, one table: every case under `tests/conformance/`
//! (a `.yaml` file whose header has `# expect:` lines) runs through the real binary and must
//! get exactly the verdict written in its header. The format is in `tests/conformance/README.md`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

/// One expectation line.
#[derive(Debug)]
enum Expect {
    Exit(i32),
    /// A finding of this severity, with optional code, field and message substring.
    Finding {
        severity: String,
        code: Option<String>,
        field: Option<String>,
        text: Option<String>,
    },
    /// No finding of this severity (for Info, which is otherwise not checked exactly).
    NoFinding(String),
    Stdout(String),
    Stderr(String),
    NotStdout(String),
}

#[derive(Debug)]
struct Case {
    path: PathBuf,
    run: Vec<String>,
    expects: Vec<Expect>,
}

/// Splits `a b "c d" e` into words, a double-quoted word keeping its spaces (`\"` escapes).
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut w = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => w.extend(chars.next()),
                    '"' => break,
                    c => w.push(c),
                }
            }
            out.push(format!("\"{w}"));
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                w.push(c);
                chars.next();
            }
            out.push(w);
        }
    }
    out
}

fn parse_expect(line: &str, path: &Path) -> Expect {
    let w = words(line);
    let quoted = |i: usize| -> String {
        let s = w
            .get(i)
            .unwrap_or_else(|| panic!("{}: `{line}` needs a quoted text", path.display()));
        s.strip_prefix('"')
            .unwrap_or_else(|| panic!("{}: `{line}`: text must be quoted", path.display()))
            .to_string()
    };
    match w.first().map(String::as_str) {
        Some("exit") => Expect::Exit(w[1].parse().unwrap()),
        Some("stdout") => Expect::Stdout(quoted(1)),
        Some("stderr") => Expect::Stderr(quoted(1)),
        Some("not-stdout") => Expect::NotStdout(quoted(1)),
        Some("no") => Expect::NoFinding(w[1].clone()),
        Some(sev @ ("error" | "warning" | "info")) => {
            let mut code = None;
            let mut field = None;
            let mut text = None;
            for word in &w[1..] {
                if let Some(t) = word.strip_prefix('"') {
                    text = Some(t.to_string());
                } else if word.starts_with("IST") && word.len() == 7 {
                    code = Some(word.clone());
                } else {
                    field = Some(word.clone());
                }
            }
            Expect::Finding {
                severity: sev.to_string(),
                code,
                field,
                text,
            }
        }
        _ => panic!("{}: unknown expectation `{line}`", path.display()),
    }
}

fn read_case(path: &Path) -> Option<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut run = None;
    let mut expects = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            if line.trim().is_empty() || line.starts_with("---") {
                continue;
            }
            break;
        };
        let rest = rest.trim();
        if let Some(e) = rest.strip_prefix("expect:") {
            expects.push(parse_expect(e.trim(), path));
        } else if let Some(r) = rest.strip_prefix("run:") {
            let dir = path.parent().unwrap().to_str().unwrap();
            run = Some(
                r.split_whitespace()
                    .map(|a| a.replace("{dir}", dir))
                    .collect::<Vec<_>>(),
            );
        }
    }
    if expects.is_empty() {
        return None;
    }
    Some(Case {
        path: path.to_path_buf(),
        run: run.unwrap_or_else(|| vec!["validate".into()]),
        expects,
    })
}

fn cases(dir: &Path, out: &mut Vec<Case>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            cases(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            && let Some(c) = read_case(&p)
        {
            out.push(c);
        }
    }
}

fn str_of<'a>(f: &'a Value, key: &str) -> &'a str {
    f.get(key).and_then(Value::as_str).unwrap_or("")
}

fn matches(f: &Value, severity: &str, code: &Option<String>, field: &Option<String>, text: &Option<String>) -> bool {
    str_of(f, "severity") == severity
        && code.as_deref().is_none_or(|c| str_of(f, "code") == c)
        && field.as_deref().is_none_or(|p| str_of(f, "field") == p)
        && text.as_deref().is_none_or(|t| str_of(f, "message").contains(t))
}

/// Runs one case; returns what is wrong with it, if anything.
fn check(case: &Case) -> Vec<String> {
    let bin = env!("CARGO_BIN_EXE_meshentry");
    let file = case.path.to_str().unwrap();
    let is_validate = case.run.first().is_some_and(|c| c == "validate");
    let mut problems = Vec::new();

    let text_out = Command::new(bin).args(&case.run).arg(file).output().unwrap();
    let stdout = String::from_utf8_lossy(&text_out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&text_out.stderr).into_owned();
    let code = text_out.status.code().unwrap_or(-1);

    let findings: Vec<Value> = if is_validate {
        let json = Command::new(bin)
            .args(&case.run)
            .args(["-o", "json"])
            .arg(file)
            .output()
            .unwrap();
        match serde_json::from_slice(&json.stdout) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "validate -o json: {e}: {}",
                    String::from_utf8_lossy(&json.stderr)
                ));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };

    let mut want_exit = None;
    let mut expects_error = false;
    let mut matched = vec![false; findings.len()];
    for e in &case.expects {
        match e {
            Expect::Exit(c) => want_exit = Some(*c),
            Expect::Finding {
                severity,
                code,
                field,
                text,
            } => {
                expects_error |= severity == "error";
                let mut any = false;
                for (i, f) in findings.iter().enumerate() {
                    if matches(f, severity, code, field, text) {
                        matched[i] = true;
                        any = true;
                    }
                }
                if !any {
                    problems.push(format!("missing {e:?}"));
                }
            }
            Expect::NoFinding(sev) => {
                for f in findings.iter().filter(|f| str_of(f, "severity") == sev) {
                    problems.push(format!("unexpected {sev}: {f}"));
                }
            }
            Expect::Stdout(t) if !stdout.contains(t.as_str()) => {
                problems.push(format!("stdout lacks {t:?}"));
            }
            Expect::NotStdout(t) if stdout.contains(t.as_str()) => {
                problems.push(format!("stdout has {t:?}"));
            }
            Expect::Stderr(t) if !stderr.contains(t.as_str()) => {
                problems.push(format!("stderr lacks {t:?}"));
            }
            _ => {}
        }
    }
    // Errors and warnings are Istio's verdict: each must be expected. Info notes are
    // meshentry's own and are checked only where a case names them.
    for (f, m) in findings.iter().zip(&matched) {
        if !m && str_of(f, "severity") != "info" {
            problems.push(format!("unexpected finding: {f}"));
        }
    }
    let want_exit = want_exit.unwrap_or(if is_validate && expects_error { 1 } else { 0 });
    if code != want_exit {
        problems.push(format!("exit {code}, want {want_exit}"));
    }
    if !problems.is_empty() {
        problems.push(format!("stdout:\n{stdout}\nstderr:\n{stderr}"));
    }
    problems
}

#[test]
fn istio_verdicts() {
    let mut all = Vec::new();
    cases(&root(), &mut all);
    assert!(!all.is_empty(), "no cases under {}", root().display());
    let mut failed = Vec::new();
    for case in &all {
        let problems = check(case);
        if !problems.is_empty() {
            failed.push(format!("{}:\n  {}", case.path.display(), problems.join("\n  ")));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} conformance cases differ from Istio:\n{}",
        failed.len(),
        all.len(),
        failed.join("\n")
    );
}

#[test]
fn words_keep_quoted_text() {
    assert_eq!(
        words(r#"error spec.a IST0101 "two words \" q""#),
        vec!["error", "spec.a", "IST0101", "\"two words \" q"]
    );
}
