//! The node's HTTPS endpoint, in the kubelet's port-10250 role: an API server in another
//! process or on another machine reaches this node's [`NodeServer`] (logs, exec, attach,
//! port-forward, usage) here. A client must present a certificate the cluster CA signed; each
//! request is then authorized as the kubelet authorizes it, by a SubjectAccessReview of the
//! certificate's user on the `nodes/<subresource>` its path maps to, the answer kept for five
//! minutes when it allows and thirty seconds when it refuses (the kubelet's cache times).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::Client;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::server::{NodeBody, NodeServer};

const ALLOWED_FOR: Duration = Duration::from_secs(300);
const REFUSED_FOR: Duration = Duration::from_secs(30);
/// Requests to the endpoint carry no real body (exec and port-forward upgrade the connection).
const MAX_BODY: usize = 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate the endpoint serves; a renewed one replaces it without a restart.
#[derive(Debug)]
pub struct ServingCert(RwLock<Arc<CertifiedKey>>);

impl ServingCert {
    /// From a PEM holding the certificate (then its chain) and its key.
    pub fn from_pem(pem: &str) -> Result<ServingCert, String> {
        Ok(ServingCert(RwLock::new(certified(pem)?)))
    }

    pub fn replace(&self, pem: &str) -> Result<(), String> {
        let new = certified(pem)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

fn certified(pem: &str) -> Result<Arc<CertifiedKey>, String> {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the serving certificate: {e}"))?;
    if chain.is_empty() {
        return Err("the serving certificate file holds no certificate".into());
    }
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the serving key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| format!("the serving certificate: {e}"))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// TLS that serves `cert` and requires a client certificate signed by the CA in `ca_pem`.
pub fn tls_config(
    ca_pem: &[u8],
    cert: Arc<ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| format!("the cluster CA: {e}"))?)
            .map_err(|e| format!("the cluster CA: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("the cluster CA: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who a client certificate names: the common name is the user, organizations the groups.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Caller {
    user: String,
    groups: Vec<String>,
}

impl Caller {
    fn from_der(der: &[u8]) -> Option<Caller> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let user = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(Caller { user, groups })
    }
}

/// The `nodes` subresource and verb a request needs, as the kubelet maps them.
fn attributes(method: &Method, path: &str) -> (&'static str, &'static str) {
    let sub = if path == "/stats" || path.starts_with("/stats/") {
        "stats"
    } else if path == "/metrics" || path.starts_with("/metrics/") {
        "metrics"
    } else if path == "/logs" || path.starts_with("/logs/") {
        "log"
    } else {
        "proxy"
    };
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    };
    (sub, verb)
}

/// The endpoint's state: the node server, and the authorization decisions it keeps.
pub struct Endpoint {
    server: NodeServer,
    client: Client,
    node: String,
    decisions: Mutex<HashMap<Question, (bool, Instant)>>,
}

/// Who asks for which subresource with which verb.
type Question = (Caller, &'static str, &'static str);

impl Endpoint {
    pub fn new(server: NodeServer, client: Client, node: &str) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            server,
            client,
            node: node.to_string(),
            decisions: Mutex::default(),
        })
    }

    async fn allowed(&self, caller: &Caller, sub: &'static str, verb: &'static str) -> bool {
        let key = (caller.clone(), sub, verb);
        {
            let mut d = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((allowed, at)) = d.get(&key) {
                let keep = if *allowed { ALLOWED_FOR } else { REFUSED_FOR };
                if at.elapsed() < keep {
                    return *allowed;
                }
            }
            // Forget what has lapsed, so the map stays as small as its callers.
            d.retain(|_, (a, at)| at.elapsed() < if *a { ALLOWED_FOR } else { REFUSED_FOR });
        }
        let review = json!({
            "user": caller.user, "groups": caller.groups,
            "resourceAttributes": {"verb": verb, "version": "v1", "resource": "nodes",
                                   "subresource": sub, "name": self.node},
        });
        let allowed = match self.client.access_allowed(review).await {
            Ok(allowed) => allowed,
            Err(e) => {
                // Not remembered: the next request asks again.
                warn!(error = %e, "could not review a request to the node endpoint");
                return false;
            }
        };
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (allowed, Instant::now()));
        allowed
    }

    async fn handle(
        &self,
        caller: Option<&Caller>,
        req: Request<Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let (sub, verb) = attributes(req.method(), req.uri().path());
        let Some(caller) = caller else {
            return plain(StatusCode::UNAUTHORIZED, "Unauthorized".into());
        };
        if !self.allowed(caller, sub, verb).await {
            return plain(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
                    caller.user
                ),
            );
        }
        // The upgrade handle travels in the request's extensions, so exec and port-forward
        // take over this connection as they do the API server's.
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large".into()),
        };
        let resp = self.server.handle(Request::from_parts(parts, body)).await;
        resp.map(|b| match b {
            NodeBody::Full(b) => Full::new(b).boxed(),
            NodeBody::Stream(rx) => {
                StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
                }))
                .boxed()
            }
        })
    }
}

fn plain(code: StatusCode, text: String) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text)).boxed())
        .expect("a valid response")
}

/// Serve the endpoint on `listener` for as long as the task runs.
pub async fn serve(listener: Arc<TcpListener>, tls: Arc<rustls::ServerConfig>, ep: Arc<Endpoint>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the node endpoint");
    }
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, ep) = (acceptor.clone(), ep.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake with the node endpoint failed");
                    return;
                }
                Err(_) => return,
            };
            let caller = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| Caller::from_der(c.as_ref()))
                .map(Arc::new);
            let svc = service_fn(move |req| {
                let (ep, caller) = (ep.clone(), caller.clone());
                async move { Ok::<_, Infallible>(ep.handle(caller.as_deref(), req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "node endpoint connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        assert_eq!(attributes(&Method::GET, "/stats/summary"), ("stats", "get"));
        assert_eq!(
            attributes(&Method::GET, "/metrics/cadvisor"),
            ("metrics", "get")
        );
        assert_eq!(attributes(&Method::GET, "/logs/syslog"), ("log", "get"));
        assert_eq!(
            attributes(&Method::POST, "/exec/default/p/uid/c"),
            ("proxy", "create")
        );
        assert_eq!(
            attributes(&Method::GET, "/log/default/p/uid/c"),
            ("proxy", "get")
        );
        assert_eq!(attributes(&Method::GET, "/statsx"), ("proxy", "get"));
    }
}
