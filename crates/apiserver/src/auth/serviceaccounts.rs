//! Service accounts on the wire: TokenRequest (`serviceaccounts/{name}/token`, which `kubectl
//! create token` and the agent's projected volumes call), the OIDC discovery documents, and
//! the ServiceAccount admission of pods (a default account, and the `kube-api-access-*`
//! volume mounted in every container unless automounting is turned off).

use std::time::Duration;

use api::errors::{FieldErrors, Path};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use super::tokens::{self, Bound, MAX_EXPIRATION, MIN_EXPIRATION};
use crate::errors::{ApiError, ApiResult};
use crate::request::{Target, strings};
use crate::server::{ApiServer, Reply, parse_body};

/// Where the token, CA and namespace appear in a container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The lifetime the projected volume asks for (Kubernetes' 1 hour and 7 seconds, so that a
/// token's age tells it came from the volume).
const VOLUME_EXPIRATION: i64 = 3607;
/// A TokenRequest that names no lifetime gets one hour.
const DEFAULT_EXPIRATION: i64 = 3600;
/// How long a pod's create waits for its namespace's `default` account to appear.
const DEFAULT_ACCOUNT_WAIT: Duration = Duration::from_secs(5);

fn core(kind: &str) -> &'static api::Resource {
    api::resources::by_kind("v1", kind).expect("a core kind")
}

/// A token's account, and the pod, secret and node it is bound to.
type Subjects = (Bound, Option<Bound>, Option<Bound>, Option<Bound>);

fn invalid(name: &str, errs: &FieldErrors) -> ApiError {
    ApiError::new(
        422,
        "Invalid",
        format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {errs}"),
    )
}

impl ApiServer {
    /// The cached core object of `kind` at `key` (`namespace/name`, or `name`).
    fn cached_core(&self, kind: &str, key: &str) -> Option<Value> {
        self.cache.resource(core(kind)).get(key).map(|e| e.value())
    }

    /// `POST serviceaccounts/{name}/token`.
    pub(crate) async fn token_request(
        &self,
        t: &Target,
        name: &str,
        req: &Request<Bytes>,
    ) -> ApiResult<Reply> {
        let tokens = self
            .token_issuer()
            .ok_or_else(|| ApiError::service_unavailable("service account tokens are not set up"))?
            .clone();
        let ns = t.namespace.clone().unwrap_or_default();
        let mut obj = parse_body(req, false)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body is not an object"));
        }
        let spec = obj.get("spec").cloned().unwrap_or(json!({}));
        let mut audiences = strings(&spec["audiences"]);
        if audiences.is_empty() {
            audiences = tokens.audiences.clone();
        }
        let mut seconds = spec["expirationSeconds"]
            .as_i64()
            .unwrap_or(DEFAULT_EXPIRATION);
        let mut errs = FieldErrors::default();
        let path = Path::root("spec").child("expirationSeconds");
        if seconds < MIN_EXPIRATION {
            errs.invalid(
                &path,
                seconds,
                "may not specify a duration less than 10 minutes",
            );
        } else if seconds > MAX_EXPIRATION {
            errs.invalid(
                &path,
                seconds,
                "may not specify a duration larger than 2^32 seconds",
            );
        }
        let reference = spec
            .get("boundObjectRef")
            .filter(|r| r.is_object())
            .cloned();
        if let Some(r) = &reference {
            let kind = r["kind"].as_str().unwrap_or("");
            let path = Path::root("spec").child("boundObjectRef");
            if !matches!(kind, "Pod" | "Secret" | "Node") {
                errs.not_supported(&path.child("kind"), kind, &["Node", "Pod", "Secret"]);
            }
            if r["apiVersion"].as_str().unwrap_or("v1") != "v1" {
                errs.not_supported(&path.child("apiVersion"), &r["apiVersion"], &["v1"]);
            }
            if r["name"].as_str().unwrap_or("").is_empty() {
                errs.required(&path.child("name"), "");
            }
        }
        if !errs.is_empty() {
            return Err(invalid(name, &errs));
        }
        let mut warnings = Vec::new();
        if let Some(max) = tokens.max_expiration
            && seconds > max
        {
            warnings.push(format!(
                "requested expiration of {seconds} seconds shortened to {max} seconds"
            ));
            seconds = max;
        }

