//! The node's Ingress controller: an HTTP and an HTTPS reverse proxy on the node (ports 80
//! and 443 by default) that routes each request by the `net::ingress` table of the Ingresses
//! of class `berth` straight to a ready endpoint of the Service it names, with the
//! certificate of the matching `spec.tls` Secret chosen by the client's server name.
//!
//! Routes and endpoints are rebuilt from the watches as they change and swapped in whole, so
//! a change is live for the next request and connections in flight are not touched.
//! Certificates are read again every few seconds, so a replaced Secret serves without a
//! restart. A connect that fails is retried on another endpoint. Upgrades (WebSocket) are
//! passed through once the backend agrees.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{Secret, Service};
use api::k8s_openapi::api::discovery::v1::EndpointSlice;
use api::k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use bytes::Bytes;
use client::{Client, watcher};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use net::ingress::{Table, Target};
use net::proxy::SliceInfo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::proxy::follow;

/// The class this controller serves.
pub const CLASS: &str = "berth";
/// The controller its IngressClass names.
pub const CONTROLLER: &str = "berth.dev/ingress";
/// How long to gather watch events before rebuilding the routes.
const GATHER: Duration = Duration::from_millis(2);
/// How often the certificates of the Secrets the routes name are read again.
const CERT_REFRESH: Duration = Duration::from_secs(2);
/// How long a connect to an endpoint may take before another is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many endpoints a request tries before it fails.
const ATTEMPTS: usize = 3;

/// Where the proxy listens.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The routes and the endpoints behind them, as one value swapped in whole.
#[derive(Default)]
struct Routes {
    table: Table,
    endpoints: HashMap<Target, Vec<SocketAddr>>,
}

enum Change {
    Ingresses(Box<watcher::Event<Ingress>>),
    Classes(Box<watcher::Event<IngressClass>>),
    Services(Box<watcher::Event<Service>>),
    Slices(Box<watcher::Event<EndpointSlice>>),
}

fn key(ns: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", ns.unwrap_or(""), name.unwrap_or(""))
}

/// What the watches have shown.
#[derive(Default)]
struct Seen {
    ingresses: BTreeMap<String, Ingress>,
    /// Whether the `berth` class is the default (Ingresses naming no class are ours then).
    default_class: bool,
    services: HashMap<String, Service>,
    /// Service key -> slice key -> slice.
    slices: HashMap<String, BTreeMap<String, SliceInfo>>,
}

