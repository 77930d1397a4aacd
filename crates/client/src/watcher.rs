//! The one list+watch loop every component uses to follow a kind (kube-runtime's `watcher`,
//! client-go's reflector): list, then watch from the list's resourceVersion; when a watch ends
//! (the server closes it after its timeout), watch again from the last resourceVersion seen,
//! bookmarks included, without listing; list again only when the server says the version is
//! gone (410). Errors back off as client-go's reflector does (0.8 s doubling to 30 s, with
//! jitter, forgotten after two quiet minutes).
//!
//! ```text
//!            list ok: Restarted(all)          watch ok
//!   Empty ---------------------------> Resumable(rv) ----------> Watching(rv)
//!     ^   list error: back off, again     ^     |  watch error: back off     |  event: Applied / Deleted,
//!     |                                   |     |  410: Empty                |  bookmark: rv moves
//!     +--------- 410 at the start --------+-----+                            |
//!     +-------------------- 410 in the stream -------------------------------+
//!                                          ^  stream ended (timeout): resume, no list
//!                                          +-- other stream error: back off -+
//! ```

use std::time::Duration;

use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use api::k8s_openapi::{ListableResource, Metadata, Resource};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::debug;

use crate::{Client, ClientError, ListParams, Watch, WatchEvent, typed_path};

/// How long the server keeps one watch open (spread out, so clients do not all come back at
/// once); then the watcher resumes it.
const WATCH_TIMEOUT_SECS: (u32, u32) = (300, 600);

/// What a watcher reports.
#[derive(Debug)]
pub enum Event<K> {
    /// Everything there is now: the first list, or a relist after the server forgot the
    /// version (objects missing from it were deleted meanwhile).
    Restarted(Vec<K>),
    /// An object was created or changed.
    Applied(K),
    Deleted(K),
}

enum State<K> {
    Empty,
    /// Known up to `rv`; a watch starts from there.
    Resumable {
        rv: String,
    },
    Watching {
        rv: String,
        watch: Watch<K>,
    },
}

/// client-go's reflector back-off: 0.8 s, doubling to 30 s, up to twice as long with jitter,
/// reset once two minutes pass without a failure.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    last_failure: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: Backoff::INITIAL,
            last_failure: None,
        }
    }
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);
    const RESET: Duration = Duration::from_secs(120);

    /// How long to wait after a failure now.
    pub fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        if self.last_failure.is_none_or(|t| now - t > Self::RESET) {
            self.delay = Self::INITIAL;
        }
        self.last_failure = Some(now);
        let base = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        base + base.mul_f64(fastrand::f64())
    }
}

/// Counts of what a watcher did, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub lists: u64,
    pub watches: u64,
}

/// Follows one collection (optionally narrowed by label and field selectors).
pub struct Watcher<K> {
    client: Client,
    /// The collection's path, and the kind's name for logs.
    path: String,
    kind: String,
    params: ListParams,
    /// An object's resourceVersion, however `K` holds it.
    version_of: fn(&K) -> Option<&str>,
    state: State<K>,
    backoff: Backoff,
    stats: Stats,
}

fn typed_version<K: Metadata<Ty = ObjectMeta>>(k: &K) -> Option<&str> {
    k.metadata().resource_version.as_deref()
}

impl<K> Watcher<K>
where
    K: Resource + ListableResource + Metadata<Ty = ObjectMeta> + DeserializeOwned,
{
    /// A typed kind, in `namespace` or all. `params` carries the selectors (and
    /// `strip_managed_fields`); the watcher sets resource versions, bookmarks and timeouts.
    pub fn new(client: Client, namespace: Option<&str>, params: ListParams) -> Watcher<K> {
        Watcher::at(
            client,
            typed_path::<K>(namespace, None),
            K::KIND,
            params,
            typed_version::<K>,
        )
    }
}

