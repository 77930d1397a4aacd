//! The API server's own metrics, at `/metrics` in Prometheus' text format and under the names
//! kube-apiserver uses, so existing dashboards and alerts read them: requests by verb,
//! resource, scope and code with their latency, the store's latency by operation (as
//! `etcd_request_duration_seconds`), registered watchers, stored objects, and the process.
//! Recording is a short lock on a map per request; rendering happens only when scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use store::{Op, Revision, Store, StoreError, TxnResult, WatchStream};

/// kube-apiserver's request latency buckets, in seconds.
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];
/// Its storage latency buckets.
const STORE_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// What a request was, in the labels Kubernetes gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub dry_run: bool,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// `resource`, `namespace` or `cluster` (empty for non-resource paths).
    pub scope: &'static str,
}

#[derive(Clone, Debug)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            buckets: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], secs: f64) {
        for (b, le) in self.buckets.iter_mut().zip(bounds) {
            if secs <= *le {
                *b += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, le) in self.buckets.iter().zip(bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {b}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Series {
    /// Requests by response code.
    codes: BTreeMap<u16, u64>,
    latency: Option<Histogram>,
}

pub struct Telemetry {
    started: SystemTime,
    requests: Mutex<BTreeMap<RequestLabels, Series>>,
    /// (operation, type) -> latency.
    store: Mutex<BTreeMap<(&'static str, String), Histogram>>,
    /// (group, version, kind) -> open watches.
    watchers: Mutex<BTreeMap<(String, String, String), i64>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started: SystemTime::now(),
            requests: Mutex::default(),
            store: Mutex::default(),
            watchers: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `"` and `\` escaped, as label values need.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Telemetry {
    pub fn request(&self, labels: RequestLabels, code: u16, took: Duration) {
        let mut map = lock(&self.requests);
        let series = map.entry(labels).or_default();
        *series.codes.entry(code).or_default() += 1;
        series
            .latency
            .get_or_insert_with(|| Histogram::new(REQUEST_BUCKETS))
            .observe(REQUEST_BUCKETS, took.as_secs_f64());
    }

    fn store_op(&self, operation: &'static str, key: &str, took: Duration) {
        let mut map = lock(&self.store);
        map.entry((operation, store_type(key)))
            .or_insert_with(|| Histogram::new(STORE_BUCKETS))
            .observe(STORE_BUCKETS, took.as_secs_f64());
    }

    /// A watch opened; the guard counts it until dropped.
    pub fn watcher(self: &Arc<Self>, group: &str, version: &str, kind: &str) -> WatcherGuard {
        let key = (group.to_string(), version.to_string(), kind.to_string());
        *lock(&self.watchers).entry(key.clone()).or_default() += 1;
        WatcherGuard {
            t: self.clone(),
            key,
        }
    }

    /// Everything, as Prometheus text. `objects` are the stored objects per resource.
    pub fn render(&self, objects: &[(String, usize)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        let requests = lock(&self.requests);
        for (l, s) in requests.iter() {
            for (code, n) in &s.codes {
                let _ = writeln!(
                    out,
                    "apiserver_request_total{{code=\"{code}\",component=\"apiserver\",dry_run=\"{}\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"}} {n}",
                    if l.dry_run { "All" } else { "" },
                    esc(&l.group),
                    esc(&l.resource),
                    l.scope,
                    esc(&l.subresource),
                    l.verb,
                    esc(&l.version)
                );
            }
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (l, s) in requests.iter() {
            if let Some(h) = &s.latency {
                let labels = format!(
                    "component=\"apiserver\",dry_run=\"{}\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
                    if l.dry_run { "All" } else { "" },
                    esc(&l.group),
                    esc(&l.resource),
                    l.scope,
                    esc(&l.subresource),
                    l.verb,
                    esc(&l.version)
                );
                h.render(
                    &mut out,
                    "apiserver_request_duration_seconds",
                    &labels,
                    REQUEST_BUCKETS,
                );
            }
        }
        drop(requests);
        out.push_str("# HELP etcd_request_duration_seconds Etcd request latency in seconds for each operation and object type.\n# TYPE etcd_request_duration_seconds histogram\n");
        for ((op, ty), h) in lock(&self.store).iter() {
            let labels = format!("operation=\"{op}\",type=\"{}\"", esc(ty));
            h.render(
                &mut out,
                "etcd_request_duration_seconds",
                &labels,
                STORE_BUCKETS,
            );
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently registered watchers for a given resources\n# TYPE apiserver_registered_watchers gauge\n");
        for ((g, v, k), n) in lock(&self.watchers).iter() {
            let _ = writeln!(
                out,
                "apiserver_registered_watchers{{group=\"{}\",kind=\"{}\",version=\"{}\"}} {n}",
                esc(g),
                esc(k),
                esc(v)
            );
        }
        out.push_str("# HELP apiserver_storage_objects Number of stored objects at the time of last check split by kind.\n# TYPE apiserver_storage_objects gauge\n");
        for (resource, n) in objects {
            let _ = writeln!(
                out,
                "apiserver_storage_objects{{resource=\"{}\"}} {n}",
                esc(resource)
            );
        }
        process_metrics(&mut out, self.started);
        out
    }
}

/// Holds one watch in `apiserver_registered_watchers`.
pub struct WatcherGuard {
    t: Arc<Telemetry>,
    key: (String, String, String),
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.t.watchers).get_mut(&self.key) {
            *n -= 1;
        }
    }
}

/// `/registry/core/pods/ns/name` -> `/registry/pods`, the type Kubernetes labels its storage
/// latency with (the resource's prefix).
fn store_type(key: &str) -> String {
    let mut parts = key.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("registry"), Some(_group), Some(plural)) => format!("/registry/{plural}"),
        _ => key.split('/').take(3).collect::<Vec<_>>().join("/"),
    }
}

/// The process metrics every Prometheus client exports.
fn process_metrics(out: &mut String, started: SystemTime) {
    let page = 4096.0;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 0, utime 11, stime 12, vsize 20, rss 21.
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    let start = started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let _ = write!(
        out,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n\
         # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {}\n\
         # HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP process_max_fds Maximum number of open file descriptors.\n# TYPE process_max_fds gauge\nprocess_max_fds {max_fds}\n\
         # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n",
        (num(11) + num(12)) / ticks,
        num(21) * page,
        num(20),
    );
}

/// The store, timed: every call is recorded under its operation and the resource it touches.
pub struct MeteredStore {
    pub inner: Arc<dyn Store>,
    pub telemetry: Arc<Telemetry>,
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<store::KeyValue>, StoreError> {
        let t = std::time::Instant::now();
        let r = self.inner.get(key).await;
        self.telemetry.store_op("get", key, t.elapsed());
        r
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<store::KeyValue>, Revision), StoreError> {
        let t = std::time::Instant::now();
        let r = self.inner.list(prefix).await;
        self.telemetry.store_op("list", prefix, t.elapsed());
        r
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<TxnResult, StoreError> {
        let (op, key) = match ops.first() {
            Some(Op::Put {
                key,
                condition: store::Condition::Absent,
                ..
            }) => ("create", key.clone()),
            Some(Op::Put { key, .. }) => ("update", key.clone()),
            Some(Op::Delete { key, .. }) => ("delete", key.clone()),
            None => ("txn", String::new()),
        };
        let t = std::time::Instant::now();
        let r = self.inner.txn(ops).await;
        self.telemetry.store_op(op, &key, t.elapsed());
        r
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        let r = self.inner.compact(revision).await;
        self.telemetry.store_op("compact", "", t.elapsed());
        r
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<store::KeyValue, StoreError> {
        let t = std::time::Instant::now();
        let r = self.inner.create(key, value).await;
        self.telemetry.store_op("create", key, t.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_render_with_kubernetes_names() {
        let t = Arc::new(Telemetry::default());
        let l = RequestLabels {
            verb: "LIST",
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            scope: "namespace",
            ..Default::default()
        };
        t.request(l.clone(), 200, Duration::from_millis(3));
        t.request(l, 200, Duration::from_millis(70));
        t.store_op(
            "get",
            "/registry/core/pods/default/p",
            Duration::from_millis(1),
        );
        let g = t.watcher("", "v1", "Pod");
        let text = t.render(&[("pods".into(), 2)]);
        assert!(text.contains(r#"apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="namespace",subresource="",verb="LIST",version="v1"} 2"#), "{text}");
        assert!(text.contains(r#"apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="apps",resource="deployments",scope="namespace",subresource="",verb="LIST",version="v1",le="0.005"} 1"#), "{text}");
        assert!(
            text.contains(r#"verb="LIST",version="v1",le="+Inf"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"etcd_request_duration_seconds_count{operation="get",type="/registry/pods"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"apiserver_registered_watchers{group="",kind="Pod",version="v1"} 1"#),
            "{text}"
        );
        drop(g);
        assert!(
            t.render(&[])
                .contains(r#"apiserver_registered_watchers{group="",kind="Pod",version="v1"} 0"#)
        );
        assert!(text.contains(r#"apiserver_storage_objects{resource="pods"} 2"#));
        assert!(text.contains("process_resident_memory_bytes "));
    }
}
