//! Admission webhooks (admissionregistration.k8s.io/v1): on each write, the configured
//! mutating webhooks are called in order with an `AdmissionReview` (and may answer a JSON
//! patch), then the validating ones; a webhook is chosen by its rules (operations, groups,
//! versions, resources and subresources, scope), its namespace and object selectors and its
//! CEL `matchConditions`, reached over HTTPS at a URL or through a Service, trusted by its
//! `caBundle`, bounded by `timeoutSeconds`, and when it cannot be reached its
//! `failurePolicy` decides. Writes of webhook configurations themselves are never sent to
//! webhooks, so a broken webhook cannot lock its own fix out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::Resource;
use api::k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use api::k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use api::rbac::UserInfo;
use api::selector::LabelSelectorExpr;
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};
use tracing::warn;

use crate::cache::Cache;
use crate::errors::{ApiError, ApiResult};
use crate::server::ApiServer;

/// The most of a webhook's answer that is read.
const MAX_RESPONSE: usize = 3 << 20;
const DEFAULT_TIMEOUT: u64 = 10;

/// What admission is asked about.
pub(crate) struct Call<'a> {
    pub resource: &'static Resource,
    pub subresource: Option<&'a str>,
    /// `CREATE`, `UPDATE`, `DELETE`.
    pub operation: &'static str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub object: Option<&'a Value>,
    pub old: Option<&'a Value>,
    pub user: &'a UserInfo,
    pub dry_run: bool,
}

/// One webhook of either kind, as far as choosing and calling it goes.
struct Hook {
    name: String,
    client: WebhookClientConfig,
    rules: Vec<RuleWithOperations>,
    failure_ignore: bool,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    match_conditions: Vec<MatchCondition>,
    timeout: Duration,
    reinvoke: bool,
}

impl From<MutatingWebhook> for Hook {
    fn from(w: MutatingWebhook) -> Hook {
        Hook {
            name: w.name,
            client: w.client_config,
            rules: w.rules.unwrap_or_default(),
            failure_ignore: w.failure_policy.as_deref() == Some("Ignore"),
            namespace_selector: w.namespace_selector,
            object_selector: w.object_selector,
            match_conditions: w.match_conditions.unwrap_or_default(),
            timeout: Duration::from_secs(
                w.timeout_seconds
                    .map_or(DEFAULT_TIMEOUT, |t| t.clamp(1, 30) as u64),
            ),
            reinvoke: w.reinvocation_policy.as_deref() == Some("IfNeeded"),
        }
    }
}

impl From<ValidatingWebhook> for Hook {
    fn from(w: ValidatingWebhook) -> Hook {
        Hook {
            name: w.name,
            client: w.client_config,
            rules: w.rules.unwrap_or_default(),
            failure_ignore: w.failure_policy.as_deref() == Some("Ignore"),
            namespace_selector: w.namespace_selector,
            object_selector: w.object_selector,
            match_conditions: w.match_conditions.unwrap_or_default(),
            timeout: Duration::from_secs(
                w.timeout_seconds
                    .map_or(DEFAULT_TIMEOUT, |t| t.clamp(1, 30) as u64),
            ),
            reinvoke: false,
        }
    }
}

/// Whether a rule's list names `value` (or everything, with `*`).
fn names(list: &Option<Vec<String>>, value: &str) -> bool {
    list.iter().flatten().any(|x| x == "*" || x == value)
}

