//! A typed client for the Kubernetes API. Every component of berth that is not the API server
//! uses it, over HTTPS or over an in-process transport into the same request handler, so that
//! every caller passes the same validation and admission.

mod https;
pub mod watcher;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use api::k8s_openapi::{ListableResource, Resource};
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::https::{Credential, HttpsTransport};
pub use crate::watcher::Watcher;

/// One page of a list, as the server sends it.
#[derive(serde::Deserialize)]
#[serde(bound = "K: DeserializeOwned")]
struct Page<K> {
    #[serde(default)]
    items: Option<Vec<K>>,
    #[serde(default)]
    metadata: PageMeta,
}

#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
    resource_version: Option<String>,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body as it streams in.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a `Status` failure.
    #[error("{message} ({reason}, {code})")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("request failed")]
    Transport(#[source] BoxError),
    #[error("cannot decode the response")]
    Decode(#[source] serde_json::Error),
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, ClientError::Api { code: 409, reason, .. } if reason == "AlreadyExists")
    }
}

/// How requests reach the API server.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, req: Request<Bytes>) -> Result<http::Response<ResponseBody>, ClientError>;
}

/// A watch event with a typed object.
#[derive(Debug)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    Bookmark(String),
    /// The server ended the watch with an error, e.g. 410 when the revision is too old.
    Error(ClientError),
}

#[derive(Clone)]
pub struct Client {
    transport: Arc<dyn Transport>,
}

/// Query options of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u32>,
    pub bookmarks: bool,
    /// Drop each object's `metadata.managedFields` before decoding it (client-side, as
    /// client-go's informers can), for callers that never read them: less to decode and to
    /// keep.
    pub strip_managed_fields: bool,
}

impl ListParams {
    fn query(&self) -> String {
        let mut q = Vec::new();
        let mut add = |k: &str, v: &str| q.push(format!("{k}={}", encode(v)));
        if let Some(s) = &self.label_selector {
            add("labelSelector", s);
        }
        if let Some(s) = &self.field_selector {
            add("fieldSelector", s);
        }
        if let Some(l) = self.limit {
            add("limit", &l.to_string());
        }
        if let Some(c) = &self.continue_token {
            add("continue", c);
        }
        if let Some(rv) = &self.resource_version {
            add("resourceVersion", rv);
        }
        if let Some(t) = self.timeout_seconds {
            add("timeoutSeconds", &t.to_string());
        }
        if self.bookmarks {
            add("allowWatchBookmarks", "true");
        }
        q.join("&")
    }
}

/// Percent-encode a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The URL path of a resource's collection, in a namespace or cluster-wide.
pub fn collection_path(r: &api::Resource, namespace: Option<&str>) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    match namespace {
        Some(ns) if r.namespaced => format!("{base}/namespaces/{ns}/{}", r.plural),
        _ => format!("{base}/{}", r.plural),
    }
}

/// The path of a typed kind's collection (or, with `name`, one object).
pub fn typed_path<K: Resource>(namespace: Option<&str>, name: Option<&str>) -> String {
    let base = if K::GROUP.is_empty() {
        format!("/api/{}", K::VERSION)
    } else {
        format!("/apis/{}/{}", K::GROUP, K::VERSION)
    };
    let mut p = match namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{}", K::URL_PATH_SEGMENT),
        None => format!("{base}/{}", K::URL_PATH_SEGMENT),
    };
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

async fn collect(body: ResponseBody) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(ClientError::Transport)
}

/// The error a failed response's status and body stand for (its `Status`, when it has one).
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    ClientError::Api {
        code: status.as_u16(),
        reason: v["reason"].as_str().unwrap_or("Unknown").to_string(),
        message: v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    }
}

impl Client {
    pub fn new(transport: Arc<dyn Transport>) -> Client {
        Client { transport }
    }

