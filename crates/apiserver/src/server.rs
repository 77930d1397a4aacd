//! The API server: one `handle` entry point for every request, whether it arrived over HTTPS
//! or from an in-process client, so that both pass the same validation and admission.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use store::Store;
use tracing::{Instrument, debug, debug_span, error, warn};

use crate::auth::{Authenticator, Authorizer};
use crate::body::Body;
use crate::cache::Cache;
use crate::discovery::Discovery;
use crate::errors::{ApiError, ApiResult};
use crate::metrics;
use crate::openapi::{self, OpenApi};
use crate::request::{self, DiscoveryFormat, Params, Route, Target};
use crate::telemetry::{MeteredStore, RequestLabels, Telemetry};

pub use crate::auth::Identity;

#[derive(Clone, Debug)]
pub struct Config {
    /// Virtual IPs for Services come from these ranges, at most one per IP family; the first
    /// is the primary family (a Service's default).
    pub service_cidrs: Vec<api::cidr::Cidr>,
    /// The address clients and pods reach the API server at.
    pub advertise: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How often store history is compacted (history this old is kept).
    pub compact_every: Duration,
    /// How often watchers that allow bookmarks get one.
    pub bookmark_every: Duration,
    /// How long pods tolerate a not-ready or unreachable node unless they say otherwise
    /// (the tolerations every pod gets on creation).
    pub default_toleration_seconds: i64,
    /// Files a snapshot carries beside the store (the cluster's CA and admin credentials), by
    /// their name in the archive.
    pub snapshot_files: Vec<(String, std::path::PathBuf)>,
    /// Connections and requests in flight a client may hold.
    pub limits: crate::limits::LimitsConfig,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// The Pod Security level and version of namespaces whose labels name none.
    pub pod_security_default: api::podsecurity::LevelVersion,
    /// Where the audit log goes, and at which level (none: no audit log).
    pub audit: Option<(std::path::PathBuf, crate::audit::Level)>,
    /// How aggregated API servers know the caller the server speaks for (none: they are
    /// sent no client certificate and cannot trust what it says).
    pub front_proxy: Option<FrontProxy>,
}

/// The API server as a front proxy for aggregated API servers (Kubernetes' requestheader
/// authentication): they trust the `X-Remote-*` headers of a client certificate signed by
/// `ca_pem`, and read this from the `kube-system/extension-apiserver-authentication`
/// ConfigMap the server keeps.
#[derive(Clone, Debug, Default)]
pub struct FrontProxy {
    pub ca_pem: String,
    /// The client certificate and key (PEM) presented to aggregated servers.
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA that signs users' client certificates (the ConfigMap's `client-ca-file`).
    pub client_ca_pem: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            service_cidrs: vec![
                api::cidr::Cidr::new(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 0)), 16)
                    .expect("a valid range"),
            ],
            advertise: SocketAddr::from(([127, 0, 0, 1], 6443)),
            max_body_bytes: 3 * 1024 * 1024,
            compact_every: Duration::from_secs(300),
            bookmark_every: Duration::from_secs(20),
            default_toleration_seconds: api::kinds::DEFAULT_NOT_READY_TOLERATION_SECONDS,
            snapshot_files: Vec::new(),
            limits: crate::limits::LimitsConfig::default(),
            body_timeout: Duration::from_secs(60),
            pod_security_default: api::podsecurity::LevelVersion::PRIVILEGED,
            audit: None,
            front_proxy: None,
        }
    }
}

/// A response before it becomes HTTP.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Body,
    pub warnings: Vec<String>,
    /// Seconds the client should wait before trying again (the `Retry-After` header).
    pub retry_after: Option<u32>,
    /// A response made elsewhere (by a node's agent), passed on as it is.
    raw: Option<Response<Body>>,
}

/// A snapshot archive, to be written out in pieces: a tar of `store.snap` (every key of the
/// store as of one revision, see `store::snapshot`) and the configured files (mode 0600).
pub struct SnapshotArchive {
    pub snap: store::snapshot::Snapshot,
    files: Vec<(String, Vec<u8>)>,
}

