//! The upstream servers answer real clients over real loopback sockets.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use meshentry_testutil::{
    HttpUpstream, Reset, Stall, TcpBanner, TcpEcho, closed_port, eventually, free_port, unique_loopback,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http1<IO>(io: IO) -> Sender
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender, path: &str, host: &str) -> (u16, hyper::HeaderMap, Bytes) {
    let req = Request::get(path)
        .header("host", host)
        .header("x-test", "1")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[tokio::test]
async fn http_upstream_echoes_requests_over_one_keepalive_connection() {
    let ip = unique_loopback();
    // A fixed port on our own address: no collision with other tests.
    let up = HttpUpstream::start(addr(ip, 8080), "alpha");
    assert_eq!(up.addr(), addr(ip, 8080));

    let mut sender = http1(TcpStream::connect(up.addr()).await.expect("connect")).await;
    let (status, headers, body) = get(&mut sender, "/hello?x=1", "api.example.com").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "alpha");
    let json: Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(json["upstream"], "alpha");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/hello");
    assert_eq!(json["uri"], "/hello?x=1");
    assert_eq!(json["host"], "api.example.com");
    assert_eq!(json["headers"]["x-test"], "1");

    let (status, _, _) = get(&mut sender, "/again", "api.example.com").await;
    assert_eq!(status, 200);
    assert_eq!(up.requests(), 2);
    assert_eq!(up.connections(), 1, "keep-alive reuses the connection");
    let seen = up.seen();
    assert_eq!(seen[1].path, "/again");
    assert_eq!(seen[0].connection, seen[1].connection);
    assert_eq!(up.last().expect("a request").header("X-Test"), Some("1"));
}

#[tokio::test]
async fn http_upstream_special_paths() {
    let ip = unique_loopback();
    let up = HttpUpstream::start(addr(ip, 0), "special");
    let mut sender = http1(TcpStream::connect(up.addr()).await.expect("connect")).await;

    let (status, headers, body) = get(&mut sender, "/status/503", "h").await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-upstream"], "special");
    let json: Value = serde_json::from_slice(&body).expect("json body");
    assert_eq!(json["path"], "/status/503");

    let (status, _, body) = get(&mut sender, "/status/204", "h").await;
    assert_eq!((status, body.len()), (204, 0));

    let start = Instant::now();
    let (status, _, _) = get(&mut sender, "/delay/300", "h").await;
    assert_eq!(status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));

    let (status, headers, body) = get(&mut sender, "/bytes/100000", "h").await;
    assert_eq!(status, 200);
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(|&b| b == b'x'));

    let (status, _, _) = get(&mut sender, "/status/abc", "h").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn h2c_upstream_serves_concurrent_streams_on_one_connection() {
    let ip = unique_loopback();
    let up = HttpUpstream::start_h2c(addr(ip, 0), "h2-up");
    let io = TokioIo::new(TcpStream::connect(up.addr()).await.expect("connect"));
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    // Concurrent: each waits 100 ms upstream, so they overlap on the one connection.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut sender = sender.clone();
        calls.spawn(async move {
            let req = Request::get("http://api.example.com/delay/100")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let resp = sender.send_request(req).await.expect("response");
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<Value>(&body).expect("json body")
        });
    }
    for json in calls.join_all().await {
        assert_eq!(json["upstream"], "h2-up");
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(json["host"], "api.example.com", "from :authority");
    }
    assert_eq!((up.requests(), up.connections()), (4, 1));
}

#[tokio::test]
async fn http_upstream_on_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("up.sock");
    let up = HttpUpstream::start_unix(&path, "unix-up");
    let mut sender = http1(UnixStream::connect(&path).await.expect("connect")).await;
    let (status, headers, _) = get(&mut sender, "/", "local").await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "unix-up");
    assert_eq!(up.requests(), 1);
    drop(up);
    assert!(!path.exists(), "the socket file is removed on drop");
}

