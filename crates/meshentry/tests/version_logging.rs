//! `meshentry version` (text, JSON, `--version`) and the admin server's `/server_info` agreeing
//! with it; `--log-level` and `RUST_LOG` as documented: RUST_LOG overrides the flag,
//! per-module directives work, and a wrong value is a clear error (exit 2), not a silent
//! fallback.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use meshentry_testutil::{Proxy, closed_port, eventually, raw, unique_loopback};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshentry");
const PATIENCE: Duration = Duration::from_secs(10);

fn meshentry(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn version_names_the_build_and_the_istio_apis_in_text_and_json() {
    let out = meshentry(&["version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], format!("meshentry {}", env!("CARGO_PKG_VERSION")));
    let commit = lines[1].strip_prefix("commit: ").unwrap();
    assert!(
        commit == "unknown" || (commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{commit}"
    );
    assert!(lines[2].starts_with("rustc: rustc 1."), "{}", lines[2]);
    assert!(
        lines[3].starts_with("target: x86_64-") || lines[3].starts_with("target: aarch64-"),
        "{}",
        lines[3]
    );
    assert_eq!(
        lines[4],
        "istio apis: networking.istio.io/v1alpha3, networking.istio.io/v1beta1, networking.istio.io/v1"
    );

    // `--version` prints the same; `-V` only the first line.
    let long = meshentry(&["--version"], &[]);
    assert_eq!(String::from_utf8(long.stdout).unwrap(), text);
    let short = meshentry(&["-V"], &[]);
    assert_eq!(String::from_utf8(short.stdout).unwrap().trim_end(), lines[0]);

    let json = meshentry(&["version", "--output", "json"], &[]);
    assert!(json.status.success());
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["commit"], commit);
    assert_eq!(v["rustc"], lines[2].strip_prefix("rustc: ").unwrap());
    assert_eq!(v["target"], lines[3].strip_prefix("target: ").unwrap());
    assert_eq!(v["apis"].as_array().unwrap().len(), 3);

    let bad = meshentry(&["version", "--output", "yaml"], &[]);
    assert_eq!(bad.status.code(), Some(2));

    // `-o`, as every other subcommand with an --output spells it.
    let short = meshentry(&["version", "-o", "json"], &[]);
    assert!(short.status.success(), "{short:?}");
    assert_eq!(short.stdout, json.stdout);
}

/// A proxy whose one service refuses connections (so a request to it logs a debug line in
/// `meshentry_proxy`), started with `args` and `env`.
async fn proxy(args: &[&str], env: &[(&str, &str)]) -> Proxy {
    let ip = unique_loopback();
    let dead = closed_port(ip);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: dead\nspec:\n  hosts: [dead.test]\n\
         \x20 resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n\
         \x20 endpoints:\n  - {{address: \"{}\", ports: {{http: {}}}}}\n",
        dead.ip(),
        dead.port()
    );
    // An empty RUST_LOG counts as unset, so the flag decides unless the test sets one.
    let builder = Proxy::builder(BIN)
        .ip(ip)
        .file("c.yaml", yaml)
        .outbound_off()
        .args(["--outbound-policy", "REGISTRY_ONLY", "--workers", "1"])
        .args(args.iter().copied())
        .env("RUST_LOG", "");
    env.iter().fold(builder, |b, (k, v)| b.env(k, v)).start().await
}

#[tokio::test]
async fn server_info_reports_the_same_build_as_meshentry_version() {
    let p = proxy(&[], &[]).await;
    let info = p.admin_json("/server_info").await;
    let version: Value = serde_json::from_slice(&meshentry(&["version", "--output", "json"], &[]).stdout).unwrap();
    assert_eq!(info["version"], version["version"]);
    assert_eq!(info["build"], version);
    assert_eq!(info["state"], "LIVE");
}

const STARTED: &str = "meshentry proxy started";
/// A debug line of `meshentry_proxy` (forward.rs) that a request to the dead service logs.
const CONNECT_FAILED: &str = "upstream connect failed";

/// Sends one request for the dead service (a 503) and returns the proxy's stderr once the
/// request's own info line (from `meshentry_proxy::h1`) or a grace period has passed.
async fn stderr_after_a_request(p: &Proxy) -> String {
    let resp = raw::exchange(
        p.http(),
        b"GET http://dead.test/ HTTP/1.1\r\nHost: dead.test\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await
    .unwrap();
    assert!(resp.raw.starts_with(b"HTTP/1.1 503"), "{resp:?}");
    p.stderr()
}

#[tokio::test]
async fn log_level_sets_the_default_and_rust_log_overrides_it_per_module() {
    // --log-level warn: no info lines, no debug lines.
    let p = proxy(&["--log-level", "warn"], &[]).await;
    let err = stderr_after_a_request(&p).await;
    assert!(!err.contains(STARTED), "info logged at --log-level warn:\n{err}");
    assert!(!err.contains(CONNECT_FAILED), "{err}");

    // RUST_LOG overrides the flag.
    let p = proxy(&["--log-level", "warn"], &[("RUST_LOG", "info")]).await;
    eventually(PATIENCE, || async { p.stderr().contains(STARTED) }).await;

    // Per-module: the proxy crate at debug, the binary at warn.
    let p = proxy(&[], &[("RUST_LOG", "warn,meshentry_proxy=debug")]).await;
    let _ = stderr_after_a_request(&p).await;
    eventually(PATIENCE, || async { p.stderr().contains(CONNECT_FAILED) }).await;
    let err = p.stderr();
    assert!(
        !err.contains(STARTED),
        "the binary's info line under meshentry=warn:\n{err}"
    );

    // The same per-module directives work in the flag.
    let p = proxy(&["--log-level", "warn,meshentry_proxy=debug"], &[]).await;
    let _ = stderr_after_a_request(&p).await;
    eventually(PATIENCE, || async { p.stderr().contains(CONNECT_FAILED) }).await;
}

#[test]
fn a_wrong_log_level_is_an_error_that_names_the_levels() {
    for (args, env, culprit) in [
        (vec!["--log-level", "verbose"], vec![], "--log-level \"verbose\""),
        (
            vec![],
            vec![("RUST_LOG", "meshentry_proxy=loud")],
            "RUST_LOG=\"meshentry_proxy=loud\"",
        ),
    ] {
        let mut all = vec!["proxy", "--config", "/nonexistent", "--admin", "127.0.0.1:1"];
        all.extend(args);
        let out = meshentry(&all, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(culprit), "{err}");
        assert!(
            err.contains("is not a log level (one of off, error, warn, info, debug, trace)"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_warning_is_said_once_by_the_log_level_not_again_in_its_text() {
    let ip = unique_loopback();
    let se = |name: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.internal]\n\
             \x20 ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: DNS\n"
        )
    };
    // Two address-less TCP services on one port: the registry warns (IST0134's situation).
    let p = Proxy::builder(BIN)
        .ip(ip)
        .config(format!("{}{}", se("db1"), se("db2")))
        .outbound_off()
        .start()
        .await;
    let log = p.stderr();
    assert!(log.contains("WARN hosts \"db1.internal\""), "{log}");
    assert!(!log.contains("WARN warning:"), "{log}");
    // `registry --warnings`, where nothing else says it is a warning, keeps the label.
    let out = meshentry(&["registry", "--warnings", p.config_dir().to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: hosts \"db1.internal\""));
}
