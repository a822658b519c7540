//! `--kubernetes`: the configuration read from a real API server (apiextensions-apiserver over
//! etcd, with Istio's CRDs; `scripts/k8s-apiserver`) after `kubectl apply`, compared with the
//! same files read directly.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshentry_testutil::KubeApi;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshentry"))
        .args(args)
        .output()
        .expect("run meshentry")
}

fn seed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/v1beta1")
}

/// Each finding as severity and message without its location, counted: the same findings
/// whatever file or object they were found in, and in whatever order.
fn findings(out: &Output) -> BTreeMap<(String, String), usize> {
    let all: Vec<Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let mut counted = BTreeMap::new();
    for f in all {
        let key = (f["severity"].to_string(), f["message"].to_string());
        *counted.entry(key).or_insert(0) += 1;
    }
    counted
}

#[test]
fn validate_finds_in_a_cluster_what_it_finds_in_the_files_applied_to_it() {
    let kube = KubeApi::start();
    kube.apply(&seed());
    let kubeconfig = kube.kubeconfig().to_string_lossy().into_owned();
    let files = run(&["validate", "-o", "json", &seed().to_string_lossy()]);
    let cluster = run(&["validate", "-o", "json", "--kubernetes", "--kubeconfig", &kubeconfig]);
    assert_eq!(
        cluster.status.code(),
        files.status.code(),
        "{}",
        String::from_utf8_lossy(&cluster.stderr)
    );
    let (from_files, from_cluster) = (findings(&files), findings(&cluster));
    assert!(
        !from_files.is_empty(),
        "the seed examples have findings (IST0101 among them)"
    );
    assert_eq!(from_cluster, from_files);
    // Findings name the object they are in.
    let text = run(&["validate", "--kubernetes", "--kubeconfig", &kubeconfig]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("kubernetes://default/VirtualService/tls-routing:"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&text.stderr).contains("15 resources, 0 invalid"),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
}

#[test]
fn the_registry_of_a_cluster_is_the_registry_of_its_files() {
    let kube = KubeApi::start();
    kube.apply(&seed());
    let kubeconfig = kube.kubeconfig().to_string_lossy().into_owned();
    let files = run(&["registry", "-o", "json", &seed().to_string_lossy()]);
    let cluster = run(&["registry", "-o", "json", "--kubernetes", "--kubeconfig", &kubeconfig]);
    assert!(files.status.success(), "{}", String::from_utf8_lossy(&files.stderr));
    assert!(cluster.status.success(), "{}", String::from_utf8_lossy(&cluster.stderr));
    let files: Value = serde_json::from_slice(&files.stdout).unwrap();
    let cluster: Value = serde_json::from_slice(&cluster.stdout).unwrap();
    assert_eq!(cluster, files);
    // A change applied to the cluster is what the next read sees.
    let out = kube.kubectl(&["delete", "serviceentry", "-n", "default", "external-svc-https"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = run(&["registry", "-o", "json", "--kubernetes", "--kubeconfig", &kubeconfig]);
    let after = String::from_utf8_lossy(&after.stdout);
    assert!(!after.contains("api.dropboxapi.com"), "{after}");
}

#[test]
fn explain_decides_on_a_clusters_objects_as_on_the_files() {
    let kube = KubeApi::start();
    kube.apply(&seed());
    let kubeconfig = kube.kubeconfig().to_string_lossy().into_owned();
    let target = "tls://api.dropboxapi.com:443";
    let files = run(&["explain", "-o", "json", "-c", &seed().to_string_lossy(), target]);
    let cluster = run(&[
        "explain",
        "-o",
        "json",
        "--kubernetes",
        "--kubeconfig",
        &kubeconfig,
        target,
    ]);
    assert_eq!(
        cluster.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cluster.stderr)
    );
    assert_eq!(cluster.status.code(), files.status.code());
    let files: Value = serde_json::from_slice(&files.stdout).unwrap();
    let cluster: Value = serde_json::from_slice(&cluster.stdout).unwrap();
    // The same decision; only where the resources were read from differs.
    assert_eq!(files["outcome"]["cluster"], "outbound|443||api.dropboxapi.com");
    assert_eq!(cluster["outcome"], files["outcome"]);
    assert_eq!(cluster["destinations"], files["destinations"]);
    let text = cluster.to_string();
    assert!(
        text.contains("kubernetes://default/ServiceEntry/external-svc-https"),
        "{text}"
    );
}

#[test]
fn a_kubeconfig_that_cannot_be_read_is_named() {
    let out = run(&["validate", "--kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
}

#[test]
fn validate_n_reads_one_namespace_of_the_cluster_as_istioctl_analyze_n() {
    let kube = KubeApi::start();
    let bad = |ns: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: to-nowhere, namespace: {ns}}}\nspec:\n  hosts: [a.example.com]\n  http:\n  - route:\n    - destination: {{host: nowhere.example.com}}\n"
        )
    };
    kube.apply_yaml(&bad("team-a"), None);
    kube.apply_yaml(&bad("team-b"), None);
    let kubeconfig = kube.kubeconfig().to_string_lossy().into_owned();
    let objects = |out: &Output| -> Vec<String> {
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "validate's output is not JSON ({e}): {}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let mut files: Vec<String> = all.iter().map(|f| f["file"].as_str().unwrap().to_string()).collect();
        files.sort();
        files.dedup();
        files
    };
    let everything = run(&["validate", "-o", "json", "--kubernetes", "--kubeconfig", &kubeconfig]);
    assert_eq!(
        objects(&everything),
        [
            "kubernetes://team-a/VirtualService/to-nowhere",
            "kubernetes://team-b/VirtualService/to-nowhere"
        ]
    );
    let one = run(&[
        "validate",
        "-o",
        "json",
        "--kubernetes",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        "team-b",
    ]);
    assert_eq!(objects(&one), ["kubernetes://team-b/VirtualService/to-nowhere"]);
    assert_eq!(one.status.code(), Some(1), "IST0101 is an error: {one:?}");
}
