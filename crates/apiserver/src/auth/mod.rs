//! Who a request comes from and what it may do: authentication (client certificates signed
//! by the cluster CA, bearer tokens, the anonymous identity), impersonation, and RBAC
//! authorization, all decided from the request line and headers before its body is read.

mod authz;
pub mod bootstrap;
mod escalation;
mod node;
pub(crate) mod noderestriction;
mod reviews;
mod serviceaccounts;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

use api::rbac::{MASTERS, UserInfo};

use crate::errors::ApiError;

pub use authz::{Authorizer, RequestAttributes, Target, attributes_of};
pub(crate) use reviews::Review;
pub use tokens::ServiceAccountTokens;

use crate::cache::Cache;
use tokens::{Claims, Invalid};

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<UserInfo>,
    /// For a component in this process: the name its writes are recorded under when it names
    /// no field manager.
    pub component: Option<Arc<str>>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity::user(UserInfo::anonymous())
    }

    pub fn user(user: UserInfo) -> Identity {
        Identity {
            user: Arc::new(user),
            component: None,
        }
    }

    /// A component of this process (controllers, scheduler, agent, bootstrap) through the
    /// in-process client. It is trusted as `system:masters` is.
    pub fn system(name: impl Into<String>) -> Identity {
        let name: String = name.into();
        Identity {
            user: Arc::new(UserInfo::new(name.clone(), &[MASTERS]).authenticated()),
            component: Some(name.into()),
        }
    }

    /// A component of this process acting as `user`, judged by RBAC like any client.
    pub fn component(name: impl Into<String>, user: UserInfo) -> Identity {
        let name: String = name.into();
        Identity {
            user: Arc::new(user.authenticated()),
            component: Some(name.into()),
        }
    }

    pub fn is_authenticated(&self) -> bool {
        !self.user.is_anonymous()
    }
}

/// Turns credentials into users: bearer tokens it knows, service account tokens, and the
/// subject of a client certificate the TLS layer verified.
#[derive(Default)]
pub struct Authenticator {
    tokens: HashMap<String, Arc<UserInfo>>,
    service_accounts: Option<ServiceAccountAuth>,
}

/// Tokens the cluster's own objects vouch for, checked against the watch cache: service
/// account tokens (against the objects they name) and bootstrap tokens (against their Secret).
pub struct ServiceAccountAuth {
    pub(crate) tokens: Arc<ServiceAccountTokens>,
    pub(crate) cache: Arc<Cache>,
}

impl ServiceAccountAuth {
    /// The claims of `token` if it is valid now for one of `audiences` (the API server's own
    /// when `None`) and the objects it names still stand.
    pub(crate) fn check(
        &self,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<Arc<Claims>, Invalid> {
        let now = jiff::Timestamp::now().as_second();
        let claims =
            self.tokens
                .verify_for(token, now, audiences.unwrap_or(&self.tokens.audiences))?;
        let ns = &claims.namespace;
        let sa = &claims.service_account;
        tokens::still_valid(
            "serviceaccount",
            sa,
            self.lookup("ServiceAccount", &format!("{ns}/{}", sa.name)),
            now,
        )?;
        if claims.legacy {
            // A Secret's token is good while that Secret holds it.
            let secret = claims
                .secret
                .as_ref()
                .map(|s| s.name.as_str())
                .unwrap_or("");
            if !self.secret_holds(ns, secret, token) {
                return Err(Invalid::Invalidated(format!(
                    "secret {secret:?} is gone or no longer holds this token"
                )));
            }
        } else if let Some(p) = &claims.pod {
            tokens::still_valid(
                "pod",
                p,
                self.lookup("Pod", &format!("{ns}/{}", p.name)),
                now,
            )?;
        } else if let Some(s) = &claims.secret {
            tokens::still_valid(
                "secret",
                s,
                self.lookup("Secret", &format!("{ns}/{}", s.name)),
                now,
            )?;
        } else if let Some(n) = &claims.node {
            tokens::still_valid("node", n, self.lookup("Node", &n.name), now)?;
        }
        Ok(claims)
    }

    /// The joining node a bootstrap token stands for, while its Secret vouches for it.
    pub(crate) fn bootstrap_user(&self, token: &str) -> Option<UserInfo> {
        let (id, _) = bootstrap::parse(token)?;
        let key = format!("kube-system/{}", bootstrap::secret_name(id));
        let e = self.cached("Secret", &key)?;
        bootstrap::user_of(token, &e.json, jiff::Timestamp::now().as_second())
            .map(UserInfo::authenticated)
    }

    /// Whether Secret `ns/name` stands (not being deleted) and holds `token` as its token.
    fn secret_holds(&self, ns: &str, name: &str, token: &str) -> bool {
        use base64::Engine;
        let Some(view) = self
            .cached("Secret", &format!("{ns}/{name}"))
            .and_then(|e| serde_json::from_slice::<CachedView>(&e.json).ok())
        else {
            return false;
        };
        let stored = view
            .data
            .get("token")
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok());
        view.metadata.deletion.is_none()
            && stored.is_some_and(|s| constant_time_eq(&s, token.as_bytes()))
    }

    /// The uid of the cached core object at `key`, and when it is to be deleted.
    fn lookup(&self, kind: &str, key: &str) -> Option<(String, Option<i64>)> {
        let e = self.cached(kind, key)?;
        let deletion = serde_json::from_slice::<CachedView>(&e.json)
            .ok()
            .and_then(|v| v.metadata.deletion)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second());
        Some((e.uid.clone(), deletion))
    }

    /// The watch cache's entry for the core object of `kind` at `key`.
    fn cached(&self, kind: &str, key: &str) -> Option<Arc<crate::cache::Entry>> {
        let r = api::resources::by_kind("v1", kind)?;
        self.cache.resource(r).get(key)
    }
}

