//! The access log (`--access-log`): one line per HTTP request and per TCP connection, written
//! when it ends, in Istio's default Envoy text format or as JSON with Envoy's key names.
//!
//! Writing never blocks traffic. Each worker thread formats lines into a buffer of its own; a
//! writer thread takes the buffers (swapping in an empty one) every [`FLUSH_EVERY`], or sooner
//! when one fills, and writes them to the file. A worker's buffer sits behind a mutex that
//! only that worker and the writer take, for a line's copy or a swap. When the sink is slow
//! and a buffer reaches [`MAX_BUFFER`], further lines are dropped and counted rather than
//! stalling the worker.

use std::cell::RefCell;
use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::base::flags::Flags;
use crate::base::lock;
use crate::model::cluster::HostAddr;

/// How long a line may wait in a worker's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A worker's buffer is handed over early past this size.
const EAGER_FLUSH: usize = 64 * 1024;
/// Past this, a worker drops lines until the writer catches up.
pub const MAX_BUFFER: usize = 4 * 1024 * 1024;

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Istio's default: Envoy's default format with Istio's additions.
    Text,
    /// One JSON object per line, with the keys of Istio's JSON encoding.
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" | "TEXT" => Some(Format::Text),
            "json" | "JSON" => Some(Format::Json),
            _ => None,
        }
    }
}

/// One request or connection, as the log prints it. Empty fields print as `-` (text) or
/// `null` (JSON).
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub start: Option<SystemTime>,
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// `HTTP/1.1`, `HTTP/2`; empty for TCP.
    pub protocol: &'a str,
    /// 0 for TCP, as Envoy prints it.
    pub code: u16,
    pub flags: Flags,
    /// `%RESPONSE_CODE_DETAILS%`: `via_upstream`, `route_not_found`...
    pub details: &'a str,
    pub termination: &'a str,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the TLS this proxy originated failed.
    pub transport_failure: &'a str,
    /// From the client.
    pub bytes_received: u64,
    /// To the client.
    pub bytes_sent: u64,
    pub duration: Duration,
    /// Until the upstream's response head arrived (`x-envoy-upstream-service-time`).
    pub upstream_time: Option<Duration>,
    pub forwarded_for: &'a [u8],
    pub user_agent: &'a [u8],
    pub request_id: &'a [u8],
    pub authority: &'a [u8],
    pub upstream_host: Option<&'a HostAddr>,
    /// `outbound|PORT|SUBSET|HOST`, `PassthroughCluster`, `BlackHoleCluster`.
    pub cluster: &'a str,
    pub upstream_local: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    pub server_name: &'a str,
    pub route: &'a str,
}

type Buffer = Arc<Mutex<Vec<u8>>>;

struct Inner {
    id: usize,
    format: Format,
    buffers: Mutex<Vec<Buffer>>,
    sink: Mutex<Box<dyn Write + Send>>,
    dropped: AtomicU64,
    written: AtomicU64,
    stop: AtomicBool,
}

/// The access log of one proxy.
pub struct AccessLog {
    inner: Arc<Inner>,
    /// The writer thread, woken early when a buffer fills.
    writer_thread: std::thread::Thread,
    /// Joined when the log is dropped.
    writer: Mutex<Option<JoinHandle<()>>>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's buffer in each log it wrote to, by the log's id.
    static BUFFERS: RefCell<Vec<(usize, Buffer)>> = const { RefCell::new(Vec::new()) };
}

