//! API errors and their `Status` form: the code, the machine-readable reason and, for invalid
//! objects, one cause per field, so that kubectl prints them the way it prints Kubernetes'.

use api::Resource;
use api::errors::FieldErrors;
use serde_json::{Value, json};

/// One `details.causes[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Kept out of line: errors travel through every `Result` of the request path.
    pub details: Box<Details>,
}

/// `Status.details`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    pub name: Option<String>,
    pub group: Option<String>,
    /// The resource (`pods`) for most errors, the kind (`Pod`) for Invalid, as Kubernetes does.
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
    /// Seconds a client should wait before retrying.
    pub retry_after: Option<u32>,
    /// Write `details` even when it says nothing (`{}`), as Kubernetes does for a path it
    /// does not serve (kubectl debug reads it and fails on a missing one).
    pub always: bool,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    fn about(mut self, r: &Resource, name: &str) -> ApiError {
        self.details.name = Some(name.to_string());
        self.details.group = Some(r.group.to_string());
        self.details.kind = Some(r.plural.to_string());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn forbidden_on(r: &Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", r.group_resource()),
        )
        .about(r, name)
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.group_resource()),
        )
        .about(r, name)
    }

    /// The plain 404 for paths the server does not serve.
    pub fn no_route() -> ApiError {
        let mut e = ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details.always = true;
        e
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    pub fn already_exists(r: &Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.group_resource()),
        )
        .about(r, name)
    }

    pub fn conflict(r: &Resource, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                r.group_resource()
            ),
        )
        .about(r, name)
    }

    /// The optimistic-concurrency failure every client knows to retry.
    pub fn modified(r: &Resource, name: &str) -> ApiError {
        ApiError::conflict(
            r,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn apply_conflict(
        r: &Resource,
        name: &str,
        message: String,
        paths: Vec<String>,
    ) -> ApiError {
        let mut e = ApiError::new(409, "Conflict", message).about(r, name);
        e.details.causes = paths
            .into_iter()
            .map(|p| Cause {
                reason: "FieldManagerConflict".into(),
                message: "conflict with another manager".into(),
                field: Some(p),
            })
            .collect();
        e
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn invalid(r: &Resource, name: &str, errs: &FieldErrors) -> ApiError {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {errs}", r.kind),
        );
        e.details.name = Some(name.to_string());
        e.details.group = Some(r.group.to_string());
        e.details.kind = Some(r.kind.to_string());
        e.details.causes = errs
            .0
            .iter()
            .map(|fe| Cause {
                reason: fe.reason().into(),
                message: fe.body(),
                field: Some(fe.field.clone()),
            })
            .collect();
        e
    }

    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", message)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }

    pub fn unsupported_media_type(ct: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    /// Past the requests allowed in flight (kube-apiserver's words).
    pub fn too_many_requests() -> ApiError {
        let mut e = ApiError::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.details.retry_after = Some(1);
        e
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(503, "ServiceUnavailable", message);
        e.details.retry_after = Some(1);
        e
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let d = &self.details;
        let mut details = serde_json::Map::new();
        if let Some(n) = &d.name {
            details.insert("name".into(), json!(n));
        }
        // The core group is the empty string, which Kubernetes leaves out.
        if let Some(g) = d.group.as_ref().filter(|g| !g.is_empty()) {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &d.kind {
            details.insert("kind".into(), json!(k));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|c| {
                    let mut v = json!({"reason": c.reason, "message": c.message});
                    if let Some(f) = &c.field {
                        v["field"] = json!(f);
                    }
                    v
                })
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(r) = d.retry_after {
            details.insert("retryAfterSeconds".into(), json!(r));
        }
        if !details.is_empty() || d.always {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> ApiError {
        match e {
            store::StoreError::Closed => ApiError::unavailable("the store is shutting down"),
            // Retryable: nothing was stored. A full disk is 507, as HTTP names it; a store
            // reopening after an I/O error is 503.
            store::StoreError::Unavailable {
                reason,
                no_space: true,
            } => {
                let mut e = ApiError::new(
                    507,
                    "InsufficientStorage",
                    format!("Internal error occurred: storage is full: {reason}"),
                );
                e.details.retry_after = Some(5);
                e
            }
            store::StoreError::Unavailable { reason, .. } => {
                ApiError::unavailable(format!("storage is unavailable: {reason}"))
            }
            other => {
                let mut chain = other.to_string();
                let mut source = std::error::Error::source(&other);
                while let Some(s) = source {
                    chain.push_str(": ");
                    chain.push_str(&s.to_string());
                    source = s.source();
                }
                ApiError::internal(chain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::errors::Path;

    #[test]
    fn invalid_status_has_causes() {
        let pods = api::resources::find("", "v1", "pods").unwrap();
        let mut errs = FieldErrors::default();
        errs.required(&Path::root("spec").child("containers"), "");
        let s = ApiError::invalid(pods, "web", &errs).to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(
            s["message"],
            "Pod \"web\" is invalid: spec.containers: Required value"
        );
        assert_eq!(s["details"]["kind"], "Pod");
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.containers");
    }

    #[test]
    fn not_found_names_the_group_resource() {
        let deploys = api::resources::find("apps", "v1", "deployments").unwrap();
        let s = ApiError::not_found(deploys, "web").to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["details"]["kind"], "deployments");
    }

    #[test]
    fn status_bodies_are_kubernetes_own_text() {
        let pods = api::resources::find("", "v1", "pods").unwrap();
        let text = |e: &ApiError| String::from_utf8(api::wire::to_vec(&e.to_status())).unwrap();
        assert_eq!(
            text(&ApiError::not_found(pods, "x")),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404}"#
        );
        assert_eq!(
            text(&ApiError::no_route()),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#
        );
        let deploys = api::resources::find("apps", "v1", "deployments").unwrap();
        assert!(
            text(&ApiError::not_found(deploys, "web"))
                .contains(r#""details":{"name":"web","group":"apps","kind":"deployments"}"#)
        );
    }
}
