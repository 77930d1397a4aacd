//! Service account tokens: JWTs the API server signs (ES256) for TokenRequest (`kubectl create
//! token`, the projected `kube-api-access-*` volume), verified on every request that carries
//! one, with the public key published for OIDC consumers at
//! `/.well-known/openid-configuration` and `/openid/v1/jwks`.
//!
//! A token names its service account and, when bound, the pod, secret or node it was issued
//! for (with their uids). Verifying checks the signature, the issuer, the audience and the
//! time window once per token (the result is kept for a short while); the named objects are
//! looked up in the watch cache on every request, so deleting the pod a token was bound to,
//! or recreating the service account, ends the token at once.
//!
//! Long-lived tokens for `kubernetes.io/service-account-token` Secrets are the legacy kind
//! (issuer `kubernetes/serviceaccount`, no expiry, no audience: good for this API server):
//! they are good while the Secret still holds them and the account stands.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::rbac::{SERVICE_ACCOUNT_PREFIX, UserInfo};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// The algorithm of every token berth signs.
const ALG: &str = "ES256";
/// The DER prefix of a P-256 public key's SubjectPublicKeyInfo; the 65-byte point follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// How long a verified token's signature and claims are trusted without checking again.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// At most this many verified tokens are remembered.
const VERIFIED_MAX: usize = 4096;
/// Kubernetes' limits on a requested lifetime.
pub const MIN_EXPIRATION: i64 = 600;
pub const MAX_EXPIRATION: i64 = 1 << 32;
/// A token bound to a pod stays valid this long past the end of the pod's grace period.
const DELETED_GRACE: i64 = 60;
/// The issuer of legacy (Secret-held) tokens, as Kubernetes names it.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Legacy tokens' claims, under their Kubernetes names.
const LEGACY_NAMESPACE: &str = "kubernetes.io/serviceaccount/namespace";
const LEGACY_SECRET: &str = "kubernetes.io/serviceaccount/secret.name";
const LEGACY_ACCOUNT: &str = "kubernetes.io/serviceaccount/service-account.name";
const LEGACY_ACCOUNT_UID: &str = "kubernetes.io/serviceaccount/service-account.uid";

/// What a valid token says, once its signature and times have been checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: Bound,
    pub pod: Option<Bound>,
    pub secret: Option<Bound>,
    pub node: Option<Bound>,
    pub audiences: Vec<String>,
    pub id: String,
    /// Unix seconds.
    pub expires: i64,
    /// The user the token authenticates as.
    pub user: Arc<UserInfo>,
    /// A Secret's long-lived token: good while `secret` (uid not known) still holds it.
    pub legacy: bool,
}

/// An object a token names: its name and uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    pub name: String,
    pub uid: String,
}

impl Bound {
    fn json(&self) -> Value {
        json!({"name": self.name, "uid": self.uid})
    }

    fn from_json(v: &Value) -> Option<Bound> {
        Some(Bound {
            name: v["name"].as_str()?.to_string(),
            uid: v["uid"].as_str()?.to_string(),
        })
    }
}

impl Claims {
    /// The user a token with these claims authenticates as, with the extra fields
    /// Kubernetes adds (credential id, bound pod and node).
    fn user_of(&self) -> UserInfo {
        let mut extra = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            extra.insert(
                format!("authentication.kubernetes.io/{k}"),
                vec![v.to_string()],
            );
        };
        if !self.id.is_empty() {
            put("credential-id", &format!("JTI={}", self.id));
        }
        if let Some(n) = &self.node {
            put("node-name", &n.name);
            put("node-uid", &n.uid);
        }
        if let Some(p) = &self.pod {
            put("pod-name", &p.name);
            put("pod-uid", &p.uid);
        }
        UserInfo {
            name: format!(
                "{SERVICE_ACCOUNT_PREFIX}{}:{}",
                self.namespace, self.service_account.name
            ),
            uid: self.service_account.uid.clone(),
            groups: UserInfo::service_account_groups(&self.namespace),
            extra,
        }
    }
}