#[tokio::test]
async fn curl_reaches_http_upstream() {
    let ip = unique_loopback();
    let up = HttpUpstream::start(addr(ip, 80), "curl-up");
    let url = format!("http://{ip}/curl-path");
    // Isolated from ~/.curlrc and the proxy variables: only the URL decides where it goes.
    let out = tokio::process::Command::from(meshentry_testutil::curl_command())
        .args(["-sS", "--noproxy", "*", "-H", "Host: svc.example", &url])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): apt-get install curl (scripts/test does this)"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("json body");
    assert_eq!(json["upstream"], "curl-up");
    assert_eq!(json["host"], "svc.example");
    assert_eq!(
        json["headers"]["user-agent"].as_str().map(|s| s.starts_with("curl/")),
        Some(true)
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn dropping_a_server_closes_listener_and_open_connections() {
    let ip = unique_loopback();
    let up = HttpUpstream::start(addr(ip, 8080), "gone");
    let mut open = TcpStream::connect(up.addr()).await.expect("connect");
    let a = up.addr();
    drop(up);
    // The open keep-alive connection ends (EOF or reset) ...
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("connection closes after drop");
    assert!(matches!(read, Ok(0) | Err(_)));
    // ... and the port refuses.
    let err = TcpStream::connect(a).await.expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // The same fixed port can be bound again at once.
    let _again = HttpUpstream::start(a, "again");
}

#[tokio::test]
async fn tcp_echo_is_client_first() {
    let ip = unique_loopback();
    let echo = TcpEcho::start(addr(ip, 9000), "echo");
    let mut s = TcpStream::connect(echo.addr()).await.expect("connect");
    // Nothing arrives before the client speaks.
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await;
    assert!(early.is_err(), "echo server must not speak first");
    s.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.expect("read echo");
    assert_eq!(&got, b"ping");
    assert_eq!(echo.connections(), 1);
    assert_eq!(echo.bytes_received(), 4);
}

#[tokio::test]
async fn tcp_banner_speaks_first_then_echoes() {
    let ip = unique_loopback();
    let banner = TcpBanner::start(addr(ip, 3306), &b"mysql-5.7\n"[..]);
    let mut s = TcpStream::connect(banner.addr()).await.expect("connect");
    let mut got = [0u8; 10];
    s.read_exact(&mut got).await.expect("read banner");
    assert_eq!(&got, b"mysql-5.7\n");
    s.write_all(b"q").await.expect("write");
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.expect("read echo");
    assert_eq!(&one, b"q");
}

#[tokio::test]
async fn stall_reads_but_never_answers() {
    let ip = unique_loopback();
    let stall = Stall::start(addr(ip, 8080));
    let mut s = TcpStream::connect(stall.addr()).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(r.is_err(), "stall must not answer");
    eventually(Duration::from_secs(5), || async { stall.bytes_received() > 0 }).await;
    assert_eq!(stall.connections(), 1);
}

#[tokio::test]
async fn reset_produces_econnreset() {
    let ip = unique_loopback();
    let reset = Reset::start(addr(ip, 8080));
    // Under load the RST can arrive before connect() returns; either way it is a reset.
    let err = match TcpStream::connect(reset.addr()).await {
        Ok(mut s) => {
            let mut buf = [0u8; 16];
            s.read(&mut buf).await.expect_err("read must fail with a reset")
        }
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    eventually(Duration::from_secs(5), || async { reset.connections() == 1 }).await;
}

#[tokio::test]
async fn reset_after_first_read_resets_once_the_request_arrives() {
    let ip = unique_loopback();
    let reset = Reset::after_first_read(addr(ip, 8080));
    let mut s = TcpStream::connect(reset.addr()).await.expect("connect succeeds");
    s.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 16];
    let err = s.read(&mut buf).await.expect_err("read must fail with a reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert_eq!(reset.bytes_received(), 5);
}

#[tokio::test]
async fn closed_port_refuses_and_free_port_is_bindable() {
    let ip = unique_loopback();
    let closed = closed_port(ip);
    assert_eq!(closed.ip(), IpAddr::V4(ip));
    let err = TcpStream::connect(closed).await.expect_err("must refuse");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);

    let port = free_port(ip);
    let _l = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("free port binds");
}