/// What the token checks read of a cached object: whether it is being deleted, and (a
/// Secret's) data.
#[derive(serde::Deserialize)]
struct CachedView {
    metadata: DeletionView,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct DeletionView {
    #[serde(rename = "deletionTimestamp")]
    deletion: Option<String>,
}

impl Authenticator {
    pub fn new(tokens: impl IntoIterator<Item = (String, UserInfo)>) -> Authenticator {
        Authenticator {
            tokens: tokens
                .into_iter()
                .map(|(t, u)| (t, Arc::new(u.authenticated())))
                .collect(),
            service_accounts: None,
        }
    }

    /// Also accept the service account tokens `sa` signs.
    pub fn with_service_accounts(mut self, sa: ServiceAccountAuth) -> Authenticator {
        self.service_accounts = Some(sa);
        self
    }

    pub(crate) fn service_accounts(&self) -> Option<&ServiceAccountAuth> {
        self.service_accounts.as_ref()
    }

    /// The caller of a request: its certificate's subject if it presented one, else the owner
    /// of its bearer token, else anonymous. A token that matches no one is refused (401), not
    /// taken as anonymous, as Kubernetes does.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        certificate: Option<&CertificateUser>,
    ) -> Result<Identity, ApiError> {
        // An expired certificate authenticates no one; a token sent with it still may.
        let expired = certificate.is_some_and(|c| jiff::Timestamp::now().as_second() > c.not_after);
        if let Some(c) = certificate.filter(|_| !expired) {
            return Ok(Identity {
                user: c.user.clone(),
                component: None,
            });
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            if expired {
                return Err(ApiError::unauthorized());
            }
            return Ok(Identity::anonymous());
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        // Every known token is compared in full, so the time taken says nothing about which
        // one came close.
        let mut found = None;
        for (known, user) in &self.tokens {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(user.clone());
            }
        }
        if let Some(user) = found {
            return Ok(Identity {
                user,
                component: None,
            });
        }
        if let Some(user) = self
            .service_accounts
            .as_ref()
            .and_then(|sa| sa.bootstrap_user(token))
        {
            return Ok(Identity::user(user));
        }
        match self
            .service_accounts
            .as_ref()
            .map(|sa| sa.check(token, None))
        {
            Some(Ok(claims)) => Ok(Identity {
                user: claims.user.clone(),
                component: None,
            }),
            Some(Err(why)) if why != Invalid::NotOurs => {
                tracing::debug!(%why, "a service account token was refused");
                Err(ApiError::unauthorized())
            }
            _ => Err(ApiError::unauthorized()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The user of a client certificate the TLS layer verified, and until when it may act.
#[derive(Clone, Debug)]
pub struct CertificateUser {
    pub user: Arc<UserInfo>,
    /// The certificate's end (Unix seconds). A connection outlives it; its requests do not
    /// (Kubernetes checks a client certificate's validity on every request).
    pub not_after: i64,
}

impl CertificateUser {
    pub fn from_der(cert: &[u8]) -> Option<CertificateUser> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
        Some(CertificateUser {
            user: Arc::new(certificate_user(cert)?),
            not_after: parsed.validity().not_after.timestamp(),
        })
    }
}

/// The user a verified client certificate names: the common name, with the organizations as
/// groups.
pub fn certificate_user(cert: &[u8]) -> Option<UserInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_string)
        .collect();
    Some(
        UserInfo {
            name: name.to_string(),
            groups,
            ..UserInfo::default()
        }
        .authenticated(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_user_and_bad_ones_are_refused() {
        let auth = Authenticator::new([("t0ken".to_string(), UserInfo::new("alice", &["dev"]))]);
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().expect("a header"));
            auth.authenticate(&h, None)
        };
        let alice = with("Bearer t0ken").expect("known token");
        assert_eq!(alice.user.name, "alice");
        assert_eq!(alice.user.groups, ["dev", "system:authenticated"]);
        assert_eq!(with("Bearer nope").unwrap_err().code, 401);
        assert_eq!(with("Basic abc").unwrap_err().code, 401);
        let anon = auth
            .authenticate(&http::HeaderMap::new(), None)
            .expect("anonymous");
        assert!(!anon.is_authenticated());
        assert_eq!(anon.user.groups, ["system:unauthenticated"]);
        // A certificate wins over a token, while it is valid.
        let now = jiff::Timestamp::now().as_second();
        let mut cert = CertificateUser {
            user: Arc::new(UserInfo::new("bob", &[])),
            not_after: now + 60,
        };
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer nope".parse().expect("a header"),
        );
        assert_eq!(
            auth.authenticate(&h, Some(&cert)).expect("cert").user.name,
            "bob"
        );
        // An expired one is refused, even on the connection it opened while valid, unless a
        // token that is good comes with it.
        cert.not_after = now - 1;
        assert_eq!(auth.authenticate(&h, Some(&cert)).unwrap_err().code, 401);
        assert_eq!(
            auth.authenticate(&http::HeaderMap::new(), Some(&cert))
                .unwrap_err()
                .code,
            401
        );
        let mut good = http::HeaderMap::new();
        good.insert(
            http::header::AUTHORIZATION,
            "Bearer t0ken".parse().expect("a header"),
        );
        assert_eq!(
            auth.authenticate(&good, Some(&cert))
                .expect("token")
                .user
                .name,
            "alice"
        );
    }
}
