//! The audit log: one audit.k8s.io/v1 `Event` line per request served over HTTPS (refused ones
//! included), at the level the operator chose: `Metadata` (who, what, from where, the answer),
//! `Request` (and the request's object), or `RequestResponse` (and the response's object, for
//! responses that are not streams). Each line is written whole before the response goes out.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use api::rbac::UserInfo;
use bytes::Bytes;
use http::{Method, Uri};
use serde_json::{Value, json};

use crate::auth::{Target, attributes_of};
use crate::request::{self, Params};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Metadata,
    Request,
    RequestResponse,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "Metadata" => Some(Level::Metadata),
            "Request" => Some(Level::Request),
            "RequestResponse" => Some(Level::RequestResponse),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Metadata => "Metadata",
            Level::Request => "Request",
            Level::RequestResponse => "RequestResponse",
        }
    }
}

pub struct AuditLog {
    level: Level,
    out: Mutex<std::fs::File>,
}

/// What is known of a request when it is logged.
pub struct Record<'a> {
    /// What the server serves, to read the request's path by.
    pub registry: &'a api::Registry,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub user_agent: Option<&'a str>,
    pub source: IpAddr,
    /// Who authenticated (none: the credentials were refused).
    pub user: Option<&'a UserInfo>,
    /// Who the request acted as, when it impersonated someone.
    pub impersonated: Option<&'a UserInfo>,
    pub code: u16,
    /// Whether authorization allowed it (none: it never got that far).
    pub allowed: Option<bool>,
    pub request_body: Option<&'a Bytes>,
    pub response_body: Option<&'a Bytes>,
    pub received: jiff::Timestamp,
    /// A stream (watch, exec...) logs when its response starts.
    pub streaming: bool,
}

fn user_json(u: &UserInfo) -> Value {
    json!({"username": u.name, "groups": u.groups})
}

/// A request or response body as JSON: JSON itself, or Kubernetes protobuf decoded.
fn object(b: Option<&Bytes>) -> Option<Value> {
    let b = b?;
    serde_json::from_slice(b)
        .ok()
        .or_else(|| api::proto::decode_object(b).ok())
}

impl AuditLog {
    pub fn open(path: &Path, level: Level) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            level,
            out: Mutex::new(f),
        })
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn log(&self, r: &Record<'_>) {
        let line = self.event(r);
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = out.write_all(&bytes) {
            tracing::warn!(error = %e, "writing the audit log failed");
        }
    }

    fn event(&self, r: &Record<'_>) -> Value {
        let params = Params::parse(r.uri.query());
        let route = request::route(r.uri.path(), r.registry).ok();
        let asked = attributes_of(r.method, r.uri.path(), &params, route.as_ref());
        let now = jiff::Timestamp::now();
        let stamp = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let mut e = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": self.level.as_str(),
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": if r.streaming { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": r.uri.to_string(),
            "verb": asked.verb,
            "user": r.user.map_or(json!({}), user_json),
            "sourceIPs": [r.source.to_string()],
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": stamp(r.received),
            "stageTimestamp": stamp(now),
        });
        if let Some(ua) = r.user_agent {
            e["userAgent"] = json!(ua);
        }
        if let Some(u) = r.impersonated {
            e["impersonatedUser"] = user_json(u);
        }
        if let Target::Resource {
            namespace,
            group,
            resource,
            subresource,
            name,
        } = &asked.target
        {
            let mut o = json!({"resource": resource, "apiGroup": group});
            for (k, v) in [
                ("namespace", namespace),
                ("name", name),
                ("subresource", subresource),
            ] {
                if !v.is_empty() {
                    o[k] = json!(v);
                }
            }
            if let Some(request::Route::Resource(t)) = &route {
                o["apiVersion"] = json!(t.view.map_or(t.resource.version, |v| v.version));
            }
            e["objectRef"] = o;
        }
        if let Some(allowed) = r.allowed {
            e["annotations"] = json!({
                "authorization.k8s.io/decision": if allowed { "allow" } else { "forbid" },
                "authorization.k8s.io/reason": "",
            });
        }
        if self.level >= Level::Request
            && let Some(o) = object(r.request_body)
        {
            e["requestObject"] = o;
        }
        if self.level >= Level::RequestResponse
            && let Some(o) = object(r.response_body)
        {
            e["responseObject"] = o;
        }
        e
    }
}