impl<K: DeserializeOwned> Watcher<K> {
    /// The collection at `path` (from `collection_path`), whatever `K` decodes it as.
    pub fn at(
        client: Client,
        path: String,
        kind: &str,
        params: ListParams,
        version_of: fn(&K) -> Option<&str>,
    ) -> Watcher<K> {
        Watcher {
            client,
            path,
            kind: kind.to_string(),
            params,
            version_of,
            state: State::Empty,
            backoff: Backoff::default(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next event; it never ends (errors are retried, with back-off). Cancel-safe: a
    /// dropped call loses nothing.
    pub async fn next(&mut self) -> Event<K> {
        loop {
            match &mut self.state {
                State::Empty => {
                    let list = ListParams {
                        resource_version: None,
                        continue_token: None,
                        bookmarks: false,
                        timeout_seconds: None,
                        ..self.params.clone()
                    };
                    match self.client.list_items::<K>(&self.path, &list).await {
                        Ok((items, rv)) => {
                            self.stats.lists += 1;
                            self.state = State::Resumable { rv };
                            return Event::Restarted(items);
                        }
                        Err(e) => self.fail("list", &e).await,
                    }
                }
                State::Resumable { rv } => {
                    let params = ListParams {
                        resource_version: Some(rv.clone()),
                        continue_token: None,
                        bookmarks: true,
                        timeout_seconds: Some(
                            WATCH_TIMEOUT_SECS.0
                                + fastrand::u32(0..WATCH_TIMEOUT_SECS.1 - WATCH_TIMEOUT_SECS.0),
                        ),
                        ..self.params.clone()
                    };
                    match self.client.watch_at::<K>(&self.path, &params).await {
                        Ok(watch) => {
                            self.stats.watches += 1;
                            let rv = rv.clone();
                            self.state = State::Watching { rv, watch };
                        }
                        Err(e) if e.code() == Some(410) => {
                            debug!(kind = %self.kind, "the version is gone; listing again");
                            self.state = State::Empty;
                        }
                        Err(e) => self.fail("watch", &e).await,
                    }
                }
                State::Watching { rv, watch } => match watch.next().await {
                    Some(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                        if let Some(v) = (self.version_of)(&o) {
                            *rv = v.to_string();
                        }
                        return Event::Applied(o);
                    }
                    Some(WatchEvent::Deleted(o)) => {
                        if let Some(v) = (self.version_of)(&o) {
                            *rv = v.to_string();
                        }
                        return Event::Deleted(o);
                    }
                    Some(WatchEvent::Bookmark(v)) => {
                        if !v.is_empty() {
                            *rv = v;
                        }
                    }
                    Some(WatchEvent::Error(e)) if e.code() == Some(410) => {
                        debug!(kind = %self.kind, "the version is gone; listing again");
                        self.state = State::Empty;
                    }
                    Some(WatchEvent::Error(e)) => {
                        let rv = rv.clone();
                        self.state = State::Resumable { rv };
                        self.fail("watch stream", &e).await;
                    }
                    None => {
                        // The server closed it (its timeout): carry on from where it was.
                        let rv = rv.clone();
                        self.state = State::Resumable { rv };
                    }
                },
            }
        }
    }

    async fn fail(&mut self, what: &str, e: &ClientError) {
        let delay = self.backoff.next_delay();
        debug!(kind = %self.kind, error = %e, retry_in = ?delay, "{what} failed");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use api::k8s_openapi::api::core::v1::ConfigMap;
    use async_trait::async_trait;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::BodyExt;

    use super::*;
    use crate::{ResponseBody, Transport};

    /// A transport that answers from a script and records what it was asked.
    #[derive(Default)]
    struct Script {
        replies: Mutex<VecDeque<(u16, String)>>,
        asked: Mutex<Vec<String>>,
    }

    impl Script {
        fn reply(&self, code: u16, body: &str) {
            self.replies
                .lock()
                .unwrap()
                .push_back((code, body.to_string()));
        }

        fn asked(&self) -> Vec<String> {
            self.asked.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Transport for Arc<Script> {
        async fn send(&self, req: Request<Bytes>) -> Result<Response<ResponseBody>, ClientError> {
            self.asked.lock().unwrap().push(req.uri().to_string());
            let Some((code, body)) = self.replies.lock().unwrap().pop_front() else {
                // Nothing more scripted: a connection that fails.
                return Err(ClientError::Transport("no more replies".into()));
            };
            let body = http_body_util::Full::new(Bytes::from(body))
                .map_err(|never: std::convert::Infallible| -> crate::BoxError { match never {} })
                .boxed_unsync();
            Ok(Response::builder().status(code).body(body).unwrap())
        }
    }

    fn cm(name: &str, rv: &str) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"d","resourceVersion":"{rv}"}}}}"#
        )
    }

    fn list(rv: &str, items: &[String]) -> String {
        format!(
            r#"{{"kind":"ConfigMapList","apiVersion":"v1","metadata":{{"resourceVersion":"{rv}"}},"items":[{}]}}"#,
            items.join(",")
        )
    }

    fn event(ty: &str, obj: &str) -> String {
        format!("{{\"type\":\"{ty}\",\"object\":{obj}}}\n")
    }

    fn names(items: &[ConfigMap]) -> Vec<String> {
        items
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect()
    }

    fn setup() -> (Arc<Script>, Watcher<ConfigMap>) {
        let script = Arc::new(Script::default());
        let client = Client::new(Arc::new(script.clone()));
        let w = Watcher::new(client, Some("d"), ListParams::default());
        (script, w)
    }

