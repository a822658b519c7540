//! The README's quickstart, run as a reader runs it: `scripts/demo` runs every command of the
//! README's demo blocks and checks what each prints. Two guards keep the documents true:
//! every command in a README block marked `<!-- scripts/demo -->` must be in `scripts/demo`
//! (so the two cannot drift apart), and every test binary must be listed in `tests/README.md`.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshentry_testutil::unique_loopback;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the script's variables stand for in the README: the defaults of its
/// `NAME=${MESHENTRY_DEMO_...:-DEFAULT}` lines, and the binaries, which the README runs from
/// PATH (the sidecar's from /usr/local/bin, where uid 1337 can read it).
fn script_variables(script: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in script.lines() {
        let Some((name, value)) = line.split_once("=${") else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue;
        }
        let Some((_, default)) = value.strip_suffix('}').and_then(|v| v.split_once(":-")) else {
            continue;
        };
        vars.insert(name.to_string(), default.to_string());
    }
    vars.insert("MESHENTRY".into(), "meshentry".into());
    vars.insert("SIDECAR_MESHENTRY".into(), "/usr/local/bin/meshentry".into());
    vars
}

/// `$NAME` and `${NAME}` replaced by what they stand for in the README.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match vars.get(name) {
            Some(value) => {
                out.push_str(value);
                rest = &after[len..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Lines joined where they end in `\`, without comments (a `#` at the start of a word, outside
/// quotes).
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = strip_comment(line);
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(&line);
                if !current.trim().is_empty() {
                    lines.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    lines
}

fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..i].to_string(),
            _ => {}
        }
        previous = c;
    }
    line.to_string()
}