impl SnapshotArchive {
    /// Hand the archive to `out` piece by piece, until it is done or `out` says stop.
    pub fn write(&self, mut out: impl FnMut(Bytes) -> bool) {
        const PIECE: usize = 1 << 20;
        const BLOCK: usize = 512;
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = |name: &str, size: u64| {
            let mut h = tar::Header::new_gnu();
            h.set_path(name)
                .expect("the files a snapshot carries have short names");
            h.set_size(size);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            h.set_cksum();
            Bytes::copy_from_slice(h.as_bytes())
        };
        let padding = |size: u64| Bytes::from(vec![0; (BLOCK - size as usize % BLOCK) % BLOCK]);
        let size = self.snap.encoded_len();
        if !out(header("store.snap", size)) {
            return;
        }
        for piece in self.snap.encode_pieces(PIECE) {
            if !out(Bytes::from(piece)) {
                return;
            }
        }
        let mut tail = padding(size).to_vec();
        for (name, bytes) in &self.files {
            tail.extend_from_slice(&header(name, bytes.len() as u64));
            tail.extend_from_slice(bytes);
            tail.extend_from_slice(&padding(bytes.len() as u64));
        }
        // Two empty blocks end a tar archive.
        tail.extend_from_slice(&[0; 2 * BLOCK]);
        out(Bytes::from(tail));
    }
}

impl Reply {
    /// An object, written as Kubernetes writes it (fields in Go's order, a final newline).
    pub fn json(status: StatusCode, v: &Value) -> Reply {
        Reply::object(status, Bytes::from(api::wire::to_vec(v)))
    }

    /// An object's JSON text, with the newline Kubernetes ends each one with.
    pub fn object(status: StatusCode, json: Bytes) -> Reply {
        Reply::body(
            status,
            "application/json",
            Body::chunks(vec![json, Bytes::from_static(b"\n")]),
        )
    }

    pub fn bytes(status: StatusCode, content_type: &'static str, b: Bytes) -> Reply {
        Reply::body(status, content_type, Body::from_bytes(b))
    }

    pub fn body(status: StatusCode, content_type: &'static str, body: Body) -> Reply {
        Reply {
            status,
            content_type,
            body,
            warnings: Vec::new(),
            retry_after: None,
            raw: None,
        }
    }

    pub fn from_response(resp: Response<Body>) -> Reply {
        Reply {
            status: resp.status(),
            content_type: "",
            body: Body::empty(),
            warnings: Vec::new(),
            retry_after: None,
            raw: Some(resp),
        }
    }

    fn into_response(self) -> Response<Body> {
        if let Some(r) = self.raw {
            return r;
        }
        let mut resp = Response::new(self.body);
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        for w in self.warnings {
            let value = format!("299 - {}", serde_json::Value::String(w));
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append("Warning", v);
            }
        }
        resp
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = Reply::json(status, &e.to_status());
        r.retry_after = e.details.retry_after;
        r
    }
}

/// Replacing the key that seals data at rest, which the process that owns the key file does.
#[async_trait::async_trait]
pub trait KeyRotation: Send + Sync {
    /// Seal with a new key, rewrite what the old ones sealed, drop them; a report of it.
    async fn rotate(&self) -> Result<Value, String>;
}

pub struct ApiServer {
    pub(crate) audit: Option<crate::audit::AuditLog>,
    key_rotation: std::sync::OnceLock<Arc<dyn KeyRotation>>,
    snapshot_source: std::sync::OnceLock<Arc<dyn Store>>,
    pub(crate) limits: Arc<crate::limits::Limits>,
    pub(crate) authorizer: Arc<Authorizer>,
    authenticator: std::sync::OnceLock<Arc<Authenticator>>,
    pub(crate) node_connector: std::sync::OnceLock<Arc<dyn crate::node::NodeConnector>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) config: Config,
    /// Per namespace with quotas: creates there are admitted one at a time.
    pub(crate) quota_locks:
        std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each namespace was last looked at afresh for LimitRanges (none cached).
    pub(crate) limit_checks:
        std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Rebuilt when what the registry serves or the aggregated backends say changes, with the
    /// generations it describes.
    discovery: std::sync::RwLock<((u64, u64), Arc<Discovery>)>,
    /// What Service-backed APIServices' discovery says (kept by `run_aggregation`).
    pub(crate) aggregated_backends: crate::aggregation::Backends,
    openapi: OpenApi,
    version: Value,
    pub(crate) telemetry: Arc<Telemetry>,
}

