//! The create-only review resources: asking whether a request would be allowed
//! (SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview), which rules apply
//! (SelfSubjectRulesReview: `kubectl auth can-i --list`), who the caller is (SelfSubjectReview:
//! `kubectl auth whoami`) and whose a token is (TokenReview). Nothing is stored.

use api::rbac::UserInfo;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use super::Identity;
use super::authz::{RequestAttributes, Target};
use crate::errors::{ApiError, ApiResult};
use crate::request::strings;
use crate::server::{ApiServer, Reply, parse_body};

const AUTHZ: &str = "authorization.k8s.io";
const AUTHN: &str = "authentication.k8s.io";

/// A review resource as discovery lists it: plural, kind, namespaced, verbs.
pub(crate) type ServedReview = (&'static str, &'static str, bool, &'static [&'static str]);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Review {
    SelfSubjectAccess,
    SelfSubjectRules,
    SubjectAccess,
    LocalSubjectAccess,
    SelfSubject,
    Token,
}

impl Review {
    const ALL: [Review; 6] = [
        Review::LocalSubjectAccess,
        Review::SelfSubjectAccess,
        Review::SelfSubjectRules,
        Review::SubjectAccess,
        Review::SelfSubject,
        Review::Token,
    ];

    pub fn group(self) -> &'static str {
        match self {
            Review::SelfSubject | Review::Token => AUTHN,
            _ => AUTHZ,
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Review::SelfSubjectAccess => "selfsubjectaccessreviews",
            Review::SelfSubjectRules => "selfsubjectrulesreviews",
            Review::SubjectAccess => "subjectaccessreviews",
            Review::LocalSubjectAccess => "localsubjectaccessreviews",
            Review::SelfSubject => "selfsubjectreviews",
            Review::Token => "tokenreviews",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Review::SelfSubjectAccess => "SelfSubjectAccessReview",
            Review::SelfSubjectRules => "SelfSubjectRulesReview",
            Review::SubjectAccess => "SubjectAccessReview",
            Review::LocalSubjectAccess => "LocalSubjectAccessReview",
            Review::SelfSubject => "SelfSubjectReview",
            Review::Token => "TokenReview",
        }
    }

    fn namespaced(self) -> bool {
        self == Review::LocalSubjectAccess
    }

    /// Discovery's view: per group, each resource's plural, kind, scope and verbs.
    pub fn groups() -> Vec<(&'static str, Vec<ServedReview>)> {
        let mut out: Vec<(&str, Vec<ServedReview>)> = Vec::new();
        for r in Review::ALL {
            let entry = (r.plural(), r.kind(), r.namespaced(), &["create"][..]);
            match out.iter_mut().find(|(g, _)| *g == r.group()) {
                Some((_, list)) => list.push(entry),
                None => out.push((r.group(), vec![entry])),
            }
        }
        out
    }

    /// The review a path names, and its namespace for the local one.
    pub fn from_path(path: &str) -> Option<(Review, Option<&str>)> {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match parts.as_slice() {
            ["apis", group, "v1", plural] => Review::ALL
                .into_iter()
                .find(|r| r.group() == *group && r.plural() == *plural && !r.namespaced())
                .map(|r| (r, None)),
            [
                "apis",
                AUTHZ,
                "v1",
                "namespaces",
                ns,
                "localsubjectaccessreviews",
            ] => Some((Review::LocalSubjectAccess, Some(*ns))),
            _ => None,
        }
    }
}