impl Seen {
    fn apply(&mut self, c: Change) {
        fn each<K>(e: watcher::Event<K>, mut f: impl FnMut(&K, bool)) {
            match e {
                watcher::Event::Restarted(all) => {
                    for k in &all {
                        f(k, true);
                    }
                }
                watcher::Event::Applied(k) => f(&k, true),
                watcher::Event::Deleted(k) => f(&k, false),
            }
        }
        match c {
            Change::Ingresses(e) => {
                let mut fresh = BTreeMap::new();
                let restarted = matches!(*e, watcher::Event::Restarted(_));
                each(*e, |i: &Ingress, present| {
                    let k = key(i.metadata.namespace.as_deref(), i.metadata.name.as_deref());
                    if present {
                        fresh.insert(k, i.clone());
                    } else {
                        fresh.insert(k, Ingress::default());
                    }
                });
                if restarted {
                    self.ingresses.clear();
                }
                for (k, i) in fresh {
                    if i.metadata.name.is_some() {
                        self.ingresses.insert(k, i);
                    } else {
                        self.ingresses.remove(&k);
                    }
                }
            }
            Change::Classes(e) => {
                if matches!(*e, watcher::Event::Restarted(_)) {
                    self.default_class = false;
                }
                let mut default = None;
                each(*e, |c: &IngressClass, present| {
                    if c.metadata.name.as_deref() == Some(CLASS) {
                        default = Some(present && api::kinds::more::is_default_ingress_class(c));
                    }
                });
                if let Some(d) = default {
                    self.default_class = d;
                }
            }
            Change::Services(e) => {
                let restarted = matches!(*e, watcher::Event::Restarted(_));
                if restarted {
                    self.services.clear();
                }
                let services = &mut self.services;
                each(*e, |s: &Service, present| {
                    let k = key(s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
                    if present {
                        services.insert(k, s.clone());
                    } else {
                        services.remove(&k);
                    }
                });
            }
            Change::Slices(e) => {
                let restarted = matches!(*e, watcher::Event::Restarted(_));
                if restarted {
                    self.slices.clear();
                }
                let slices = &mut self.slices;
                each(*e, |s: &EndpointSlice, present| {
                    let Some(svc) = s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                    else {
                        return;
                    };
                    let owner = key(s.metadata.namespace.as_deref(), Some(svc));
                    let k = key(s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
                    let m = slices.entry(owner.clone()).or_default();
                    if present {
                        m.insert(k, SliceInfo::from_slice(s));
                    } else {
                        m.remove(&k);
                        if m.is_empty() {
                            slices.remove(&owner);
                        }
                    }
                });
            }
        }
    }

    fn routes(&self) -> Routes {
        let ours = self
            .ingresses
            .values()
            .filter(|i| net::ingress::serves(i, CLASS, self.default_class));
        let table = Table::build(ours);
        let mut endpoints = HashMap::new();
        for t in table.targets() {
            let k = key(Some(&t.namespace), Some(&t.service));
            let eps = match self.services.get(&k) {
                Some(svc) => {
                    let slices: Vec<SliceInfo> = self
                        .slices
                        .get(&k)
                        .map(|m| m.values().cloned().collect())
                        .unwrap_or_default();
                    net::ingress::endpoints(svc, &slices, &t.port)
                }
                None => Vec::new(),
            };
            endpoints.insert(t.clone(), eps);
        }
        Routes { table, endpoints }
    }
}

/// A Secret by namespace and name.
type SecretKey = (String, String);
/// A certificate and the resourceVersion of the Secret it was read from.
type Loaded = (String, Arc<CertifiedKey>);

/// Certificates by Secret, read from the API.
#[derive(Default)]
struct Certificates {
    by_secret: RwLock<HashMap<SecretKey, Loaded>>,
    routes: RwLock<Arc<Routes>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certificates")
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (ns, name) = routes.table.secret_for(hello.server_name().unwrap_or(""))?;
        let certs = self.by_secret.read().unwrap_or_else(|p| p.into_inner());
        certs
            .get(&(ns.to_string(), name.to_string()))
            .map(|(_, c)| c.clone())
    }
}

fn certified(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    use rustls_pki_types::pem::PemObject;
    let data = secret.data.as_ref().ok_or("the Secret has no data")?;
    let crt = data.get("tls.crt").ok_or("the Secret has no tls.crt")?;
    let key = data.get("tls.key").ok_or("the Secret has no tls.key")?;
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(&crt.0)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tls.crt: {e}"))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key.0)
        .map_err(|e| format!("tls.key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Keep the certificates of the Secrets the routes name.
async fn refresh_certificates(client: Client, certs: Arc<Certificates>) {
    loop {
        let wanted = certs
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .table
            .secrets();
        let mut next = HashMap::new();
        for (ns, name) in wanted {
            let known = certs
                .by_secret
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(ns.clone(), name.clone()))
                .cloned();
            match client.get::<Secret>(Some(&ns), &name).await {
                Ok(Some(s)) => {
                    let rv = s.metadata.resource_version.clone().unwrap_or_default();
                    match &known {
                        Some((seen, c)) if *seen == rv => {
                            next.insert((ns, name), (rv, c.clone()));
                        }
                        _ => match certified(&s) {
                            Ok(c) => {
                                debug!(namespace = ns, secret = name, "ingress certificate loaded");
                                next.insert((ns, name), (rv, c));
                            }
                            Err(e) => {
                                warn!(
                                    namespace = ns,
                                    secret = name,
                                    error = e,
                                    "an ingress certificate cannot be used"
                                )
                            }
                        },
                    }
                }
                Ok(None) => {
                    debug!(
                        namespace = ns,
                        secret = name,
                        "an ingress names a missing Secret"
                    )
                }
                Err(e) => {
                    // Keep what was loaded while the API cannot be asked.
                    if let Some(k) = known {
                        next.insert((ns.clone(), name.clone()), k);
                    }
                    debug!(namespace = ns, secret = name, error = %e, "reading an ingress certificate")
                }
            }
        }
        *certs.by_secret.write().unwrap_or_else(|p| p.into_inner()) = next;
        tokio::time::sleep(CERT_REFRESH).await;
    }
}

/// Serve Ingresses on this node until dropped.
pub async fn run(client: Client, cfg: IngressConfig) {
    let certs = Arc::new(Certificates::default());
    let (tx, mut rx) = mpsc::channel(1024);
    let watches = [
        follow(client.clone(), tx.clone(), |e| {
            Change::Ingresses(Box::new(e))
        }),
        follow(client.clone(), tx.clone(), |e| Change::Classes(Box::new(e))),
        follow(client.clone(), tx.clone(), |e| {
            Change::Services(Box::new(e))
        }),
        follow(client.clone(), tx, |e| Change::Slices(Box::new(e))),
    ];
    let _watches = watches.map(supervise::AbortOnDrop);
    let c = (client.clone(), certs.clone());
    let _certs = supervise::AbortOnDrop(supervise::supervise("ingress-certificates", move || {
        refresh_certificates(c.0.clone(), c.1.clone())
    }));
    let tls = cfg.https.map(|_| {
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(tls))
    });
    let listeners = [
        (cfg.http, None, "ingress-http"),
        (cfg.https, tls, "ingress-https"),
    ];
    let _servers: Vec<supervise::AbortOnDrop> = listeners
        .into_iter()
        .filter_map(|(addr, tls, name)| {
            let addr = addr?;
            let certs = certs.clone();
            Some(supervise::AbortOnDrop(supervise::supervise(
                name,
                move || accept(addr, tls.clone(), certs.clone()),
            )))
        })
        .collect();
    let mut seen = Seen::default();
    while let Some(first) = rx.recv().await {
        seen.apply(first);
        // Gather what arrives together, then rebuild once.
        let until = tokio::time::Instant::now() + GATHER;
        while let Ok(Some(c)) = tokio::time::timeout_at(until, rx.recv()).await {
            seen.apply(c);
        }
        let routes = Arc::new(seen.routes());
        *certs.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }
}

/// Serve one fixed route until dropped: requests for `host` (any path) go to `endpoints`.
/// For benchmarks, which measure the proxy without a cluster around it.
pub async fn serve_fixed(addr: SocketAddr, host: &str, endpoints: Vec<SocketAddr>) {
    let ingress: Ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "bench", "name": "bench"},
        "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "bench", "port": {"number": 80}}}}]}}]},
    }))
    .expect("a valid Ingress");
    let table = Table::build([&ingress]);
    let routes = Routes {
        endpoints: table
            .targets()
            .into_iter()
            .map(|t| (t.clone(), endpoints.clone()))
            .collect(),
        table,
    };
    let certs = Arc::new(Certificates::default());
    *certs.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    accept(addr, None, certs).await
}

