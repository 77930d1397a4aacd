//! API aggregation (apiregistration.k8s.io/v1 APIService), kube-aggregator's part: every
//! group-version the server serves itself has a local APIService (as Kubernetes' autoregister
//! keeps them, `metrics.k8s.io` included); one backed by a Service is checked for
//! availability by asking its discovery, which is merged into this server's, and requests for
//! its group-version are proxied to it over HTTPS with the caller's identity in
//! `X-Remote-User`/`X-Remote-Group`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api::k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::auth::Identity;
use crate::errors::{ApiError, ApiResult};
use crate::server::{ApiServer, Reply};

/// How often Service-backed APIServices are checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the aggregator learned from the backends' discovery, by `version.group`.
#[derive(Default)]
pub(crate) struct Backends {
    /// A generation (bumped on every change) and each available backend's APIResourceList.
    inner: RwLock<(u64, BTreeMap<String, Value>)>,
}

impl Backends {
    pub(crate) fn generation(&self) -> u64 {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// The available backends' group, version and APIResourceList.
    pub(crate) fn lists(&self) -> Vec<(String, String, Value)> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.1.values()
            .filter_map(|list| {
                let gv = list["groupVersion"].as_str()?;
                let (group, version) = gv.split_once('/')?;
                Some((group.to_string(), version.to_string(), list.clone()))
            })
            .collect()
    }

    fn set(&self, name: &str, list: Option<Value>) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let changed = match &list {
            Some(l) => g.1.get(name) != Some(l),
            None => g.1.contains_key(name),
        };
        if changed {
            match list {
                Some(l) => g.1.insert(name.to_string(), l),
                None => g.1.remove(name),
            };
            g.0 += 1;
        }
    }
}

fn api_services() -> &'static api::Resource {
    api::resources::find("apiregistration.k8s.io", "v1", "apiservices")
        .expect("APIServices are served")
}

/// `v1.apps`, `v1.` for the core group.
/// The ConfigMap (in kube-system) aggregated servers read their front-proxy settings from.
const AUTHENTICATION_CONFIG: &str = "extension-apiserver-authentication";

