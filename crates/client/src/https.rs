//! The HTTPS transport: TLS to the API server, trusting only the cluster CA, with a bearer
//! token or a client certificate, over pooled HTTP/1.1 connections; given several servers
//! (comma-separated), it fails over to the next one that can be reached.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{ClientError, ResponseBody, Transport};

pub struct HttpsTransport {
    /// Every server, in the order given: requests go to `current` and move on to the next
    /// one that answers when it cannot be reached (k3s's agent balancer does the same).
    bases: Vec<Uri>,
    current: std::sync::atomic::AtomicUsize,
    token: Option<HeaderValue>,
    client: HyperClient<hyper_rustls::HttpsConnector<Dialer>, Full<Bytes>>,
}

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is probed after this long, then every `KEEPALIVE_INTERVAL`, and dropped
/// after three unanswered probes: a watch to a server behind a partition ends in ~16 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// A connection whose sent data stays unacknowledged this long is dropped (TCP_USER_TIMEOUT):
/// a request on a pooled connection to a vanished peer fails in seconds, not after TCP's
/// quarter of an hour of retransmissions (the kubelet's lost-heartbeat problem).
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials the API server: hyper's connector with a connect timeout and keepalive, and every
/// connection given `USER_TIMEOUT`.
#[derive(Clone)]
pub struct Dialer(HttpConnector);

impl Dialer {
    fn new() -> Dialer {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(KEEPALIVE_IDLE));
        http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
        http.set_keepalive_retries(Some(3));
        http.set_nodelay(true);
        Dialer(http)
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<Uri>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?;
            let ms = USER_TIMEOUT.as_millis() as libc::c_uint;
            // SAFETY: a plain setsockopt on the connection's own descriptor with a value that
            // outlives the call; failing leaves the kernel's default, which is only slower.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(stream.inner()),
                    libc::IPPROTO_TCP,
                    libc::TCP_USER_TIMEOUT,
                    (&ms as *const libc::c_uint).cast(),
                    std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
                );
            }
            Ok(stream)
        })
    }
}

/// How the transport proves who it is.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// Nothing: the server sees `system:anonymous`.
    Anonymous,
    /// A bearer token.
    Token(&'a str),
    /// A client certificate (chain first) and its key, both PEM.
    Certificate {
        chain_pem: &'a [u8],
        key_pem: &'a [u8],
    },
}

fn transport_error(e: impl std::error::Error + Send + Sync + 'static) -> ClientError {
    ClientError::Transport(Box::new(e))
}

impl HttpsTransport {
    /// Connect to `server` (`https://host:port`) with a bearer token, trusting the PEM
    /// certificates in `ca_pem`.
    pub fn new(
        server: &str,
        ca_pem: &[u8],
        token: Option<&str>,
    ) -> Result<HttpsTransport, ClientError> {
        let credential = match token {
            Some(t) => Credential::Token(t),
            None => Credential::Anonymous,
        };
        HttpsTransport::with_credential(server, ca_pem, credential)
    }

    /// Connect to `server`, trusting the PEM certificates in `ca_pem`, as `credential`.
    pub fn with_credential(
        server: &str,
        ca_pem: &[u8],
        credential: Credential<'_>,
    ) -> Result<HttpsTransport, ClientError> {
        let bases = server
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').parse::<Uri>())
            .collect::<Result<Vec<Uri>, _>>()
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Transport(Box::new(e)))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Transport(Box::new(e)))?;
        }
        // hyper-rustls sets ALPN itself (http/1.1 only, as enabled below).
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Transport(Box::new(e)))?
        .with_root_certificates(roots);
        let tls = match credential {
            Credential::Certificate { chain_pem, key_pem } => {
                let chain = CertificateDer::pem_slice_iter(chain_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(transport_error)?;
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(transport_error)?;
                tls.with_client_auth_cert(chain, key)
                    .map_err(transport_error)?
            }
            Credential::Anonymous | Credential::Token(_) => tls.with_no_client_auth(),
        };
        let token = match credential {
            Credential::Token(t) => Some(t),
            _ => None,
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(Dialer::new());
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        let token = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        Ok(HttpsTransport {
            bases,
            current: Default::default(),
            token,
            client,
        })
    }
}

/// Whether a request only reads, so that sending it twice does no harm.
fn reads_only(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD)
}

#[async_trait]
impl Transport for HttpsTransport {
    async fn send(&self, req: Request<Bytes>) -> Result<http::Response<ResponseBody>, ClientError> {
        use std::sync::atomic::Ordering;
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        if let Some(t) = &self.token {
            parts.headers.insert(http::header::AUTHORIZATION, t.clone());
        }
        let first = self.current.load(Ordering::Relaxed);
        let mut tried = 0;
        loop {
            let at = (first + tried) % self.bases.len();
            let uri = format!("{}{path}", self.bases[at].to_string().trim_end_matches('/'));
            let mut out = Request::new(Full::new(body.clone()));
            *out.method_mut() = parts.method.clone();
            *out.version_mut() = parts.version;
            *out.headers_mut() = parts.headers.clone();
            *out.uri_mut() = uri
                .parse()
                .map_err(|e| ClientError::Transport(Box::new(e)))?;
            match self.client.request(out).await {
                Ok(resp) => {
                    if tried > 0 {
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(
                        resp.map(|b| b.map_err(|e| Box::new(e) as crate::BoxError).boxed_unsync())
                    );
                }
                // Not even connected, the request never left: the next server may have it.
                // A read may go there whatever became of it.
                Err(e)
                    if (e.is_connect() || reads_only(&parts.method))
                        && tried + 1 < self.bases.len() =>
                {
                    tried += 1
                }
                Err(e) => {
                    // Whatever became of this request, the next one tries another server.
                    if self.bases.len() > 1 {
                        self.current
                            .store((at + 1) % self.bases.len(), Ordering::Relaxed);
                    }
                    return Err(ClientError::Transport(Box::new(e)));
                }
            }
        }
    }
}