/// `v1.33.0+berth.0.1.0`: Kubernetes' version, with ours as build metadata.
pub fn git_version() -> String {
    let (major, minor, patch) = api::KUBERNETES_VERSION;
    format!(
        "v{major}.{minor}.{patch}+berth.{}",
        env!("CARGO_PKG_VERSION")
    )
}

impl ApiServer {
    /// Load the cache from `store` and start serving from it.
    pub async fn start(
        store: Arc<dyn Store>,
        config: Config,
    ) -> Result<Arc<ApiServer>, store::StoreError> {
        let telemetry = Arc::new(Telemetry::default());
        let store: Arc<dyn Store> = Arc::new(MeteredStore {
            inner: store,
            telemetry: telemetry.clone(),
        });
        let authorizer = Arc::new(Authorizer::default());
        let cache = Cache::start(
            store.clone(),
            config.bookmark_every,
            vec![authorizer.clone() as Arc<dyn crate::cache::Observer>],
        )
        .await?;
        let (major, minor, _) = api::KUBERNETES_VERSION;
        let version = json!({
            "major": major.to_string(),
            "minor": minor.to_string(),
            "gitVersion": git_version(),
            "gitCommit": option_env!("BERTH_GIT_COMMIT").unwrap_or("unknown"),
            "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z",
            "goVersion": "rustc",
            "compiler": "rustc",
            "platform": format!("linux/{}", match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            }),
        });
        let audit = match &config.audit {
            Some((path, level)) => Some(
                crate::audit::AuditLog::open(path, *level)
                    .map_err(|e| store::StoreError::Backend(Box::new(e)))?,
            ),
            None => None,
        };
        let server = Arc::new(ApiServer {
            audit,
            key_rotation: std::sync::OnceLock::new(),
            snapshot_source: std::sync::OnceLock::new(),
            limits: crate::limits::Limits::new(config.limits),
            authorizer,
            authenticator: std::sync::OnceLock::new(),
            node_connector: std::sync::OnceLock::new(),
            discovery: std::sync::RwLock::new((
                (cache.registry().generation(), 0),
                Arc::new(Discovery::new(
                    &config.advertise.to_string(),
                    cache.registry(),
                    &[],
                )),
            )),
            aggregated_backends: crate::aggregation::Backends::default(),
            openapi: OpenApi::new(&git_version()),
            store,
            cache,
            config,
            quota_locks: std::sync::Mutex::default(),
            limit_checks: std::sync::Mutex::default(),
            version,
            telemetry,
        });
        let compactor = server.clone();
        supervise::supervise("compactor", move || {
            let c = compactor.clone();
            async move { c.compact_periodically().await }
        });
        Ok(server)
    }

    /// Decide whether a request may go on, from its method, path, query and headers alone
    /// (its body is not read before): impersonation, then RBAC. Returns who it acts as.
    pub fn authorize(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        who: Identity,
    ) -> ApiResult<Identity> {
        let who = self.authorizer.impersonate(who, headers)?;
        if who.user.in_group(api::rbac::MASTERS) {
            return Ok(who);
        }
        let path = uri.path();
        let route = request::route(path, self.cache.registry()).ok();
        let params = Params::parse(uri.query());
        let asked = crate::auth::attributes_of(method, path, &params, route.as_ref());
        if let Err(e) = self
            .authorizer
            .check_selected(&asked.borrow(&who.user), &asked.selector)
        {
            if let Some(component) = &who.component {
                // berth's own components are given what they need: a refusal is a gap in the
                // policy (the end-to-end tests look for this line).
                tracing::warn!(
                    %component,
                    user = %who.user.name,
                    %method,
                    path,
                    "a berth component was refused by the authorizer"
                );
            }
            return Err(e);
        }
        Ok(who)
    }

    /// Serve one request: authorize it, then handle it (the in-process transport's way in).
    pub async fn handle(&self, req: Request<Bytes>, who: Identity) -> Response<Body> {
        match self.authorize(req.method(), req.uri(), req.headers(), who) {
            Ok(who) => self.handle_authorized(req, who).await,
            Err(e) => self.refuse(&req, e),
        }
    }

    /// The reply to a request refused before it was handled, counted like any other.
    pub fn refuse<B>(&self, req: &Request<B>, e: ApiError) -> Response<Body> {
        let route = request::route(req.uri().path(), self.cache.registry());
        let params = Params::parse(req.uri().query());
        let labels = request_labels(req.method(), req.headers(), route.as_ref().ok(), &params);
        debug!(
            code = e.code,
            reason = e.reason,
            path = req.uri().path(),
            "request refused"
        );
        let resp = Reply::from(e).into_response();
        self.telemetry
            .request(labels, resp.status().as_u16(), std::time::Duration::ZERO);
        resp
    }

    /// Who replaces the encryption key (`/berth/v1/encryption/rotate`); set once at start.
    pub fn set_key_rotation(&self, r: Arc<dyn KeyRotation>) {
        let _ = self.key_rotation.set(r);
    }

    /// The store snapshots are taken from, when it is not the one served (the store below
    /// encryption, so that snapshots hold Secrets sealed); set once at start.
    pub fn set_snapshot_source(&self, s: Arc<dyn Store>) {
        let _ = self.snapshot_source.set(s);
    }

    /// How clients are authenticated (for TokenReview); set once at start.
    pub fn set_authenticator(&self, a: Arc<Authenticator>) {
        let _ = self.authenticator.set(a);
    }

    pub(crate) fn authenticator(&self) -> Option<&Arc<Authenticator>> {
        self.authenticator.get()
    }

    /// Service account tokens signed by `tokens`, checked against this server's cache; for
    /// `Authenticator::with_service_accounts`.
    pub fn service_account_auth(
        &self,
        tokens: Arc<crate::auth::ServiceAccountTokens>,
    ) -> crate::auth::ServiceAccountAuth {
        crate::auth::ServiceAccountAuth {
            tokens,
            cache: self.cache.clone(),
        }
    }

    /// The service account token issuer, once authentication is set up with one.
    pub(crate) fn token_issuer(&self) -> Option<&Arc<crate::auth::ServiceAccountTokens>> {
        Some(&self.authenticator()?.service_accounts()?.tokens)
    }

    /// Serve one request already authorized. The body has been read (and bounded in size).
    pub async fn handle_authorized(&self, req: Request<Bytes>, who: Identity) -> Response<Body> {
        // A span per request costs more than a binding's own work when it is recorded, so it
        // is there when debugging; failures name their request themselves.
        let span = debug_span!("request", method = %req.method(), path = %req.uri().path());
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let started = std::time::Instant::now();
        let route = request::route(req.uri().path(), self.cache.registry());
        let params = Params::parse(req.uri().query());
        let labels = request_labels(req.method(), req.headers(), route.as_ref().ok(), &params);
        async move {
            // A bug in one handler costs that request a 500, on every transport (the
            // in-process one included), not the caller's task or the connection.
            let routed = std::panic::AssertUnwindSafe(self.route(req, route, params, &who))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let what = supervise::panic_message(&*panic);
                    error!(%method, path = uri.path(), panic = %what, "request handler panicked");
                    Err(ApiError::internal("the request could not be handled"))
                });
            let reply = match routed {
                Ok(r) => r,
                Err(e) => {
                    if e.code >= 500 {
                        warn!(%method, path = uri.path(), code = e.code, error = %e.message, "request failed");
                    } else {
                        debug!(code = e.code, reason = e.reason, "request refused");
                    }
                    Reply::from(e)
                }
            };
            let resp = reply.into_response();
            self.telemetry
                .request(labels, resp.status().as_u16(), started.elapsed());
            resp
        }
        .instrument(span)
        .await
    }

    async fn route(
        &self,
        req: Request<Bytes>,
        route: ApiResult<Route>,
        params: Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        // A group-version an APIService sends to a Service is proxied there, whatever else.
        if let ["", "apis", group, version, ..] =
            req.uri().path().split('/').collect::<Vec<_>>()[..]
            && let Some(svc) = self.aggregated(group, version)
        {
            return self.proxy_aggregated(&svc, req, who).await;
        }
        // A custom kind another client's just-acknowledged write defined may not be in the
        // cache's registry yet: look again once the cache has caught up.
        let route = match route {
            Err(e) if req.uri().path().starts_with("/apis/") && e.code == 404 => {
                self.cache.wait_fresh().await?;
                request::route(req.uri().path(), self.cache.registry())
            }
            other => other,
        };
        if req
            .uri()
            .path()
            .starts_with(&format!("/apis/{}/{}/", metrics::GROUP, metrics::VERSION))
        {
            return self.metrics(req.uri().path(), &params, req.method()).await;
        }
        if let Some((review, namespace)) = crate::auth::Review::from_path(req.uri().path()) {
            return self.review(review, namespace, &req, who).await;
        }
        if let Some(reply) = self.openid(req.uri().path(), req.method()) {
            return reply;
        }
        let route = route?;
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let get_only = |m: &Method| {
            if m == Method::GET || m == Method::HEAD {
                Ok(())
            } else {
                Err(ApiError::method_not_allowed())
            }
        };
        match route {
            Route::Version => {
                get_only(req.method())?;
                Ok(Reply::json(StatusCode::OK, &self.version))
            }
            Route::Health(path) => self.health(&path, &params).await,
            Route::Metrics => {
                get_only(req.method())?;
                let objects = self.cache.object_counts();
                Ok(Reply::bytes(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    Bytes::from(self.telemetry.render(&objects)),
                ))
            }
            Route::Snapshot => {
                get_only(req.method())?;
                masters_only(who, "take a snapshot")?;
                let archive = self.snapshot().await?;
                let (tx, body) = Body::channel(4);
                tokio::task::spawn_blocking(move || {
                    archive.write(|piece| tx.blocking_send(piece).is_ok());
                });
                Ok(Reply::body(StatusCode::OK, "application/x-tar", body))
            }
            Route::RotateEncryptionKey => {
                if req.method() != Method::POST {
                    return Err(ApiError::method_not_allowed());
                }
                masters_only(who, "rotate the encryption key")?;
                let rotation = self.key_rotation.get().ok_or_else(|| {
                    ApiError::bad_request("this server does not encrypt anything at rest")
                })?;
                let report = rotation
                    .rotate()
                    .await
                    .map_err(|e| ApiError::internal(format!("rotating the encryption key: {e}")))?;
                Ok(Reply::json(StatusCode::OK, &report))
            }
            Route::CoreVersions => {
                get_only(req.method())?;
                Ok(match request::discovery_format(accept.as_deref()) {
                    DiscoveryFormat::Aggregated("v2") => Reply::bytes(
                        StatusCode::OK,
                        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                        self.discovery().core_v2.clone(),
                    ),
                    DiscoveryFormat::Aggregated(_) => Reply::bytes(
                        StatusCode::OK,
                        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                        self.discovery().core_v2beta1.clone(),
                    ),
                    DiscoveryFormat::Legacy => Reply::bytes(
                        StatusCode::OK,
                        "application/json",
                        self.discovery().core_versions.clone(),
                    ),
                })
            }
            Route::Groups => {
                get_only(req.method())?;
                Ok(match request::discovery_format(accept.as_deref()) {
                    DiscoveryFormat::Aggregated("v2") => Reply::bytes(
                        StatusCode::OK,
                        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                        self.discovery().groups_v2.clone(),
                    ),
                    DiscoveryFormat::Aggregated(_) => Reply::bytes(
                        StatusCode::OK,
                        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                        self.discovery().groups_v2beta1.clone(),
                    ),
                    DiscoveryFormat::Legacy => Reply::bytes(
                        StatusCode::OK,
                        "application/json",
                        self.discovery().group_list.clone(),
                    ),
                })
            }
            Route::Group(g) => {
                get_only(req.method())?;
                let body = self.discovery().group(&g).ok_or_else(ApiError::no_route)?;
                Ok(Reply::bytes(StatusCode::OK, "application/json", body))
            }
            Route::ResourceList(g, v) => {
                get_only(req.method())?;
                let body = self
                    .discovery()
                    .resource_list(&g, &v)
                    .ok_or_else(ApiError::no_route)?;
                Ok(Reply::bytes(StatusCode::OK, "application/json", body))
            }
            Route::OpenApiV2 => {
                get_only(req.method())?;
                // kubectl asks for protobuf; anything else that accepts JSON gets JSON.
                let proto = accept
                    .as_deref()
                    .is_some_and(|a| a.contains("application/com.github.proto-openapi.spec.v2"));
                Ok(if proto {
                    Reply::bytes(
                        StatusCode::OK,
                        openapi::V2_PROTO_CONTENT_TYPE,
                        self.openapi.v2_proto(self.cache.registry()).await,
                    )
                } else {
                    Reply::bytes(
                        StatusCode::OK,
                        "application/json",
                        self.openapi.v2_json(self.cache.registry()).await,
                    )
                })
            }
            Route::OpenApiV3Index => {
                get_only(req.method())?;
                Ok(Reply::bytes(
                    StatusCode::OK,
                    "application/json",
                    self.openapi.v3_index(self.cache.registry()).await,
                ))
            }
            Route::OpenApiV3(key) => {
                get_only(req.method())?;
                let body = self
                    .openapi
                    .v3(self.cache.registry(), &key)
                    .await
                    .ok_or_else(ApiError::no_route)?;
                Ok(Reply::bytes(StatusCode::OK, "application/json", body))
            }
            Route::Resource(t) => {
                let output = request::output(accept.as_deref());
                let (view, resource) = (t.view, t.resource);
                let writes = !matches!(*req.method(), Method::GET | Method::HEAD)
                    && params.get("dryRun").is_none_or(str::is_empty);
                let reply = self.resource(req, t, params, output, who).await?;
                if writes && crate::crds::is_definitions(resource) {
                    // What a definition defines is served (discovery, OpenAPI, its paths)
                    // before the write that defines it is answered.
                    // The write is done either way: a slow cache is logged, not reported as
                    // the write's failure.
                    if let Err(e) = self.cache.wait_fresh().await {
                        warn!(error = %e.message, "a definition was written but the cache is behind");
                    }
                }
                match view {
                    Some(view) => Ok(crate::views::show_reply(view, reply)),
                    None if crate::conversion::converts(resource) => {
                        crate::conversion::show_reply(self.cache.clone(), resource, reply).await
                    }
                    None => Ok(reply),
                }
            }
        }
    }

    async fn resource(
        &self,
        req: Request<Bytes>,
        t: Target,
        params: Params,
        output: request::Output,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let method = req.method().clone();
        self.node_restriction(who, &t, &req)?;
        match (&method, t.name.as_deref(), t.subresource.as_deref()) {
            (&Method::GET, None, None) if params.flag("watch") => {
                self.watch(&t, &params, output).await
            }
            (&Method::GET, None, None) => self.list(&t, &params, output).await,
            (&Method::POST, None, None) => {
                self.namespaced_target(&t)?;
                self.create(&t, &req, &params, who).await
            }
            (&Method::DELETE, None, None) => self.delete_collection(&t, &req, &params, who).await,
            // Past this, a subresource's name alone says which kind it belongs to.
            (_, Some(_), Some(sub)) if !has_subresource(t.resource, sub) => {
                Err(ApiError::no_route())
            }
            (&Method::PUT | &Method::PATCH, Some(name), Some("approval")) => {
                // Whether the caller may approve the request's signer is judged in the
                // write, on the request as stored then.
                if method == Method::PUT {
                    self.update(&t, name, Some("approval"), &req, &params, who)
                        .await
                } else {
                    self.patch(&t, name, Some("approval"), &req, &params, who)
                        .await
                }
            }
            (
                &Method::GET,
                Some(name),
                None | Some("status" | "ephemeralcontainers" | "approval"),
            ) => {
                self.namespaced_target(&t)?;
                self.get(&t, name, output).await
            }
            (&Method::PUT, Some(name), sub @ (None | Some("status" | "ephemeralcontainers"))) => {
                self.namespaced_target(&t)?;
                self.update(&t, name, sub, &req, &params, who).await
            }
            (&Method::PATCH, Some(name), sub @ (None | Some("status" | "ephemeralcontainers"))) => {
                self.namespaced_target(&t)?;
                self.patch(&t, name, sub, &req, &params, who).await
            }
            (&Method::DELETE, Some(name), None) => {
                self.namespaced_target(&t)?;
                self.delete(&t, name, &req, &params, who).await
            }
            (m, Some(name), Some("scale")) if t.resource.scale => {
                self.namespaced_target(&t)?;
                self.scale(&t, name, m, &req, &params, who).await
            }
            (&Method::PUT, Some(name), Some("finalize")) => {
                self.finalize(&t, name, &req, &params, who).await
            }
            (&Method::POST, Some(name), Some("eviction")) => {
                self.namespaced_target(&t)?;
                self.evict(&t, name, &req, &params, who).await
            }
            (&Method::POST, Some(name), Some("token")) => {
                self.namespaced_target(&t)?;
                self.token_request(&t, name, &req).await
            }
            (&Method::POST, Some(name), Some("binding")) => {
                self.namespaced_target(&t)?;
                self.bind(&t, name, &req, &params, who).await
            }
            (_, Some(name), Some("proxy")) => {
                self.namespaced_target(&t)?;
                self.proxy(&t, name, req).await
            }
            (_, Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward"))) => {
                self.namespaced_target(&t)?;
                self.node_call(&t, name, sub, req, &params).await
            }
            (_, None, Some(_)) => Err(ApiError::no_route()),
            _ => Err(ApiError::method_not_allowed()),
        }
    }

    /// `/livez`, `/readyz`, `/healthz` and their single checks (`/readyz/etcd`), with
    /// `?verbose` listing every check and `?exclude=` leaving some out, as kube-apiserver does.
    async fn health(&self, path: &str, params: &Params) -> ApiResult<Reply> {
        let (endpoint, only) = path.split_once('/').unwrap_or((path, ""));
        let store_ok = self.store.health().await.is_ok();
        let mut checks: Vec<(&str, bool)> = vec![("ping", true), ("log", true), ("etcd", store_ok)];
        if endpoint == "readyz" {
            checks.push(("etcd-readiness", store_ok));
            checks.push((
                "informer-sync",
                self.cache.wait_fresh_for(Duration::from_secs(1)).await,
            ));
            checks.push(("poststarthook/start-apiserver-admission-initializer", true));
            checks.push(("shutdown", true));
        } else {
            checks.push(("poststarthook/start-apiserver-admission-initializer", true));
        }
        let text = |status: StatusCode, body: String| {
            Reply::bytes(status, "text/plain; charset=utf-8", Bytes::from(body))
        };
        if !only.is_empty() {
            return match checks.iter().find(|(n, _)| *n == only) {
                Some((_, true)) => Ok(text(StatusCode::OK, "ok".into())),
                Some((n, false)) => Ok(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal server error: {n} check failed\n"),
                )),
                None => Err(ApiError::no_route()),
            };
        }
        let excluded: Vec<&str> = params.all("exclude");
        let mut body = String::new();
        let mut passed = true;
        for (name, ok) in &checks {
            if excluded.contains(name) {
                body.push_str(&format!("[+]{name} excluded: ok\n"));
                continue;
            }
            passed &= ok;
            if *ok {
                body.push_str(&format!("[+]{name} ok\n"));
            } else {
                body.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
        let verdict = if passed { "passed" } else { "failed" };
        body.push_str(&format!("{endpoint} check {verdict}\n"));
        let status = if passed {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        if params.flag("verbose") || !passed {
            Ok(text(status, body))
        } else {
            Ok(text(status, "ok".into()))
        }
    }

    /// A snapshot archive (tar) of the store as of one revision and the configured files.
    pub async fn snapshot(&self) -> ApiResult<SnapshotArchive> {
        let source = self.snapshot_source.get().unwrap_or(&self.store);
        let snap = store::snapshot::take(source.as_ref()).await?;
        let mut files = Vec::new();
        for (name, path) in &self.config.snapshot_files {
            let bytes = std::fs::read(path)
                .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?;
            files.push((name.clone(), bytes));
        }
        tracing::info!(
            revision = snap.revision,
            keys = snap.kvs.len(),
            "snapshot taken"
        );
        Ok(SnapshotArchive { snap, files })
    }

    /// Objects of a namespaced resource are only reachable within a namespace.
    fn namespaced_target(&self, t: &Target) -> ApiResult<()> {
        if t.resource.namespaced && t.namespace.is_none() {
            return Err(ApiError::no_route());
        }
        Ok(())
    }

    /// Keep a few minutes of history and drop the rest, as the Kubernetes API server does.
    async fn compact_periodically(&self) {
        let mut previous = None;
        let mut tick = tokio::time::interval(self.config.compact_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(rev) = previous
                && let Err(e) = self.store.compact(rev).await
            {
                warn!(error = %e, "compaction failed");
            }
            previous = self.store.revision().await.ok();
        }
    }

    /// How this server reaches node agents (for logs, exec, attach, port-forward); set once.
    pub fn set_node_connector(&self, c: Arc<dyn crate::node::NodeConnector>) {
        let _ = self.node_connector.set(c);
    }

    /// The discovery documents of what is served now.
    fn discovery(&self) -> Arc<Discovery> {
        let registry = self.cache.registry();
        let generation = (registry.generation(), self.aggregated_backends.generation());
        {
            let d = self.discovery.read().unwrap_or_else(|p| p.into_inner());
            if d.0 == generation {
                return d.1.clone();
            }
        }
        let fresh = Arc::new(Discovery::new(
            &self.config.advertise.to_string(),
            registry,
            &self.aggregated_backends.lists(),
        ));
        let mut d = self.discovery.write().unwrap_or_else(|p| p.into_inner());
        if d.0 < generation {
            *d = (generation, fresh.clone());
        }
        fresh
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

/// Snapshots carry the cluster's keys, and key rotation rewrites every Secret: these are for
/// `system:masters` alone, whatever a path rule grants.
fn masters_only(who: &Identity, what: &str) -> ApiResult<()> {
    if who.user.in_group(api::rbac::MASTERS) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "forbidden: User {:?} cannot {what}: only system:masters may",
        who.user.name
    )))
}