    /// Send a request as it is and return the response as it comes.
    pub async fn send(
        &self,
        req: Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, ClientError> {
        self.transport.send(req).await
    }

    /// Send a request and return the raw body of a successful response.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        let resp = self.transport.send(req).await?;
        let status = resp.status();
        let bytes = collect(resp.into_body()).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(bytes)
    }

    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let b = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let bytes = self.request(method, path, "application/json", b).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// Whether the server allows what a SubjectAccessReview's `spec` asks (user, groups and
    /// resource attributes), as delegated authorizers ask it.
    pub async fn access_allowed(&self, spec: Value) -> Result<bool, ClientError> {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
        });
        let v = self
            .request_json(
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(&review),
            )
            .await?;
        Ok(v["status"]["allowed"] == true)
    }

    pub async fn get<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>, ClientError>
    where
        K: Resource + DeserializeOwned,
    {
        match self
            .request(
                Method::GET,
                &typed_path::<K>(namespace, Some(name)),
                "application/json",
                Bytes::new(),
            )
            .await
        {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(ClientError::Decode),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A whole list (following `continue` tokens) and its resource version.
    pub async fn list<K>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<(Vec<K>, String), ClientError>
    where
        K: Resource + ListableResource + DeserializeOwned,
    {
        self.list_items(&typed_path::<K>(namespace, None), params)
            .await
    }

    /// A whole list of the collection at `path`, decoded as `K`, and its resource version.
    pub async fn list_items<K>(
        &self,
        collection: &str,
        params: &ListParams,
    ) -> Result<(Vec<K>, String), ClientError>
    where
        K: DeserializeOwned,
    {
        let mut items = Vec::new();
        let mut params = params.clone();
        loop {
            let path = format!("{collection}?{}", params.query());
            let b = self
                .request(Method::GET, &path, "application/json", Bytes::new())
                .await?;
            // Straight into the item type: no intermediate JSON tree.
            let lean = params
                .strip_managed_fields
                .then(|| api::jsontext::strip_managed_fields(&b))
                .flatten();
            let page: Page<K> = serde_json::from_slice(lean.as_deref().unwrap_or(&b))
                .map_err(ClientError::Decode)?;
            items.extend(page.items.into_iter().flatten());
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => params.continue_token = Some(c),
                None => return Ok((items, page.metadata.resource_version.unwrap_or_default())),
            }
        }
    }

    pub async fn create<K>(&self, namespace: Option<&str>, obj: &K) -> Result<K, ClientError>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let body = serde_json::to_vec(obj).map_err(ClientError::Decode)?;
        let b = self
            .request(
                Method::POST,
                &typed_path::<K>(namespace, None),
                "application/json",
                Bytes::from(body),
            )
            .await?;
        serde_json::from_slice(&b).map_err(ClientError::Decode)
    }

    pub async fn replace<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        obj: &K,
    ) -> Result<K, ClientError>
    where
        K: Resource + Serialize + DeserializeOwned,
    {
        let body = serde_json::to_vec(obj).map_err(ClientError::Decode)?;
        let b = self
            .request(
                Method::PUT,
                &typed_path::<K>(namespace, Some(name)),
                "application/json",
                Bytes::from(body),
            )
            .await?;
        serde_json::from_slice(&b).map_err(ClientError::Decode)
    }

    /// A JSON merge patch.
    pub async fn merge_patch<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, ClientError>
    where
        K: Resource + DeserializeOwned,
    {
        let b = self
            .request(
                Method::PATCH,
                &typed_path::<K>(namespace, Some(name)),
                "application/merge-patch+json",
                Bytes::from(patch.to_string()),
            )
            .await?;
        serde_json::from_slice(&b).map_err(ClientError::Decode)
    }

    pub async fn delete<K>(&self, namespace: Option<&str>, name: &str) -> Result<(), ClientError>
    where
        K: Resource,
    {
        self.request(
            Method::DELETE,
            &typed_path::<K>(namespace, Some(name)),
            "application/json",
            Bytes::new(),
        )
        .await
        .map(drop)
    }

    /// Delete an object at `path` with `DeleteOptions` (propagation policy, preconditions).
    pub async fn delete_with(&self, path: &str, options: &Value) -> Result<(), ClientError> {
        self.request(
            Method::DELETE,
            path,
            "application/json",
            Bytes::from(options.to_string()),
        )
        .await
        .map(drop)
    }

    /// Replace the whole `status` of an object (a JSON patch, so fields left out are removed),
    /// for the status's one writer.
    pub async fn put_status<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        status: &Value,
    ) -> Result<K, ClientError>
    where
        K: Resource + DeserializeOwned,
    {
        let path = format!("{}/status", typed_path::<K>(namespace, Some(name)));
        let patch = serde_json::json!([{"op": "add", "path": "/status", "value": status}]);
        let b = self
            .request(
                Method::PATCH,
                &path,
                "application/json-patch+json",
                Bytes::from(patch.to_string()),
            )
            .await?;
        serde_json::from_slice(&b).map_err(ClientError::Decode)
    }

    /// A JSON merge patch of the `status` subresource.
    pub async fn patch_status<K>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, ClientError>
    where
        K: Resource + DeserializeOwned,
    {
        let path = format!("{}/status", typed_path::<K>(namespace, Some(name)));
        let b = self
            .request(
                Method::PATCH,
                &path,
                "application/merge-patch+json",
                Bytes::from(patch.to_string()),
            )
            .await?;
        serde_json::from_slice(&b).map_err(ClientError::Decode)
    }

    /// Watch changes after `params.resource_version`.
    pub async fn watch<K>(
        &self,
        namespace: Option<&str>,
        params: &ListParams,
    ) -> Result<Watch<K>, ClientError>
    where
        K: Resource + DeserializeOwned,
    {
        self.watch_at(&typed_path::<K>(namespace, None), params)
            .await
    }

    /// A whole list of the collection at `path`, as JSON objects, and its resource version.
    pub async fn list_at(
        &self,
        path: &str,
        params: &ListParams,
    ) -> Result<(Vec<Value>, String), ClientError> {
        let mut items = Vec::new();
        let mut params = params.clone();
        loop {
            let url = format!("{path}?{}", params.query());
            let mut v = self.request_json(Method::GET, &url, None).await?;
            if let Some(a) = v["items"].as_array_mut() {
                items.append(a);
            }
            match v["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
                Some(c) => params.continue_token = Some(c.to_string()),
                None => {
                    let rv = v["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    return Ok((items, rv));
                }
            }
        }
    }

    /// Watch the collection at `path` (from [`collection_path`]); K may be `serde_json::Value`.
    pub async fn watch_at<K>(
        &self,
        path: &str,
        params: &ListParams,
    ) -> Result<Watch<K>, ClientError>
    where
        K: DeserializeOwned,
    {
        let path = format!("{path}?watch=true&{}", params.query());
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        let resp = self.transport.send(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = collect(resp.into_body()).await?;
            return Err(api_error(status, &bytes));
        }
        Ok(Watch {
            body: Box::pin(resp.into_body()),
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            strip: params.strip_managed_fields,
            _kind: std::marker::PhantomData,
        })
    }
}