/// Whether one of `rules` covers the call (`resources` entries are `plural`, `plural/sub`,
/// `*`, `*/sub`, `plural/*` or `*/*`).
pub(crate) fn rules_match(rules: &[RuleWithOperations], c: &Call<'_>) -> bool {
    let r = c.resource;
    let asked = match c.subresource {
        Some(sub) => format!("{}/{sub}", r.plural),
        None => r.plural.to_string(),
    };
    rules.iter().any(|rule| {
        let scope_ok = match rule.scope.as_deref().unwrap_or("*") {
            "Cluster" => !r.namespaced,
            "Namespaced" => r.namespaced,
            _ => true,
        };
        let resource_ok = rule.resources.iter().flatten().any(|x| {
            let (xr, xs) = x
                .split_once('/')
                .map_or((x.as_str(), None), |(a, b)| (a, Some(b)));
            let (ar, asub) = asked
                .split_once('/')
                .map_or((asked.as_str(), None), |(a, b)| (a, Some(b)));
            (xr == "*" || xr == ar)
                && match (xs, asub) {
                    (None, None) => true,
                    (Some("*"), Some(_)) => true,
                    (Some(s), Some(a)) => s == a,
                    _ => false,
                }
        });
        scope_ok
            && resource_ok
            && names(&rule.operations, c.operation)
            && names(&rule.api_groups, r.group)
            && names(&rule.api_versions, r.version)
    })
}

pub(crate) fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(|o| o["metadata"]["labels"].as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an admission selector selects `labels`; one left out selects everything (as the
/// `{}` Kubernetes defaults it to).
pub(crate) fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else {
        return true;
    };
    match LabelSelectorExpr::from_object(Some(sel)) {
        Ok(expr) => expr.matches(labels),
        // An unusable selector (refused when written) selects nothing.
        Err(_) => false,
    }
}

/// `CREATE` -> `CreateOptions`, as the review's `options` names them.
fn options_kind(op: &str) -> &'static str {
    match op {
        "CREATE" => "CreateOptions",
        "DELETE" => "DeleteOptions",
        _ => "UpdateOptions",
    }
}

impl ApiServer {
    /// Every admissionregistration.k8s.io object of `plural`, from the cache.
    pub(crate) fn configurations<K: serde::de::DeserializeOwned>(&self, plural: &str) -> Vec<K> {
        let r = api::resources::find("admissionregistration.k8s.io", "v1", plural)
            .expect("admission configurations are served");
        let snap = self.cache.resource(r).snapshot(self.cache.synced());
        snap.items
            .values()
            .filter_map(|e| serde_json::from_slice(&e.json).ok())
            .collect()
    }

    /// The webhooks of every configuration of `plural`, in the order of their
    /// configurations' names, then their order within.
    fn hooks<C, W>(&self, plural: &str, webhooks: fn(C) -> Option<Vec<W>>) -> Vec<Hook>
    where
        C: serde::de::DeserializeOwned + api::k8s_openapi::Metadata<Ty = ObjectMeta>,
        W: Into<Hook>,
    {
        let mut configs: Vec<C> = self.configurations(plural);
        configs.sort_by(|a, b| a.metadata().name.cmp(&b.metadata().name));
        configs
            .into_iter()
            .flat_map(|c| webhooks(c).unwrap_or_default())
            .map(Into::into)
            .collect()
    }

    fn mutating_hooks(&self) -> Vec<Hook> {
        self.hooks(
            "mutatingwebhookconfigurations",
            |c: MutatingWebhookConfiguration| c.webhooks,
        )
    }

    fn validating_hooks(&self) -> Vec<Hook> {
        self.hooks(
            "validatingwebhookconfigurations",
            |c: ValidatingWebhookConfiguration| c.webhooks,
        )
    }

