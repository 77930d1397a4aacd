//! The HTTPS transport: TLS to the API server, trusting only the cluster CA, with a bearer
//! token or a client certificate, over pooled HTTP/1.1 connections.

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
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{ClientError, ResponseBody, Transport};

pub struct HttpsTransport {
    base: Uri,
    token: Option<HeaderValue>,
    client: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
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
