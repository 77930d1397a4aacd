//! HTTPS: TLS with HTTP/1.1 only (kubectl switches to HTTP/2 when offered it), authentication
//! by a client certificate the cluster CA signed or by a bearer token, authorization before the
//! body is read, and request bodies read with a size limit before they reach the handler.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use crate::auth::{Authenticator, CertificateUser};
use crate::body::Body;
use crate::errors::ApiError;
use crate::server::{ApiServer, Reply};

/// Bodies past the limit are still read (and dropped) up to this size, so that the client
/// gets the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A TLS configuration that serves `chain`, offers only HTTP/1.1, and accepts client
/// certificates signed by `client_ca` (a client without one may still bring a token).
pub fn tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Vec<CertificateDer<'static>>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in client_ca {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accept connections until `shutdown` turns true.
pub async fn serve(
    api: Arc<ApiServer>,
    listener: Arc<TcpListener>,
    tls: Arc<ServerConfig>,
    auth: Arc<Authenticator>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving the Kubernetes API");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the connection limits the connection is closed at once: its file
                // descriptor is free again and nothing of it is held.
                let Some(slot) = api.limits.connect(peer.ip()) else {
                    debug!(%peer, "connection refused: too many connections");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let api = api.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    // The TLS layer verified the certificate against the cluster CA.
                    let cert_user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|c| CertificateUser::from_der(c.as_ref()))
                        .map(Arc::new);
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let api = api.clone();
                        let auth = auth.clone();
                        let cert_user = cert_user.clone();
                        async move {
                            Ok::<_, Infallible>(handle(&api, &auth, cert_user, peer.ip(), req).await)
                        }
                    });
                    let conn = http1::Builder::new()
                        .keep_alive(true)
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades();
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

async fn handle(
    api: &ApiServer,
    auth: &Authenticator,
    cert_user: Option<Arc<CertificateUser>>,
    source: std::net::IpAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let received = jiff::Timestamp::now();
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Every answer, refusals included, goes to the audit log when there is one.
    let audit = |user: Option<&api::rbac::UserInfo>,
                 acting: Option<&api::rbac::UserInfo>,
                 allowed: Option<bool>,
                 request: Option<&Bytes>,
                 resp: &Response<Body>| {
        let Some(log) = &api.audit else { return };
        let response = (log.level() == crate::audit::Level::RequestResponse)
            .then(|| resp.body().whole())
            .flatten();
        log.log(&crate::audit::Record {
            method: &method,
            uri: &uri,
            user_agent: user_agent.as_deref(),
            source,
            impersonated: acting.filter(|a| user.is_some_and(|u| u != *a)),
            user,
            code: resp.status().as_u16(),
            allowed,
            request_body: request,
            response_body: response.as_ref(),
            received,
            streaming: crate::limits::long_running(&method, &uri, api.cache.registry()),
            registry: api.cache.registry(),
        });
    };
    // Who asks, and whether they may, is settled before a byte of the body is read.
    let who = match auth.authenticate(req.headers(), cert_user.as_deref()) {
        Ok(who) => who,
        Err(e) => {
            let resp = api.refuse(&req, e);
            audit(None, None, None, None, &resp);
            return resp;
        }
    };
    let caller = who.user.clone();
    let who = match api.authorize(req.method(), req.uri(), req.headers(), who) {
        Ok(who) => who,
        Err(e) => {
            let resp = api.refuse(&req, e);
            audit(Some(&caller), None, Some(false), None, &resp);
            return resp;
        }
    };
    let acting = who.user.clone();
    let privileged = who.user.in_group(api::rbac::MASTERS);
    let _in_flight =
        match api
            .limits
            .admit(req.method(), req.uri(), privileged, api.cache.registry())
        {
            Ok(permit) => permit,
            Err(e) => {
                let resp = api.refuse(&req, e);
                audit(Some(&caller), Some(&acting), Some(true), None, &resp);
                return resp;
            }
        };
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        api.config.body_timeout,
        read_body(body, api.config.max_body_bytes),
    );
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let resp = error_response(e);
            audit(Some(&caller), Some(&acting), Some(true), None, &resp);
            return resp;
        }
        Err(_) => {
            let resp = error_response(ApiError::timeout(format!(
                "the request body did not arrive within {}s",
                api.config.body_timeout.as_secs()
            )));
            audit(Some(&caller), Some(&acting), Some(true), None, &resp);
            return resp;
        }
    };
    let logged_body = api.audit.is_some().then(|| bytes.clone());
    // A panic in a handler is a 500 from `ApiServer::handle` itself.
    let resp = api
        .handle_authorized(Request::from_parts(parts, bytes), who)
        .await;
    audit(
        Some(&caller),
        Some(&acting),
        Some(true),
        logged_body.as_ref(),
        &resp,
    );
    resp
}

fn error_response(e: ApiError) -> Response<Body> {
    let reply = Reply::from(e);
    let mut resp = Response::new(reply.body);
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf.freeze())
}
