//! An admission webhook server as a kube-rs user writes one, run in a pod by the end-to-end
//! tests: HTTPS on :8443 with the certificate and key in /tls (a Secret), answering
//! AdmissionReviews with kube's admission types (`TLS_DIR` moves /tls). `/validate` refuses objects labelled
//! `deny=yes`; `/mutate` adds the label `mutated=yes`. It also serves a small aggregated API
//! (`demo.berth.example.com/v1` greetings) for an APIService, trusting the aggregator's
//! `X-Remote-User` only from a client certificate signed by the front proxy CA in
//! /front-proxy/ca.crt (`requestheader-client-ca-file` of the cluster's
//! `extension-apiserver-authentication` ConfigMap), as Kubernetes' aggregated servers do.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

fn answer(path: &str, body: &[u8]) -> Result<Vec<u8>> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let req: AdmissionRequest<DynamicObject> = review.try_into()?;
    let labels = req
        .object
        .as_ref()
        .and_then(|o| o.metadata.labels.clone())
        .unwrap_or_default();
    let mut resp = AdmissionResponse::from(&req);
    match path {
        "/validate" if labels.get("deny").map(String::as_str) == Some("yes") => {
            resp = resp.deny("refused by the in-cluster webhook");
        }
        "/mutate" => {
            let mut ops = Vec::new();
            if labels.is_empty() {
                ops.push(serde_json::json!({"op": "add", "path": "/metadata/labels", "value": {}}));
            }
            ops.push(serde_json::json!({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}));
            let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
            resp = resp.with_patch(patch)?;
        }
        _ => {}
    }
    Ok(serde_json::to_vec(&resp.into_review())?)
}

const GROUP_VERSION: &str = "demo.berth.example.com/v1";

/// The aggregated API it also serves: `greetings` that say who asked (the aggregator's
/// `X-Remote-User`).
fn aggregated(path: &str, user: &str) -> Option<serde_json::Value> {
    let rest = path.strip_prefix(&format!("/apis/{GROUP_VERSION}"))?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let greeting = |ns: &str, name: &str| {
        serde_json::json!({"kind": "Greeting", "apiVersion": GROUP_VERSION,
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"user": user}})
    };
    match parts.as_slice() {
        [] => Some(
            serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            "resources": [{"name": "greetings", "singularName": "greeting", "namespaced": true,
                           "kind": "Greeting", "verbs": ["get", "list"]}]}),
        ),
        ["namespaces", ns, "greetings"] => Some(serde_json::json!({"kind": "GreetingList",
            "apiVersion": GROUP_VERSION, "metadata": {}, "items": [greeting(ns, "hello")]})),
        ["namespaces", ns, "greetings", name] => Some(greeting(ns, name)),
        _ => None,
    }
}

async fn serve(
    req: Request<Incoming>,
    front_proxy: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::GET {
        // Who asked, if the front proxy's certificate vouches for the header.
        let user = req
            .headers()
            .get("x-remote-user")
            .filter(|_| front_proxy)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        return Ok(match aggregated(&path, &user) {
            Some(v) => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .expect("a response"),
            None => Response::builder()
                .status(404)
                .body(Full::default())
                .expect("a response"),
        });
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(Response::builder()
                .status(400)
                .body(Full::default())
                .expect("a response"))
        }
    };
    Ok(match answer(&path, &body) {
        Ok(out) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(out)))
            .expect("a response"),
        Err(e) => Response::builder()
            .status(400)
            .body(Full::new(Bytes::from(e.to_string())))
            .expect("a response"),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let dir = std::env::var("TLS_DIR").unwrap_or_else(|_| "/tls".into());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{dir}/tls.crt"))
            .context("reading tls.crt")?
            .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/tls.key")).context("reading tls.key")?;
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(iter) = CertificateDer::pem_file_iter("/front-proxy/ca.crt") {
        for c in iter {
            roots.add(c?)?;
        }
    }
    let builder = rustls::ServerConfig::builder();
    let config = if roots.is_empty() {
        builder.with_no_client_auth().with_single_cert(certs, key)?
    } else {
        // Admission reviews come without a client certificate; aggregated requests with one.
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()?;
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?
    };
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("0.0.0.0:8443").await?;
    println!("kube-rs-webhook: listening on :8443");
    loop {
        let (stream, _) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            // Verified against the front proxy CA when one was presented.
            let front_proxy = tls.get_ref().1.peer_certificates().is_some();
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper::service::service_fn(move |req| serve(req, front_proxy)),
                )
                .await;
        });
    }
}
