//! A front for a test [`KubeApi`] that adds what it cannot serve: the test API server is
//! apiextensions-apiserver, which serves CustomResourceDefinitions (Istio's kinds) but no core
//! resources (Secrets, Pods, Services, Namespaces). The front answers the paths a test records
//! (`/api/v1` discovery, a SecretList, ...) with those recorded responses, streams the watch
//! events the test pushes on them, and forwards every other request to the real API server
//! (over TLS, with the admin client certificate). A client pointed at the front
//! ([`KubeFront::kubeconfig`]) thus sees a real server for Istio's kinds and recorded real
//! responses for the rest.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::KubeApi;
use crate::servers::bind_tcp;
use crate::tasks::TaskGuard;

type Watchers = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>>;

/// The front; see the module's documentation. Stops when dropped.
pub struct KubeFront {
    addr: SocketAddr,
    recorded: Arc<Mutex<HashMap<String, String>>>,
    watchers: Watchers,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    _tasks: TaskGuard,
}

impl KubeFront {
    /// A front for `api` answering `recorded` (path without query, response body as the real
    /// API server would send it) itself.
    pub fn start(api: &KubeApi, recorded: Vec<(String, String)>) -> KubeFront {
        let guard = TaskGuard::new("KubeFront");
        let tasks = guard.tasks().clone();
        let (listener, addr) = bind_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "KubeFront", &tasks);
        let recorded = Arc::new(Mutex::new(recorded.into_iter().collect::<HashMap<_, _>>()));
        let watchers: Watchers = Arc::default();
        let upstream = Arc::new(Upstream::new(api));
        let (r, w, t) = (recorded.clone(), watchers.clone(), tasks.clone());
        tasks.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                t.spawn(serve(stream, r.clone(), w.clone(), upstream.clone()));
            }
        });
        let dir = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: front\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: anyone\n  user: {{}}\ncontexts:\n- name: front\n  context: {{cluster: front, user: anyone}}\ncurrent-context: front\n"
            ),
        )
        .expect("write the front's kubeconfig");
        KubeFront {
            addr,
            recorded,
            watchers,
            kubeconfig,
            _dir: dir,
            _tasks: guard,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for the front (plain HTTP on 127.0.0.1, no credentials).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Replaces the response recorded for `path` (what a list answers from now on).
    pub fn set(&self, path: &str, body: String) {
        lock(&self.recorded).insert(path.to_string(), body);
    }

    /// Sends a watch event (`{"type": "MODIFIED", "object": {...}}`) to every open watch of
    /// `path`; returns how many watches got it.
    pub fn push(&self, path: &str, event: &str) -> usize {
        let mut watchers = lock(&self.watchers);
        let open = watchers.entry(path.to_string()).or_default();
        open.retain(|tx| tx.send(event.to_string()).is_ok());
        open.len()
    }

    /// How many watches of `path` are open.
    pub fn watching(&self, path: &str) -> usize {
        let mut watchers = lock(&self.watchers);
        let open = watchers.entry(path.to_string()).or_default();
        open.retain(|tx| !tx.is_closed());
        open.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The real API server and how to reach it.
struct Upstream {
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Upstream {
    fn new(api: &KubeApi) -> Upstream {
        let pki = api.dir().join("pki");
        let read = |f: &str| std::fs::read(pki.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read("ca.crt")) {
            roots.add(c.expect("the test CA")).expect("a usable CA");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("admin.crt"))
            .collect::<Result<_, _>>()
            .expect("the admin certificate");
        let key = PrivateKeyDer::from_pem_slice(&read("admin.key")).expect("the admin key");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("a client certificate");
        Upstream {
            port: api.port(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }
}

/// One request per connection: the front answers with `connection: close`.
async fn serve(
    mut client: TcpStream,
    recorded: Arc<Mutex<HashMap<String, String>>>,
    watchers: Watchers,
    upstream: Arc<Upstream>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let Some((method, target)) = text
        .lines()
        .next()
        .and_then(|l| l.split_once(' '))
        .and_then(|(m, rest)| Some((m.to_string(), rest.split_once(' ')?.0.to_string())))
    else {
        return;
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let body = lock(&recorded).get(path).cloned();
    match (method.as_str(), body) {
        ("GET", Some(_)) if watch => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            lock(&watchers).entry(path.to_string()).or_default().push(tx);
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if client.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            while let Some(event) = rx.recv().await {
                let line = format!("{event}\n");
                let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                if client.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        ("GET", Some(body)) => {
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(reply.as_bytes()).await;
        }
        ("GET", None) => forward(&mut client, &target, &upstream).await,
        _ => {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    }
}

/// The request to the real API server, its response back as it comes (watches stream).
async fn forward(client: &mut TcpStream, target: &str, upstream: &Upstream) {
    let Ok(tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream.port)).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let name = ServerName::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let Ok(mut tls) = upstream.tls.connect(name, tcp).await else {
        return;
    };
    let request = format!(
        "GET {target} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\naccept: application/json\r\nconnection: close\r\n\r\n",
        upstream.port
    );
    if tls.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy(&mut tls, client).await;
}
