//! The index of roles and bindings a request is judged against. Bindings are indexed by the
//! subjects they name, per namespace, so a decision looks at the bindings of the caller's name
//! and groups only: its cost does not grow with the number of bindings in the cluster. Kept up
//! to date one object at a time.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};

use super::{Attributes, Rule, SERVICE_ACCOUNT_PREFIX, Target, UserInfo};

/// The rules of one role, shared by every binding that names it.
pub type Rules = Arc<[Rule]>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleRefKind {
    Role,
    ClusterRole,
}

/// The four RBAC kinds the index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

#[derive(Debug)]
struct Binding {
    /// `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    name: String,
    role_kind: RoleRefKind,
    role: String,
    /// User names (service accounts as their user name) and group names it grants.
    users: Vec<String>,
    groups: Vec<String>,
}

/// Bindings by the subjects they name.
#[derive(Default, Debug)]
struct BySubject {
    users: HashMap<String, Vec<Arc<Binding>>>,
    groups: HashMap<String, Vec<Arc<Binding>>>,
}

impl BySubject {
    fn add(&mut self, b: &Arc<Binding>) {
        for u in &b.users {
            self.users.entry(u.clone()).or_default().push(b.clone());
        }
        for g in &b.groups {
            self.groups.entry(g.clone()).or_default().push(b.clone());
        }
    }

    fn remove(&mut self, b: &Arc<Binding>) {
        let drop_from = |map: &mut HashMap<String, Vec<Arc<Binding>>>, key: &str| {
            if let Some(list) = map.get_mut(key) {
                list.retain(|x| !Arc::ptr_eq(x, b));
                if list.is_empty() {
                    map.remove(key);
                }
            }
        };
        for u in &b.users {
            drop_from(&mut self.users, u);
        }
        for g in &b.groups {
            drop_from(&mut self.groups, g);
        }
    }

    /// Every binding naming the user or one of its groups (a binding naming both is visited
    /// twice, which changes no decision).
    fn for_user<'a>(&'a self, user: &'a UserInfo) -> impl Iterator<Item = &'a Arc<Binding>> + 'a {
        self.users
            .get(user.name.as_str())
            .into_iter()
            .flatten()
            .chain(
                user.groups
                    .iter()
                    .filter_map(|g| self.groups.get(g.as_str()))
                    .flatten(),
            )
    }

    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

/// Roles, cluster roles and their bindings.
#[derive(Default, Debug)]
pub struct Policy {
    cluster_roles: HashMap<String, Rules>,
    /// Namespace, then role name.
    roles: HashMap<String, HashMap<String, Rules>>,
    /// Keyed `namespace/name` for RoleBindings, `name` for ClusterRoleBindings.
    bindings: HashMap<String, Arc<Binding>>,
    cluster: BySubject,
    namespaced: HashMap<String, BySubject>,
}

/// How a request was judged, with the errors met on the way (a binding naming a role that
/// does not exist), which Kubernetes reports with a refusal.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub errors: Vec<String>,
}