/// A stream of watch events.
pub struct Watch<K> {
    body: Pin<Box<ResponseBody>>,
    buf: BytesMut,
    pending: VecDeque<Bytes>,
    /// Drop `managedFields` before decoding.
    strip: bool,
    _kind: std::marker::PhantomData<fn() -> K>,
}

/// One watch event line, decoded in a single pass: `type` names the variant, `object` is its
/// content (the server writes `type` first, so nothing is buffered).
#[derive(serde::Deserialize)]
#[serde(tag = "type", content = "object")]
enum Line<K> {
    #[serde(rename = "ADDED")]
    Added(K),
    #[serde(rename = "MODIFIED")]
    Modified(K),
    #[serde(rename = "DELETED")]
    Deleted(K),
    #[serde(rename = "BOOKMARK")]
    Bookmark(BookmarkObject),
    #[serde(rename = "ERROR")]
    Error(StatusObject),
}

#[derive(serde::Deserialize)]
struct BookmarkObject {
    #[serde(default)]
    metadata: BookmarkMeta,
}

#[derive(serde::Deserialize, Default)]
struct BookmarkMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(serde::Deserialize)]
struct StatusObject {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

impl<K: DeserializeOwned> Watch<K> {
    /// The next event, or `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<WatchEvent<K>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                let lean = self
                    .strip
                    .then(|| api::jsontext::strip_managed_fields(&line))
                    .flatten();
                if let Some(ev) = Self::event(lean.as_deref().unwrap_or(&line)) {
                    return Some(ev);
                }
                continue;
            }
            let frame = self.body.frame().await?;
            let Ok(frame) = frame else { return None };
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(data.chunk());
                while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                    let line = self.buf.split_to(nl + 1).freeze();
                    self.pending.push_back(line);
                }
            }
        }
    }

    /// Decode one event line; `None` for a blank one.
    fn event(line: &[u8]) -> Option<WatchEvent<K>> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(match serde_json::from_slice::<Line<K>>(line) {
            Ok(Line::Added(k)) => WatchEvent::Added(k),
            Ok(Line::Modified(k)) => WatchEvent::Modified(k),
            Ok(Line::Deleted(k)) => WatchEvent::Deleted(k),
            Ok(Line::Bookmark(b)) => WatchEvent::Bookmark(b.metadata.resource_version),
            Ok(Line::Error(st)) => WatchEvent::Error(ClientError::Api {
                code: st.code.unwrap_or(500),
                reason: st.reason,
                message: st.message,
            }),
            Err(e) => WatchEvent::Error(ClientError::Decode(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Obj {
        n: i32,
    }

    fn event(line: &str) -> Option<WatchEvent<Obj>> {
        Watch::<Obj>::event(line.as_bytes())
    }

    #[test]
    fn watch_lines_decode_in_one_pass() {
        assert!(matches!(
            event(r#"{"type":"ADDED","object":{"n":1}}"#),
            Some(WatchEvent::Added(Obj { n: 1 }))
        ));
        assert!(matches!(
            event(r#"{"type":"DELETED","object":{"n":2}}"#),
            Some(WatchEvent::Deleted(Obj { n: 2 }))
        ));
        match event(
            r#"{"type":"BOOKMARK","object":{"kind":"X","metadata":{"resourceVersion":"42"}}}"#,
        ) {
            Some(WatchEvent::Bookmark(rv)) => assert_eq!(rv, "42"),
            other => panic!("{other:?}"),
        }
        match event(
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#,
        ) {
            Some(WatchEvent::Error(e)) => {
                assert_eq!(e.code(), Some(410));
                assert!(e.to_string().contains("too old"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // An object of the wrong shape is an error, not a silent skip.
        assert!(matches!(
            event(r#"{"type":"MODIFIED","object":{"n":"x"}}"#),
            Some(WatchEvent::Error(ClientError::Decode(_)))
        ));
        assert!(event("\n").is_none());
    }
}