    fn rv_of(url: &str) -> Option<String> {
        url.split(['?', '&'])
            .find_map(|p| p.strip_prefix("resourceVersion="))
            .map(str::to_string)
    }

    #[tokio::test]
    async fn lists_then_watches_and_resumes_an_ended_watch_without_listing() {
        let (s, mut w) = setup();
        s.reply(200, &list("10", &[cm("a", "5")]));
        // A watch with a change, a bookmark, and the server's close.
        s.reply(
            200,
            &(event("MODIFIED", &cm("a", "11"))
                + r#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","metadata":{"resourceVersion":"15"}}}"#
                + "\n"),
        );
        // The resumed watch.
        s.reply(200, &event("DELETED", &cm("a", "16")));
        match w.next().await {
            Event::Restarted(items) => assert_eq!(names(&items), ["a"]),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(w.next().await, Event::Applied(c) if c.metadata.resource_version.as_deref() == Some("11"))
        );
        assert!(matches!(w.next().await, Event::Deleted(_)));
        let asked = s.asked();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert!(!asked[0].contains("watch=true"));
        assert!(asked[1].contains("watch=true") && asked[1].contains("allowWatchBookmarks=true"));
        assert_eq!(rv_of(&asked[1]).as_deref(), Some("10"));
        // Resumed from the bookmark, not listed again.
        assert!(asked[2].contains("watch=true"));
        assert_eq!(rv_of(&asked[2]).as_deref(), Some("15"));
        assert_eq!(
            w.stats(),
            Stats {
                lists: 1,
                watches: 2
            }
        );
    }

    #[tokio::test]
    async fn a_gone_version_relists_and_the_list_shows_what_was_deleted() {
        let (s, mut w) = setup();
        s.reply(200, &list("10", &[cm("a", "5"), cm("b", "6")]));
        // The stream says the version is gone ...
        s.reply(
            200,
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}
"#,
        );
        // ... and meanwhile b was deleted: the relist no longer has it.
        s.reply(200, &list("30", &[cm("a", "20")]));
        // A watch refused at its start with 410 relists too.
        s.reply(
            410,
            r#"{"kind":"Status","code":410,"reason":"Expired","message":"too old"}"#,
        );
        s.reply(200, &list("40", &[]));
        assert!(matches!(w.next().await, Event::Restarted(i) if i.len() == 2));
        match w.next().await {
            Event::Restarted(items) => assert_eq!(names(&items), ["a"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(w.next().await, Event::Restarted(i) if i.is_empty()));
        assert_eq!(w.stats().lists, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_then_recover() {
        let (s, mut w) = setup();
        s.reply(500, r#"{"kind":"Status","code":500,"message":"busy"}"#);
        s.reply(200, &list("7", &[]));
        // A watch that cannot start (no reply scripted: the transport fails) ...
        let t0 = Instant::now();
        assert!(matches!(w.next().await, Event::Restarted(_)));
        // The list was retried after the first back-off (0.8 to 1.6 s).
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_millis(800) && waited <= Duration::from_millis(1600),
            "{waited:?}"
        );
        // ... backs off longer each time, and does not list again when it comes back.
        s.replies.lock().unwrap().clear();
        let next = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert!(next.is_err(), "still failing");
        s.reply(200, &event("ADDED", &cm("c", "8")));
        let ev = tokio::time::timeout(Duration::from_secs(120), w.next())
            .await
            .unwrap();
        assert!(matches!(ev, Event::Applied(_)));
        assert_eq!(w.stats().lists, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_in_the_stream_resumes_from_the_last_version_without_listing() {
        let (s, mut w) = setup();
        s.reply(200, &list("10", &[]));
        s.reply(
            200,
            &(event("ADDED", &cm("a", "12"))
                + r#"{"type":"ERROR","object":{"kind":"Status","code":500,"reason":"InternalError","message":"oops"}}"#
                + "\n"),
        );
        s.reply(200, &event("MODIFIED", &cm("a", "13")));
        assert!(matches!(w.next().await, Event::Restarted(_)));
        assert!(matches!(w.next().await, Event::Applied(_)));
        assert!(matches!(w.next().await, Event::Applied(_)));
        let asked = s.asked();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert_eq!(rv_of(&asked[2]).as_deref(), Some("12"));
        assert_eq!(w.stats().lists, 1);
    }

    #[test]
    fn the_back_off_doubles_to_thirty_seconds_and_resets() {
        let mut b = Backoff::default();
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(800) && d[0] <= Duration::from_millis(1600));
        assert!(d[1] >= Duration::from_millis(1600));
        assert!(d[7] >= Duration::from_secs(30) && d[7] <= Duration::from_secs(60));
        b.last_failure = Some(Instant::now() - Duration::from_secs(121));
        assert!(b.next_delay() <= Duration::from_millis(1600));
    }
}