impl Policy {
    /// Forget every object of one kind (before loading them all again).
    pub fn clear(&mut self, kind: Kind) {
        match kind {
            Kind::ClusterRole => self.cluster_roles.clear(),
            Kind::Role => self.roles.clear(),
            Kind::ClusterRoleBinding | Kind::RoleBinding => {
                let namespaced = kind == Kind::RoleBinding;
                let keys: Vec<String> = self
                    .bindings
                    .iter()
                    .filter(|(_, b)| b.namespace.is_some() == namespaced)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    self.remove_binding(&k);
                }
            }
        }
    }

    pub fn put_cluster_role(&mut self, r: &ClusterRole) {
        let rules = r.rules.iter().flatten().map(Rule::from_policy).collect();
        self.cluster_roles
            .insert(r.metadata.name.clone().unwrap_or_default(), rules);
    }

    pub fn remove_cluster_role(&mut self, name: &str) {
        self.cluster_roles.remove(name);
    }

    pub fn put_role(&mut self, r: &Role) {
        let rules = r.rules.iter().flatten().map(Rule::from_policy).collect();
        self.roles
            .entry(r.metadata.namespace.clone().unwrap_or_default())
            .or_default()
            .insert(r.metadata.name.clone().unwrap_or_default(), rules);
    }

    pub fn remove_role(&mut self, namespace: &str, name: &str) {
        if let Some(ns) = self.roles.get_mut(namespace) {
            ns.remove(name);
            if ns.is_empty() {
                self.roles.remove(namespace);
            }
        }
    }

    pub fn put_cluster_role_binding(&mut self, b: &ClusterRoleBinding) {
        let name = b.metadata.name.clone().unwrap_or_default();
        let binding = binding(
            None,
            &name,
            &b.role_ref.kind,
            &b.role_ref.name,
            b.subjects.as_deref(),
        );
        self.put_binding(name, binding);
    }

    pub fn remove_cluster_role_binding(&mut self, name: &str) {
        self.remove_binding(name);
    }

    pub fn put_role_binding(&mut self, b: &RoleBinding) {
        let ns = b.metadata.namespace.clone().unwrap_or_default();
        let name = b.metadata.name.clone().unwrap_or_default();
        let binding = binding(
            Some(&ns),
            &name,
            &b.role_ref.kind,
            &b.role_ref.name,
            b.subjects.as_deref(),
        );
        self.put_binding(format!("{ns}/{name}"), binding);
    }

    pub fn remove_role_binding(&mut self, namespace: &str, name: &str) {
        self.remove_binding(&format!("{namespace}/{name}"));
    }

    fn put_binding(&mut self, key: String, b: Binding) {
        self.remove_binding(&key);
        let b = Arc::new(b);
        match &b.namespace {
            None => self.cluster.add(&b),
            Some(ns) => self.namespaced.entry(ns.clone()).or_default().add(&b),
        }
        self.bindings.insert(key, b);
    }

    fn remove_binding(&mut self, key: &str) {
        let Some(old) = self.bindings.remove(key) else {
            return;
        };
        match &old.namespace {
            None => self.cluster.remove(&old),
            Some(ns) => {
                if let Some(index) = self.namespaced.get_mut(ns) {
                    index.remove(&old);
                    if index.is_empty() {
                        self.namespaced.remove(ns);
                    }
                }
            }
        }
    }

    /// The rules a binding grants, or why it grants none.
    fn rules_of(&self, b: &Binding) -> Result<&Rules, String> {
        let found = match (b.role_kind, &b.namespace) {
            (RoleRefKind::ClusterRole, _) => self.cluster_roles.get(&b.role),
            (RoleRefKind::Role, Some(ns)) => self.roles.get(ns).and_then(|r| r.get(&b.role)),
            (RoleRefKind::Role, None) => None,
        };
        found.ok_or_else(|| {
            let kind = match b.role_kind {
                RoleRefKind::Role => "role",
                RoleRefKind::ClusterRole => "clusterrole",
            };
            format!("{kind}.rbac.authorization.k8s.io \"{}\" not found", b.role)
        })
    }

    /// Visit the rules that apply to `user` in `namespace` (cluster-wide bindings first, then
    /// the namespace's; `""` for cluster scope), until `visit` returns true. Returns whether it
    /// did, and the errors met.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&Rule) -> bool,
        errors: &mut Vec<String>,
    ) -> bool {
        let namespaced = (!namespace.is_empty())
            .then(|| self.namespaced.get(namespace))
            .flatten();
        let bindings = self
            .cluster
            .for_user(user)
            .chain(namespaced.into_iter().flat_map(|n| n.for_user(user)));
        for b in bindings {
            match self.rules_of(b) {
                Ok(rules) => {
                    if rules.iter().any(&mut visit) {
                        return true;
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        false
    }

    /// Whether the roles bound to the caller allow the request.
    pub fn authorize(&self, a: &Attributes<'_>) -> Decision {
        let namespace = match a.target {
            Target::Resource { namespace, .. } => namespace,
            Target::Path(_) => "",
        };
        let mut errors = Vec::new();
        let allowed = self.visit(a.user, namespace, |r| r.allows(a), &mut errors);
        if allowed {
            errors.clear();
        }
        Decision { allowed, errors }
    }

    /// Every rule that applies to `user` in `namespace` (SelfSubjectRulesReview, and the
    /// rules an escalation check compares against), and the errors met.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        self.visit(
            user,
            namespace,
            |r| {
                rules.push(r.clone());
                false
            },
            &mut errors,
        );
        (rules, errors)
    }

    /// The rules of a role or cluster role, if it exists.
    pub fn role_rules(&self, kind: RoleRefKind, namespace: &str, name: &str) -> Option<Rules> {
        match kind {
            RoleRefKind::ClusterRole => self.cluster_roles.get(name).cloned(),
            RoleRefKind::Role => self.roles.get(namespace)?.get(name).cloned(),
        }
    }

    /// How many bindings are indexed (for the benchmark's report).
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }
}

