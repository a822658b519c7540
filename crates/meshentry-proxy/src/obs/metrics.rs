//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_tcp_*`...), as a sidecar reports its outbound traffic (`reporter="source"`), in the
//! Prometheus text format (0.0.4) that `/stats/prometheus` serves.
//!
//! The data path must not contend: every worker thread (one current-thread runtime each)
//! counts into a table of its own, keyed by a small `Copy` key (the destination as an interned
//! id, the status, the flags bitset...), and the tables are summed when someone scrapes. A
//! worker's table sits behind a mutex that only that worker and the scraper ever take, so the
//! lock is uncontended except for the moments a scrape copies the table out.
//!
//! Destinations are interned once, when a snapshot builds its clusters, into ids that keep
//! their meaning for the life of the process: a reload that rebuilds every cluster gets the
//! same ids for the same labels, so series survive reloads and never change labels.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshentry_registry::hash::FxHashMap;

use crate::base::config::ProxyConfig;
use crate::base::flags::Flags;
use crate::base::lock;
use crate::model::dest::destinations;
pub use crate::model::dest::{DestId, Destination, UNKNOWN, intern};

/// `istio_request_duration_milliseconds` buckets: Istio's defaults, in ms.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// `istio_request_bytes` and `istio_response_bytes` buckets: Istio's defaults (1 to 10^9 by
/// powers of ten).
pub const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

// === Keys and series ===

/// `request_protocol` of HTTP metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestProtocol {
    Http,
    Grpc,
}

impl RequestProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        }
    }
}

/// What one series of the request metrics is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub dest: DestId,
    pub protocol: RequestProtocol,
    /// `response_code`: the status the client got.
    pub code: u16,
    /// `grpc_response_status`; empty for requests that are not gRPC.
    pub grpc_status: Option<u16>,
    pub flags: Flags,
}

/// What one series of the TCP metrics is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    pub dest: DestId,
    pub flags: Flags,
}

