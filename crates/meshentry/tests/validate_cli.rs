//! `meshentry validate` as a user runs it: the real binary, real files, exit codes.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshentry"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run meshentry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn temp_file(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshentry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

const BAD: &str = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: bad
spec:
  hosts: [\"*\"]
  ports:
  - number: 70000
    name: http
";

#[test]
fn seed_examples_are_valid_in_both_api_versions() {
    for version in ["v1alpha3", "v1beta1"] {
        let dir = workspace().join("examples/seed").join(version);
        let out = run(&["validate", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{version}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("15 resources, 0 invalid: 0 errors"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn invalid_config_exits_1_and_lists_every_error() {
    let f = temp_file("bad.yaml", BAD);
    let out = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let file = f.display();
    assert!(
        stdout.contains(&format!(
            "{file}:6:11: ServiceEntry default/bad: spec.hosts[0]: invalid host *"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{file}:8:13: ServiceEntry default/bad: spec.ports[0].number: port number 70000 must be in the range 1..65535"
        )),
        "{stdout}"
    );
}

#[test]
fn json_output() {
    let f = temp_file("bad-json.yaml", BAD);
    let out = run(&[
        "validate",
        "--output",
        "json",
        "--namespace",
        "team",
        f.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let arr = v.as_array().unwrap();
    let first = &arr[0];
    assert_eq!(first["kind"], "ServiceEntry");
    assert_eq!(first["namespace"], "team");
    assert_eq!(first["name"], "bad");
    assert_eq!(first["field"], "spec.hosts[0]");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["line"], 6);
    assert_eq!(first["column"], 11);
    assert_eq!(first["message"], "invalid host *");
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
}

#[test]
fn stdin_and_warnings_only_exit_0() {
    let warn_only = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: pg, protocol: TCP}]
  resolution: DNS
";
    let mut child = bin()
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(warn_only.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .starts_with("<stdin>:6:11: ServiceEntry default/tcp: spec.ports[0]: warning: addresses are required"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn missing_file_exits_2_and_names_it() {
    let out = run(&["validate", "/nonexistent/dir/se.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/dir/se.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["validate"]).status.code(), Some(2));
    assert_eq!(run(&["validate", "--output", "xml", "x"]).status.code(), Some(2));
}
