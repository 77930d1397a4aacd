//! Service account tokens for projected volumes, as the kubelet's token manager keeps them:
//! one TokenRequest per pod, account, audience and lifetime, bound to the pod, replaced once
//! 80% of its life (or a day) has passed. A failed refresh keeps the old token while it is
//! still valid and tries again soon.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use api::k8s_openapi::api::core::v1::{Pod, ServiceAccountTokenProjection};
use client::Client;
use http::Method;
use serde_json::json;

use super::VolumeError;

/// A token is replaced once this share of its life has passed...
const REFRESH_AT: f64 = 0.8;
/// ...or once it is this old, whichever comes first.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// After a failed refresh, try again this soon.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    pod_uid: String,
    account: String,
    audience: String,
    seconds: i64,
}

struct Held {
    token: String,
    /// When to fetch a new one.
    refresh: Instant,
    expires: Instant,
}

/// The tokens of the node's pods.
#[derive(Default)]
pub struct Tokens {
    held: Mutex<HashMap<Key, Held>>,
}

impl Tokens {
    /// The token `source` asks for in `pod`, fetched or refreshed when due.
    pub async fn get(
        &self,
        client: &Client,
        pod: &Pod,
        source: &ServiceAccountTokenProjection,
    ) -> Result<String, VolumeError> {
        let meta = &pod.metadata;
        let (ns, name, uid) = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
            meta.uid.clone().unwrap_or_default(),
        );
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".into());
        let key = Key {
            pod_uid: uid.clone(),
            account: account.clone(),
            audience: source.audience.clone().unwrap_or_default(),
            seconds: source.expiration_seconds.unwrap_or(3600),
        };
        let now = Instant::now();
        let current = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.get(&key)
                .filter(|h| now < h.expires)
                .map(|h| (h.token.clone(), now < h.refresh))
        };
        if let Some((token, true)) = &current {
            return Ok(token.clone());
        }
        let mut spec = json!({
            "expirationSeconds": key.seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid},
        });
        if !key.audience.is_empty() {
            spec["audiences"] = json!([key.audience]);
        }
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": spec});
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            client::encode(&ns),
            client::encode(&account)
        );
        let answer = client.request_json(Method::POST, &path, Some(&body)).await;
        let fetched = answer.as_ref().ok().and_then(|a| {
            let token = a["status"]["token"].as_str()?.to_string();
            let expires = a["status"]["expirationTimestamp"]
                .as_str()?
                .parse::<jiff::Timestamp>()
                .ok()?;
            let life = (expires.as_second() - jiff::Timestamp::now().as_second()).max(1) as u64;
            Some((token, Duration::from_secs(life)))
        });
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Tokens past their life belong to pods that are gone or will fetch anew.
        held.retain(|_, h| now < h.expires);
        match (fetched, current) {
            (Some((token, life)), _) => {
                let refresh = life.mul_f64(REFRESH_AT).min(MAX_AGE);
                held.insert(
                    key,
                    Held {
                        token: token.clone(),
                        refresh: now + refresh,
                        expires: now + life,
                    },
                );
                Ok(token)
            }
            // The old one is still good: keep it, and ask again soon.
            (None, Some((token, _))) => {
                tracing::warn!(pod = %name, namespace = %ns, error = ?answer.err(),
                               "could not refresh a service account token");
                if let Some(h) = held.get_mut(&key) {
                    h.refresh = now + RETRY;
                }
                Ok(token)
            }
            (None, None) => Err(match answer {
                Err(e) => VolumeError::Missing(format!("failed to fetch token: {e}")),
                Ok(_) => {
                    VolumeError::Missing("failed to fetch token: the answer held no token".into())
                }
            }),
        }
    }

    /// When the soonest of `pod_uid`'s tokens is due for replacement.
    pub fn next_refresh(&self, pod_uid: &str) -> Option<Instant> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter()
            .filter(|(k, _)| k.pod_uid == pod_uid)
            .map(|(_, h)| h.refresh)
            .min()
    }

    /// Drop a pod's tokens.
    pub fn forget(&self, pod_uid: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|k, _| k.pod_uid != pod_uid);
    }
}
