//! Reads: get, list (with selectors, pagination and tables) and watch, all from the cache.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use api::Resource;
use api::selector::{FieldSelector, LabelSelectorExpr};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::debug;

use crate::body::{Body, BudgetSender};
use crate::cache::{Entry, Filter, Snapshot, WatchFrom, WatchMsg, WatchRx};
use crate::errors::{ApiError, ApiResult};
use crate::request::{Output, Params, Target};
use crate::server::{ApiServer, Reply};
use crate::table;

/// How long a request for a revision the cache has not reached yet may wait for it.
const FUTURE_REVISION_WAIT: Duration = Duration::from_secs(3);
/// Encoded events a watch response may hold for its client before the watch waits (and, for
/// a client that reads nothing for `STALLED_WATCHER` while events wait, is ended).
const WATCH_BODY_BYTES: usize = 4 << 20;
const STALLED_WATCHER: Duration = Duration::from_secs(60);

/// What a table row carries besides its cells (`?includeObject=`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Include {
    None,
    Metadata,
    Object,
}

fn include(params: &Params) -> Include {
    match params.get("includeObject") {
        Some("None") => Include::None,
        Some("Object") => Include::Object,
        _ => Include::Metadata,
    }
}

pub(crate) fn entry_key(t: &Target, name: &str) -> String {
    match &t.namespace {
        Some(ns) if t.resource.namespaced => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

fn table_row(e: &Entry, inc: Include, now: Timestamp) -> Bytes {
    let cells: Vec<Value> = e.cells.iter().map(|c| c.render(now)).collect();
    row_of(cells, e, inc, &e.json)
}

fn row_of(cells: Vec<Value>, e: &Entry, inc: Include, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(e.meta.len() + 128);
    out.extend_from_slice(b"{\"cells\":");
    out.extend_from_slice(Value::Array(cells).to_string().as_bytes());
    match inc {
        Include::None => {}
        Include::Metadata => {
            out.extend_from_slice(b",\"object\":");
            out.extend_from_slice(&e.meta);
        }
        Include::Object => {
            out.extend_from_slice(b",\"object\":");
            out.extend_from_slice(json);
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

/// A Table's opening, up to the start of its rows.
fn table_head(r: &Resource, version: &str, rev: u64, cont: Option<&str>, columns: bool) -> Bytes {
    let meta = list_meta(rev, cont);
    let cols = if columns {
        table::column_definitions(r)
    } else {
        json!([])
    };
    Bytes::from(format!(
        "{{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/{version}\",\"metadata\":{meta},\"columnDefinitions\":{cols},\"rows\":["
    ))
}

/// An object as `PartialObjectMetadata`: its whole metadata (managed fields included, as
/// Kubernetes sends them), cut from the cached text as it is.
fn partial_object(e: &Entry, version: &str) -> Bytes {
    let meta = api::jsontext::members(&e.json)
        .and_then(|m| m.into_iter().find(|(k, _)| *k == b"metadata"))
        .map_or(&b"{}"[..], |(_, r)| &e.json[r]);
    let mut out = format!(
        "{{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/{version}\",\"metadata\":"
    )
    .into_bytes();
    out.extend_from_slice(meta);
    out.push(b'}');
    Bytes::from(out)
}

/// Kubernetes' 406 for the single-object form asked of a list, and the other way round.
fn a_list(t: &Target) -> ApiError {
    ApiError::not_acceptable(format!(
        "you requested PartialObjectMetadata, but the requested object is a list (*{}.{})",
        t.resource.version,
        t.resource.list_kind()
    ))
}

fn not_a_list(t: &Target) -> ApiError {
    ApiError::not_acceptable(format!(
        "you requested PartialObjectMetadataList, but the requested object is not a list (*{}.{})",
        t.resource.version, t.resource.kind
    ))
}

/// A list's `metadata`, in ListMeta's order: resourceVersion, then continue.
fn list_meta(rev: u64, cont: Option<&str>) -> String {
    match cont {
        Some(c) => format!(
            "{{\"resourceVersion\":\"{rev}\",\"continue\":{}}}",
            Value::String(c.to_string())
        ),
        None => format!("{{\"resourceVersion\":\"{rev}\"}}"),
    }
}

/// Interleave `items` with commas between an opening and a closing.
fn joined(head: Bytes, items: Vec<Bytes>, tail: &'static [u8]) -> Body {
    let mut chunks = Vec::with_capacity(items.len() * 2 + 2);
    chunks.push(head);
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            chunks.push(Bytes::from_static(b","));
        }
        chunks.push(item);
    }
    chunks.push(Bytes::from_static(tail));
    Body::chunks(chunks)
}

pub(crate) fn filter_from(t: &Target, params: &Params) -> ApiResult<Filter> {
    let labels = match params.get("labelSelector") {
        Some(s) => LabelSelectorExpr::parse(s)
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        None => LabelSelectorExpr::everything(),
    };
    let fields = match params.get("fieldSelector") {
        Some(s) => {
            let mut f =
                FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
            // A view may name fields differently (events.k8s.io's `regarding.name`).
            if let Some(view) = t.view {
                for term in &mut f.terms {
                    term.field = view.stored_field(&term.field);
                }
            }
            f.check_supported(&t.resource.supported_fields())
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "{e}: {:?} is not a known field selector: only {:?}",
                        e.to_string(),
                        t.resource.supported_fields()
                    ))
                })?;
            f
        }
        None => FieldSelector::default(),
    };
    Ok(Filter {
        namespace: t.namespace.clone().filter(|_| t.resource.namespaced),
        labels,
        fields,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

fn encode_continue(rv: u64, start: &str) -> String {
    let token = serde_json::to_vec(&ContinueToken {
        rv,
        start: start.to_string(),
    })
    .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(token)
}

fn decode_continue(s: &str) -> ApiResult<ContinueToken> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::bad_request("continue key is not valid"))
}