    /// Whether `hook` is asked about `c`.
    fn chosen(&self, hook: &Hook, c: &Call<'_>) -> ApiResult<bool> {
        if !rules_match(&hook.rules, c) {
            return Ok(false);
        }
        let object = c.object.or(c.old);
        // The namespace selector reads the namespace's labels (a Namespace's own, for one);
        // cluster-scoped objects are not filtered by it.
        let ns_labels = if c.resource.kind == "Namespace" && c.resource.group.is_empty() {
            Some(labels_of(object))
        } else if c.resource.namespaced {
            let namespaces = api::resources::find("", "v1", "namespaces").expect("served");
            let ns = c.namespace.unwrap_or("");
            let entry = self.cache.resource(namespaces).get(ns);
            Some(entry.map(|e| e.labels.clone()).unwrap_or_default())
        } else {
            None
        };
        if let Some(labels) = ns_labels
            && !selects(hook.namespace_selector.as_ref(), &labels)
        {
            return Ok(false);
        }
        let obj_labels = labels_of(object);
        let old_labels = labels_of(c.old);
        let selected = selects(hook.object_selector.as_ref(), &obj_labels)
            || (c.old.is_some() && selects(hook.object_selector.as_ref(), &old_labels));
        if !selected {
            return Ok(false);
        }
        for m in &hook.match_conditions {
            match api::custom::cel::evaluate_condition(
                &m.expression,
                c.object,
                c.old,
                &self.review_request(c, "")["request"],
            ) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) if hook.failure_ignore => {
                    warn!(webhook = %hook.name, error = %e, "a match condition failed; skipping the webhook");
                    return Ok(false);
                }
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "failed to evaluate match condition {:?} of webhook {:?}: {e}",
                        m.name, hook.name
                    )));
                }
            }
        }
        Ok(true)
    }

    /// The AdmissionReview sent about `c`.
    fn review_request(&self, c: &Call<'_>, uid: &str) -> Value {
        let r = c.resource;
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let gvr = json!({"group": r.group, "version": r.version, "resource": r.plural});
        let mut request = json!({
            "uid": uid,
            "kind": gvk, "resource": gvr,
            "requestKind": gvk, "requestResource": gvr,
            "name": c.name,
            "operation": c.operation,
            "userInfo": {"username": c.user.name, "uid": c.user.uid, "groups": c.user.groups},
            "object": c.object.cloned().unwrap_or(Value::Null),
            "oldObject": c.old.cloned().unwrap_or(Value::Null),
            "dryRun": c.dry_run,
            "options": {"kind": options_kind(c.operation), "apiVersion": "meta.k8s.io/v1"},
        });
        if let Some(sub) = c.subresource {
            request["subResource"] = json!(sub);
            request["requestSubResource"] = json!(sub);
        }
        if let Some(ns) = c.namespace.filter(|_| r.namespaced) {
            request["namespace"] = json!(ns);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }

    /// Call one webhook about `c`: its answer's `response`, or why it could not be had.
    async fn call_hook(&self, hook: &Hook, c: &Call<'_>) -> Result<Value, String> {
        let uid = uuid::Uuid::new_v4().to_string();
        let review = self.review_request(c, &uid);
        let call = post_review(&self.cache, &hook.client, &review);
        let answer = tokio::time::timeout(hook.timeout, call)
            .await
            .map_err(|_| "context deadline exceeded".to_string())??;
        let response = answer
            .get("response")
            .cloned()
            .ok_or("the webhook's answer has no response")?;
        if response["uid"].as_str() != Some(uid.as_str()) {
            return Err(format!(
                "expected response.uid={uid:?}, got {:?}",
                response["uid"].as_str().unwrap_or("")
            ));
        }
        Ok(response)
    }

    /// Run the mutating webhooks that choose `c` on `object`, in order (once more for those
    /// that ask to be called again after a later one changed the object). Returns whether
    /// the object changed, and the webhooks' warnings.
    pub(crate) async fn mutate_by_webhooks(
        &self,
        c: &Call<'_>,
        object: &mut Value,
    ) -> ApiResult<(bool, Vec<String>)> {
        if exempt(c.resource) {
            return Ok((false, Vec::new()));
        }
        let hooks = self.mutating_hooks();
        if hooks.is_empty() {
            return Ok((false, Vec::new()));
        }
        let mut changed = false;
        let mut warnings = Vec::new();
        let mut changed_after: Vec<bool> = vec![false; hooks.len()];
        for round in 0..2 {
            for (i, hook) in hooks.iter().enumerate() {
                if round == 1 && !(hook.reinvoke && changed_after[i]) {
                    continue;
                }
                let call = Call {
                    object: Some(&*object),
                    ..*c
                };
                if !self.chosen(hook, &call)? {
                    continue;
                }
                let response = match self.call_hook(hook, &call).await {
                    Ok(r) => r,
                    Err(e) if hook.failure_ignore => {
                        warn!(webhook = %hook.name, error = %e, "failed calling a webhook; its failure policy ignores it");
                        continue;
                    }
                    Err(e) => return Err(call_failed(&hook.name, &e)),
                };
                warnings.extend(strings(&response["warnings"]));
                if response["allowed"] != json!(true) {
                    return Err(denied(&hook.name, &response["status"]));
                }
                if let Some(raw) =
                    patch_bytes(&response["patch"]).map_err(|e| call_failed(&hook.name, &e))?
                {
                    if response["patchType"].as_str() != Some("JSONPatch") {
                        return Err(call_failed(
                            &hook.name,
                            "the webhook answered a patch that is not a JSONPatch",
                        ));
                    }
                    let patch: Value = serde_json::from_slice(&raw).map_err(|e| {
                        call_failed(&hook.name, &format!("the patch is not JSON: {e}"))
                    })?;
                    let patched = api::patch::json_patch(object, &patch).map_err(|e| {
                        call_failed(&hook.name, &format!("the patch does not apply: {e}"))
                    })?;
                    if patched != *object {
                        *object = patched;
                        changed = true;
                        // Those before it that asked to be called again after a change are.
                        for (j, flag) in changed_after.iter_mut().enumerate() {
                            if j != i {
                                *flag = true;
                            }
                        }
                    }
                }
            }
            if !hooks
                .iter()
                .enumerate()
                .any(|(i, h)| h.reinvoke && changed_after[i])
            {
                break;
            }
        }
        Ok((changed, warnings))
    }

    /// The validating phase of admission: the ValidatingAdmissionPolicies bound to `c`, then
    /// the validating webhooks that choose it, all of them, concurrently. Returns their
    /// warnings, or the first refusal.
    pub(crate) async fn validate_by_webhooks(&self, c: &Call<'_>) -> ApiResult<Vec<String>> {
        if exempt(c.resource) {
            return Ok(Vec::new());
        }
        let mut warnings = self.check_policies(c)?;
        let hooks = self.validating_hooks();
        if hooks.is_empty() {
            return Ok(warnings);
        }
        let mut chosen = Vec::new();
        for hook in &hooks {
            if self.chosen(hook, c)? {
                chosen.push(hook);
            }
        }
        let answers =
            futures_util::future::join_all(chosen.iter().map(|h| self.call_hook(h, c))).await;
        for (hook, answer) in chosen.into_iter().zip(answers) {
            match answer {
                Ok(response) => {
                    warnings.extend(strings(&response["warnings"]));
                    if response["allowed"] != json!(true) {
                        return Err(denied(&hook.name, &response["status"]));
                    }
                }
                Err(e) if hook.failure_ignore => {
                    warn!(webhook = %hook.name, error = %e, "failed calling a webhook; its failure policy ignores it");
                }
                Err(e) => return Err(call_failed(&hook.name, &e)),
            }
        }
        Ok(warnings)
    }
}