/// How a request is counted in `apiserver_request_total`: Kubernetes' verb (LIST and WATCH
/// for collections, APPLY for server-side apply, CONNECT for streams), resource and scope.
fn request_labels(
    method: &Method,
    headers: &http::HeaderMap,
    route: Option<&Route>,
    query: &Params,
) -> RequestLabels {
    let dry_run = query.get("dryRun").is_some();
    let Some(Route::Resource(t)) = route else {
        return RequestLabels {
            verb: match *method {
                Method::GET | Method::HEAD => "GET",
                Method::POST => "POST",
                Method::PUT => "PUT",
                Method::PATCH => "PATCH",
                Method::DELETE => "DELETE",
                _ => "OTHER",
            },
            dry_run,
            ..Default::default()
        };
    };
    // Only real subresources become a label: any other path segment would make a new series.
    let sub = t
        .subresource
        .clone()
        .filter(|s| has_subresource(t.resource, s))
        .unwrap_or_default();
    let connect = matches!(sub.as_str(), "exec" | "attach" | "portforward" | "proxy");
    let apply = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    let verb = match (method, t.name.is_some()) {
        _ if connect => "CONNECT",
        (&Method::GET | &Method::HEAD, false) if query.flag("watch") => "WATCH",
        (&Method::GET | &Method::HEAD, false) => "LIST",
        (&Method::GET | &Method::HEAD, true) => "GET",
        (&Method::POST, _) => "POST",
        (&Method::PUT, _) => "PUT",
        (&Method::PATCH, _) if apply => "APPLY",
        (&Method::PATCH, _) => "PATCH",
        (&Method::DELETE, false) => "DELETECOLLECTION",
        (&Method::DELETE, true) => "DELETE",
        _ => "OTHER",
    };
    let (group, version) = match t.view {
        Some(v) => (v.group, v.version),
        None => (t.resource.group, t.resource.version),
    };
    RequestLabels {
        verb,
        dry_run,
        group: group.to_string(),
        version: version.to_string(),
        resource: t.resource.plural.to_string(),
        subresource: sub,
        scope: if t.name.is_some() {
            "resource"
        } else if t.namespace.is_some() {
            "namespace"
        } else {
            "cluster"
        },
    }
}

/// Whether `r` has the subresource `sub` (a request for one it lacks is a 404, as in
/// Kubernetes: `kubectl scale` of a ConfigMap is "not found", not "not allowed").
fn has_subresource(r: &api::Resource, sub: &str) -> bool {
    match sub {
        "status" => r.status,
        "scale" => r.scale,
        _ => r.subresources.iter().any(|s| s.name == sub),
    }
}

/// Parse a request body into JSON: JSON itself, Kubernetes protobuf (by Content-Type), or
/// YAML where allowed (apply patches).
pub(crate) fn parse_body(req: &Request<Bytes>, yaml_allowed: bool) -> ApiResult<Value> {
    let body = req.body();
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with(api::proto::CONTENT_TYPE) {
        return api::proto::decode_object(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the protobuf request body could not be decoded: {e}"
            ))
        });
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if yaml_allowed => serde_saphyr::from_slice::<Value>(body).map_err(|ye| {
            ApiError::bad_request(format!("error decoding YAML: {ye} (as JSON: {e})"))
        }),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}