impl ApiServer {
    /// The cached object named by `t` and `name`, as new as every acknowledged write (404
    /// when there is none).
    pub(crate) async fn fresh(&self, t: &Target, name: &str) -> ApiResult<Arc<Entry>> {
        self.cache.wait_fresh().await?;
        self.cache
            .resource(t.resource)
            .get(&entry_key(t, name))
            .ok_or_else(|| ApiError::not_found(t.resource, name))
    }

    /// Table rows of `entries`. A custom kind asked for in another version than the one its
    /// cache keeps cells for gets its objects converted to that version and cells by that
    /// version's columns.
    async fn rows(
        &self,
        r: &'static Resource,
        entries: &[Arc<Entry>],
        inc: Include,
    ) -> ApiResult<Vec<Bytes>> {
        let now = Timestamp::now();
        if r.ops.custom().is_none() || self.cache.resource(r).resource().version == r.version {
            return Ok(entries.iter().map(|e| table_row(e, inc, now)).collect());
        }
        let mut objects: Vec<Value> = entries.iter().map(|e| e.value()).collect();
        crate::conversion::convert(&self.cache, r, &mut objects, r.version).await?;
        Ok(entries
            .iter()
            .zip(objects)
            .map(|(e, obj)| {
                let cells = table::cells_of(r, &obj)
                    .iter()
                    .map(|c| c.render(now))
                    .collect();
                row_of(cells, e, inc, &api::wire::to_vec(&obj))
            })
            .collect())
    }

    pub(crate) async fn get(&self, t: &Target, name: &str, output: Output) -> ApiResult<Reply> {
        let e = self.fresh(t, name).await?;
        Ok(match output {
            Output::Json => Reply::object(StatusCode::OK, e.json.clone()),
            Output::Metadata { list: true, .. } => return Err(not_a_list(t)),
            Output::Metadata { version, .. } => {
                Reply::object(StatusCode::OK, partial_object(&e, version))
            }
            Output::Table(version) => {
                let head = table_head(t.resource, version, e.rev, None, true);
                let rows = self.rows(t.resource, &[e], Include::Metadata).await?;
                Reply::body(
                    StatusCode::OK,
                    "application/json",
                    joined(head, rows, b"]}\n"),
                )
            }
        })
    }

