//! Authorization: what a request asks (its RBAC attributes, read from the method, path and
//! query alone), impersonation, and the RBAC decision against an index the watch cache keeps
//! current.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use api::Resource;
use api::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use api::rbac::{
    self, Attributes, MASTERS, Policy, SERVICE_ACCOUNT_PREFIX, Target as RbacTarget, UserInfo,
};
use http::{HeaderMap, Method};
use imbl::OrdMap;
use tracing::warn;

use super::Identity;
use super::reviews::Review;
use crate::cache::{CacheEvent, Entry, Observer};
use crate::errors::{ApiError, ApiResult};
use crate::metrics;
use crate::request::{Params, Route};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// A request's RBAC attributes, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    pub verb: String,
    pub target: Target,
    /// A list's or watch's field selector (the Node authorizer reads `spec.nodeName=`).
    pub selector: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Resource {
        namespace: String,
        group: String,
        resource: String,
        subresource: String,
        name: String,
    },
    Path(String),
}

impl RequestAttributes {
    pub fn resource(
        verb: &str,
        namespace: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> RequestAttributes {
        RequestAttributes {
            verb: verb.to_string(),
            target: Target::Resource {
                namespace: namespace.to_string(),
                group: group.to_string(),
                resource: resource.to_string(),
                subresource: subresource.to_string(),
                name: name.to_string(),
            },
            selector: String::new(),
        }
    }

    pub fn borrow<'a>(&'a self, user: &'a UserInfo) -> Attributes<'a> {
        Attributes {
            user,
            verb: &self.verb,
            target: match &self.target {
                Target::Resource {
                    namespace,
                    group,
                    resource,
                    subresource,
                    name,
                } => RbacTarget::Resource {
                    namespace,
                    group,
                    resource,
                    subresource,
                    name,
                },
                Target::Path(p) => RbacTarget::Path(p),
            },
        }
    }
}

/// The verb of a request on a resource, as Kubernetes names it.
fn resource_verb(method: &Method, named: bool, params: &Params, sub: &str) -> &'static str {
    // Streams into a container ask to create a session, whatever the method.
    if matches!(sub, "exec" | "attach" | "portforward") {
        return "create";
    }
    match *method {
        // A named GET stays a get even with `watch` (Kubernetes reads the flag only on
        // collections).
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD if params.flag("watch") => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "",
    }
}

/// What a request asks, from its method, path and query: the RBAC attributes.
pub fn attributes_of(
    method: &Method,
    path: &str,
    params: &Params,
    route: Option<&Route>,
) -> RequestAttributes {
    // Judged as the router reads it (escapes decoded), so a rule naming a path and the route
    // it reaches cannot disagree.
    let path_request = || RequestAttributes {
        verb: method.as_str().to_ascii_lowercase(),
        target: Target::Path(normalized(path)),
        selector: String::new(),
    };
    if let Some((review, namespace)) = Review::from_path(path) {
        let verb = if *method == Method::POST {
            "create"
        } else {
            ""
        };
        return RequestAttributes::resource(
            verb,
            namespace.unwrap_or(""),
            review.group(),
            review.plural(),
            "",
            "",
        );
    }
    if let Some(rest) =
        path.strip_prefix(&format!("/apis/{}/{}/", metrics::GROUP, metrics::VERSION))
    {
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let (namespace, resource, name) = match parts.as_slice() {
            ["namespaces", ns, res, name @ ..] => (*ns, *res, name.first().copied()),
            [res, name @ ..] => ("", *res, name.first().copied()),
            [] => ("", "", None),
        };
        let verb = resource_verb(method, name.is_some(), params, "");
        return RequestAttributes::resource(
            verb,
            namespace,
            metrics::GROUP,
            resource,
            "",
            name.unwrap_or(""),
        );
    }
    let Some(Route::Resource(t)) = route else {
        // A resource path the registry does not serve (an aggregated API's, or a custom kind
        // not yet in this server's cache) is judged as a resource request all the same, read
        // from the path's shape as Kubernetes reads it.
        return unserved_resource(method, path, params).unwrap_or_else(path_request);
    };
    let sub = t.subresource.as_deref().unwrap_or("");
    let verb = resource_verb(method, t.name.is_some(), params, sub);
    // A list or watch of one object by name (`kubectl get pod x -w`) names it, as in
    // Kubernetes, so rules limited to resource names can allow it.
    let selected = params.get("fieldSelector").and_then(|f| {
        let name = f.strip_prefix("metadata.name=")?;
        (!name.contains(',')).then(|| name.to_string())
    });
    let group = t.view.map_or(t.resource.group, |v| v.group);
    // A namespace's own object is inside itself: a RoleBinding there may grant reading it.
    let namespace = match (&t.namespace, t.resource.kind, &t.name) {
        (Some(ns), _, _) => ns.as_str(),
        (None, "Namespace", Some(name)) => name.as_str(),
        _ => "",
    };
    let name = match (&t.name, &selected) {
        (Some(n), _) => n.as_str(),
        (None, Some(n)) if matches!(verb, "list" | "watch") => n.as_str(),
        _ => "",
    };
    let mut a = RequestAttributes::resource(verb, namespace, group, t.resource.plural, sub, name);
    if matches!(verb, "list" | "watch") {
        a.selector = params.get("fieldSelector").unwrap_or("").to_string();
    }
    a
}