fn binding(
    namespace: Option<&str>,
    name: &str,
    role_kind: &str,
    role: &str,
    subjects: Option<&[Subject]>,
) -> Binding {
    let mut users = Vec::new();
    let mut groups = Vec::new();
    for s in subjects.into_iter().flatten() {
        match s.kind.as_str() {
            "User" => users.push(s.name.clone()),
            "Group" => groups.push(s.name.clone()),
            "ServiceAccount" => {
                // A RoleBinding's service account without a namespace is in the binding's.
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .or(namespace);
                if let Some(ns) = ns {
                    users.push(format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", s.name));
                }
            }
            _ => {}
        }
    }
    Binding {
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
        role_kind: if role_kind == "Role" {
            RoleRefKind::Role
        } else {
            RoleRefKind::ClusterRole
        },
        role: role.to_string(),
        users,
        groups,
    }
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "RoleBinding {ns}/{}", self.name),
            None => write!(f, "ClusterRoleBinding {}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("a valid object")
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        p.put_cluster_role(&from(json!({
            "metadata": {"name": "view"},
            "rules": [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"]}],
        })));
        p.put_cluster_role(&from(json!({
            "metadata": {"name": "discovery"},
            "rules": [{"nonResourceURLs": ["/api", "/api/*"], "verbs": ["get"]}],
        })));
        p.put_role(&from(json!({
            "metadata": {"name": "secrets", "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["token"]}],
        })));
        p.put_cluster_role_binding(&from(json!({
            "metadata": {"name": "discovery"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "discovery"},
            "subjects": [{"kind": "Group", "name": "system:authenticated"}],
        })));
        p.put_role_binding(&from(json!({
            "metadata": {"name": "viewers", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "bob"}, {"kind": "ServiceAccount", "name": "ci"}],
        })));
        p.put_role_binding(&from(json!({
            "metadata": {"name": "token", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secrets"},
            "subjects": [{"kind": "User", "name": "bob"}],
        })));
        p
    }

    fn res<'a>(ns: &'a str, resource: &'a str, name: &'a str) -> Target<'a> {
        Target::Resource {
            namespace: ns,
            group: "",
            resource,
            subresource: "",
            name,
        }
    }

    #[test]
    fn bindings_grant_their_roles_where_they_are() {
        let p = policy();
        let bob = UserInfo::new("bob", &[]).authenticated();
        let ask = |u: &UserInfo, verb: &str, t: Target<'_>| {
            p.authorize(&Attributes {
                user: u,
                verb,
                target: t,
            })
            .allowed
        };
        assert!(ask(&bob, "list", res("team", "pods", "")));
        assert!(!ask(&bob, "list", res("other", "pods", "")));
        assert!(!ask(&bob, "list", res("", "pods", "")));
        assert!(!ask(&bob, "delete", res("team", "pods", "p")));
        assert!(ask(&bob, "get", res("team", "secrets", "token")));
        assert!(!ask(&bob, "get", res("team", "secrets", "other")));
        assert!(ask(&bob, "get", Target::Path("/api/v1")));
        let ci = UserInfo {
            name: "system:serviceaccount:team:ci".into(),
            groups: UserInfo::service_account_groups("team"),
            ..UserInfo::default()
        };
        assert!(ask(&ci, "watch", res("team", "configmaps", "")));
        assert!(!ask(&ci, "get", res("team", "secrets", "token")));
        assert!(!ask(&UserInfo::anonymous(), "get", Target::Path("/api")));
    }

    #[test]
    fn changes_apply_one_object_at_a_time() {
        let mut p = policy();
        let bob = UserInfo::new("bob", &[]);
        let list_pods = |p: &Policy| {
            p.authorize(&Attributes {
                user: &bob,
                verb: "list",
                target: res("team", "pods", ""),
            })
        };
        assert!(list_pods(&p).allowed);
        // A binding whose subjects change stops granting the old ones.
        p.put_role_binding(&from(json!({
            "metadata": {"name": "viewers", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}],
        })));
        assert!(!list_pods(&p).allowed);
        p.put_role_binding(&from(json!({
            "metadata": {"name": "viewers", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "bob"}],
        })));
        assert!(list_pods(&p).allowed);
        // A role removed takes its grants along, and the refusal says why.
        p.remove_cluster_role("view");
        assert_eq!(
            list_pods(&p),
            Decision {
                allowed: false,
                errors: vec!["clusterrole.rbac.authorization.k8s.io \"view\" not found".into()],
            }
        );
        p.remove_role_binding("team", "viewers");
        p.remove_role_binding("team", "token");
        assert!(p.namespaced.is_empty());
        assert_eq!(p.binding_count(), 1);
    }

    #[test]
    fn rules_for_lists_cluster_then_namespace_rules() {
        let p = policy();
        let bob = UserInfo::new("bob", &[]).authenticated();
        let (rules, errors) = p.rules_for(&bob, "team");
        assert!(errors.is_empty());
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].non_resource_urls, ["/api", "/api/*"]);
        let (rules, _) = p.rules_for(&bob, "other");
        assert_eq!(rules.len(), 1);
    }
}