    async fn list_snapshot(
        &self,
        t: &Target,
        params: &Params,
    ) -> ApiResult<(Snapshot, Option<String>)> {
        let rc = self.cache.resource(t.resource);
        if let Some(token) = params.get("continue").filter(|c| !c.is_empty()) {
            let token = decode_continue(token)?;
            let snap = rc.kept_snapshot(token.rv).ok_or_else(|| {
                ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                )
            })?;
            return Ok((snap, Some(token.start)));
        }
        match params.get("resourceVersion") {
            None | Some("") => {
                self.cache.wait_fresh().await?;
            }
            Some("0") => {}
            Some(v) => {
                let rev: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {v:?}"))
                })?;
                self.cache.wait_for(rev, FUTURE_REVISION_WAIT).await?;
                if params.get("resourceVersionMatch") == Some("Exact") {
                    let snap = rc.snapshot(self.cache.synced());
                    if snap.rev != rev {
                        return Err(ApiError::gone(format!(
                            "too old resource version: {rev} ({})",
                            snap.rev
                        )));
                    }
                    return Ok((snap, None));
                }
            }
        }
        Ok((rc.snapshot(self.cache.synced()), None))
    }

    pub(crate) async fn list(
        &self,
        t: &Target,
        params: &Params,
        output: Output,
    ) -> ApiResult<Reply> {
        let filter = filter_from(t, params)?;
        let limit = params.number::<usize>("limit")?.filter(|l| *l > 0);
        let (snap, start) = self.list_snapshot(t, params).await?;
        let matched = select(&snap, &filter, start.as_deref(), limit);
        let cont = match (limit, matched.last()) {
            (Some(l), Some(last)) if matched.len() == l && has_more(&snap, &filter, &last.key) => {
                self.cache.resource(t.resource).keep_snapshot(&snap);
                Some(encode_continue(snap.rev, &last.key))
            }
            _ => None,
        };
        debug!(
            resource = t.resource.plural,
            items = matched.len(),
            rev = snap.rev,
            "list"
        );
        let body = match output {
            Output::Json => {
                let meta = list_meta(snap.rev, cont.as_deref());
                let head = Bytes::from(format!(
                    "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{meta},\"items\":[",
                    t.resource.list_kind(),
                    t.resource.group_version()
                ));
                joined(
                    head,
                    matched.iter().map(|e| e.json.clone()).collect(),
                    b"]}\n",
                )
            }
            Output::Metadata { list: false, .. } => return Err(a_list(t)),
            Output::Metadata { version, .. } => {
                let head = Bytes::from(format!(
                    "{{\"kind\":\"PartialObjectMetadataList\",\"apiVersion\":\"meta.k8s.io/{version}\",\"metadata\":{},\"items\":[",
                    list_meta(snap.rev, cont.as_deref())
                ));
                joined(
                    head,
                    matched.iter().map(|e| partial_object(e, version)).collect(),
                    b"]}\n",
                )
            }
            Output::Table(version) => {
                let inc = include(params);
                let head = table_head(t.resource, version, snap.rev, cont.as_deref(), true);
                joined(head, self.rows(t.resource, &matched, inc).await?, b"]}\n")
            }
        };
        Ok(Reply::body(StatusCode::OK, "application/json", body))
    }

    pub(crate) async fn watch(
        &self,
        t: &Target,
        params: &Params,
        output: Output,
    ) -> ApiResult<Reply> {
        let filter = filter_from(t, params)?;
        let rv = params.get("resourceVersion").filter(|v| !v.is_empty());
        if rv.is_none() {
            // "Most recent" starts from a state that includes every acknowledged write.
            self.cache.wait_fresh().await?;
        }
        let from = if params.flag("sendInitialEvents") {
            // The initial state must be at least as new as the revision asked for.
            if let Some(v) = rv.filter(|v| *v != "0") {
                let rev: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {v:?}"))
                })?;
                self.cache.wait_for(rev, FUTURE_REVISION_WAIT).await?;
            }
            WatchFrom::Now {
                initial_events_end: true,
            }
        } else {
            match rv {
                None | Some("0") => WatchFrom::Now {
                    initial_events_end: false,
                },
                Some(v) => {
                    let rev: u64 = v.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid resource version: {v:?}"))
                    })?;
                    self.cache.wait_for(rev, FUTURE_REVISION_WAIT).await?;
                    WatchFrom::After(rev)
                }
            }
        };
        let timeout = match params.number::<u64>("timeoutSeconds")? {
            Some(s) => Duration::from_secs(s),
            // Long, and spread out, so that clients do not all reconnect at once.
            None => Duration::from_secs(1800 + fastrand::u64(0..1800)),
        };
        let bookmarks = params.flag("allowWatchBookmarks");
        let rc = self.cache.resource(t.resource);
        let (tx, body) = Body::budgeted(WATCH_BODY_BYTES);
        let encoder = Encoder {
            kind: t.resource.kind,
            resource: t.resource,
            api_version: t.resource.group_version(),
            output,
            include: include(params),
            sent_columns: false,
        };
        match rc.watch(filter, from, bookmarks, self.cache.synced()) {
            Ok((initial, rx)) => {
                let (group, version) = match t.view {
                    Some(v) => (v.group, v.version),
                    None => (t.resource.group, t.resource.version),
                };
                let counted = self.telemetry.watcher(group, version, t.resource.kind);
                tokio::spawn(async move {
                    stream_watch(encoder, initial, rx, tx, timeout).await;
                    drop(counted);
                });
            }
            Err(e) => {
                // A revision too old to resume from is reported in the stream, then it ends.
                let line = error_line(&e);
                tokio::spawn(async move {
                    let _ = tx.send(line).await;
                });
            }
        }
        Ok(Reply::body(StatusCode::OK, "application/json", body))
    }
}