/// Undo what a mutating webhook may not change: the object's identity and the server's
/// metadata (a changed name or namespace is refused), and the half of the object the write
/// does not own (`status` on a main-resource write of a kind with a status subresource,
/// `spec` on a status write).
pub(crate) fn keep_identity(
    before: &Value,
    after: &mut Value,
    status_split: bool,
    status_write: bool,
) -> ApiResult<()> {
    for f in ["name", "namespace"] {
        if after["metadata"][f] != before["metadata"][f] {
            return Err(ApiError::bad_request(format!(
                "a mutating admission webhook changed metadata.{f}, which it may not"
            )));
        }
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
        "managedFields",
    ] {
        match before["metadata"].get(f) {
            Some(v) => after["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = after["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    for f in ["apiVersion", "kind"] {
        after[f] = before[f].clone();
    }
    let kept = match (status_split, status_write) {
        (true, false) => Some("status"),
        (true, true) => Some("spec"),
        _ => None,
    };
    if let Some(part) = kept
        && let Some(m) = after.as_object_mut()
    {
        match before.get(part) {
            Some(v) => {
                m.insert(part.to_string(), v.clone());
            }
            None => {
                m.remove(part);
            }
        }
    }
    Ok(())
}

/// A response's `patch`: Go's `[]byte`, which decodes from base64 text or from an array of
/// numbers (what kube-rs writes). `None` when there is none.
fn patch_bytes(v: &Value) -> Result<Option<Vec<u8>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|e| format!("the patch is not base64: {e}")),
        Value::Array(items) if items.is_empty() => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()
            .map(Some)
            .ok_or_else(|| "the patch is neither base64 nor bytes".to_string()),
        _ => Err("the patch is neither base64 nor bytes".to_string()),
    }
}