impl AccessLog {
    /// Opens `path` for appending (`-` or `/dev/stdout` for standard output) and starts the
    /// writer thread.
    pub fn open(path: &Path, format: Format) -> io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = if path == Path::new("-") || path == Path::new("/dev/stdout") {
            Box::new(io::stdout())
        } else {
            Box::new(OpenOptions::new().create(true).append(true).open(path)?)
        };
        AccessLog::with_sink(sink, format)
    }

    /// A log that writes to `sink`.
    pub fn with_sink(sink: Box<dyn Write + Send>, format: Format) -> io::Result<AccessLog> {
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            format,
            buffers: Mutex::new(Vec::new()),
            sink: Mutex::new(sink),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let for_thread = inner.clone();
        let writer = std::thread::Builder::new()
            .name("meshentry-access-log".into())
            .spawn(move || {
                while !for_thread.stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    for_thread.flush();
                }
            })?;
        Ok(AccessLog {
            inner,
            writer_thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Lines dropped because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Lines handed to the sink.
    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }

    /// Formats `e` into this worker's buffer.
    pub fn log(&self, e: &Entry<'_>) {
        let inner = &self.inner;
        BUFFERS.with(|buffers| {
            let mut buffers = buffers.borrow_mut();
            let buffer = match buffers.iter().find(|(id, _)| *id == inner.id) {
                Some((_, b)) => b,
                None => {
                    let b: Buffer = Arc::new(Mutex::new(Vec::with_capacity(16 * 1024)));
                    lock(&inner.buffers).push(b.clone());
                    buffers.push((inner.id, b));
                    &buffers[buffers.len() - 1].1
                }
            };
            let mut buf = lock(buffer);
            let before = buf.len();
            match inner.format {
                Format::Text => write_text(&mut buf, e),
                Format::Json => write_json(&mut buf, e),
            }
            if buf.len() > MAX_BUFFER {
                buf.truncate(before);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let eager = before < EAGER_FLUSH && buf.len() >= EAGER_FLUSH;
            drop(buf);
            if eager {
                self.writer_thread.unpark();
            }
        });
    }

    /// Writes everything buffered so far (at shutdown).
    pub fn flush(&self) {
        self.inner.flush();
    }
}

impl Inner {
    fn flush(&self) {
        let buffers: Vec<Buffer> = lock(&self.buffers).clone();
        let mut sink = lock(&self.sink);
        let mut spare = Vec::new();
        for b in buffers {
            // Swap under the worker's lock, write outside it.
            std::mem::swap(&mut *lock(&b), &mut spare);
            if spare.is_empty() {
                continue;
            }
            let lines = spare.iter().filter(|c| **c == b'\n').count() as u64;
            if let Err(e) = sink.write_all(&spare) {
                self.dropped.fetch_add(lines, Ordering::Relaxed);
                tracing::warn!(error = %e, "access log write failed; lines dropped");
            } else {
                self.written.fetch_add(lines, Ordering::Relaxed);
            }
            spare.clear();
            // Hand the capacity back so the worker does not grow a new buffer.
            let mut worker = lock(&b);
            if worker.is_empty() && worker.capacity() < spare.capacity() {
                std::mem::swap(&mut *worker, &mut spare);
            }
        }
        let _ = sink.flush();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(w) = lock(&self.writer).take() {
            w.thread().unpark();
            let _ = w.join();
        }
        self.inner.flush();
    }
}

// === Formats ===

/// Istio's default text format:
///
/// ```text
/// [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
/// %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
/// "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
/// %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
/// "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
/// %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
/// %REQUESTED_SERVER_NAME% %ROUTE_NAME%
/// ```
pub fn write_text(out: &mut Vec<u8>, e: &Entry<'_>) {
    for (_, before, value, after) in fields(e) {
        out.extend_from_slice(before.as_bytes());
        value.text(out);
        out.extend_from_slice(after.as_bytes());
    }
    out.push(b'\n');
}

/// The same fields as one JSON object, keyed as Istio's JSON access log keys them.
pub fn write_json(out: &mut Vec<u8>, e: &Entry<'_>) {
    for (i, (key, _, value, _)) in fields(e).into_iter().enumerate() {
        let _ = write!(out, "{}\"{key}\":", if i == 0 { '{' } else { ',' });
        value.json(out);
    }
    out.extend_from_slice(b"}\n");
}

/// One field's value, which each format prints its own way.
enum Value<'e> {
    Time(Option<SystemTime>),
    /// Text: `-` when empty; JSON: `null` then.
    Bytes(&'e [u8]),
    Number(u128),
    /// Text: `-` when absent; JSON: a string, or `null`.
    Shown(Option<&'e dyn Display>),
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: a header's value, so a string in JSON.
    Millis(Option<u128>),
}

/// Every field of an entry in the order of the formats: its JSON key, and the text format's
/// punctuation before and after it.
fn fields<'e>(e: &'e Entry<'_>) -> [(&'static str, &'static str, Value<'e>, &'static str); 24] {
    use Value::*;
    let str = |s: &'e str| Bytes(s.as_bytes());
    let addr = |a: &'e Option<SocketAddr>| Shown(a.as_ref().map(|a| a as &dyn Display));
    [
        ("start_time", "[", Time(e.start), "]"),
        ("method", " \"", Bytes(e.method), ""),
        ("path", " ", Bytes(e.path), ""),
        ("protocol", " ", str(e.protocol), "\""),
        ("response_code", " ", Number(u128::from(e.code)), ""),
        ("response_flags", " ", Shown(Some(&e.flags)), ""),
        ("response_code_details", " ", str(e.details), ""),
        ("connection_termination_details", " ", str(e.termination), ""),
        (
            "upstream_transport_failure_reason",
            " \"",
            str(e.transport_failure),
            "\"",
        ),
        ("bytes_received", " ", Number(u128::from(e.bytes_received)), ""),
        ("bytes_sent", " ", Number(u128::from(e.bytes_sent)), ""),
        ("duration", " ", Number(e.duration.as_millis()), ""),
        (
            "upstream_service_time",
            " ",
            Millis(e.upstream_time.map(|t| t.as_millis())),
            "",
        ),
        ("x_forwarded_for", " \"", Bytes(e.forwarded_for), "\""),
        ("user_agent", " \"", Bytes(e.user_agent), "\""),
        ("request_id", " \"", Bytes(e.request_id), "\""),
        ("authority", " \"", Bytes(e.authority), "\""),
        (
            "upstream_host",
            " \"",
            Shown(e.upstream_host.map(|h| h as &dyn Display)),
            "\"",
        ),
        ("upstream_cluster", " ", str(e.cluster), ""),
        ("upstream_local_address", " ", addr(&e.upstream_local), ""),
        ("downstream_local_address", " ", addr(&e.downstream_local), ""),
        ("downstream_remote_address", " ", addr(&e.downstream_remote), ""),
        ("requested_server_name", " ", str(e.server_name), ""),
        ("route_name", " ", str(e.route), ""),
    ]
}

impl Value<'_> {
    fn text(&self, out: &mut Vec<u8>) {
        match self {
            Value::Time(t) => write_time(out, *t),
            Value::Bytes(v) => text(out, v),
            Value::Number(n) | Value::Millis(Some(n)) => {
                let _ = write!(out, "{n}");
            }
            Value::Shown(Some(v)) => {
                let _ = write!(out, "{v}");
            }
            Value::Shown(None) | Value::Millis(None) => out.push(b'-'),
        }
    }

    fn json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Time(t) => {
                out.push(b'"');
                write_time(out, *t);
                out.push(b'"');
            }
            Value::Bytes(v) => json_str(out, v),
            Value::Number(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Millis(Some(n)) => {
                let _ = write!(out, "\"{n}\"");
            }
            Value::Shown(Some(v)) => {
                let _ = write!(out, "\"{v}\"");
            }
            Value::Shown(None) | Value::Millis(None) => out.extend_from_slice(b"null"),
        }
    }
}

