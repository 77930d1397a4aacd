//! The HTTPS transport: TLS to the API server, trusting only the cluster CA, with a bearer
//! token, over pooled HTTP/1.1 connections.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::{ClientError, ResponseBody, Transport};

pub struct HttpsTransport {
    base: Uri,
    token: Option<HeaderValue>,
    client: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpsTransport {
    /// Connect to `server` (`https://host:port`), trusting the PEM certificates in `ca_pem`.
    pub fn new(
        server: &str,
        ca_pem: &[u8],
        token: Option<&str>,
    ) -> Result<HttpsTransport, ClientError> {
        let base: Uri = server
            .parse()
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
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        let token = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        Ok(HttpsTransport {
            base,
            token,
            client,
        })
    }
}

#[async_trait]
impl Transport for HttpsTransport {
    async fn send(&self, req: Request<Bytes>) -> Result<http::Response<ResponseBody>, ClientError> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = format!("{}{}", self.base.to_string().trim_end_matches('/'), path);
        parts.uri = uri
            .parse()
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        if let Some(t) = &self.token {
            parts.headers.insert(http::header::AUTHORIZATION, t.clone());
        }
        let resp = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| ClientError::Transport(Box::new(e)))?;
        Ok(resp.map(|b| b.map_err(|e| Box::new(e) as crate::BoxError).boxed_unsync()))
    }
}
