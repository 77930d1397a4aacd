//! Role-based access control as Kubernetes defines it: who a request comes from, what it asks
//! to do, whether a rule allows it, whether one set of rules covers another (the escalation
//! check), and the index of roles and bindings that answers a request without scanning them.
//! Pure: the API server feeds the index from its watch cache.

mod bootstrap;
mod covers;
pub mod policy;

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::PolicyRule;

pub use self::bootstrap::{AUTOUPDATE_ANNOTATION, BOOTSTRAPPING_LABEL, bootstrap_objects};
pub use self::covers::{covers, describe_rule};
pub use self::policy::{Policy, RoleRefKind, Rules};

/// The group every caller that presented valid credentials is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of callers without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of callers without credentials.
pub const ANONYMOUS: &str = "system:anonymous";
/// Members of this group may do anything, whatever the roles say (kube-apiserver's privileged
/// group).
pub const MASTERS: &str = "system:masters";
/// The group of every node's identity.
pub const NODES: &str = "system:nodes";
/// A node's user name is this prefix and the node's name.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// A service account's user name is this prefix, its namespace, `:` and its name.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Every service account is in this group, and in this prefix plus its namespace.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";

/// Who is making a request, as an authenticator establishes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    pub fn new(name: impl Into<String>, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        }
    }

    /// The caller without credentials.
    pub fn anonymous() -> UserInfo {
        UserInfo::new(ANONYMOUS, &[UNAUTHENTICATED])
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Add `system:authenticated`, as every authenticator does for a user it recognised.
    pub fn authenticated(mut self) -> UserInfo {
        if !self.is_anonymous() && !self.in_group(AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_string());
        }
        self
    }

    /// The namespace and name of a service account user (`system:serviceaccount:NS:NAME`).
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
            .split_once(':')
    }

    /// The user of service account `namespace/name`, in its groups.
    pub fn of_service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo {
            name: format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"),
            groups: UserInfo::service_account_groups(namespace),
            ..UserInfo::default()
        }
    }

    /// The groups a service account's user is in.
    pub fn service_account_groups(namespace: &str) -> Vec<String> {
        vec![
            SERVICE_ACCOUNTS.to_string(),
            format!("{SERVICE_ACCOUNTS}:{namespace}"),
            AUTHENTICATED.to_string(),
        ]
    }
}

/// What a request asks to do, in RBAC's terms.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    pub user: &'a UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or a
    /// special verb (`impersonate`, `bind`, `escalate`, `use`, `approve`, ...).
    pub verb: &'a str,
    pub target: Target<'a>,
}

#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// An API resource; empty strings for what the request does not name.
    Resource {
        namespace: &'a str,
        group: &'a str,
        resource: &'a str,
        subresource: &'a str,
        name: &'a str,
    },
    /// Any other path (`/healthz`, `/api`, `/metrics`).
    Path(&'a str),
}

/// A rule, with its lists as RBAC reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

const ALL: &str = "*";

impl Rule {
    pub fn from_policy(r: &PolicyRule) -> Rule {
        Rule {
            verbs: r.verbs.clone(),
            api_groups: r.api_groups.clone().unwrap_or_default(),
            resources: r.resources.clone().unwrap_or_default(),
            resource_names: r.resource_names.clone().unwrap_or_default(),
            non_resource_urls: r.non_resource_urls.clone().unwrap_or_default(),
        }
    }

    pub fn to_policy(&self) -> PolicyRule {
        let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        PolicyRule {
            verbs: self.verbs.clone(),
            api_groups: some(&self.api_groups),
            resources: some(&self.resources),
            resource_names: some(&self.resource_names),
            non_resource_urls: some(&self.non_resource_urls),
        }
    }

    /// Whether this rule allows the request (Kubernetes' `RuleAllows`).
    pub fn allows(&self, a: &Attributes<'_>) -> bool {
        if !self.verbs.iter().any(|v| v == ALL || v == a.verb) {
            return false;
        }
        match a.target {
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                self.api_groups.iter().any(|g| g == ALL || g == group)
                    && self
                        .resources
                        .iter()
                        .any(|r| resource_matches(r, resource, subresource))
                    && (self.resource_names.is_empty()
                        || (!name.is_empty() && self.resource_names.iter().any(|n| n == name)))
            }
            Target::Path(path) => self.non_resource_urls.iter().any(|u| url_matches(u, path)),
        }
    }
}

/// `pods`, `pods/log`, `*` or `*/scale` against a request for `resource` and `subresource`.
fn resource_matches(rule: &str, resource: &str, subresource: &str) -> bool {
    if rule == ALL {
        return true;
    }
    if subresource.is_empty() {
        return rule == resource;
    }
    match rule.split_once('/') {
        Some((r, s)) => s == subresource && (r == resource || r == ALL),
        None => false,
    }
}