/// A user-info extra key as a header name suffix: characters a header name cannot hold are
/// percent-encoded.
fn extra_key(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-!#$&'*+.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn service_name(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

impl ApiServer {
    /// The APIService that sends `group/version` to a Service, if there is one.
    pub(crate) fn aggregated(&self, group: &str, version: &str) -> Option<APIService> {
        let e = self
            .cache
            .resource(api_services())
            .get(&service_name(group, version))?;
        let s: APIService = serde_json::from_slice(&e.json).ok()?;
        s.spec.as_ref()?.service.as_ref()?;
        Some(s)
    }

    /// Send a request for an aggregated group-version to its Service.
    pub(crate) async fn proxy_aggregated(
        &self,
        svc: &APIService,
        req: Request<Bytes>,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let unavailable = |why: String| {
            ApiError::service_unavailable(format!(
                "the server is currently unable to handle the request ({name}: {why})"
            ))
        };
        // One found unavailable by its last check is not tried (as kube-aggregator does):
        // callers hear at once instead of after a connect timeout.
        let down = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Available" && c.status == "False");
        if down {
            return Err(unavailable("service unavailable".into()));
        }
        let (mut sender, driver) = tokio::time::timeout(CHECK_TIMEOUT, self.connect_backend(svc))
            .await
            .map_err(|_| unavailable("timed out connecting".into()))?
            .map_err(unavailable)?;
        let (mut parts, body) = req.into_parts();
        // The backend trusts the aggregator to say who asks (its front-proxy headers), not
        // the caller's own credentials.
        parts.headers.remove(header::AUTHORIZATION);
        // Nothing the caller sent may speak for who it is.
        let forged: Vec<header::HeaderName> = parts
            .headers
            .keys()
            .filter(|k| {
                let k = k.as_str();
                k.starts_with("x-remote-") || k.starts_with("impersonate-")
            })
            .cloned()
            .collect();
        for h in forged {
            parts.headers.remove(h);
        }
        if let Ok(v) = HeaderValue::from_str(&who.user.name) {
            parts.headers.insert("x-remote-user", v);
        }
        if let Ok(v) = HeaderValue::from_str(&who.user.uid) {
            parts.headers.insert("x-remote-uid", v);
        }
        for g in &who.user.groups {
            if let Ok(v) = HeaderValue::from_str(g) {
                parts.headers.append("x-remote-group", v);
            }
        }
        for (key, values) in &who.user.extra {
            // Header names are case-insensitive: keys are percent-encoded, as Kubernetes does.
            let name = format!("x-remote-extra-{}", extra_key(key));
            let Ok(name) = header::HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for v in values {
                if let Ok(v) = HeaderValue::from_str(v) {
                    parts.headers.append(name.clone(), v);
                }
            }
        }
        for h in [
            header::CONNECTION,
            header::UPGRADE,
            header::TE,
            header::TRAILER,
        ] {
            parts.headers.remove(h);
        }
        let out = Request::from_parts(parts, Full::new(body));
        let resp = sender
            .send_request(out)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(crate::proxy::stream_back(resp, driver))
    }

    /// An HTTP/1.1 connection over TLS to an APIService's Service, trusted by its caBundle
    /// (or not checked, with insecureSkipTLSVerify).
    async fn connect_backend(
        &self,
        svc: &APIService,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            supervise::AbortOnDrop,
        ),
        String,
    > {
        let spec = svc.spec.as_ref().ok_or("no spec")?;
        let s = spec.service.as_ref().ok_or("no service")?;
        let ns = s.namespace.as_deref().unwrap_or("");
        let name = s.name.as_deref().unwrap_or("");
        let (addr, server_name) =
            crate::webhooks::service_endpoint(&self.cache, ns, name, s.port.unwrap_or(443))?;
        // The server speaks for the caller with the front proxy's certificate.
        let me = self
            .config
            .front_proxy
            .as_ref()
            .map(crate::FrontProxy::client_cert);
        let tls = if spec.insecure_skip_tls_verify == Some(true) {
            crate::webhooks::tls_config_unverified(me)?
        } else {
            crate::webhooks::tls_config(spec.ca_bundle.as_ref().map(|b| b.0.as_slice()), me)?
        };
        let stream = tokio::time::timeout(CHECK_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let sni = rustls_pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| format!("bad server name {server_name:?}: {e}"))?;
        let tls_stream = tokio_rustls::TlsConnector::from(tls)
            .connect(sni, stream)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls_stream))
                .await
                .map_err(|e| e.to_string())?;
        let driver = supervise::AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Ok((sender, driver))
    }

    /// Ask a backend for its discovery of its group-version.
    async fn check_backend(&self, svc: &APIService) -> Result<Value, String> {
        let spec = svc.spec.as_ref().ok_or("no spec")?;
        let path = format!(
            "/apis/{}/{}",
            spec.group.as_deref().unwrap_or(""),
            spec.version.as_deref().unwrap_or("")
        );
        let ask = async {
            let (mut sender, _driver) = self.connect_backend(svc).await?;
            let req = Request::get(path.as_str())
                .header(header::ACCEPT, "application/json")
                .header("x-remote-user", "system:kube-aggregator")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), 8 << 20)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(format!(
                    "failing or missing response from {path}: bad status {status}"
                ));
            }
            serde_json::from_slice::<Value>(&bytes)
                .map_err(|e| format!("bad discovery document: {e}"))
        };
        tokio::time::timeout(CHECK_TIMEOUT, ask)
            .await
            .map_err(|_| "the discovery check timed out".to_string())?
    }

    /// Keep APIServices as kube-aggregator does, for as long as the task runs: local ones for
    /// what this server serves, and the availability of Service-backed ones.
    pub async fn run_aggregation(self: Arc<Self>) {
        loop {
            self.ensure_local().await;
            self.ensure_authentication_config().await;
            self.check_all().await;
            tokio::time::sleep(CHECK_EVERY).await;
        }
    }

    async fn internal(&self, method: Method, path: &str, body: &Value) -> ApiResult<()> {
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(
                header::CONTENT_TYPE,
                if method == Method::PATCH {
                    "application/merge-patch+json"
                } else {
                    "application/json"
                },
            )
            .body(Bytes::from(body.to_string()))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = self
            .handle(req, Identity::system("system:kube-aggregator"))
            .await;
        if resp.status().is_success() || resp.status() == StatusCode::CONFLICT {
            Ok(())
        } else {
            Err(ApiError::internal(format!(
                "{method} {path}: {}",
                resp.status()
            )))
        }
    }

    /// Keep `kube-system/extension-apiserver-authentication` saying how aggregated servers
    /// authenticate this server's requests: its client CA, and the front proxy's CA, name and
    /// headers (Kubernetes' requestheader options).
    async fn ensure_authentication_config(&self) {
        let Some(fp) = &self.config.front_proxy else {
            return;
        };
        let configmaps = api::resources::find("", "v1", "configmaps").expect("served");
        let data = json!({
            "client-ca-file": fp.client_ca_pem,
            "requestheader-client-ca-file": fp.ca_pem,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-uid-headers": "[\"X-Remote-Uid\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        });
        let current = self
            .cache
            .resource(configmaps)
            .get(&format!("kube-system/{AUTHENTICATION_CONFIG}"));
        let result = match current {
            Some(e) if e.value()["data"] == data => return,
            Some(_) => {
                self.internal(
                    Method::PATCH,
                    &format!("/api/v1/namespaces/kube-system/configmaps/{AUTHENTICATION_CONFIG}"),
                    &json!({"data": data}),
                )
                .await
            }
            None => {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": AUTHENTICATION_CONFIG, "namespace": "kube-system"},
                    "data": data});
                self.internal(
                    Method::POST,
                    "/api/v1/namespaces/kube-system/configmaps",
                    &body,
                )
                .await
            }
        };
        if let Err(e) = result {
            debug!(error = %e.message, "writing the aggregated servers' authentication ConfigMap");
        }
    }

    async fn ensure_local(&self) {
        let rc = self.cache.resource(api_services());
        let registry = self.cache.registry().clone();
        let mut wanted: Vec<(String, String)> = registry
            .groups()
            .into_iter()
            .flat_map(|(g, vs)| vs.into_iter().map(move |v| (g.to_string(), v.to_string())))
            .collect();
        wanted.push((crate::metrics::GROUP.into(), crate::metrics::VERSION.into()));
        for (group, versions) in crate::auth::Review::groups() {
            let _ = versions;
            if !wanted.iter().any(|(g, _)| g == group) {
                wanted.push((group.to_string(), "v1".into()));
            }
        }
        for (group, version) in wanted {
            let name = service_name(&group, &version);
            if rc.get(&name).is_some() {
                continue;
            }
            let custom = registry.custom_resources().iter().any(|r| r.group == group);
            let (group_min, version_prio) = if custom { (1000, 100) } else { (18000, 15) };
            let mut spec = json!({"version": version, "groupPriorityMinimum": group_min,
                                  "versionPriority": version_prio});
            if !group.is_empty() {
                spec["group"] = json!(group);
            }
            let body = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                              "metadata": {"name": name, "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
                              "spec": spec});
            if let Err(e) = self
                .internal(
                    Method::POST,
                    "/apis/apiregistration.k8s.io/v1/apiservices",
                    &body,
                )
                .await
            {
                debug!(apiservice = name, error = %e.message, "creating a local APIService");
                continue;
            }
            let status = json!({"status": {"conditions": [{
                "type": "Available", "status": "True", "reason": "Local",
                "message": "Local APIServices are always available",
                "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]}});
            let _ = self
                .internal(
                    Method::PATCH,
                    &format!("/apis/apiregistration.k8s.io/v1/apiservices/{name}/status"),
                    &status,
                )
                .await;
        }
    }

    async fn check_all(&self) {
        let services: Vec<APIService> = self
            .cache
            .resource(api_services())
            .snapshot(self.cache.synced())
            .items
            .values()
            .filter_map(|e| serde_json::from_slice(&e.json).ok())
            .collect();
        let mut seen = Vec::new();
        for svc in services {
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            if spec.service.is_none() {
                continue;
            }
            let name = svc.metadata.name.clone().unwrap_or_default();
            seen.push(name.clone());
            let (ok, reason, message) = match self.check_backend(&svc).await {
                Ok(list) => {
                    self.aggregated_backends.set(&name, Some(list));
                    (true, "Passed", "all checks passed".to_string())
                }
                Err(e) => {
                    self.aggregated_backends.set(&name, None);
                    let reason = if e.contains("not found") {
                        "ServiceNotFound"
                    } else if e.contains("no endpoints") || e.contains("endpoints") {
                        "MissingEndpoints"
                    } else {
                        "FailedDiscoveryCheck"
                    };
                    (false, reason, e)
                }
            };
            let current = svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"))
                .map(|c| {
                    (
                        c.status.clone(),
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                });
            let want = (
                if ok { "True" } else { "False" }.to_string(),
                reason.to_string(),
                message.clone(),
            );
            if current.as_ref() == Some(&want) {
                continue;
            }
            if ok {
                info!(apiservice = name, "aggregated API available");
            } else {
                warn!(apiservice = name, reason, error = %message, "aggregated API unavailable");
            }
            let status = json!({"status": {"conditions": [{
                "type": "Available", "status": want.0, "reason": reason, "message": message,
                "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}]}});
            let _ = self
                .internal(
                    Method::PATCH,
                    &format!("/apis/apiregistration.k8s.io/v1/apiservices/{name}/status"),
                    &status,
                )
                .await;
        }
        // Backends whose APIService went away leave discovery.
        let gone: Vec<String> = self
            .aggregated_backends
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in gone {
            self.aggregated_backends.set(&k, None);
        }
    }
}