/// Bucket counts (not cumulative; the last is +Inf) and the sum of observations.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Histogram<const N: usize> {
    counts: [u64; N],
    sum: f64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Self {
            counts: [0; N],
            sum: 0.0,
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// `bounds` has N-1 upper bounds.
    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(N - 1);
        self.counts[i] += 1;
        self.sum += v;
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    #[cfg(test)]
    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct RequestSeries {
    count: u64,
    duration: Histogram<20>,
    request_bytes: Histogram<11>,
    response_bytes: Histogram<11>,
}

impl RequestSeries {
    fn add(&mut self, o: &Self) {
        self.count += o.count;
        self.duration.add(&o.duration);
        self.request_bytes.add(&o.request_bytes);
        self.response_bytes.add(&o.response_bytes);
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct TcpSeries {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

impl TcpSeries {
    fn add(&mut self, o: &Self) {
        self.opened += o.opened;
        self.closed += o.closed;
        self.sent += o.sent;
        self.received += o.received;
    }
}

/// One worker's counts.
#[derive(Default)]
struct Table {
    requests: FxHashMap<RequestKey, RequestSeries>,
    tcp: FxHashMap<TcpKey, TcpSeries>,
}

// === The registry ===

/// The labels that are the same for everything this proxy reports.
#[derive(Clone, Debug)]
pub struct Source {
    pub workload: String,
    pub namespace: String,
    /// This proxy's SPIFFE identity (from `--cert`), reported on mutual TLS traffic.
    pub principal: Option<String>,
    pub app: String,
    pub version: String,
}

impl Source {
    /// What `config` says about this workload: its namespace, its `app` and `version` labels,
    /// and in gateway mode the Gateway's name as the workload (Istio's gateways are
    /// deployments named like their Gateway).
    pub fn of(config: &ProxyConfig) -> Source {
        let label = |k: &str| config.labels.get(k).cloned().unwrap_or_else(|| UNKNOWN.into());
        let workload = config
            .gateway
            .as_deref()
            .and_then(|g| g.split_once('/'))
            .map_or_else(|| UNKNOWN.to_string(), |(_, name)| name.to_string());
        let principal = config.identity.as_ref().and_then(|id| {
            let certs = crate::live::tls::load_certs("certificate", &id.cert).ok()?;
            crate::live::tls::cert_names(certs.first()?)
                .into_iter()
                .find(|n| n.starts_with("spiffe://"))
        });
        Source {
            workload,
            namespace: config.namespace.clone(),
            principal,
            app: label("app"),
            version: label("version"),
        }
    }
}

/// The Istio metrics of one proxy: per-worker tables and the labels they are printed with.
pub struct Metrics {
    id: usize,
    workers: Mutex<Vec<Arc<Mutex<Table>>>>,
    source: Source,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's table in each [`Metrics`] it counted into, by the registry's id.
    static TABLES: RefCell<Vec<(usize, Arc<Mutex<Table>>)>> = const { RefCell::new(Vec::new()) };
}

impl Metrics {
    pub fn new(source: Source) -> Metrics {
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            workers: Mutex::new(Vec::new()),
            source,
        }
    }

    /// Runs `f` on this thread's table, made and registered on first use.
    fn with_table(&self, f: impl FnOnce(&mut Table)) {
        TABLES.with(|tables| {
            let mut tables = tables.borrow_mut();
            let table = match tables.iter().find(|(id, _)| *id == self.id) {
                Some((_, t)) => t,
                None => {
                    let t = Arc::new(Mutex::new(Table::default()));
                    lock(&self.workers).push(t.clone());
                    tables.push((self.id, t));
                    &tables[tables.len() - 1].1
                }
            };
            f(&mut lock(table));
        });
    }

    /// One HTTP request ended: `istio_requests_total` and the three histograms.
    pub fn request(&self, key: RequestKey, duration: Duration, request_bytes: u64, response_bytes: u64) {
        self.with_table(|t| {
            let s = t.requests.entry(key).or_default();
            s.count += 1;
            s.duration
                .observe(&DURATION_BUCKETS_MS, duration.as_secs_f64() * 1000.0);
            s.request_bytes.observe(&BYTES_BUCKETS, request_bytes as f64);
            s.response_bytes.observe(&BYTES_BUCKETS, response_bytes as f64);
        });
    }

    /// A TCP connection was routed (`istio_tcp_connections_opened_total`).
    pub fn tcp_opened(&self, key: TcpKey) {
        self.with_table(|t| t.tcp.entry(key).or_default().opened += 1);
    }

    /// A TCP connection ended, having received `received` bytes from the client and sent it
    /// `sent`.
    pub fn tcp_closed(&self, key: TcpKey, received: u64, sent: u64) {
        self.with_table(|t| {
            let s = t.tcp.entry(key).or_default();
            s.closed += 1;
            s.received += received;
            s.sent += sent;
        });
    }

    /// Every worker's counts, summed.
    fn merged(&self) -> (BTreeMap<RequestKey, RequestSeries>, BTreeMap<TcpKey, TcpSeries>) {
        let workers: Vec<Arc<Mutex<Table>>> = lock(&self.workers).clone();
        let mut requests: BTreeMap<RequestKey, RequestSeries> = BTreeMap::new();
        let mut tcp: BTreeMap<TcpKey, TcpSeries> = BTreeMap::new();
        for w in workers {
            // Copied out under the worker's lock, merged outside it.
            let (r, t): (Vec<_>, Vec<_>) = {
                let table = lock(&w);
                (
                    table.requests.iter().map(|(k, v)| (*k, *v)).collect(),
                    table.tcp.iter().map(|(k, v)| (*k, *v)).collect(),
                )
            };
            for (k, v) in r {
                requests.entry(k).or_default().add(&v);
            }
            for (k, v) in t {
                tcp.entry(k).or_default().add(&v);
            }
        }
        (requests, tcp)
    }

    /// Appends the Istio metrics in the Prometheus text format.
    pub fn encode(&self, out: &mut String) {
        let (requests, tcp) = self.merged();
        let dests = destinations();
        // Each series' labels: the destination's, then `more`.
        let labels = |dest: DestId, more: &[(&str, &str)]| -> String {
            let d = dests.get(dest.index()).unwrap_or(&dests[0]);
            let mut l = String::with_capacity(512);
            let src_principal = match (&self.source.principal, d.mtls) {
                (Some(p), true) => p.as_str(),
                _ => UNKNOWN,
            };
            let pairs: [(&str, &str); 16] = [
                ("reporter", "source"),
                ("source_workload", &self.source.workload),
                ("source_workload_namespace", &self.source.namespace),
                ("source_principal", src_principal),
                ("source_app", &self.source.app),
                ("source_version", &self.source.version),
                ("source_cluster", UNKNOWN),
                ("destination_workload", UNKNOWN),
                ("destination_workload_namespace", UNKNOWN),
                ("destination_principal", d.principal.as_deref().unwrap_or(UNKNOWN)),
                ("destination_app", UNKNOWN),
                ("destination_version", UNKNOWN),
                ("destination_service", &d.service),
                ("destination_service_name", &d.name),
                ("destination_service_namespace", &d.namespace),
                ("destination_cluster", UNKNOWN),
            ];
            for (i, (k, v)) in pairs.iter().chain(more).enumerate() {
                if i > 0 {
                    l.push(',');
                }
                push_label(&mut l, k, v);
            }
            l
        };
        let security = |dest: DestId| match dests.get(dest.index()) {
            Some(d) if d.mtls => "mutual_tls",
            _ => "none",
        };
        // The full label set of each series, computed once.
        let request_labels: Vec<(String, &RequestSeries)> = requests
            .iter()
            .map(|(k, s)| {
                let code = itoa(u64::from(k.code));
                let grpc = k.grpc_status.map(|g| itoa(u64::from(g)));
                let more = [
                    ("request_protocol", k.protocol.as_str()),
                    ("response_code", code.as_str()),
                    ("grpc_response_status", grpc.as_ref().map_or("", |g| g.as_str())),
                    ("response_flags", &k.flags.to_string()),
                    ("connection_security_policy", security(k.dest)),
                ];
                (labels(k.dest, &more), s)
            })
            .collect();
        let tcp_labels: Vec<(String, &TcpSeries)> = tcp
            .iter()
            .map(|(k, s)| {
                let more = [
                    ("request_protocol", "tcp"),
                    ("response_flags", &k.flags.to_string()),
                    ("connection_security_policy", security(k.dest)),
                ];
                (labels(k.dest, &more), s)
            })
            .collect();

        family(out, "istio_requests_total", "counter", "Requests this proxy handled.");
        for (l, s) in &request_labels {
            sample(out, "istio_requests_total", l, None, &itoa(s.count));
        }
        histogram(
            out,
            "istio_request_duration_milliseconds",
            "How long requests took, from the first byte of the request to the last byte of the response.",
            &DURATION_BUCKETS_MS,
            request_labels
                .iter()
                .map(|(l, s)| (l.as_str(), &s.duration.counts[..], s.duration.sum)),
        );
        histogram(
            out,
            "istio_request_bytes",
            "Request body sizes.",
            &BYTES_BUCKETS,
            request_labels
                .iter()
                .map(|(l, s)| (l.as_str(), &s.request_bytes.counts[..], s.request_bytes.sum)),
        );
        histogram(
            out,
            "istio_response_bytes",
            "Response body sizes.",
            &BYTES_BUCKETS,
            request_labels
                .iter()
                .map(|(l, s)| (l.as_str(), &s.response_bytes.counts[..], s.response_bytes.sum)),
        );
        let tcp_families: [TcpFamily; 4] = [
            (
                "istio_tcp_sent_bytes_total",
                "Bytes sent to clients on TCP connections, counted when they close.",
                |s| s.sent,
            ),
            (
                "istio_tcp_received_bytes_total",
                "Bytes received from clients on TCP connections, counted when they close.",
                |s| s.received,
            ),
            ("istio_tcp_connections_opened_total", "TCP connections routed.", |s| {
                s.opened
            }),
            ("istio_tcp_connections_closed_total", "TCP connections closed.", |s| {
                s.closed
            }),
        ];
        for (name, help, value) in tcp_families {
            family(out, name, "counter", help);
            let opened = name == "istio_tcp_connections_opened_total";
            for (l, s) in &tcp_labels {
                // Connections are opened without flags and closed with their final ones, so a
                // key may have opened connections and no closed ones, or the other way round:
                // each family shows the keys that had its event.
                if (opened && s.opened > 0) || (!opened && s.closed > 0) {
                    sample(out, name, l, None, &itoa(value(s)));
                }
            }
        }
    }

    /// How many series of each kind exist (for tests and `/stats`).
    pub fn series(&self) -> (usize, usize) {
        let (r, t) = self.merged();
        (r.len(), t.len())
    }
}

/// A TCP metric: its name, help, and which count of a series it prints.
type TcpFamily = (&'static str, &'static str, fn(&TcpSeries) -> u64);

/// Sums of one histogram series: its labels, bucket counts and sum.
pub type HistogramSeries<'a> = (&'a str, &'a [u64], f64);

pub fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    series: impl Iterator<Item = HistogramSeries<'a>>,
) {
    family(out, name, "histogram", help);
    for (labels, counts, sum) in series {
        let mut cumulative = 0;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = match bounds.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_string(),
            };
            let bucket = format!("{name}_bucket");
            sample(out, &bucket, labels, Some(&le), &itoa(cumulative));
        }
        sample(out, &format!("{name}_sum"), labels, None, &format_float(sum));
        sample(out, &format!("{name}_count"), labels, None, &itoa(cumulative));
    }
}