/// `/apis/{group}/{version}/[watch/][namespaces/{ns}/]{resource}[/{name}[/{sub}...]]` as
/// RBAC attributes, for paths no served resource routes (Kubernetes' RequestInfo: segments
/// past the subresource belong to it). `None` only for a bare group or version.
fn unserved_resource(method: &Method, path: &str, params: &Params) -> Option<RequestAttributes> {
    let normal = normalized(path);
    let parts: Vec<&str> = normal.trim_end_matches('/').split('/').collect();
    let ["", "apis", group, _version, rest @ ..] = parts.as_slice() else {
        return None;
    };
    let (watching, rest) = match rest {
        ["watch", more @ ..] => (true, more),
        other => (false, other),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (*ns, more),
        other => ("", other),
    };
    let (resource, name, sub) = match rest {
        [] => return None,
        [r] => (*r, "", ""),
        [r, n] => (*r, *n, ""),
        [r, n, s, ..] => (*r, *n, *s),
    };
    let verb = if watching {
        "watch"
    } else {
        resource_verb(method, !name.is_empty(), params, sub)
    };
    Some(RequestAttributes::resource(
        verb, namespace, group, resource, sub, name,
    ))
}

/// A path with each segment's `%XX` escapes decoded, as the router reads it.
fn normalized(path: &str) -> String {
    if !path.contains('%') {
        return path.to_string();
    }
    path.split('/')
        .map(crate::request::unescape)
        .collect::<Vec<_>>()
        .join("/")
}

/// The refusal Kubernetes sends: `pods "x" is forbidden: User "bob" cannot get resource ...`.
pub fn forbidden(a: &Attributes<'_>, errors: &[String]) -> ApiError {
    let mut why = rbac::forbidden_message(a);
    match errors {
        [] => {}
        [one] => why.push_str(&format!(": RBAC: {one}")),
        many => why.push_str(&format!(": RBAC: [{}]", many.join(", "))),
    }
    match a.target {
        RbacTarget::Path(_) => ApiError::forbidden(format!("forbidden: {why}")),
        RbacTarget::Resource {
            group,
            resource,
            name,
            ..
        } => {
            let what = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            let mut e = if name.is_empty() {
                ApiError::forbidden(format!("{what} is forbidden: {why}"))
            } else {
                ApiError::forbidden(format!("{what} \"{name}\" is forbidden: {why}"))
            };
            e.details.group = Some(group.to_string());
            e.details.kind = Some(resource.to_string());
            if !name.is_empty() {
                e.details.name = Some(name.to_string());
            }
            e
        }
    }
}

