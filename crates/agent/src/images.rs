//! Images for pods: the pull policy, credentials from `imagePullSecrets`, one pull at a time
//! per image, and the pull events Kubernetes users know.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::k8s_openapi::api::core::v1::{Pod, Secret};
use base64::Engine;
use runtime::images::{Credentials, Image, PullError, PullOptions, Quiet};
use serde::Deserialize;

use crate::Shared;

/// Why a container's image is not available: (reason, message), as container states show it.
pub type ImageFailure = (String, String);

/// The effective pull policy: Kubernetes defaults to Always for `:latest` or untagged images.
pub fn policy(reference: &str, declared: Option<&str>) -> &'static str {
    match declared {
        Some("Always") => "Always",
        Some("Never") => "Never",
        Some("IfNotPresent") => "IfNotPresent",
        _ => {
            let last = reference.rsplit('/').next().unwrap_or(reference);
            if reference.contains('@') {
                "IfNotPresent"
            } else {
                match last.split_once(':') {
                    Some((_, "latest")) | None => "Always",
                    Some(_) => "IfNotPresent",
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

/// `https://index.docker.io/v1/` -> `docker.io`; `registry:5000/path` -> `registry:5000`.
fn registry_key(k: &str) -> String {
    let k = k
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        h => h.to_string(),
    }
}

/// Credentials for `registry` in a pull secret's data, if it has some.
pub fn credentials_in(secret: &Secret, registry: &str) -> Option<Credentials> {
    let data = secret.data.as_ref()?;
    let config: DockerConfig = if let Some(raw) = data.get(".dockerconfigjson") {
        serde_json::from_slice(&raw.0).ok()?
    } else {
        // The legacy `.dockercfg` is the `auths` map alone.
        let raw = data.get(".dockercfg")?;
        DockerConfig {
            auths: serde_json::from_slice(&raw.0).ok()?,
        }
    };
    let want = registry_key(registry);
    let a = config
        .auths
        .iter()
        .find(|(k, _)| registry_key(k) == want)?
        .1;
    if !a.username.is_empty() {
        return Some(Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(a.auth.trim())
        .ok()?;
    let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(Credentials {
        username: user.into(),
        password: pass.into(),
    })
}

fn registry_of(reference: &str) -> String {
    runtime::images::normalize(reference)
        .ok()
        .and_then(|n| n.split('/').next().map(str::to_string))
        .unwrap_or_default()
}

/// Serializes pulls of the same image, so two pods starting together download it once.
#[derive(Default)]
pub struct PullLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl PullLocks {
    fn get(&self, reference: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(reference.to_string()).or_default().clone()
    }
}

impl Shared {
    fn note_use(&self, img: &Image) {
        let now = jiff::Timestamp::now().as_second().max(0) as u64;
        self.image_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(img.id.as_str().to_string(), now);
    }

    /// Make the image available for a container of `pod`, as its pull policy says (and note
    /// its use, for garbage collection).
    pub(crate) async fn ensure_image(
        &self,
        pod: &Pod,
        reference: &str,
        declared: Option<&str>,
    ) -> Result<Image, ImageFailure> {
        let r = self.ensure_image_inner(pod, reference, declared).await;
        if let Ok(img) = &r {
            self.note_use(img);
        }
        r
    }

    async fn ensure_image_inner(
        &self,
        pod: &Pod,
        reference: &str,
        declared: Option<&str>,
    ) -> Result<Image, ImageFailure> {
        let local = || self.images.resolve(reference).ok().flatten();
        let policy = policy(reference, declared);
        if policy != "Always"
            && let Some(img) = local()
        {
            self.events.record(
                pod,
                "Normal",
                "Pulled",
                &format!("Container image \"{reference}\" already present on machine"),
            );
            return Ok(img);
        }
        if policy == "Never" {
            let msg =
                format!("Container image \"{reference}\" is not present with pull policy of Never");
            self.events
                .record(pod, "Warning", "ErrImageNeverPull", &msg);
            return Err(("ErrImageNeverPull".into(), msg));
        }
        let lock = self.pull_locks.get(reference);
        let _held = lock.lock().await;
        // Someone else may have pulled it while this one waited.
        if policy != "Always"
            && let Some(img) = local()
        {
            return Ok(img);
        }
        let auth = self.pull_credentials(pod, reference).await;
        // Read at every pull, so an edit takes effect without a restart.
        let registries = runtime::images::Registries::load(&self.registries_file)
            .map_err(|e| ("ErrImagePull".to_string(), e.to_string()))?;
        let opts = PullOptions {
            insecure: self.insecure_registries.clone(),
            auth,
            registries,
        };
        self.events.record(
            pod,
            "Normal",
            "Pulling",
            &format!("Pulling image \"{reference}\""),
        );
        let began = Instant::now();
        match self.puller.pull(reference, &opts, &Quiet).await {
            Ok(img) => {
                let secs = began.elapsed().as_secs_f64();
                self.events.record(
                    pod,
                    "Normal",
                    "Pulled",
                    &format!(
                        "Successfully pulled image \"{reference}\" in {secs:.3}s. Image size: {} bytes.",
                        img.size
                    ),
                );
                Ok(img)
            }
            Err(e) => {
                let detail = match &e {
                    PullError::NotFound { .. } => format!("{e}"),
                    _ => format!("{e:#}"),
                };
                let msg = format!("Failed to pull image \"{reference}\": {detail}");
                self.events.record(pod, "Warning", "Failed", &msg);
                self.events
                    .record(pod, "Warning", "Failed", "Error: ErrImagePull");
                Err(("ErrImagePull".into(), msg))
            }
        }
    }

    async fn pull_credentials(&self, pod: &Pod, reference: &str) -> Option<Credentials> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let registry = registry_of(reference);
        for r in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
            let name = r.name.as_str();
            if name.is_empty() {
                continue;
            }
            match self.client.get::<Secret>(Some(ns), name).await {
                Ok(Some(s)) => {
                    if let Some(c) = credentials_in(&s, &registry) {
                        return Some(c);
                    }
                }
                Ok(None) => self.events.record(
                    pod,
                    "Warning",
                    "FailedToRetrieveImagePullSecret",
                    &format!("Unable to retrieve some image pull secrets ({name}); attempting to pull the image may not succeed."),
                ),
                Err(e) => tracing::warn!(secret = name, error = %e, "could not read an image pull secret"),
            }
        }
        None
    }

    /// `/etc/passwd` and `/etc/group` of an image (from its topmost layer that has them), to
    /// resolve user and group names.
    pub(crate) fn image_accounts(&self, image: &Image) -> (String, String) {
        let dirs = self.images.layer_dirs(image);
        let find = |file: &str| {
            dirs.iter()
                .rev()
                .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default()
        };
        (find("etc/passwd"), find("etc/group"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::k8s_openapi::ByteString;

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        let cases = [
            ("busybox", None, "Always"),
            ("busybox:latest", None, "Always"),
            ("busybox:1.36", None, "IfNotPresent"),
            ("localhost:5000/app", None, "Always"),
            ("localhost:5000/app:v1", None, "IfNotPresent"),
            ("app@sha256:abcd", None, "IfNotPresent"),
            ("busybox:1.36", Some("Always"), "Always"),
            ("busybox", Some("Never"), "Never"),
        ];
        for (r, d, want) in cases {
            assert_eq!(policy(r, d), want, "{r} {d:?}");
        }
    }

    fn secret(key: &str, body: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(body.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn pull_secrets_match_their_registry() {
        let s = secret(
            ".dockerconfigjson",
            r#"{"auths":{"localhost:5000":{"username":"u","password":"p"}}}"#,
        );
        let c = credentials_in(&s, "localhost:5000").expect("matches");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        assert!(credentials_in(&s, "other:5000").is_none());

        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let s = secret(
            ".dockerconfigjson",
            &format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#),
        );
        let c = credentials_in(&s, "docker.io").expect("docker hub key");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cret")
        );

        let s = secret(
            ".dockercfg",
            &format!(r#"{{"reg.example:443":{{"auth":"{auth}"}}}}"#),
        );
        assert!(credentials_in(&s, "reg.example:443").is_some());
    }

    #[test]
    fn registry_of_normalizes() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("localhost:5000/a/b:1"), "localhost:5000");
    }
}