/// A field of the text format: `-` when empty; bytes a terminal or a log parser could
/// misread (controls, `"`, `\`) as `\xNN`, so a header value cannot forge a line or a field.
fn text(out: &mut Vec<u8>, v: &[u8]) {
    if v.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in v {
        if b < 0x20 || b == 0x7f || b == b'"' || b == b'\\' {
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.push(b);
        }
    }
}

/// A JSON string, or `null` when empty; bytes that are not UTF-8 become U+FFFD.
fn json_str(out: &mut Vec<u8>, v: &[u8]) {
    if v.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    out.push(b'"');
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `%START_TIME%` as Envoy prints it: `2024-05-01T12:34:56.789Z` (UTC, milliseconds).
fn write_time(out: &mut Vec<u8>, t: Option<SystemTime>) {
    let Some(since) = t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) else {
        out.push(b'-');
        return;
    };
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        write_text(&mut out, e);
        String::from_utf8(out).unwrap()
    }

    fn json(e: &Entry<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        write_json(&mut out, e);
        serde_json::from_slice(&out).unwrap()
    }

    fn http_entry<'a>(upstream: &'a HostAddr) -> Entry<'a> {
        Entry {
            start: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            method: b"GET",
            path: b"/status/418",
            protocol: "HTTP/1.1",
            code: 418,
            flags: Flags::NONE,
            details: "via_upstream",
            bytes_received: 0,
            bytes_sent: 135,
            duration: Duration::from_millis(4),
            upstream_time: Some(Duration::from_millis(3)),
            user_agent: b"curl/8.0",
            request_id: b"84961386",
            authority: b"httpbin:8000",
            upstream_host: Some(upstream),
            cluster: "outbound|8000||httpbin.foo.svc.cluster.local",
            upstream_local: Some("10.44.1.23:37652".parse().unwrap()),
            downstream_local: Some("10.0.45.184:8000".parse().unwrap()),
            downstream_remote: Some("10.44.1.23:46520".parse().unwrap()),
            route: "default",
            ..Entry::default()
        }
    }

    #[test]
    fn text_is_istios_default_format() {
        let up = HostAddr::Ip("10.44.1.27:80".parse().unwrap());
        assert_eq!(
            text(&http_entry(&up)),
            "[2023-11-14T22:13:20.123Z] \"GET /status/418 HTTP/1.1\" 418 - via_upstream - \"-\" 0 135 4 3 \"-\" \"curl/8.0\" \"84961386\" \"httpbin:8000\" \"10.44.1.27:80\" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default\n"
        );
    }

    #[test]
    fn tcp_lines_have_dashes_where_http_has_fields() {
        let e = Entry {
            start: Some(UNIX_EPOCH),
            flags: Flags::UF,
            details: "upstream_connect_failure",
            bytes_received: 5,
            cluster: "outbound|443||a.example.com",
            server_name: "a.example.com",
            ..Entry::default()
        };
        assert_eq!(
            text(&e),
            "[1970-01-01T00:00:00.000Z] \"- - -\" 0 UF upstream_connect_failure - \"-\" 5 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" outbound|443||a.example.com - - - a.example.com -\n"
        );
    }

    #[test]
    fn header_values_cannot_forge_fields_or_lines() {
        let e = Entry {
            user_agent: b"evil\" 200 \"x\nnext",
            ..Entry::default()
        };
        let line = text(&e);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("\"evil\\x22 200 \\x22x\\x0anext\""), "{line}");
    }

    #[test]
    fn json_has_istios_keys_and_nulls() {
        let up = HostAddr::Ip("10.44.1.27:80".parse().unwrap());
        let mut e = http_entry(&up);
        e.flags = Flags::UF | Flags::URX;
        e.user_agent = "caf\u{e9} \"q\"".as_bytes();
        let v = json(&e);
        assert_eq!(v["start_time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["response_code"], 418);
        assert_eq!(v["response_flags"], "UF,URX");
        assert_eq!(v["user_agent"], "caf\u{e9} \"q\"");
        assert_eq!(v["x_forwarded_for"], serde_json::Value::Null);
        assert_eq!(v["upstream_cluster"], "outbound|8000||httpbin.foo.svc.cluster.local");
        assert_eq!(v["upstream_service_time"], "3");
        assert_eq!(v["duration"], 4);
        assert_eq!(v.as_object().unwrap().len(), 24);
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11016), (2000, 2, 29));
        assert_eq!(civil_from_days(19723), (2024, 1, 1));
    }

    /// A sink that refuses to make progress until released.
    struct Stalled(Arc<Mutex<()>>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _wait = lock(&self.0);
            lock(&self.1).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_lines_instead_of_blocking() {
        let gate = Arc::new(Mutex::new(()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let held = lock(&gate);
        let log = AccessLog::with_sink(Box::new(Stalled(gate.clone(), got.clone())), Format::Text).unwrap();
        let e = Entry {
            path: &[b'a'; 1000],
            ..Entry::default()
        };
        let started = std::time::Instant::now();
        // Far more than the buffer holds, while the writer is stuck.
        for _ in 0..(3 * MAX_BUFFER / 1000) {
            log.log(&e);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "logging must not wait");
        assert!(log.dropped() > 0, "lines beyond the buffer are dropped");
        drop(held);
        let dropped = log.dropped();
        drop(log);
        let lines = lock(&got).iter().filter(|b| **b == b'\n').count() as u64;
        assert_eq!(
            lines + dropped,
            (3 * MAX_BUFFER / 1000) as u64,
            "every line written or counted"
        );
    }

    #[test]
    fn lines_reach_the_sink_without_more_traffic() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::with_sink(Box::new(Stalled(Arc::new(Mutex::new(())), got.clone())), Format::Json).unwrap();
        log.log(&Entry::default());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&got).is_empty() {
            assert!(std::time::Instant::now() < deadline, "the writer flushes on its timer");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(log.written(), 1);
    }
}