/// `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{labels,le="x"} value`.
pub fn sample(out: &mut String, name: &str, labels: &str, le: Option<&str>, value: &str) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            push_label(out, "le", le);
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// `key="value"`, the value escaped as the text format requires.
pub fn push_label(out: &mut String, key: &str, value: &str) {
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn itoa(v: u64) -> String {
    v.to_string()
}

/// A float as Prometheus reads it: integers without a fraction, others in Rust's shortest
/// round-trip form.
pub fn format_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str) -> DestId {
        intern(Destination {
            service: Arc::from(host),
            name: Arc::from(host),
            namespace: Arc::from("ns1"),
            principal: None,
            mtls: false,
        })
    }

    fn source() -> Source {
        Source {
            workload: UNKNOWN.into(),
            namespace: "default".into(),
            principal: Some("spiffe://cluster.local/ns/default/sa/me".into()),
            app: "shop".into(),
            version: "v2".into(),
        }
    }

    #[test]
    fn interned_ids_are_stable_and_distinct() {
        let a = dest("a.example.com");
        assert_eq!(dest("a.example.com"), a, "same labels, same id");
        assert_ne!(dest("b.example.com"), a);
        assert!(a > DestId::BLACKHOLE);
    }

    #[test]
    fn histograms_bucket_at_their_upper_bounds() {
        let mut h: Histogram<20> = Histogram::default();
        for v in [0.5, 0.6, 3600000.0, 3600001.0] {
            h.observe(&DURATION_BUCKETS_MS, v);
        }
        assert_eq!(h.counts[0], 1, "0.5 is in le=0.5");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[18], 1);
        assert_eq!(h.counts[19], 1, "past the last bound: +Inf");
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn workers_are_summed_and_labels_printed_in_istio_order() {
        let m = Arc::new(Metrics::new(source()));
        let a = dest("metrics-test.example.com");
        let key = RequestKey {
            dest: a,
            protocol: RequestProtocol::Http,
            code: 200,
            grpc_status: None,
            flags: Flags::NONE,
        };
        m.request(key, Duration::from_millis(3), 10, 2000);
        let m2 = m.clone();
        std::thread::spawn(move || m2.request(key, Duration::from_millis(30), 0, 20))
            .join()
            .unwrap();
        m.tcp_opened(TcpKey {
            dest: DestId::PASSTHROUGH,
            flags: Flags::NONE,
        });
        m.tcp_closed(
            TcpKey {
                dest: DestId::PASSTHROUGH,
                flags: Flags::UF,
            },
            5,
            7,
        );
        assert_eq!(m.series(), (1, 2));
        let mut out = String::new();
        m.encode(&mut out);
        let labels = "reporter=\"source\",source_workload=\"unknown\",source_workload_namespace=\"default\",source_principal=\"unknown\",source_app=\"shop\",source_version=\"v2\",source_cluster=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"metrics-test.example.com\",destination_service_name=\"metrics-test.example.com\",destination_service_namespace=\"ns1\",destination_cluster=\"unknown\",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"none\"";
        assert!(out.contains(&format!("istio_requests_total{{{labels}}} 2\n")), "{out}");
        assert!(
            out.contains(&format!(
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"5\"}} 1\n"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} 2\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!("istio_request_duration_milliseconds_sum{{{labels}}} 33\n")));
        assert!(out.contains(&format!("istio_response_bytes_sum{{{labels}}} 2020\n")));
        assert!(out.contains(&format!("istio_request_bytes_bucket{{{labels},le=\"1\"}} 1\n")));
        assert!(out.contains("destination_service_name=\"PassthroughCluster\""), "{out}");
        assert!(out.contains("response_flags=\"UF\",connection_security_policy=\"none\"} 7\n"));
        assert_eq!(
            out.matches("# TYPE istio_tcp_connections_opened_total counter").count(),
            1
        );
        let opened: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .collect();
        assert_eq!(opened.len(), 1, "{opened:?}");
        assert!(opened[0].contains("response_flags=\"-\""));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        push_label(&mut s, "k", "a\"b\\c\nd");
        assert_eq!(s, r#"k="a\"b\\c\nd""#);
        assert_eq!(format_float(0.5), "0.5");
        assert_eq!(format_float(3600000.0), "3600000");
        assert_eq!(format_float(1e9), "1000000000");
    }
}