/// The attributes a review's spec asks about.
fn asked(spec: &Value) -> ApiResult<RequestAttributes> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        return Ok(RequestAttributes {
            verb: s(&r["verb"]),
            target: Target::Resource {
                namespace: s(&r["namespace"]),
                group: s(&r["group"]),
                resource: s(&r["resource"]),
                subresource: s(&r["subresource"]),
                name: s(&r["name"]),
            },
            selector: s(&r["fieldSelector"]["rawSelector"]),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(RequestAttributes {
            verb: s(&n["verb"]),
            target: Target::Path(s(&n["path"])),
            selector: String::new(),
        });
    }
    Err(ApiError::bad_request(
        "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

impl ApiServer {
    /// Answer a review: the posted object with its status filled in.
    pub(crate) async fn review(
        &self,
        review: Review,
        namespace: Option<&str>,
        req: &Request<Bytes>,
        who: &Identity,
    ) -> ApiResult<Reply> {
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed());
        }
        let mut obj = parse_body(req, false)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the request body is not an object"));
        }
        obj["apiVersion"] = json!(format!("{}/v1", review.group()));
        obj["kind"] = json!(review.kind());
        if obj.get("metadata").is_none_or(Value::is_null) {
            obj["metadata"] = json!({});
        }
        let spec = obj.get("spec").cloned().unwrap_or(json!({}));
        let status = match review {
            Review::SelfSubjectAccess => self.access_status(&who.user, &asked(&spec)?),
            Review::SubjectAccess | Review::LocalSubjectAccess => {
                let asked = asked(&spec)?;
                // A local review asks about its own namespace only, and about resources only.
                if let Some(ns) = namespace {
                    let meta_ns = obj["metadata"]["namespace"].as_str().unwrap_or(ns);
                    match &asked.target {
                        Target::Path(_) => {
                            return Err(ApiError::bad_request(
                                "spec.nonResourceAttributes: Invalid value: disallowed on this kind of request",
                            ));
                        }
                        Target::Resource { namespace, .. } if namespace != ns || meta_ns != ns => {
                            return Err(ApiError::bad_request(format!(
                                "spec.resourceAttributes.namespace: Invalid value: {namespace:?}: must match metadata.namespace"
                            )));
                        }
                        Target::Resource { .. } => {}
                    }
                }
                let subject = UserInfo {
                    name: spec["user"].as_str().unwrap_or("").to_string(),
                    uid: spec["uid"].as_str().unwrap_or("").to_string(),
                    groups: strings(&spec["groups"]),
                    extra: spec["extra"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), strings(v)))
                        .collect(),
                };
                if subject.name.is_empty() && subject.groups.is_empty() {
                    return Err(ApiError::bad_request(
                        "spec.user: Invalid value: \"\": at least one of user or group must be specified",
                    ));
                }
                self.access_status(&subject, &asked)
            }
            Review::SelfSubjectRules => {
                let ns = spec["namespace"].as_str().unwrap_or("");
                self.rules_status(&who.user, ns)
            }
            Review::SelfSubject => json!({"userInfo": user_json(&who.user)}),
            Review::Token => self.token_status(&spec),
        };
        obj["status"] = status;
        Ok(Reply::json(StatusCode::CREATED, &obj))
    }

    /// A TokenReview's answer: whose the token is and which of the asked audiences it is
    /// good for (the API server's own when none are asked).
    fn token_status(&self, spec: &Value) -> Value {
        let token = spec["token"].as_str().unwrap_or("");
        let refused = |why: &str| json!({"user": {}, "error": why});
        let Some(auth) = self.authenticator().filter(|_| !token.is_empty()) else {
            return refused("the token is not valid");
        };
        let api_audiences = self
            .token_issuer()
            .map(|t| t.audiences.clone())
            .unwrap_or_default();
        let mut asked = strings(&spec["audiences"]);
        if asked.is_empty() {
            asked = api_audiences.clone();
        }
        // A service account token says whom it is for.
        if let Some(sa) = auth.service_accounts() {
            match sa.check(token, Some(&asked)) {
                Ok(claims) => {
                    let audiences: Vec<&String> = asked
                        .iter()
                        .filter(|a| claims.audiences.contains(a))
                        .collect();
                    return json!({"authenticated": true, "user": user_json(&claims.user),
                                  "audiences": audiences});
                }
                Err(super::tokens::Invalid::NotOurs) => {}
                Err(why) => return refused(&why.to_string()),
            }
        }
        // Any other token is good for the API server's own audiences only.
        let mut headers = http::HeaderMap::new();
        let known = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .and_then(|v| {
                headers.insert(http::header::AUTHORIZATION, v);
                auth.authenticate(&headers, None).ok()
            })
            .filter(|id| id.is_authenticated());
        let audiences: Vec<&String> = asked
            .iter()
            .filter(|a| api_audiences.is_empty() || api_audiences.contains(a))
            .collect();
        match known {
            Some(_) if audiences.is_empty() => {
                refused("the token is not meant for these audiences")
            }
            Some(id) => json!({"authenticated": true, "user": user_json(&id.user),
                               "audiences": audiences}),
            None => refused("the token is not valid"),
        }
    }

    fn access_status(&self, user: &UserInfo, asked: &RequestAttributes) -> Value {
        let j = self.authorizer.judge(&asked.borrow(user), &asked.selector);
        let d = j.decision;
        let mut status = json!({"allowed": d.allowed});
        if !d.errors.is_empty() {
            status["evaluationError"] = json!(d.errors.join(", "));
        }
        if !d.allowed && !j.node_reason.is_empty() {
            status["reason"] = json!(j.node_reason);
        }
        status
    }

    fn rules_status(&self, user: &UserInfo, namespace: &str) -> Value {
        let (rules, errors) = self.authorizer.rules_for(user, namespace);
        let mut resource_rules = Vec::new();
        let mut url_rules = Vec::new();
        for r in &rules {
            if r.non_resource_urls.is_empty() {
                let mut v =
                    json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
                if !r.resource_names.is_empty() {
                    v["resourceNames"] = json!(r.resource_names);
                }
                resource_rules.push(v);
            } else {
                url_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
            }
        }
        let mut status = json!({
            "resourceRules": resource_rules,
            "nonResourceRules": url_rules,
            "incomplete": !errors.is_empty(),
        });
        if !errors.is_empty() {
            status["evaluationError"] = json!(errors.join(", "));
        }
        status
    }
}