/// Why a token was not accepted (said in TokenReview's status and the server's log).
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not a JWT, or not one berth issued: other authenticators may know it.
    NotOurs,
    Malformed,
    Signature,
    Audience,
    Expired,
    NotYetValid,
    /// An object it names is gone, was recreated, or is being deleted.
    Invalidated(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NotOurs => f.write_str("the token was not issued by this cluster"),
            Invalid::Malformed => f.write_str("the token is malformed"),
            Invalid::Signature => f.write_str("the token's signature is invalid"),
            Invalid::Audience => f.write_str("the token's audiences are not accepted"),
            Invalid::Expired => f.write_str("the token has expired"),
            Invalid::NotYetValid => f.write_str("the token is not valid yet"),
            Invalid::Invalidated(why) => write!(f, "the token has been invalidated: {why}"),
        }
    }
}

/// What a new token is for.
pub struct Request<'a> {
    pub namespace: &'a str,
    pub service_account: Bound,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub pod: Option<Bound>,
    pub secret: Option<Bound>,
    pub node: Option<Bound>,
    /// Unix seconds.
    pub now: i64,
}

/// What a legacy token, for a `kubernetes.io/service-account-token` Secret, names.
pub struct LegacyToken<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub service_account_uid: &'a str,
    pub secret: &'a str,
}

/// The cluster's service account token issuer: its key, its name and the audiences the API
/// server accepts.
pub struct ServiceAccountTokens {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
    pub issuer: String,
    /// What a token must be meant for to be accepted here; also the default audience of a
    /// new token.
    pub audiences: Vec<String>,
    /// Longer requests are shortened to this (`--service-account-max-token-expiration`).
    pub max_expiration: Option<i64>,
    verified: Mutex<HashMap<String, (Arc<Claims>, Instant)>>,
}

impl ServiceAccountTokens {
    pub fn new(
        pkcs8: &[u8],
        issuer: String,
        audiences: Vec<String>,
        max_expiration: Option<i64>,
    ) -> Result<ServiceAccountTokens, String> {
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| format!("the service account key is not a P-256 key: {e}"))?;
        // As Kubernetes names keys: the hash of the public key's DER form.
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(ServiceAccountTokens {
            key,
            kid,
            rng,
            issuer,
            audiences,
            max_expiration,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// An issuer with a key of its own, made now (for tests and benchmarks: a cluster keeps
    /// its key in its data directory).
    pub fn with_new_key(issuer: &str) -> Result<ServiceAccountTokens, String> {
        let key = EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .map_err(|_| "could not generate a key".to_string())?;
        ServiceAccountTokens::new(key.as_ref(), issuer.into(), vec![issuer.into()], None)
    }

    /// Sign a token for `r`; returns it with its expiry (unix seconds).
    pub fn issue(&self, r: &Request<'_>) -> Result<(String, i64), String> {
        let expires = r.now + r.expiration_seconds;
        let mut k8s = json!({
            "namespace": r.namespace,
            "serviceaccount": r.service_account.json(),
        });
        for (field, b) in [("pod", &r.pod), ("secret", &r.secret), ("node", &r.node)] {
            if let Some(b) = b {
                k8s[field] = b.json();
            }
        }
        let claims = json!({
            "aud": r.audiences,
            "exp": expires,
            "iat": r.now,
            "iss": self.issuer,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
            "nbf": r.now,
            "sub": format!("{SERVICE_ACCOUNT_PREFIX}{}:{}", r.namespace, r.service_account.name),
        });
        Ok((self.sign(&claims)?, expires))
    }

    /// Sign a legacy token for a token Secret: no expiry, good while the Secret holds it.
    pub fn issue_legacy(&self, t: &LegacyToken<'_>) -> Result<String, String> {
        self.sign(&json!({
            "iss": LEGACY_ISSUER,
            LEGACY_NAMESPACE: t.namespace,
            LEGACY_SECRET: t.secret,
            LEGACY_ACCOUNT: t.service_account,
            LEGACY_ACCOUNT_UID: t.service_account_uid,
            "sub": format!("{SERVICE_ACCOUNT_PREFIX}{}:{}", t.namespace, t.service_account),
        }))
    }

    fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": ALG, "kid": self.kid});
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signed.as_bytes())
            .map_err(|_| "signing the token failed".to_string())?;
        Ok(format!("{signed}.{}", B64.encode(sig.as_ref())))
    }