fn select(
    snap: &Snapshot,
    filter: &Filter,
    start: Option<&str>,
    limit: Option<usize>,
) -> Vec<Arc<Entry>> {
    let mut out = Vec::new();
    let ns_prefix = filter.namespace.as_ref().map(|ns| format!("{ns}/"));
    let lower = match (start, &ns_prefix) {
        (Some(s), _) => Bound::Excluded(s.to_string()),
        (None, Some(p)) => Bound::Included(p.clone()),
        (None, None) => Bound::Unbounded,
    };
    for (key, e) in snap.items.range((lower, Bound::Unbounded)) {
        if let Some(p) = &ns_prefix
            && !key.starts_with(p.as_str())
        {
            break;
        }
        if filter.matches(e) {
            out.push(e.clone());
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
        }
    }
    out
}

fn has_more(snap: &Snapshot, filter: &Filter, after: &str) -> bool {
    !select(snap, filter, Some(after), Some(1)).is_empty()
}

pub(crate) fn error_line(e: &ApiError) -> Bytes {
    let mut line = b"{\"type\":\"ERROR\",\"object\":".to_vec();
    line.extend_from_slice(&api::wire::to_vec(&e.to_status()));
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

struct Encoder {
    kind: &'static str,
    resource: &'static Resource,
    api_version: String,
    output: Output,
    include: Include,
    sent_columns: bool,
}

impl Encoder {
    fn encode(&mut self, msg: &WatchMsg) -> Bytes {
        let mut out = Vec::new();
        match msg {
            WatchMsg::Event(ty, e) => {
                out.extend_from_slice(b"{\"type\":\"");
                out.extend_from_slice(ty.as_str().as_bytes());
                out.extend_from_slice(b"\",\"object\":");
                match self.output {
                    Output::Json => out.extend_from_slice(&e.json),
                    Output::Metadata { version, .. } => {
                        out.extend_from_slice(&partial_object(e, version));
                    }
                    Output::Table(version) => {
                        let head =
                            table_head(self.resource, version, e.rev, None, !self.sent_columns);
                        self.sent_columns = true;
                        out.extend_from_slice(&head);
                        out.extend_from_slice(&table_row(e, self.include, Timestamp::now()));
                        out.extend_from_slice(b"]}");
                    }
                }
                out.extend_from_slice(b"}\n");
            }
            WatchMsg::Bookmark(rev, initial_end) => {
                let mut meta = json!({"resourceVersion": rev.to_string()});
                if *initial_end {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                let obj =
                    json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": meta});
                out.extend_from_slice(b"{\"type\":\"BOOKMARK\",\"object\":");
                out.extend_from_slice(&api::wire::to_vec(&obj));
                out.push(b'}');
                out.push(b'\n');
            }
        }
        Bytes::from(out)
    }
}

async fn stream_watch(
    mut enc: Encoder,
    initial: Vec<WatchMsg>,
    mut rx: WatchRx,
    tx: BudgetSender,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    // A client that takes nothing for this long while events wait is let go.
    let send = |b: Bytes| tokio::time::timeout(STALLED_WATCHER, tx.send(b));
    for msg in &initial {
        if !matches!(send(enc.encode(msg)).await, Ok(Ok(()))) {
            return;
        }
    }
    drop(initial);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                // The cache let go of a watcher that fell too far behind: what is still queued
                // is stale, and the client is told to list again (a 410, as Kubernetes says it).
                Some(_) | None if rx.lagged() => {
                    let gone = ApiError::gone("the watch fell too far behind; list again");
                    let _ = send(error_line(&gone)).await;
                    return;
                }
                Some(msg) => {
                    if !matches!(send(enc.encode(&msg)).await, Ok(Ok(()))) {
                        return;
                    }
                }
                // The cache was reloaded; the client resumes from where it was.
                None => return,
            },
            _ = &mut deadline => return,
            _ = tx.closed() => return,
        }
    }
}