/// Kubernetes' `Node,RBAC` authorization: the Node authorizer for nodes' own identities, then
/// RBAC over the roles and bindings in the watch cache.
#[derive(Default)]
pub struct Authorizer {
    policy: RwLock<Policy>,
    nodes: super::node::NodeGraph,
}

/// What authorizing a request found: the decision, and why a node was not allowed.
pub struct Judgement {
    pub decision: rbac::policy::Decision,
    pub node_reason: String,
}

impl Authorizer {
    fn policy(&self) -> std::sync::RwLockReadGuard<'_, Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    fn policy_mut(&self) -> std::sync::RwLockWriteGuard<'_, Policy> {
        self.policy.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` may do what `a` asks; `system:masters` may do anything.
    pub fn decide(&self, a: &Attributes<'_>) -> rbac::policy::Decision {
        self.judge(a, "").decision
    }

    /// `decide`, given the field selector of a list or watch (a node may list the pods
    /// selected by its name), and with the node authorizer's reason for a refusal.
    pub fn judge(&self, a: &Attributes<'_>, selector: &str) -> Judgement {
        let allow = || rbac::policy::Decision {
            allowed: true,
            errors: Vec::new(),
        };
        if a.user.in_group(MASTERS) {
            return Judgement {
                decision: allow(),
                node_reason: String::new(),
            };
        }
        let mut node_reason = String::new();
        match self.nodes.judge(a, selector) {
            Some(super::node::Verdict::Allow) => {
                return Judgement {
                    decision: allow(),
                    node_reason,
                };
            }
            // What the node authorizer leaves to the `system:node` role's rules (kept, as
            // Kubernetes keeps them, in a role no binding names).
            Some(super::node::Verdict::Rules) => {
                let rules =
                    self.policy()
                        .role_rules(rbac::RoleRefKind::ClusterRole, "", "system:node");
                if rules.is_some_and(|r| r.iter().any(|rule| rule.allows(a))) {
                    return Judgement {
                        decision: allow(),
                        node_reason,
                    };
                }
            }
            Some(super::node::Verdict::NoOpinion(why)) => node_reason = why,
            None => {}
        }
        Judgement {
            decision: self.policy().authorize(a),
            node_reason,
        }
    }

    pub fn allowed(&self, a: &Attributes<'_>) -> bool {
        self.decide(a).allowed
    }

    /// Allow the request or say why not, in Kubernetes' words.
    pub fn check(&self, a: &Attributes<'_>) -> ApiResult<()> {
        self.check_selected(a, "")
    }

    /// `check`, given the field selector of a list or watch.
    pub fn check_selected(&self, a: &Attributes<'_>, selector: &str) -> ApiResult<()> {
        let j = self.judge(a, selector);
        if j.decision.allowed {
            return Ok(());
        }
        let mut e = forbidden(a, &j.decision.errors);
        if !j.node_reason.is_empty() {
            e.message.push_str(": ");
            e.message.push_str(&j.node_reason);
        }
        Err(e)
    }

    /// The rules that apply to `user` in `namespace`, with what could not be resolved. (The
    /// privileged group's power is not a rule: masters see the rules their bindings grant.)
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<rbac::Rule>, Vec<String>) {
        self.policy().rules_for(user, namespace)
    }

    pub fn role_rules(
        &self,
        kind: rbac::RoleRefKind,
        namespace: &str,
        name: &str,
    ) -> Option<rbac::Rules> {
        self.policy().role_rules(kind, namespace, name)
    }

    /// The identity a request acts as: its caller's, or the one it impersonates (`--as`,
    /// `--as-group`) if the caller may impersonate it.
    pub fn impersonate(&self, who: Identity, headers: &HeaderMap) -> ApiResult<Identity> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect()
        };
        let user = values("impersonate-user")
            .into_iter()
            .next()
            .filter(|u| !u.is_empty());
        let groups = values("impersonate-group");
        let uid = values("impersonate-uid").into_iter().next();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("impersonate-extra-")
                && let Ok(v) = value.to_str()
            {
                extra.entry(unescape(key)).or_default().push(v.to_string());
            }
        }
        let Some(name) = user else {
            if groups.is_empty() && uid.is_none() && extra.is_empty() {
                return Ok(who);
            }
            return Err(ApiError::bad_request(
                "impersonating groups, a uid or extra fields needs a user to impersonate too",
            ));
        };
        let caller = who.user.as_ref();
        let may = |verb: &str, ns: &str, group: &str, resource: &str, sub: &str, name: &str| {
            let a = RequestAttributes::resource(verb, ns, group, resource, sub, name);
            self.check(&a.borrow(caller))
        };
        let mut target = UserInfo {
            name: name.clone(),
            ..UserInfo::default()
        };
        match name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|r| r.split_once(':'))
        {
            Some((ns, account)) => {
                may("impersonate", ns, "", "serviceaccounts", "", account)?;
                if groups.is_empty() {
                    target.groups = UserInfo::service_account_groups(ns);
                }
            }
            None => may("impersonate", "", "", "users", "", &name)?,
        }
        for g in &groups {
            may("impersonate", "", "", "groups", "", g)?;
        }
        if let Some(uid) = &uid {
            may("impersonate", "", "authentication.k8s.io", "uids", "", uid)?;
        }
        for (key, vals) in &extra {
            for v in vals {
                may(
                    "impersonate",
                    "",
                    "authentication.k8s.io",
                    "userextras",
                    key,
                    v,
                )?;
            }
        }
        target.groups.extend(groups);
        target.uid = uid.unwrap_or_default();
        target.extra = extra;
        if target.is_anonymous() {
            if !target.in_group(rbac::UNAUTHENTICATED) {
                target.groups.push(rbac::UNAUTHENTICATED.to_string());
            }
            return Ok(Identity::user(target));
        }
        Ok(Identity::user(target.authenticated()))
    }
}

/// `Impersonate-Extra-` keys are percent-encoded.
fn unescape(key: &str) -> String {
    crate::request::unescape(key).into_owned()
}

impl Observer for Authorizer {
    fn follows(&self, r: &Resource) -> bool {
        r.group == RBAC_GROUP
            || (r.group.is_empty() && matches!(r.kind, "Pod" | "PersistentVolumeClaim"))
            || (r.group == "networking.k8s.io" && r.kind == "Ingress")
    }

    fn loaded(&self, r: &Resource, items: &OrdMap<String, Arc<Entry>>) {
        match r.kind {
            "Pod" => return self.nodes.pods_loaded(items.values().map(|e| e.as_ref())),
            "PersistentVolumeClaim" => {
                return self.nodes.claims_loaded(items.values().map(|e| e.as_ref()));
            }
            "Ingress" => {
                return self
                    .nodes
                    .ingresses_loaded(items.values().map(|e| e.as_ref()));
            }
            _ => {}
        }
        let mut policy = self.policy_mut();
        policy.clear(kind_of(r));
        for e in items.values() {
            put(&mut policy, r, e);
        }
    }

    fn changed(&self, r: &Resource, ev: &CacheEvent) {
        match r.kind {
            "Pod" => return self.nodes.pod_changed(ev),
            "PersistentVolumeClaim" => return self.nodes.claim_changed(ev),
            "Ingress" => return self.nodes.ingress_changed(ev),
            _ => {}
        }
        let mut policy = self.policy_mut();
        if ev.ty == crate::cache::EventType::Deleted {
            let (ns, name) = (ev.obj.namespace.as_deref().unwrap_or(""), &ev.obj.name);
            match kind_of(r) {
                rbac::policy::Kind::ClusterRole => policy.remove_cluster_role(name),
                rbac::policy::Kind::Role => policy.remove_role(ns, name),
                rbac::policy::Kind::ClusterRoleBinding => policy.remove_cluster_role_binding(name),
                rbac::policy::Kind::RoleBinding => policy.remove_role_binding(ns, name),
            }
        } else {
            put(&mut policy, r, &ev.obj);
        }
    }
}

fn kind_of(r: &Resource) -> rbac::policy::Kind {
    match r.kind {
        "ClusterRole" => rbac::policy::Kind::ClusterRole,
        "Role" => rbac::policy::Kind::Role,
        "ClusterRoleBinding" => rbac::policy::Kind::ClusterRoleBinding,
        _ => rbac::policy::Kind::RoleBinding,
    }
}

fn put(policy: &mut Policy, r: &Resource, e: &Entry) {
    fn decode<T: serde::de::DeserializeOwned>(e: &Entry) -> Option<T> {
        serde_json::from_slice(&e.json)
            .map_err(|err| warn!(object = %e.key, error = %err, "an RBAC object cannot be read; it grants nothing"))
            .ok()
    }
    let (ns, name) = (e.namespace.as_deref().unwrap_or(""), e.name.as_str());
    // An object that cannot be read grants nothing: what it granted before goes too.
    match kind_of(r) {
        rbac::policy::Kind::ClusterRole => match decode::<ClusterRole>(e) {
            Some(o) => policy.put_cluster_role(&o),
            None => policy.remove_cluster_role(name),
        },
        rbac::policy::Kind::Role => match decode::<Role>(e) {
            Some(o) => policy.put_role(&o),
            None => policy.remove_role(ns, name),
        },
        rbac::policy::Kind::ClusterRoleBinding => match decode::<ClusterRoleBinding>(e) {
            Some(o) => policy.put_cluster_role_binding(&o),
            None => policy.remove_cluster_role_binding(name),
        },
        rbac::policy::Kind::RoleBinding => match decode::<RoleBinding>(e) {
            Some(o) => policy.put_role_binding(&o),
            None => policy.remove_role_binding(ns, name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request;

    fn attrs(method: Method, path_and_query: &str) -> RequestAttributes {
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let params = Params::parse(query);
        let route = request::route(path, &api::Registry::default()).ok();
        attributes_of(&method, path, &params, route.as_ref())
    }

    #[test]
    fn requests_read_as_kubernetes_reads_them() {
        let res = RequestAttributes::resource;
        // Paths of an API this server does not serve itself read by their shape.
        assert_eq!(
            attrs(
                Method::GET,
                "/apis/demo.example.com/v1/namespaces/team/greetings/hi"
            ),
            res("get", "team", "demo.example.com", "greetings", "", "hi")
        );
        assert_eq!(
            attrs(Method::GET, "/apis/demo.example.com/v1/greetings?watch=1"),
            res("watch", "", "demo.example.com", "greetings", "", "")
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/apis/demo.example.com/v1/watch/namespaces/team/greetings"
            ),
            res("watch", "team", "demo.example.com", "greetings", "", "")
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/apis/demo.example.com/v1/namespaces/team/greetings/hi/proxy/x/y"
            ),
            res(
                "get",
                "team",
                "demo.example.com",
                "greetings",
                "proxy",
                "hi"
            )
        );
        let res = RequestAttributes::resource;
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/team/pods"),
            res("list", "team", "", "pods", "", "")
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/pods?watch=true"),
            res("watch", "", "", "pods", "", "")
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/team/pods/web/log"),
            res("get", "team", "", "pods", "log", "web")
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/api/v1/namespaces/team/pods/web/exec?command=ls"
            ),
            res("create", "team", "", "pods", "exec", "web")
        );
        assert_eq!(
            attrs(Method::DELETE, "/apis/apps/v1/namespaces/team/deployments"),
            res("deletecollection", "team", "apps", "deployments", "", "")
        );
        assert_eq!(
            attrs(
                Method::PATCH,
                "/apis/apps/v1/namespaces/team/deployments/d/scale"
            ),
            res("patch", "team", "apps", "deployments", "scale", "d")
        );
        // A namespace is inside itself.
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/team"),
            res("get", "team", "", "namespaces", "", "team")
        );
        assert_eq!(
            attrs(
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            ),
            res(
                "create",
                "",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                ""
            )
        );
        assert_eq!(
            attrs(
                Method::GET,
                "/apis/metrics.k8s.io/v1beta1/namespaces/team/pods"
            ),
            res("list", "team", "metrics.k8s.io", "pods", "", "")
        );
        // One object by name, as `kubectl get pod web -w` asks.
        assert_eq!(
            attrs(
                Method::GET,
                "/api/v1/namespaces/team/pods?watch=1&fieldSelector=metadata.name=web"
            ),
            RequestAttributes {
                selector: "metadata.name=web".into(),
                ..res("watch", "team", "", "pods", "", "web")
            }
        );
        // Paths are judged as the router reads them.
        assert_eq!(
            attrs(Method::GET, "/%62erth/v1/snapshot"),
            RequestAttributes {
                verb: "get".into(),
                target: Target::Path("/berth/v1/snapshot".into()),
                selector: String::new(),
            }
        );
        assert_eq!(
            attrs(Method::GET, "/healthz"),
            RequestAttributes {
                verb: "get".into(),
                target: Target::Path("/healthz".into()),
                selector: String::new(),
            }
        );
        assert_eq!(
            attrs(Method::POST, "/no/such/thing"),
            RequestAttributes {
                verb: "post".into(),
                target: Target::Path("/no/such/thing".into()),
                selector: String::new(),
            }
        );
    }

    #[test]
    fn refusals_carry_kubernetes_details() {
        let bob = UserInfo::new("bob", &[]);
        let a = RequestAttributes::resource("get", "team", "apps", "deployments", "", "web");
        let e = forbidden(&a.borrow(&bob), &[]);
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "deployments.apps \"web\" is forbidden: User \"bob\" cannot get resource \"deployments\" in API group \"apps\" in the namespace \"team\""
        );
        assert_eq!(
            e.to_status()["details"],
            serde_json::json!({"name": "web", "group": "apps", "kind": "deployments"})
        );
        let a = RequestAttributes {
            verb: "get".into(),
            target: Target::Path("/metrics".into()),
            selector: String::new(),
        };
        let e = forbidden(
            &a.borrow(&bob),
            &["role.rbac.authorization.k8s.io \"x\" not found".into()],
        );
        assert_eq!(
            e.message,
            "forbidden: User \"bob\" cannot get path \"/metrics\": RBAC: role.rbac.authorization.k8s.io \"x\" not found"
        );
    }

    #[test]
    fn impersonation_needs_the_impersonate_verb() {
        let authz = Authorizer::default();
        authz.policy_mut().put_cluster_role(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "imp"},
                "rules": [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["bob"]}],
            }))
            .expect("a role"),
        );
        authz.policy_mut().put_cluster_role_binding(
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "imp"},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": "imp"},
                "subjects": [{"kind": "User", "name": "alice"}],
            }))
            .expect("a binding"),
        );
        let alice = Identity::user(UserInfo::new("alice", &[]).authenticated());
        let mut h = HeaderMap::new();
        h.insert("impersonate-user", "bob".parse().expect("a header"));
        let bob = authz
            .impersonate(alice.clone(), &h)
            .expect("may impersonate bob");
        assert_eq!(bob.user.name, "bob");
        assert_eq!(bob.user.groups, ["system:authenticated"]);
        h.insert("impersonate-user", "carol".parse().expect("a header"));
        let e = authz.impersonate(alice.clone(), &h).unwrap_err();
        assert_eq!(
            e.message,
            "users \"carol\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        h.insert("impersonate-user", "bob".parse().expect("a header"));
        h.insert("impersonate-group", "admins".parse().expect("a header"));
        assert_eq!(authz.impersonate(alice, &h).unwrap_err().code, 403);
        // Masters may be anyone.
        let admin = Identity::system("admin");
        let who = authz.impersonate(admin, &h).expect("masters impersonate");
        assert_eq!(who.user.groups, ["admins", "system:authenticated"]);
    }
}