    /// The claims of a token this issuer signed, for the API's audiences, valid at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Claims>, Invalid> {
        self.verify_for(token, now, &self.audiences)
    }

    /// As `verify`, for a token meant for any of `audiences` (TokenReview may name others).
    pub fn verify_for(
        &self,
        token: &str,
        now: i64,
        audiences: &[String],
    ) -> Result<Arc<Claims>, Invalid> {
        let claims = self.verified(token)?;
        if now >= claims.expires {
            return Err(Invalid::Expired);
        }
        if !claims.audiences.iter().any(|a| audiences.contains(a)) {
            return Err(Invalid::Audience);
        }
        Ok(claims)
    }

    /// The signature and claims of `token`, checked once and then remembered.
    fn verified(&self, token: &str) -> Result<Arc<Claims>, Invalid> {
        {
            let seen = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((c, at)) = seen.get(token)
                && at.elapsed() < VERIFIED_FOR
            {
                return Ok(c.clone());
            }
        }
        let claims = Arc::new(self.check(token, jiff::Timestamp::now().as_second())?);
        let mut seen = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= VERIFIED_MAX {
            seen.retain(|_, (_, at)| at.elapsed() < VERIFIED_FOR);
            if seen.len() >= VERIFIED_MAX {
                seen.clear();
            }
        }
        seen.insert(token.to_string(), (claims.clone(), Instant::now()));
        Ok(claims)
    }

    fn check(&self, token: &str, now: i64) -> Result<Claims, Invalid> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Invalid::NotOurs);
        };
        let decode = |part: &str| B64.decode(part).map_err(|_| Invalid::NotOurs);
        let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| Invalid::NotOurs)?;
        let payload: Value = serde_json::from_slice(&decode(p)?).map_err(|_| Invalid::NotOurs)?;
        let legacy = payload["iss"].as_str() == Some(LEGACY_ISSUER);
        if !legacy && payload["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(Invalid::NotOurs);
        }
        if header["alg"].as_str() != Some(ALG) {
            return Err(Invalid::Signature);
        }
        let sig = decode(s).map_err(|_| Invalid::Signature)?;
        let signed = &token[..h.len() + 1 + p.len()];
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| Invalid::Signature)?;
        if legacy {
            let text = |k: &str| {
                payload[k]
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .ok_or(Invalid::Malformed)
            };
            let mut claims = Claims {
                namespace: text(LEGACY_NAMESPACE)?,
                service_account: Bound {
                    name: text(LEGACY_ACCOUNT)?,
                    uid: text(LEGACY_ACCOUNT_UID)?,
                },
                pod: None,
                secret: Some(Bound {
                    name: text(LEGACY_SECRET)?,
                    uid: String::new(),
                }),
                node: None,
                // Meant for the API server alone.
                audiences: self.audiences.clone(),
                id: String::new(),
                expires: i64::MAX,
                user: Arc::default(),
                legacy: true,
            };
            claims.user = Arc::new(claims.user_of().authenticated());
            return Ok(claims);
        }
        let k8s = &payload["kubernetes.io"];
        let audiences = match &payload["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => return Err(Invalid::Malformed),
        };
        let expires = payload["exp"].as_i64().ok_or(Invalid::Malformed)?;
        if payload["nbf"].as_i64().is_some_and(|nbf| nbf > now + 60) {
            return Err(Invalid::NotYetValid);
        }
        let mut claims = Claims {
            namespace: k8s["namespace"]
                .as_str()
                .ok_or(Invalid::Malformed)?
                .to_string(),
            service_account: Bound::from_json(&k8s["serviceaccount"]).ok_or(Invalid::Malformed)?,
            pod: Bound::from_json(&k8s["pod"]),
            secret: Bound::from_json(&k8s["secret"]),
            node: Bound::from_json(&k8s["node"]),
            audiences,
            id: payload["jti"].as_str().unwrap_or("").to_string(),
            expires,
            user: Arc::default(),
            legacy: false,
        };
        claims.user = Arc::new(claims.user_of().authenticated());
        Ok(claims)
    }

    /// `/openid/v1/jwks`: the public key tokens are checked with.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": ALG,
            "x": B64.encode(&point[1..33]),
            "y": B64.encode(&point[33..65]),
        }]})
    }

    /// `/.well-known/openid-configuration`.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/openid/v1/jwks", self.issuer.trim_end_matches('/')),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALG],
        })
    }
}

