//! The README's quickstart, as a test: the bundled `examples/quickstart` configuration routes
//! `web.internal` to its endpoint and refuses everything else with a reason.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use meshentry_testutil::{HttpUpstream, Proxy, curl_command, unique_loopback};

fn curl(proxy: SocketAddr, url: &str) -> (u16, String) {
    let out = curl_command()
        .args(["-s", "-w", "\n%{http_code}", "-x", &format!("http://{proxy}"), url])
        .output()
        .expect("curl is not installed: install curl (apt-get install curl; scripts/test does this)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

#[tokio::test]
async fn quickstart_routes_web_internal_and_refuses_the_rest() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/web.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    // The quickstart's web server is on 127.0.0.1:8000; give this test its own address so it
    // cannot collide with anything else on the machine.
    let ip = unique_loopback();
    assert!(yaml.contains("address: 127.0.0.1"), "the quickstart changed:\n{yaml}");
    let yaml = yaml.replace("address: 127.0.0.1", &format!("address: {ip}"));
    let web = HttpUpstream::start(SocketAddr::new(IpAddr::V4(ip), 8000), "quickstart-web");

    let running = Proxy::builder(env!("CARGO_BIN_EXE_meshentry"))
        .config(&yaml)
        .args(["--outbound-policy", "REGISTRY_ONLY"])
        .start()
        .await;
    let proxy = running.http();

    let (status, body) = tokio::task::spawn_blocking(move || curl(proxy, "http://web.internal/"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"upstream\":\"quickstart-web\""), "{body}");
    assert_eq!(web.requests(), 1);

    let (status, body) = tokio::task::spawn_blocking(move || curl(proxy, "http://example.org/"))
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body.trim_end(),
        "meshentry: example.org:80 is not a service in the registry seen by namespace default and the outbound traffic policy is REGISTRY_ONLY (from --outbound-policy); add a ServiceEntry for it"
    );
    assert_eq!(web.requests(), 1, "a refused request must not reach any upstream");

    // The admin's config dump shows the route that was taken.
    let admin = running.admin;
    let dump = tokio::task::spawn_blocking(move || {
        let out = curl_command()
            .args(["-s", &format!("http://{admin}/config_dump")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["routes"],
        serde_json::json!([{"port": 80, "virtualHosts": [
            {"domains": ["web.internal"], "protocol": "HTTP", "cluster": "outbound|80||web.internal"}
        ]}])
    );
    assert_eq!(dump["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
}