/// A listener on `addr`; asked for every IPv4 address, one socket for every address of both
/// families when the node has IPv6 (IPv4 clients then arrive as mapped addresses).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    if addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        let both = || -> std::io::Result<TcpListener> {
            let s = tokio::net::TcpSocket::new_v6()?;
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6V6Only, &false)
                .map_err(std::io::Error::from)?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                addr.port(),
            ))?;
            s.listen(1024)
        };
        if let Ok(l) = both() {
            return Ok(l);
        }
    }
    let s = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

/// Serve `addr` until dropped; a port that cannot be had is reported and left alone.
async fn accept(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    certs: Arc<Certificates>,
) {
    let listener = match listen(addr) {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot listen for Ingress traffic");
            return;
        }
    };
    info!(addr = %listener.local_addr().unwrap_or(addr), tls = tls.is_some(), "serving Ingresses");
    loop {
        let (stream, mut peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accepting an Ingress connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // An IPv4 client of the dual-stack socket is named by its IPv4 address.
        peer.set_ip(peer.ip().to_canonical());
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let certs = certs.clone();
        tokio::spawn(async move {
            let https = tls.is_some();
            let service = hyper::service::service_fn(move |req| {
                let certs = certs.clone();
                async move { Ok::<_, Infallible>(handle(req, peer, https, &certs).await) }
            });
            // HTTP/1.1 or HTTP/2 (by ALPN over TLS, by its preface in the clear).
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let _ = builder
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(s), service)
                        .await;
                }
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(
                            hyper_util::rt::TokioIo::new(stream),
                            service,
                        )
                        .await;
                }
            }
        });
    }
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// Connections to backends, kept open between requests (per endpoint).
fn backends() -> &'static hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    ProxyBody,
> {
    static CLIENT: std::sync::LazyLock<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            ProxyBody,
        >,
    > = std::sync::LazyLock::new(|| {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector)
    });
    &CLIENT
}

