//! The one controller harness. A controller is a reconcile function over keys; its mirrors'
//! change handlers add keys to its [`Queue`]. The harness takes keys off the queue and
//! reconciles them: never one key twice at the same time, a key changed again while it is being
//! reconciled is reconciled once more afterwards (changes coalesce while queued), a failure
//! comes back after a per-key exponential back-off (client-go's 5 ms doubling to 1000 s, reset
//! on success), and a reconcile may ask to be run again after a while. Queue depth, additions,
//! retries and reconcile time are counted, for the metrics work.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use client::ClientError;
use supervise::supervise;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::leader::{Leadership, while_leading};

/// What a reconcile says: done (until something changes), or look again after a while.
pub type Outcome = Result<Option<Duration>, ClientError>;

#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Wait until what the controller reads (its mirrors) is complete.
    async fn ready(&self) {}

    /// Bring the object `key` names to its desired state.
    async fn reconcile(&self, key: &str) -> Outcome;
}

/// client-go's per-item rate limiter: 5 ms, doubling per consecutive failure, at most 1000 s.
const FIRST_RETRY: Duration = Duration::from_millis(5);
const MAX_RETRY: Duration = Duration::from_secs(1000);

fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .checked_mul(1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(MAX_RETRY)
        .min(MAX_RETRY)
}