/// Webhook configurations and policies are never sent to webhooks.
fn exempt(r: &Resource) -> bool {
    r.group == "admissionregistration.k8s.io"
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_string))
        .collect()
}

/// A refusal, in Kubernetes' words: the webhook's status, at least a 400.
fn denied(name: &str, status: &Value) -> ApiError {
    let by = format!("admission webhook {name:?} denied the request");
    let code = status["code"].as_u64().filter(|c| *c >= 400).unwrap_or(400) as u16;
    let message = status["message"].as_str().filter(|m| !m.is_empty());
    let reason = status["reason"].as_str().filter(|r| !r.is_empty());
    let text = match (message, reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, Some(r)) => format!("{by}: {r}"),
        (None, None) => format!("{by} without explanation"),
    };
    ApiError::new(code, reason_of(reason, code), text)
}

/// A Status reason Kubernetes defines, as the webhook gave it or as its code implies.
fn reason_of(reason: Option<&str>, code: u16) -> &'static str {
    const KNOWN: &[&str] = &[
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "TooManyRequests",
        "InternalError",
    ];
    if let Some(r) = reason
        && let Some(k) = KNOWN.iter().find(|k| **k == r)
    {
        return k;
    }
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        c if c >= 500 => "InternalError",
        _ => "BadRequest",
    }
}