fn plain(status: StatusCode, text: &str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(format!("{text}\n")))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a plain response")
}

/// Hop-by-hop headers, which one connection's ends keep to themselves.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
];

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    https: bool,
    certs: &Certificates,
) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri().host())
        .unwrap_or("")
        .to_string();
    let routes = certs
        .routes
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(target) = routes.table.route(&host, req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    let endpoints = routes.endpoints.get(target).cloned().unwrap_or_default();
    if endpoints.is_empty() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoints");
    }
    // An upgrade keeps its Connection and Upgrade headers; everything else hop-by-hop goes.
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    if let Some(u) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }
    forwarded(&mut parts.headers, peer.ip(), https, &host);
    // Backends are spoken to in HTTP/1.1, which needs a Host header (HTTP/2 has :authority).
    parts.version = http::Version::HTTP_11;
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    // A request without a body can be sent again when its connect fails; one with a body
    // cannot (its body is read as it is sent), so it gets one endpoint. (Asked of the body:
    // the framing headers are gone by now.)
    let bodyless = hyper::body::Body::is_end_stream(&body);
    let attempts = if bodyless {
        endpoints.len().min(ATTEMPTS)
    } else {
        1
    };
    let mut body = Some(body.boxed());
    // Try endpoints from a random start; only a failed connect moves on.
    let start = fastrand::usize(..endpoints.len());
    let mut answer = None;
    for i in 0..attempts {
        let ep = endpoints[(start + i) % endpoints.len()];
        let mut out = Request::new(body.take().unwrap_or_else(empty));
        *out.method_mut() = parts.method.clone();
        *out.headers_mut() = parts.headers.clone();
        *out.version_mut() = http::Version::HTTP_11;
        *out.uri_mut() = match format!("http://{ep}{path}").parse() {
            Ok(u) => u,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "400 bad request"),
        };
        match backends().request(out).await {
            Ok(r) => {
                answer = Some(r);
                break;
            }
            Err(e) if e.is_connect() => {
                debug!(endpoint = %ep, error = %e, "ingress backend unreachable; trying another")
            }
            Err(e) => {
                debug!(endpoint = %ep, error = %e, "ingress backend request failed");
                break;
            }
        }
    }
    let Some(mut resp) = answer else {
        return plain(StatusCode::BAD_GATEWAY, "502 bad gateway");
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(b)) = (client_upgrade.await, backend_upgrade.await) {
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut b = hyper_util::rt::TokioIo::new(b);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    Response::from_parts(parts, body.boxed())
}

/// `X-Forwarded-For` (appended to), `-Proto` and `-Host`, as ingress controllers set them.
fn forwarded(headers: &mut http::HeaderMap, client: IpAddr, https: bool, host: &str) {
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) if !before.is_empty() => format!("{before}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(host) {
        headers.insert("x-forwarded-host", v);
    }
}