#[derive(Default)]
struct State {
    /// Ready to run, in order.
    ready: VecDeque<String>,
    /// Queued and not yet taken (a key is in here at most once).
    dirty: HashSet<String>,
    /// Being reconciled now.
    processing: HashSet<String>,
    /// Consecutive failures per key.
    failures: HashMap<String, u32>,
    /// Keys to add later, by when (and a sequence number to keep equal times apart).
    later: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

/// Counts for metrics (client-go's `workqueue_*`).
#[derive(Debug, Default)]
pub struct QueueStats {
    pub adds: AtomicU64,
    pub retries: AtomicU64,
    pub reconciles: AtomicU64,
    /// Total reconcile time, in microseconds.
    pub work_micros: AtomicU64,
}

/// A controller's queue of keys; cheap to clone into change handlers.
#[derive(Clone)]
pub struct Queue {
    name: &'static str,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    stats: Arc<QueueStats>,
}

impl Queue {
    pub fn new(name: &'static str) -> Queue {
        Queue {
            name,
            state: Arc::default(),
            wake: Arc::new(Notify::new()),
            stats: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `key` (nothing happens if it is queued already).
    pub fn add(&self, key: &str) {
        let mut s = self.lock();
        if !s.dirty.insert(key.to_string()) {
            return;
        }
        self.stats.adds.fetch_add(1, Ordering::Relaxed);
        // One being reconciled goes back in when that is done.
        if !s.processing.contains(key) {
            s.ready.push_back(key.to_string());
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Queue `key` after `delay`.
    pub fn add_after(&self, key: &str, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let mut s = self.lock();
        s.seq += 1;
        let seq = s.seq;
        s.later
            .insert((Instant::now() + delay, seq), key.to_string());
        drop(s);
        self.wake.notify_one();
    }

    /// Queue `key` again after its back-off, which grows with each failure in a row.
    fn retry(&self, key: &str) {
        let failures = {
            let mut s = self.lock();
            let f = s.failures.entry(key.to_string()).or_insert(0);
            *f += 1;
            *f - 1
        };
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.add_after(key, retry_delay(failures));
    }

    fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// Keys waiting to run.
    pub fn depth(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// The next key to reconcile, once one is ready.
    async fn take(&self) -> String {
        loop {
            let next_due = {
                let mut s = self.lock();
                let now = Instant::now();
                while let Some(entry) = s.later.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let key = entry.remove();
                    if s.dirty.insert(key.clone()) && !s.processing.contains(&key) {
                        s.ready.push_back(key);
                    }
                }
                if let Some(key) = s.ready.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    return key;
                }
                s.later.keys().next().map(|(t, _)| *t)
            };
            let woken = self.wake.notified();
            match next_due {
                Some(t) => {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep_until(t) => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    /// `key` is reconciled; if it changed meanwhile, it runs again.
    fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.ready.push_back(key.to_string());
            drop(s);
            self.wake.notify_one();
        }
    }
}

/// Marks a key done even if its reconcile panicked (and queues it again then), so that a
/// restarted controller does not lose it.
struct Taken<'a> {
    queue: &'a Queue,
    key: String,
    finished: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.queue.add(&self.key);
        }
        self.queue.done(&self.key);
    }
}

/// Reconcile keys from `queue` with `workers` at a time, for as long as the process runs.
pub async fn run(reconciler: Arc<dyn Reconciler>, queue: Queue, workers: usize) {
    reconciler.ready().await;
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (r, q) = (reconciler.clone(), queue.clone());
        tasks.push(async move {
            loop {
                let key = q.take().await;
                let mut taken = Taken {
                    queue: &q,
                    key: key.clone(),
                    finished: false,
                };
                let started = std::time::Instant::now();
                let outcome = r.reconcile(&key).await;
                q.stats.reconciles.fetch_add(1, Ordering::Relaxed);
                q.stats
                    .work_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                match outcome {
                    Ok(None) => q.forget(&key),
                    Ok(Some(after)) => {
                        q.forget(&key);
                        q.add_after(&key, after);
                    }
                    Err(e) => {
                        debug!(controller = q.name, key = %key, error = %e, "reconcile failed; retrying");
                        q.retry(&key);
                    }
                }
                taken.finished = true;
            }
        });
    }
    futures_util::future::join_all(tasks).await;
}

/// Run `reconciler` with `workers` at a time while `leadership` holds, under a supervisor:
/// if it panics it is logged and started again, and its queue (what was waiting, and the key
/// it was on) carries over.
pub fn start<R: Reconciler>(
    reconciler: Arc<R>,
    queue: Queue,
    workers: usize,
    leadership: Leadership,
) -> JoinHandle<()> {
    let name = reconciler.name();
    let reconciler: Arc<dyn Reconciler> = reconciler;
    supervise(name, move || {
        let (r, q) = (reconciler.clone(), queue.clone());
        while_leading(name, leadership.clone(), move || {
            run(r.clone(), q.clone(), workers)
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn retries_double_from_five_milliseconds_to_a_thousand_seconds() {
        assert_eq!(retry_delay(0), Duration::from_millis(5));
        assert_eq!(retry_delay(1), Duration::from_millis(10));
        assert_eq!(retry_delay(10), Duration::from_millis(5120));
        assert_eq!(retry_delay(40), MAX_RETRY);
    }

    #[tokio::test]
    async fn keys_coalesce_and_one_key_never_runs_twice_at_once() {
        let q = Queue::new("test");
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.depth(), 2);
        let a = q.take().await;
        assert_eq!(a, "a");
        // Changed again while being reconciled: not handed out now ...
        q.add("a");
        assert_eq!(q.take().await, "b");
        assert_eq!(q.depth(), 0);
        // ... but once it is done.
        q.done("a");
        assert_eq!(q.take().await, "a");
    }

    struct Flaky {
        calls: AtomicUsize,
        fail_first: usize,
    }

    #[async_trait]
    impl Reconciler for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn reconcile(&self, _key: &str) -> Outcome {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(ClientError::Api {
                    code: 409,
                    reason: "Conflict".into(),
                    message: "try again".into(),
                });
            }
            Ok(None)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_per_key_and_success_forgets() {
        let r = Arc::new(Flaky {
            calls: AtomicUsize::new(0),
            fail_first: 4,
        });
        let q = Queue::new("flaky");
        q.add("k");
        let t0 = Instant::now();
        tokio::spawn(run(r.clone(), q.clone(), 1));
        while r.calls.load(Ordering::SeqCst) < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Four failures: waits of 5, 10, 20 and 40 ms before the fifth try.
        let waited = Instant::now() - t0;
        assert!(waited >= Duration::from_millis(75), "{waited:?}");
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        assert_eq!(q.stats().retries.load(Ordering::Relaxed), 4);
        assert!(
            q.lock().failures.is_empty(),
            "a success forgets the failures"
        );
    }

    struct Panicky;

    #[async_trait]
    impl Reconciler for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }

        async fn reconcile(&self, key: &str) -> Outcome {
            if key == "boom" {
                panic!("reconcile of {key} blew up");
            }
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_key_whose_reconcile_panicked_is_queued_again() {
        let q = Queue::new("panicky");
        q.add("boom");
        let task = tokio::spawn(run(Arc::new(Panicky), q.clone(), 1));
        assert!(task.await.unwrap_err().is_panic());
        // A restarted controller finds it waiting.
        assert_eq!(q.depth(), 1);
        assert!(q.lock().processing.is_empty());
    }

    /// Log lines written while the guard lives (on this thread: the tests' runtime).
    fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
        #[derive(Clone)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Buffer(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (buf, tracing::subscriber::set_default(subscriber))
    }

    struct PanicsOnce {
        calls: AtomicUsize,
        done: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Reconciler for PanicsOnce {
        fn name(&self) -> &'static str {
            "panics-once"
        }

        async fn reconcile(&self, key: &str) -> Outcome {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first reconcile of {key} hit a bug");
            }
            self.done.lock().unwrap().push(key.to_string());
            Ok(None)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_that_panics_is_logged_and_started_again() {
        let (logs, _guard) = capture_logs();
        let r = Arc::new(PanicsOnce {
            calls: AtomicUsize::new(0),
            done: Mutex::default(),
        });
        let q = Queue::new("panics-once");
        q.add("default/web");
        let handle = start(r.clone(), q.clone(), 1, Leadership::Always);
        let t0 = Instant::now();
        while r.done.lock().unwrap().is_empty() {
            assert!(
                Instant::now() - t0 < Duration::from_secs(10),
                "never restarted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The key it was on when it panicked was reconciled by the restarted controller.
        assert_eq!(*r.done.lock().unwrap(), ["default/web"]);
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("panicked; starting it again"))
            .unwrap_or_else(|| panic!("no restart logged in {text:?}"));
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains("component=\"panics-once\""), "{line}");
        assert!(
            line.contains("the first reconcile of default/web hit a bug"),
            "{line}"
        );
        handle.abort();
    }
}
