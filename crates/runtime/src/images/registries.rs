//! Registry mirrors, rewrites and per-registry settings, from `<data-dir>/registries.yaml` in
//! k3s' format, for sites whose nodes cannot reach the registries images name (or should not):
//!
//! ```yaml
//! mirrors:
//!   docker.io:                       # or "*" for every registry
//!     endpoint: ["http://mirror.local:5000", "https://backup.example.com"]
//!     rewrite:
//!       "^library/(.*)": "dockerhub/$1"
//! configs:
//!   mirror.local:5000:
//!     auth: {username: me, password: secret}
//!     tls: {ca_file: /etc/ssl/mirror.pem, insecure_skip_verify: false}
//! ```
//!
//! An image of a mirrored registry is pulled from each endpoint in turn, its repository
//! rewritten for that endpoint, then from the registry itself; it is stored under the name the
//! pod asked for. Deciding the order is pure (`Registries::sources`); the puller tries them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pull::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid registries.yaml: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
    /// Regular expression on the repository -> replacement (`$1` for groups).
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub auth: Option<Auth>,
    pub tls: Option<Tls>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `base64(username:password)`, as Docker's config stores it.
    pub auth: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One place to try an image at.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The reference to pull there (`mirror.local:5000/dockerhub/busybox:1.36`).
    pub reference: String,
    /// `host[:port]` of that place.
    pub registry: String,
    pub http: bool,
    pub auth: Option<Credentials>,
    pub tls: Tls,
    /// A mirror (failures there fall through to the next place).
    pub mirror: bool,
}

impl Registries {
    /// `path` if it exists, else no mirrors at all.
    pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Registries::default()),
            Err(source) => {
                return Err(RegistriesError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if text.trim().is_empty() {
            return Ok(Registries::default());
        }
        let parsed: Registries =
            serde_saphyr::from_str(&text).map_err(|e| RegistriesError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        for m in parsed.mirrors.values() {
            for pattern in m.rewrite.keys() {
                regex::Regex::new(pattern).map_err(|e| RegistriesError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("rewrite {pattern:?}: {e}"),
                })?;
            }
        }
        Ok(parsed)
    }

    fn credentials(&self, registry: &str) -> Option<Credentials> {
        let a = self.configs.get(registry)?.auth.as_ref()?;
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            });
        }
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.as_deref()?)
            .ok()?;
        let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
        Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        })
    }

    fn tls(&self, registry: &str) -> Tls {
        self.configs
            .get(registry)
            .and_then(|c| c.tls.clone())
            .unwrap_or_default()
    }

    /// Where to look for `registry/repository[:tag|@digest]`, in order: each mirror endpoint
    /// of the registry (or of `*`), with the repository rewritten, then the registry itself.
    /// `plain_http(registry)` says whether the registry itself is reached without TLS.
    pub fn sources(
        &self,
        registry: &str,
        repository: &str,
        suffix: &str,
        plain_http: bool,
    ) -> Vec<Source> {
        let mut out = Vec::new();
        let mirror = self.mirrors.get(registry).or_else(|| self.mirrors.get("*"));
        if let Some(m) = mirror {
            let mut repo = repository.to_string();
            for (pattern, replacement) in &m.rewrite {
                if let Ok(re) = regex::Regex::new(pattern)
                    && re.is_match(&repo)
                {
                    repo = re.replace(&repo, replacement.as_str()).into_owned();
                    break;
                }
            }
            for e in &m.endpoint {
                let (http, rest) = match e.split_once("://") {
                    Some(("http", rest)) => (true, rest),
                    Some((_, rest)) => (false, rest),
                    None => (false, e.as_str()),
                };
                let host = rest.trim_end_matches('/');
                let host = host.strip_suffix("/v2").unwrap_or(host);
                if host == registry {
                    continue;
                }
                out.push(Source {
                    reference: format!("{host}/{repo}{suffix}"),
                    registry: host.to_string(),
                    http,
                    auth: self.credentials(host),
                    tls: self.tls(host),
                    mirror: true,
                });
            }
        }
        out.push(Source {
            reference: format!("{registry}/{repository}{suffix}"),
            registry: registry.to_string(),
            http: plain_http,
            auth: self.credentials(registry),
            tls: self.tls(registry),
            mirror: false,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(text: &str) -> Registries {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("registries.yaml");
        std::fs::write(&p, text).unwrap();
        Registries::load(&p).unwrap()
    }

    #[test]
    fn mirrors_come_first_rewritten_then_the_registry() {
        let r = config(
            r#"
mirrors:
  docker.io:
    endpoint: ["http://mirror.local:5000", "https://backup.example.com/v2"]
    rewrite:
      "^library/(.*)": "hub/$1"
configs:
  mirror.local:5000:
    auth: {username: me, password: pw}
"#,
        );
        let s = r.sources("docker.io", "library/busybox", ":1.36", false);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].reference, "mirror.local:5000/hub/busybox:1.36");
        assert!(s[0].http && s[0].mirror);
        assert_eq!(s[0].auth.as_ref().unwrap().username, "me");
        assert_eq!(s[1].reference, "backup.example.com/hub/busybox:1.36");
        assert!(!s[1].http);
        assert_eq!(s[2].reference, "docker.io/library/busybox:1.36");
        assert!(!s[2].mirror);
        // Other registries are untouched.
        let q = r.sources("quay.io", "org/app", "@sha256:ab", false);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].reference, "quay.io/org/app@sha256:ab");
    }

    #[test]
    fn a_wildcard_mirror_serves_every_registry_and_auth_may_be_docker_style() {
        let r = config(
            r#"
mirrors:
  "*":
    endpoint: ["http://cache:5000"]
configs:
  cache:5000:
    auth: {auth: bWU6cHc=}
"#,
        );
        let s = r.sources("ghcr.io", "x/y", ":1", false);
        assert_eq!(s[0].reference, "cache:5000/x/y:1");
        assert_eq!(s[0].auth.as_ref().unwrap().password, "pw");
    }

    #[test]
    fn a_missing_file_means_no_mirrors_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Registries::load(&dir.path().join("none.yaml")).unwrap(),
            Registries::default()
        );
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, "mirrors:\n  docker.io:\n    endpoints: [x]\n").unwrap();
        let e = Registries::load(&p).unwrap_err().to_string();
        assert!(e.contains("not a valid registries.yaml"), "{e}");
        std::fs::write(&p, "mirrors:\n  docker.io:\n    rewrite: {\"(\": x}\n").unwrap();
        assert!(Registries::load(&p).is_err());
    }
}