/// Whether an object a token names still stands: the same incarnation (uid), and not deleted
/// more than a minute ago (a pod being deleted keeps its token through its grace period).
pub fn still_valid(
    what: &str,
    b: &Bound,
    found: Option<(String, Option<i64>)>,
    now: i64,
) -> Result<(), Invalid> {
    match found {
        None => Err(Invalid::Invalidated(format!("{what} {:?} is gone", b.name))),
        Some((uid, _)) if uid != b.uid => Err(Invalid::Invalidated(format!(
            "{what} {:?} was recreated (uid {uid}, the token names {})",
            b.name, b.uid
        ))),
        Some((_, Some(deleted))) if deleted < now - DELETED_GRACE => Err(Invalid::Invalidated(
            format!("{what} {:?} has been deleted", b.name),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn issuer() -> ServiceAccountTokens {
        ServiceAccountTokens::with_new_key("https://kubernetes.default.svc.cluster.local").unwrap()
    }

    fn bound(name: &str) -> Bound {
        Bound {
            name: name.into(),
            uid: format!("{name}-uid"),
        }
    }

    fn request(now: i64) -> Request<'static> {
        Request {
            namespace: "team",
            service_account: bound("builder"),
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
            expiration_seconds: 600,
            pod: Some(bound("web")),
            secret: None,
            node: Some(bound("n1")),
            now,
        }
    }

    #[test]
    fn a_token_names_its_account_pod_and_node_and_lasts_as_asked() {
        let t = issuer();
        let now = jiff::Timestamp::now().as_second();
        let (token, exp) = t.issue(&request(now)).unwrap();
        assert_eq!(exp, now + 600);
        let c = t.verify(&token, now).unwrap();
        assert_eq!(c.namespace, "team");
        assert_eq!(c.service_account, bound("builder"));
        assert_eq!(c.pod, Some(bound("web")));
        let u = &c.user;
        assert_eq!(u.name, "system:serviceaccount:team:builder");
        assert_eq!(u.uid, "builder-uid");
        assert!(u.in_group("system:serviceaccounts:team"));
        assert_eq!(
            u.extra["authentication.kubernetes.io/pod-name"],
            vec!["web".to_string()]
        );
        assert_eq!(
            u.extra["authentication.kubernetes.io/node-name"],
            vec!["n1".to_string()]
        );
        assert!(u.extra["authentication.kubernetes.io/credential-id"][0].starts_with("JTI="));
        assert_eq!(t.verify(&token, exp), Err(Invalid::Expired));
    }

    #[test]
    fn forged_foreign_and_misaddressed_tokens_are_refused() {
        let (t, other) = (issuer(), issuer());
        let now = jiff::Timestamp::now().as_second();
        let (token, _) = t.issue(&request(now)).unwrap();
        // Signed by another key with the same issuer name.
        let (forged, _) = other.issue(&request(now)).unwrap();
        assert_eq!(t.verify(&forged, now), Err(Invalid::Signature));
        // A changed claim breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["kubernetes.io"]["namespace"] = json!("kube-system");
        let edited = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(t.verify(&edited, now), Err(Invalid::Signature));
        // Not a JWT at all, or from another issuer: someone else's to judge.
        assert_eq!(t.verify("abc.def", now), Err(Invalid::NotOurs));
        let mut r = request(now);
        r.audiences = vec!["vault".into()];
        let (for_vault, _) = t.issue(&r).unwrap();
        assert_eq!(t.verify(&for_vault, now), Err(Invalid::Audience));
        assert!(t.verify_for(&for_vault, now, &["vault".into()]).is_ok());
    }

    #[test]
    fn the_published_key_verifies_the_signature() {
        let t = issuer();
        let (token, _) = t.issue(&request(0)).unwrap();
        let jwk = &t.jwks()["keys"][0];
        let mut point = vec![4u8];
        point.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
        let (signed, sig) = token.rsplit_once('.').unwrap();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(signed.as_bytes(), &B64.decode(sig).unwrap())
            .unwrap();
        let header: Value =
            serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["kid"], jwk["kid"]);
        assert_eq!(
            t.discovery()["jwks_uri"],
            "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
        );
    }

    #[test]
    fn bound_objects_must_be_the_same_incarnation() {
        let b = bound("web");
        assert!(still_valid("pod", &b, Some(("web-uid".into(), None)), 100).is_ok());
        assert!(still_valid("pod", &b, None, 100).is_err());
        assert!(still_valid("pod", &b, Some(("other".into(), None)), 100).is_err());
        // Being deleted: valid through the grace period and a minute after.
        assert!(still_valid("pod", &b, Some(("web-uid".into(), Some(90))), 100).is_ok());
        assert!(still_valid("pod", &b, Some(("web-uid".into(), Some(30))), 100).is_err());
    }
}