/// Where a webhook listens: its URL, or its Service's ready endpoint. Returns the address
/// to connect to, the TLS server name, the request path and the URL as messages show it.
fn webhook_target(
    cache: &Cache,
    client: &WebhookClientConfig,
) -> Result<(String, String, String, String), String> {
    if let Some(url) = &client.url {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad webhook URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err("webhook URLs must use https".into());
        }
        let host = uri.host().ok_or("the webhook URL has no host")?.to_string();
        let port = uri.port_u16().unwrap_or(443);
        let host_bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addr = if host_bare.contains(':') {
            format!("[{host_bare}]:{port}")
        } else {
            format!("{host_bare}:{port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        return Ok((addr, host_bare, path, url.clone()));
    }
    let svc = client
        .service
        .as_ref()
        .ok_or("the webhook names neither a URL nor a Service")?;
    let (addr, server_name) =
        service_endpoint(cache, &svc.namespace, &svc.name, svc.port.unwrap_or(443))?;
    let path = svc.path.clone().unwrap_or_else(|| "/".into());
    let shown = format!("https://{server_name}:{}{path}", svc.port.unwrap_or(443));
    Ok((addr, server_name, path, shown))
}

pub(crate) async fn post_review(
    cache: &Cache,
    client: &WebhookClientConfig,
    review: &Value,
) -> Result<Value, String> {
    let (addr, server_name, path, shown) = webhook_target(cache, client)?;
    let tls = tls_config(client.ca_bundle.as_ref().map(|b| b.0.as_slice()), None)?;
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("Post \"{shown}\": dial tcp {addr}: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(server_name.clone())
        .map_err(|e| format!("bad server name {server_name:?}: {e}"))?;
    let tls_stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|e| format!("Post \"{shown}\": tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls_stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = supervise::AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let body = Bytes::from(review.to_string());
    let req = Request::post(path.as_str())
        .header(http::header::HOST, server_name.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("reading the webhook's answer: {e}"))?
        .to_bytes();
    drop(driver);
    if status != StatusCode::OK {
        return Err(format!("the server responded with {status}"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the webhook's answer is not JSON: {e}"))
}

fn call_failed(name: &str, why: &str) -> ApiError {
    ApiError::internal(format!(
        "failed calling webhook {name:?}: failed to call webhook: {why}"
    ))
}

/// A ready endpoint of Service `namespace/name` for its `port`, and the name its certificate
/// is checked against (`name.namespace.svc`).
pub(crate) fn service_endpoint(
    cache: &Cache,
    namespace: &str,
    name: &str,
    port: i32,
) -> Result<(String, String), String> {
    let services = api::resources::find("", "v1", "services").expect("served");
    let endpoints = api::resources::find("", "v1", "endpoints").expect("served");
    let key = format!("{namespace}/{name}");
    let service = cache
        .resource(services)
        .get(&key)
        .ok_or_else(|| format!("service \"{name}\" not found"))?
        .value();
    let eps = cache.resource(endpoints).get(&key).map(|e| e.value());
    let (ip, target_port) = crate::proxy::service_target(
        &service,
        eps.as_ref(),
        Some(&port.to_string()),
        fastrand::usize(..),
    )
    .map_err(|e| e.message)?;
    let addr = if ip.contains(':') {
        format!("[{ip}]:{target_port}")
    } else {
        format!("{ip}:{target_port}")
    };
    Ok((addr, format!("{name}.{namespace}.svc")))
}

/// TLS that does not check the server's certificate: an APIService's insecureSkipTLSVerify.
pub(crate) fn tls_config_unverified(
    client: Option<ClientCert<'_>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    #[derive(Debug)]
    struct Anything(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Anything {
        fn verify_server_cert(
            &self,
            _end_entity: &rustls_pki_types::CertificateDer<'_>,
            _intermediates: &[rustls_pki_types::CertificateDer<'_>],
            _server_name: &rustls_pki_types::ServerName<'_>,
            _ocsp: &[u8],
            _now: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Anything(provider)));
    with_client(builder, client)
}

/// A client certificate the server presents, with its key (PEM), and what it is called in
/// errors.
#[derive(Clone, Copy)]
pub(crate) struct ClientCert<'a> {
    pub what: &'static str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

impl crate::FrontProxy {
    pub(crate) fn client_cert(&self) -> ClientCert<'_> {
        ClientCert {
            what: "the front proxy",
            cert_pem: &self.cert_pem,
            key_pem: &self.key_pem,
        }
    }
}

/// Finish a TLS client configuration, presenting `client`'s certificate if given.
fn with_client(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    client: Option<ClientCert<'_>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let Some(c) = client else {
        return Ok(Arc::new(builder.with_no_client_auth()));
    };
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{} certificate: {e}", c.what))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| format!("{} key: {e}", c.what))?;
    builder
        .with_client_auth_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| format!("{} certificate: {e}", c.what))
}

/// TLS trusting `ca_bundle` (PEM), or the system's roots without one.
pub(crate) fn tls_config(
    ca_bundle: Option<&[u8]>,
    client: Option<ClientCert<'_>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem: Vec<u8> = match ca_bundle.filter(|b| !b.is_empty()) {
        Some(b) => b.to_vec(),
        None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default(),
    };
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no certificate authority to trust the webhook by".into());
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    with_client(builder, client)
}