/// A non-resource URL rule: exact, `*`, or a prefix ending in `*`.
fn url_matches(rule: &str, path: &str) -> bool {
    if rule == ALL || rule == path {
        return true;
    }
    rule.strip_suffix('*')
        .is_some_and(|prefix| path.starts_with(prefix))
}

/// What Kubernetes says when a request is refused: `User "bob" cannot list resource "pods" in
/// API group "" in the namespace "default"`.
pub fn forbidden_message(a: &Attributes<'_>) -> String {
    let user = &a.user.name;
    match a.target {
        Target::Path(path) => format!("User \"{user}\" cannot {} path \"{path}\"", a.verb),
        Target::Resource {
            namespace,
            group,
            resource,
            subresource,
            ..
        } => {
            let resource = if subresource.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{namespace}\"")
            };
            format!(
                "User \"{user}\" cannot {} resource \"{resource}\" in API group \"{group}\" {scope}",
                a.verb
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    fn on(group: &'static str, resource: &'static str) -> Target<'static> {
        Target::Resource {
            namespace: "default",
            group,
            resource,
            subresource: "",
            name: "",
        }
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        let user = UserInfo::new("bob", &[]);
        let ask = |verb, target| Attributes {
            user: &user,
            verb,
            target,
        };
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(pods.allows(&ask("get", on("", "pods"))));
        assert!(!pods.allows(&ask("delete", on("", "pods"))));
        assert!(!pods.allows(&ask("get", on("apps", "pods"))));
        let sub = |sub, name| Target::Resource {
            namespace: "default",
            group: "",
            resource: "pods",
            subresource: sub,
            name,
        };
        // A rule for pods says nothing about their subresources.
        assert!(!pods.allows(&ask("get", sub("log", "p"))));
        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(logs.allows(&ask("get", sub("log", "p"))));
        let any_status = rule(&["get"], &[""], &["*/status"], &[]);
        assert!(any_status.allows(&ask("get", sub("status", "p"))));
        assert!(!any_status.allows(&ask("get", sub("log", "p"))));
        assert!(!any_status.allows(&ask("get", sub("", "p"))));
        let named = rule(&["get"], &[""], &["pods"], &["web"]);
        assert!(named.allows(&ask("get", sub("", "web"))));
        assert!(!named.allows(&ask("get", sub("", "db"))));
        // A list names no object, so a rule limited to names never allows it.
        assert!(!named.allows(&ask("get", sub("", ""))));
        let star = rule(&["*"], &["*"], &["*"], &[]);
        assert!(star.allows(&ask("escalate", sub("log", "p"))));
        let urls = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..Rule::default()
        };
        assert!(urls.allows(&ask("get", Target::Path("/healthz"))));
        assert!(urls.allows(&ask("get", Target::Path("/apis/apps/v1"))));
        assert!(!urls.allows(&ask("get", Target::Path("/apis"))));
        assert!(!urls.allows(&ask("post", Target::Path("/healthz"))));
        // Resource rules never allow paths, nor path rules resources.
        assert!(!star.allows(&ask("get", Target::Path("/healthz"))));
        assert!(!urls.allows(&ask("get", on("", "pods"))));
    }

    #[test]
    fn refusals_read_as_kubernetes_words_them() {
        let user = UserInfo::new("bob", &[]);
        let a = Attributes {
            user: &user,
            verb: "list",
            target: on("", "pods"),
        };
        assert_eq!(
            forbidden_message(&a),
            "User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let a = Attributes {
            user: &user,
            verb: "get",
            target: Target::Resource {
                namespace: "",
                group: "",
                resource: "nodes",
                subresource: "proxy",
                name: "n1",
            },
        };
        assert_eq!(
            forbidden_message(&a),
            "User \"bob\" cannot get resource \"nodes/proxy\" in API group \"\" at the cluster scope"
        );
        let a = Attributes {
            user: &user,
            verb: "get",
            target: Target::Path("/metrics"),
        };
        assert_eq!(
            forbidden_message(&a),
            "User \"bob\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn service_account_users_name_their_account() {
        let sa = UserInfo::new("system:serviceaccount:team:builder", &[]);
        assert_eq!(sa.service_account(), Some(("team", "builder")));
        assert_eq!(UserInfo::new("bob", &[]).service_account(), None);
        let bob = UserInfo::new("bob", &[]).authenticated();
        assert!(bob.in_group(AUTHENTICATED));
        assert!(
            !UserInfo::anonymous()
                .authenticated()
                .in_group(AUTHENTICATED)
        );
    }
}