        // An account or pod created just before is in the cache once it holds every
        // acknowledged write: look again after waiting for it only when something is missing.
        let found = match self.token_subjects(&ns, name, &mut obj) {
            Err(e) if e.code == 404 || e.code == 409 => {
                self.cache.wait_fresh().await?;
                self.token_subjects(&ns, name, &mut obj)
            }
            found => found,
        };
        let (service_account, pod, secret, node) = found?;
        let now = jiff::Timestamp::now();
        let (token, expires) = tokens
            .issue(&tokens::Request {
                namespace: &ns,
                service_account,
                audiences: audiences.clone(),
                expiration_seconds: seconds,
                pod,
                secret,
                node,
                now: now.as_second(),
            })
            .map_err(ApiError::internal)?;
        let expires =
            jiff::Timestamp::from_second(expires).map_err(|e| ApiError::internal(e.to_string()))?;
        obj["apiVersion"] = json!("authentication.k8s.io/v1");
        obj["kind"] = json!("TokenRequest");
        obj["metadata"] = json!({
            "name": name,
            "namespace": ns,
            "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        obj["spec"]["audiences"] = json!(audiences);
        obj["spec"]["expirationSeconds"] = json!(seconds);
        obj["status"] = json!({
            "token": token,
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        let mut reply = Reply::json(StatusCode::CREATED, &obj);
        reply.warnings = warnings;
        Ok(reply)
    }

    /// The account a token is for and the objects it is bound to, from the cache; the
    /// reference in `obj` gets the bound object's uid.
    fn token_subjects(&self, ns: &str, name: &str, obj: &mut Value) -> ApiResult<Subjects> {
        let sa_resource = core("ServiceAccount");
        let sa = self
            .cached_core("ServiceAccount", &format!("{ns}/{name}"))
            .ok_or_else(|| ApiError::not_found(sa_resource, name))?;
        let bound_of = |v: &Value| Bound {
            name: v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            uid: v["metadata"]["uid"].as_str().unwrap_or("").to_string(),
        };
        let service_account = bound_of(&sa);
        let (mut pod, mut secret, mut node) = (None, None, None);
        if let Some(r) = obj
            .pointer_mut("/spec/boundObjectRef")
            .and_then(Value::as_object_mut)
        {
            let kind = r
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let object_name = r
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let key = match kind.as_str() {
                "Node" => object_name.clone(),
                _ => format!("{ns}/{object_name}"),
            };
            let resource = core(&kind);
            let found = self
                .cached_core(&kind, &key)
                .ok_or_else(|| ApiError::not_found(resource, &object_name))?;
            let b = bound_of(&found);
            if let Some(uid) = r
                .get("uid")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                && uid != b.uid
            {
                return Err(ApiError::conflict(
                    resource,
                    &object_name,
                    &format!(
                        "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            r.insert("uid".into(), json!(b.uid));
            r.insert("apiVersion".into(), json!("v1"));
            match kind.as_str() {
                "Pod" => {
                    let account = found["spec"]["serviceAccountName"].as_str().unwrap_or("");
                    if account != name {
                        return Err(ApiError::bad_request(format!(
                            "cannot bind token for serviceaccount \"{name}\" to pod \"{object_name}\": the pod's service account is \"{account}\""
                        )));
                    }
                    // As Kubernetes does, a pod's token also names the node it runs on.
                    node = found["spec"]["nodeName"]
                        .as_str()
                        .filter(|n| !n.is_empty())
                        .and_then(|n| self.cached_core("Node", n))
                        .map(|n| bound_of(&n));
                    pod = Some(b);
                }
                "Secret" => secret = Some(b),
                _ => node = Some(b),
            }
        }
        Ok((service_account, pod, secret, node))
    }

    /// `/.well-known/openid-configuration` and `/openid/v1/jwks`, for whoever verifies the
    /// cluster's tokens elsewhere.
    pub(crate) fn openid(&self, path: &str, method: &Method) -> Option<ApiResult<Reply>> {
        let path = path.trim_end_matches('/');
        let jwks = match path {
            "/.well-known/openid-configuration" => false,
            "/openid/v1/jwks" => true,
            _ => return None,
        };
        if method != Method::GET && method != Method::HEAD {
            return Some(Err(ApiError::method_not_allowed()));
        }
        let Some(tokens) = self.token_issuer() else {
            return Some(Err(ApiError::no_route()));
        };
        let (content_type, doc) = if jwks {
            ("application/jwk-set+json", tokens.jwks())
        } else {
            ("application/json", tokens.discovery())
        };
        Some(Ok(Reply::bytes(
            StatusCode::OK,
            content_type,
            Bytes::from(doc.to_string()),
        )))
    }

    /// Kubernetes' ServiceAccount admission for a new pod: the `default` account unless it
    /// names one, which must exist, and (unless `automountServiceAccountToken` says no on the
    /// pod or the account) a projected `kube-api-access-*` volume with a token, the cluster
    /// CA and the namespace, mounted read-only in every container.
    pub(crate) async fn admit_service_account(
        &self,
        name: &str,
        ns: &str,
        pod: &mut Value,
    ) -> ApiResult<()> {
        // Mirror pods stand for static pods the node runs itself: no account, no token.
        if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
            return Ok(());
        }
        let account = match pod["spec"]["serviceAccountName"].as_str() {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => pod["spec"]["serviceAccount"]
                .as_str()
                .filter(|a| !a.is_empty())
                .unwrap_or("default")
                .to_string(),
        };
        pod["spec"]["serviceAccountName"] = json!(account);
        pod["spec"]["serviceAccount"] = json!(account);
        let key = format!("{ns}/{account}");
        let mut sa = self.cached_core("ServiceAccount", &key);
        if sa.is_none() {
            self.cache.wait_fresh().await?;
            sa = self.cached_core("ServiceAccount", &key);
        }
        // A namespace's `default` account is made just after the namespace: wait for it
        // briefly rather than refuse a pod created right behind its namespace.
        let deadline = tokio::time::Instant::now() + DEFAULT_ACCOUNT_WAIT;
        while sa.is_none() && account == "default" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sa = self.cached_core("ServiceAccount", &key);
        }
        let Some(sa) = sa else {
            return Err(ApiError::forbidden_on(
                core("Pod"),
                name,
                &format!(
                    "error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
                ),
            ));
        };
        let automount = pod["spec"]["automountServiceAccountToken"]
            .as_bool()
            .or_else(|| sa["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let lists = ["initContainers", "containers"];
        let mounted_already = lists.iter().any(|l| {
            pod["spec"][l].as_array().into_iter().flatten().any(|c| {
                c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                    m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(MOUNT_PATH)
                })
            })
        });
        if mounted_already {
            return Ok(());
        }
        let volume = format!("kube-api-access-{}", suffix());
        let volumes = &mut pod["spec"]["volumes"];
        if !volumes.is_array() {
            *volumes = json!([]);
        }
        if let Some(v) = volumes.as_array_mut() {
            v.push(api_access_volume(&volume));
        }
        for l in lists {
            // `get_mut`, not indexing: indexing a missing list would write a null into the pod.
            let containers = pod["spec"].get_mut(l).and_then(Value::as_array_mut);
            for c in containers.into_iter().flatten() {
                let mounts = &mut c["volumeMounts"];
                if !mounts.is_array() {
                    *mounts = json!([]);
                }
                if let Some(m) = mounts.as_array_mut() {
                    m.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
                }
            }
        }
        Ok(())
    }
}

/// Five characters as Kubernetes' generated name suffixes use (no vowels, no look-alikes).
fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

/// The projected volume of a pod's API credentials, as Kubernetes writes it.
fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": VOLUME_EXPIRATION, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}