/// The words of a command (`;` one of its own), ignoring double quotes and the `$( )` around
/// it, which the script needs (to check the output) and the README does not.
fn words(line: &str) -> Vec<String> {
    line.replace('"', "")
        .replace(';', " ; ")
        .replace("$(", " ")
        .replace(')', " ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Whether `want` appears in `have` in order, other words allowed between (the script adds
/// addresses, redirections and output options).
fn in_order(want: &[String], have: &[String]) -> bool {
    let mut have = have.iter();
    want.iter().all(|w| have.any(|h| h == w))
}

/// The README's fenced blocks after a `<!-- scripts/demo -->` (commands) or
/// `<!-- scripts/demo: output -->` (what they print) marker.
fn marked_blocks(readme: &str) -> Vec<(bool, String)> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let output = match line.trim() {
            "<!-- scripts/demo -->" => false,
            "<!-- scripts/demo: output -->" => true,
            _ => continue,
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "a scripts/demo marker must be followed by a fenced block, not {fence:?}"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        blocks.push((output, body.join("\n")));
    }
    blocks
}

#[test]
fn the_readme_quickstart_commands_are_the_ones_scripts_demo_runs() {
    let readme = read("README.md");
    let script = read("scripts/demo");
    let vars = script_variables(&script);
    for name in ["IP", "DIR", "NS", "PROXY_PORT", "ADMIN_PORT", "WEB_PORT"] {
        assert!(
            vars.contains_key(name),
            "scripts/demo no longer sets {name}=${{...:-DEFAULT}}"
        );
    }
    let script = substitute(&script, &vars).replace("\\`", "`");
    let script_lines: Vec<Vec<String>> = logical_lines(&script).iter().map(|l| words(l)).collect();
    let blocks = marked_blocks(&readme);
    assert!(
        blocks.len() >= 4,
        "the README's demo blocks lost their <!-- scripts/demo --> markers"
    );

    let mut missing = Vec::new();
    let mut checked = 0;
    for (output, block) in &blocks {
        if *output {
            // What the README says is printed must be what the script expects.
            for line in block.lines().filter(|l| !l.trim().is_empty()) {
                checked += 1;
                if !script.contains(line) {
                    missing.push(format!("output: {line}"));
                }
            }
            continue;
        }
        let mut heredoc: Option<&str> = None;
        for line in block.lines() {
            if let Some(end) = heredoc {
                // A here-document's body is compared line for line.
                if line == end {
                    heredoc = None;
                } else if !script.lines().any(|l| l == line) {
                    missing.push(format!("here-document line: {line}"));
                }
                continue;
            }
            if line.contains("<<'EOF'") {
                heredoc = Some("EOF");
            }
        }
        let without_heredocs = block
            .split("<<'EOF'\n")
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.split_once("\nEOF").map_or("", |(_, after)| after)
                }
            })
            .collect::<Vec<_>>()
            .join("<<'EOF'\n");
        for command in logical_lines(&without_heredocs) {
            checked += 1;
            let want = words(&command);
            if !script_lines.iter().any(|have| in_order(&want, have)) {
                missing.push(command.trim().to_string());
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} README demo lines found: are the blocks still marked?"
    );
    assert!(
        missing.is_empty(),
        "README demo commands that scripts/demo does not run (add them there, with a check of their output):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_test_binary_is_listed_in_tests_readme() {
    let listing = read("tests/README.md");
    let mut binaries = Vec::new();
    for krate in std::fs::read_dir(repo().join("crates")).unwrap() {
        let krate = krate.unwrap().path();
        let Ok(tests) = std::fs::read_dir(krate.join("tests")) else {
            continue;
        };
        for file in tests {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "rs") {
                let krate = krate.file_name().unwrap().to_string_lossy().into_owned();
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                binaries.push(format!("crates/{krate}/tests/{name}"));
            }
        }
    }
    binaries.sort();
    assert!(binaries.len() > 50, "found only {binaries:?}");
    let unlisted: Vec<&String> = binaries
        .iter()
        .filter(|b| !listing.contains(&format!("`{b}`")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "test binaries missing from tests/README.md (add a row: what it covers, what it needs, how long it takes): {unlisted:?}"
    );
    // And no row for a binary that is gone.
    for word in listing.split('`') {
        if word.starts_with("crates/") && word.contains("/tests/") && word.ends_with(".rs") && !word.contains('*') {
            assert!(
                repo().join(word).is_file(),
                "tests/README.md lists {word}, which does not exist"
            );
        }
    }
}

#[test]
fn scripts_demo_runs_the_quickstart_and_every_check_passes() {
    // Addresses, directory and namespace of this run's own, so that it runs beside other tests
    // (and another run of itself) without sharing a port, a file or a namespace name.
    let ip = unique_loopback();
    let dir = tempfile::tempdir().unwrap();
    // uid 1337 (the sidecar's proxy) reads the configuration from here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let netns = format!("medemo-{}", std::process::id());
    let out = Command::new("timeout")
        // Every wait in the script is bounded; this bounds the whole, and TERM lets its trap
        // clean up.
        .args(["-k", "10", "300", "bash"])
        .arg(repo().join("scripts/demo"))
        .env("MESHENTRY", env!("CARGO_BIN_EXE_meshentry"))
        .env("MESHENTRY_DEMO_IP", ip.to_string())
        .env("MESHENTRY_DEMO_DIR", dir.path())
        .env("MESHENTRY_DEMO_NETNS", &netns)
        .output()
        .expect("cannot run timeout or bash (coreutils, bash)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.contains("demo: passed"), "{stdout}");
    if let Some(line) = stdout.lines().find(|l| l.contains("SKIPPED")) {
        meshentry_testutil::skip::record(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            &format!("{}:{}", file!(), line!()),
            line,
        );
    } else {
        assert!(stdout.contains(&format!("network namespace {netns}")), "{stdout}");
    }
    // Nothing left behind: the namespace, its resolv.conf, the files.
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&netns));
    assert!(!Path::new("/etc/netns").join(&netns).exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "scripts/demo left {left:?} in its directory");
}
