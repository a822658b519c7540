//! Table tests from YAML fixtures: `fixtures/NAME.yaml` builds a registry whose JSON must equal
//! `NAME.json` (every service), `NAME@NS.json` (what namespace NS sees, one file per view) and
//! whose warnings must equal `NAME.warnings` (absent = none).
//!
//! `BLESS=1 cargo test --test fixtures` rewrites the expected files from the current output
//! (view files are rewritten only when they exist: create an empty `NAME@NS.json` to add one).
//! Review the diff: the expected files are the specification.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::path::{Path, PathBuf};

use meshentry_api::{LoadOptions, load_str};
use meshentry_registry::Registry;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn build(name: &str) -> Registry {
    let path = fixtures_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded = load_str(&format!("{name}.yaml"), &text, &LoadOptions::default());
    let errors: Vec<String> = loaded.errors().map(|f| f.to_string()).collect();
    assert!(errors.is_empty(), "fixture {name} has errors:\n{}", errors.join("\n"));
    Registry::build(&loaded.resources)
}

fn check(expected_path: &Path, actual: &str, bless: bool, failures: &mut Vec<String>) {
    if bless {
        std::fs::write(expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(expected_path).unwrap_or_default();
    let same = if expected_path.extension().is_some_and(|e| e == "json") {
        let e: Result<serde_json::Value, _> = serde_json::from_str(&expected);
        let a: serde_json::Value = serde_json::from_str(actual).unwrap();
        e.is_ok_and(|e| e == a)
    } else {
        expected == actual
    };
    if !same {
        failures.push(format!(
            "{}:\n--- expected\n{expected}\n--- actual\n{actual}",
            expected_path.display()
        ));
    }
}

#[test]
fn fixtures() {
    let bless = std::env::var_os("BLESS").is_some();
    let dir = fixtures_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures missing");
    let mut failures = Vec::new();
    for name in &names {
        let registry = build(name);
        let json = serde_json::to_string_pretty(&registry.to_json(None)).unwrap() + "\n";
        check(&dir.join(format!("{name}.json")), &json, bless, &mut failures);

        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            if let Some(ns) = file
                .strip_prefix(&format!("{name}@"))
                .and_then(|r| r.strip_suffix(".json"))
            {
                let json = serde_json::to_string_pretty(&registry.to_json(Some(ns))).unwrap() + "\n";
                check(&dir.join(&file), &json, bless, &mut failures);
            }
        }

        let warnings: String = registry.warnings().iter().map(|w| format!("{w}\n")).collect();
        let wpath = dir.join(format!("{name}.warnings"));
        if warnings.is_empty() && !wpath.exists() {
            continue;
        }
        if bless && warnings.is_empty() {
            std::fs::remove_file(&wpath).unwrap();
            continue;
        }
        check(&wpath, &warnings, bless, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} fixture mismatches:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
