//! The Node authorizer: what a node's own identity (`system:node:<name>` in `system:nodes`)
//! may read, decided as Kubernetes decides it from the pods bound to that node. A node reads
//! the Secrets, ConfigMaps, claims, volumes and service account tokens of its own pods and
//! nothing else of those kinds; its Node, Lease and CSINode and no other node's; everything
//! else through the `system:node` role's rules. It allows or has no opinion, never denies:
//! RBAC decides what it leaves.
//!
//! The graph is kept from the watch cache (an `Observer` of pods and claims): each pod's
//! node and the objects it names, counted per node, so a decision is a map lookup.

use std::collections::HashMap;
use std::sync::RwLock;

use api::rbac::{Attributes, NODE_USER_PREFIX, NODES, Target, UserInfo};
use serde::Deserialize;

use crate::cache::{CacheEvent, Entry, EventType};

/// What a node's request is, to this authorizer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Left to RBAC (and to the `system:node` rules), with why it was not allowed here.
    NoOpinion(String),
    /// Not a request this authorizer decides: judge by the `system:node` role's rules.
    Rules,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Pod,
    Secret,
    ConfigMap,
    Claim,
    Account,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Edge {
    node: String,
    kind: Kind,
    namespace: String,
    name: String,
}

#[derive(Default)]
struct Graph {
    /// `namespace/name` of each pod bound to a node -> what it names.
    pods: HashMap<String, Vec<Edge>>,
    /// How many pods give each node each relationship.
    edges: HashMap<Edge, u32>,
    /// `namespace/name` of each bound claim -> its volume.
    claims: HashMap<String, String>,
    /// `namespace/name` of each Ingress -> the TLS Secrets it names, which every node's
    /// Ingress proxy reads.
    ingresses: HashMap<String, Vec<(String, String)>>,
    /// How many Ingresses name each of those Secrets.
    tls_secrets: HashMap<(String, String), u32>,
}

impl Graph {
    fn set_pod(&mut self, key: &str, edges: Vec<Edge>) {
        if let Some(old) = self.pods.remove(key) {
            for e in old {
                if let Some(n) = self.edges.get_mut(&e) {
                    *n -= 1;
                    if *n == 0 {
                        self.edges.remove(&e);
                    }
                }
            }
        }
        if edges.is_empty() {
            return;
        }
        for e in &edges {
            *self.edges.entry(e.clone()).or_default() += 1;
        }
        self.pods.insert(key.to_string(), edges);
    }

    fn set_ingress(&mut self, key: &str, secrets: Vec<(String, String)>) {
        for s in self.ingresses.remove(key).into_iter().flatten() {
            if let Some(n) = self.tls_secrets.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    self.tls_secrets.remove(&s);
                }
            }
        }
        if secrets.is_empty() {
            return;
        }
        for s in &secrets {
            *self.tls_secrets.entry(s.clone()).or_default() += 1;
        }
        self.ingresses.insert(key.to_string(), secrets);
    }

    fn related(&self, node: &str, kind: Kind, namespace: &str, name: &str) -> bool {
        // Built only to look up: a decision allocates these few strings.
        self.edges.contains_key(&Edge {
            node: node.to_string(),
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}

/// The pods-to-node relationships.
#[derive(Default)]
pub struct NodeGraph {
    graph: RwLock<Graph>,
}

/// The node a user is, if it is one.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    if !user.in_group(NODES) {
        return None;
    }
    user.name.strip_prefix(NODE_USER_PREFIX)
}

/// The Secrets an Ingress's `spec.tls` names (in its namespace).
fn tls_secrets_of(e: &Entry) -> Vec<(String, String)> {
    #[derive(Deserialize)]
    struct Tls {
        #[serde(rename = "secretName")]
        secret_name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Spec {
        tls: Option<Vec<Tls>>,
    }
    #[derive(Deserialize)]
    struct Ing {
        spec: Option<Spec>,
    }
    let ns = e.namespace.clone().unwrap_or_default();
    serde_json::from_slice::<Ing>(&e.json)
        .ok()
        .and_then(|i| i.spec)
        .and_then(|s| s.tls)
        .into_iter()
        .flatten()
        .filter_map(|t| t.secret_name.filter(|n| !n.is_empty()))
        .map(|n| (ns.clone(), n))
        .collect()
}

fn no_relationship(node: &str) -> Verdict {
    Verdict::NoOpinion(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

impl NodeGraph {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        self.graph.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pod, at start and after the cache reloads.
    pub fn pods_loaded<'a>(&self, items: impl Iterator<Item = &'a Entry>) {
        let mut g = self.write();
        g.pods.clear();
        g.edges.clear();
        for e in items {
            let edges = pod_edges(e);
            g.set_pod(&e.key, edges);
        }
    }

    pub fn pod_changed(&self, ev: &CacheEvent) {
        let edges = if ev.ty == EventType::Deleted {
            Vec::new()
        } else {
            pod_edges(&ev.obj)
        };
        self.write().set_pod(&ev.obj.key, edges);
    }

    /// Every Ingress, at start and after the cache reloads.
    pub fn ingresses_loaded<'a>(&self, items: impl Iterator<Item = &'a Entry>) {
        let mut g = self.write();
        g.ingresses.clear();
        g.tls_secrets.clear();
        for e in items {
            g.set_ingress(&e.key, tls_secrets_of(e));
        }
    }

    pub fn ingress_changed(&self, ev: &CacheEvent) {
        let secrets = if ev.ty == EventType::Deleted {
            Vec::new()
        } else {
            tls_secrets_of(&ev.obj)
        };
        self.write().set_ingress(&ev.obj.key, secrets);
    }

    pub fn claims_loaded<'a>(&self, items: impl Iterator<Item = &'a Entry>) {
        let mut g = self.write();
        g.claims.clear();
        for e in items {
            if let Some(v) = volume_of(e) {
                g.claims.insert(e.key.clone(), v);
            }
        }
    }

    pub fn claim_changed(&self, ev: &CacheEvent) {
        let mut g = self.write();
        match (ev.ty == EventType::Deleted, volume_of(&ev.obj)) {
            (false, Some(v)) => {
                g.claims.insert(ev.obj.key.clone(), v);
            }
            _ => {
                g.claims.remove(&ev.obj.key);
            }
        }
    }

    /// Judge a node's request (`selector`: the field selector of a list or watch); `None`
    /// for users that are not nodes.
    pub fn judge(&self, a: &Attributes<'_>, selector: &str) -> Option<Verdict> {
        let node = node_of(a.user)?;
        if node.is_empty() {
            return Some(Verdict::NoOpinion(format!(
                "unknown node for user {:?}",
                a.user.name
            )));
        }
        let Target::Resource {
            namespace: ns,
            group,
            resource,
            subresource: sub,
            name,
        } = a.target
        else {
            return Some(Verdict::Rules);
        };
        let verb = a.verb;
        let g = self.read();
        let graph = |kind| {
            if g.related(node, kind, ns, name) {
                Verdict::Allow
            } else {
                no_relationship(node)
            }
        };
        let opinion = |why: &str| Verdict::NoOpinion(why.to_string());
        let verdict = match (group, resource) {
            ("", kind @ ("secrets" | "configmaps")) => {
                let kind = if kind == "secrets" {
                    Kind::Secret
                } else {
                    Kind::ConfigMap
                };
                if !matches!(verb, "get" | "list" | "watch") {
                    opinion("can only read resources of this type")
                } else if !sub.is_empty() {
                    opinion("cannot read subresource")
                } else if ns.is_empty() {
                    opinion("can only read namespaced object of this type")
                } else if name.is_empty() {
                    opinion("No Object name found")
                } else if kind == Kind::Secret
                    && verb == "get"
                    && g.tls_secrets
                        .contains_key(&(ns.to_string(), name.to_string()))
                {
                    // Every node serves Ingresses, with the certificates they name.
                    Verdict::Allow
                } else {
                    graph(kind)
                }
            }
            ("", "persistentvolumeclaims") => match sub {
                "status" if matches!(verb, "get" | "update" | "patch") => graph(Kind::Claim),
                "status" => opinion("can only get/update/patch this type"),
                "" if verb == "get" => graph(Kind::Claim),
                "" => opinion("can only get individual resources of this type"),
                _ => opinion("cannot get subresource"),
            },
            ("", "persistentvolumes") => {
                if verb != "get" || !sub.is_empty() {
                    opinion("can only get individual resources of this type")
                } else {
                    // A volume is the node's when a claim of one of its pods is bound to it.
                    let mine = g.claims.iter().any(|(key, volume)| {
                        volume == name
                            && key.split_once('/').is_some_and(|(cns, claim)| {
                                g.related(node, Kind::Claim, cns, claim)
                            })
                    });
                    if mine {
                        Verdict::Allow
                    } else {
                        no_relationship(node)
                    }
                }
            }
            ("", "serviceaccounts") => {
                if verb != "create" || name.is_empty() {
                    opinion("can only create tokens for individual service accounts")
                } else if sub != "token" {
                    opinion("can only create token subresource of serviceaccount")
                } else {
                    graph(Kind::Account)
                }
            }
            ("", "pods") => match (verb, sub) {
                ("get", "") => graph(Kind::Pod),
                ("list" | "watch", "") => {
                    // An escaped comma would make one term of what looks like two: such a
                    // selector is not trusted to name the node.
                    let selects_me = !selector.contains('\\')
                        && selector.split(',').any(|s| {
                            let s = s.trim();
                            s == format!("spec.nodeName={node}")
                                || s == format!("spec.nodeName=={node}")
                        });
                    if selects_me || (!name.is_empty() && g.related(node, Kind::Pod, ns, name)) {
                        Verdict::Allow
                    } else {
                        opinion("can only list/watch pods with spec.nodeName field selector")
                    }
                }
                ("create" | "delete", "") => Verdict::Allow,
                ("update" | "patch", "status") => Verdict::Allow,
                ("create", "eviction") => Verdict::Allow,
                _ => Verdict::Rules,
            },
            ("", "nodes") => match (verb, sub) {
                ("create" | "update" | "patch", "" | "status") => Verdict::Allow,
                ("get" | "list" | "watch", "") if name == node => Verdict::Allow,
                ("get" | "list" | "watch", "") if name.is_empty() => Verdict::NoOpinion(format!(
                    "node '{node}' cannot read all nodes, only its own Node object"
                )),
                ("get" | "list" | "watch", "") => Verdict::NoOpinion(format!(
                    "node '{node}' cannot read '{name}', only its own Node object"
                )),
                _ => Verdict::Rules,
            },
            ("coordination.k8s.io", "leases") => {
                if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                    opinion("can only get, create, update, patch, or delete a node lease")
                } else if ns != "kube-node-lease" {
                    opinion("can only access leases in the \"kube-node-lease\" system namespace")
                } else if verb != "create" && name != node {
                    opinion("can only access node lease with the same name as the requesting node")
                } else {
                    Verdict::Allow
                }
            }
            ("storage.k8s.io", "csinodes") => {
                if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                    opinion("can only get, create, update, patch, or delete a CSINode")
                } else if !sub.is_empty() {
                    opinion("cannot authorize CSINode subresources")
                } else if verb != "create" && name != node {
                    opinion("can only access CSINode with the same name as the requesting node")
                } else {
                    Verdict::Allow
                }
            }
            _ => Verdict::Rules,
        };
        Some(verdict)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Named {
    name: String,
}

/// A field that may be `null` in what the store holds (clients may write nulls for empty
/// lists and maps) reads as empty: a pod the view could not read would give its node nothing.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodView {
    #[serde(deserialize_with = "lenient")]
    metadata: Meta,
    #[serde(deserialize_with = "lenient")]
    spec: SpecView,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    #[serde(deserialize_with = "lenient")]
    name: String,
    #[serde(deserialize_with = "lenient")]
    namespace: String,
    #[serde(deserialize_with = "lenient")]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Marks a mirror pod: the node's own record of a static pod.
pub const MIRROR: &str = "kubernetes.io/config.mirror";

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SpecView {
    #[serde(deserialize_with = "lenient")]
    node_name: String,
    #[serde(deserialize_with = "lenient")]
    service_account_name: String,
    #[serde(deserialize_with = "lenient")]
    image_pull_secrets: Vec<Named>,
    #[serde(deserialize_with = "lenient")]
    volumes: Vec<VolumeView>,
    #[serde(deserialize_with = "lenient")]
    containers: Vec<ContainerView>,
    #[serde(deserialize_with = "lenient")]
    init_containers: Vec<ContainerView>,
    #[serde(deserialize_with = "lenient")]
    ephemeral_containers: Vec<ContainerView>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct VolumeView {
    #[serde(deserialize_with = "lenient")]
    name: String,
    secret: Option<SecretVolume>,
    config_map: Option<Named>,
    projected: Option<Projected>,
    persistent_volume_claim: Option<ClaimVolume>,
    ephemeral: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SecretVolume {
    #[serde(deserialize_with = "lenient")]
    secret_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ClaimVolume {
    #[serde(deserialize_with = "lenient")]
    claim_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Projected {
    #[serde(deserialize_with = "lenient")]
    sources: Vec<Source>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Source {
    secret: Option<Named>,
    config_map: Option<Named>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerView {
    #[serde(deserialize_with = "lenient")]
    env: Vec<EnvView>,
    #[serde(deserialize_with = "lenient")]
    env_from: Vec<EnvFrom>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct EnvView {
    value_from: Option<ValueFrom>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ValueFrom {
    secret_key_ref: Option<Named>,
    config_map_key_ref: Option<Named>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct EnvFrom {
    secret_ref: Option<Named>,
    config_map_ref: Option<Named>,
}

/// What a bound pod gives its node: itself, its account, and every Secret, ConfigMap and
/// claim it names (volumes, env, image pull secrets; an ephemeral volume's claim is
/// `<pod>-<volume>`).
fn pod_edges(e: &Entry) -> Vec<Edge> {
    let Ok(p) = serde_json::from_slice::<PodView>(&e.json) else {
        return Vec::new();
    };
    let s = &p.spec;
    if s.node_name.is_empty() {
        return Vec::new();
    }
    let ns = &p.metadata.namespace;
    let mut out = Vec::new();
    let mut add = |kind, name: &str| {
        if !name.is_empty() {
            let e = Edge {
                node: s.node_name.clone(),
                kind,
                namespace: ns.clone(),
                name: name.to_string(),
            };
            if !out.contains(&e) {
                out.push(e);
            }
        }
    };
    add(Kind::Pod, &p.metadata.name);
    // A node makes its mirror pods itself: what they name gives it nothing.
    if p.metadata.annotations.contains_key(MIRROR) {
        return out;
    }
    add(Kind::Account, &s.service_account_name);
    for n in &s.image_pull_secrets {
        add(Kind::Secret, &n.name);
    }
    for v in &s.volumes {
        if let Some(sv) = &v.secret {
            add(Kind::Secret, &sv.secret_name);
        }
        if let Some(c) = &v.config_map {
            add(Kind::ConfigMap, &c.name);
        }
        for src in v.projected.iter().flat_map(|p| &p.sources) {
            if let Some(sv) = &src.secret {
                add(Kind::Secret, &sv.name);
            }
            if let Some(c) = &src.config_map {
                add(Kind::ConfigMap, &c.name);
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            add(Kind::Claim, &c.claim_name);
        }
        if v.ephemeral.is_some() {
            add(Kind::Claim, &format!("{}-{}", p.metadata.name, v.name));
        }
    }
    let containers = s
        .containers
        .iter()
        .chain(&s.init_containers)
        .chain(&s.ephemeral_containers);
    for c in containers {
        for v in c.env.iter().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &v.secret_key_ref {
                add(Kind::Secret, &r.name);
            }
            if let Some(r) = &v.config_map_key_ref {
                add(Kind::ConfigMap, &r.name);
            }
        }
        for f in &c.env_from {
            if let Some(r) = &f.secret_ref {
                add(Kind::Secret, &r.name);
            }
            if let Some(r) = &f.config_map_ref {
                add(Kind::ConfigMap, &r.name);
            }
        }
    }
    out
}

/// The volume a claim is bound to.
fn volume_of(e: &Entry) -> Option<String> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Claim {
        spec: ClaimSpec,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct ClaimSpec {
        volume_name: String,
    }
    let c: Claim = serde_json::from_slice(&e.json).ok()?;
    (!c.spec.volume_name.is_empty()).then_some(c.spec.volume_name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use api::rbac::{Target as RequestTarget, UserInfo};
    use serde_json::json;

    use super::*;

    fn entry(kind: &str, obj: serde_json::Value) -> Entry {
        Entry::build(api::resources::by_kind("v1", kind).unwrap(), obj, 1)
    }

    /// A pod on `node`; with `volumes` given, it also names a ConfigMap and a Secret in its
    /// environment and runs as `runner`.
    fn pod(name: &str, node: &str, volumes: serde_json::Value) -> Entry {
        let full = volumes.as_array().is_some_and(|v| !v.is_empty());
        let mut c = json!({"name": "c", "image": "i"});
        if full {
            c["env"] = json!([{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}]);
            c["envFrom"] = json!([{"secretRef": {"name": "env-secret"}}]);
        }
        let account = if full { "runner" } else { "default" };
        entry(
            "Pod",
            json!({"metadata": {"name": name, "namespace": "app", "uid": format!("{name}-uid")},
                   "spec": {"nodeName": node, "serviceAccountName": account, "volumes": volumes,
                            "containers": [c]}}),
        )
    }

    #[test]
    fn nulls_in_a_stored_pod_read_as_empty_lists() {
        // What the job controller's pods looked like once bound: a null list made the whole
        // pod unreadable, and its node was refused its token until the next status write.
        let e = entry(
            "Pod",
            json!({"metadata": {"name": "p", "namespace": "app", "annotations": null},
                   "spec": {"nodeName": "n1", "serviceAccountName": "default", "volumes": null,
                            "imagePullSecrets": null, "initContainers": null,
                            "containers": [{"name": "c", "image": "i", "env": null,
                                            "envFrom": null}]}}),
        );
        let edges = pod_edges(&e);
        let account = Edge {
            node: "n1".into(),
            kind: Kind::Account,
            namespace: "app".into(),
            name: "default".into(),
        };
        assert!(edges.contains(&account), "{edges:?}");
    }

    fn node_user(name: &str) -> UserInfo {
        UserInfo::new(format!("system:node:{name}"), &["system:nodes"]).authenticated()
    }

    /// What `user` may do to `at` (`namespace/name`, either part empty when not named).
    fn ask(
        g: &NodeGraph,
        user: &UserInfo,
        verb: &str,
        resource: &str,
        sub: &str,
        at: &str,
        selector: &str,
    ) -> Verdict {
        let (ns, name) = at.split_once('/').unwrap_or(("", at));
        let group = if resource == "leases" {
            "coordination.k8s.io"
        } else {
            ""
        };
        let a = Attributes {
            user,
            verb,
            target: RequestTarget::Resource {
                namespace: ns,
                group,
                resource,
                subresource: sub,
                name,
            },
        };
        g.judge(&a, selector).unwrap()
    }

    #[test]
    fn a_node_reads_what_its_pods_name_and_nothing_else() {
        let g = NodeGraph::default();
        let volumes = json!([
            {"name": "s", "secret": {"secretName": "db-password"}},
            {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}]}},
            {"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
        ]);
        g.pods_loaded(
            [
                pod("web", "n1", volumes.clone()),
                pod("other", "n2", json!([])),
            ]
            .iter(),
        );
        g.claims_loaded(
            [entry(
                "PersistentVolumeClaim",
                json!({"metadata": {"name": "data", "namespace": "app"},
                       "spec": {"volumeName": "pv-1"}}),
            )]
            .iter(),
        );
        let n1 = node_user("n1");
        let n2 = node_user("n2");
        let get = |u: &UserInfo, res: &str, name: &str| {
            ask(&g, u, "get", res, "", &format!("app/{name}"), "")
        };
        for (res, name) in [
            ("secrets", "db-password"),
            ("secrets", "env-secret"),
            ("configmaps", "proj-cm"),
            ("configmaps", "env-cm"),
            ("persistentvolumeclaims", "data"),
            ("pods", "web"),
        ] {
            assert_eq!(get(&n1, res, name), Verdict::Allow, "{res}/{name}");
            assert_eq!(
                get(&n2, res, name),
                Verdict::NoOpinion(
                    "no relationship found between node 'n2' and this object".into()
                ),
                "{res}/{name}"
            );
        }
        assert_eq!(
            ask(&g, &n1, "get", "persistentvolumes", "", "/pv-1", ""),
            Verdict::Allow
        );
        assert_ne!(
            ask(&g, &n2, "get", "persistentvolumes", "", "/pv-1", ""),
            Verdict::Allow
        );
        assert_eq!(
            ask(
                &g,
                &n1,
                "create",
                "serviceaccounts",
                "token",
                "app/runner",
                ""
            ),
            Verdict::Allow
        );
        // Writing a secret, or listing all of them, is not the node's.
        assert!(matches!(
            ask(&g, &n1, "update", "secrets", "", "app/db-password", ""),
            Verdict::NoOpinion(_)
        ));
        assert!(matches!(
            ask(&g, &n1, "list", "secrets", "", "app/", ""),
            Verdict::NoOpinion(_)
        ));
        // Its pods, by the node selector; its own lease only.
        assert_eq!(
            ask(&g, &n1, "watch", "pods", "", "/", "spec.nodeName=n1"),
            Verdict::Allow
        );
        assert!(matches!(
            ask(&g, &n1, "watch", "pods", "", "/", "spec.nodeName=n2"),
            Verdict::NoOpinion(_)
        ));
        assert_eq!(
            ask(&g, &n1, "update", "leases", "", "kube-node-lease/n1", ""),
            Verdict::Allow
        );
        assert!(matches!(
            ask(&g, &n1, "update", "leases", "", "kube-node-lease/n2", ""),
            Verdict::NoOpinion(_)
        ));
        // Others go by the system:node rules; users that are not nodes are not judged here.
        assert_eq!(
            ask(&g, &n1, "create", "events", "", "app/", ""),
            Verdict::Rules
        );
        let a = Attributes {
            user: &UserInfo::new("system:node:n1", &[]),
            verb: "get",
            target: RequestTarget::Resource {
                namespace: "app",
                group: "",
                resource: "secrets",
                subresource: "",
                name: "db-password",
            },
        };
        assert!(g.judge(&a, "").is_none());

        // A mirror pod (which a node makes itself) gives its node nothing it names.
        let mut mirror = pod(
            "static",
            "n2",
            json!([{"name": "s", "secret": {"secretName": "db-password"}}]),
        )
        .value();
        mirror["metadata"]["annotations"] = json!({MIRROR: "hash"});
        let ev = CacheEvent {
            rev: 2,
            ty: EventType::Added,
            obj: Arc::new(entry("Pod", mirror)),
            prev: None,
        };
        g.pod_changed(&ev);
        assert!(matches!(
            get(&n2, "secrets", "db-password"),
            Verdict::NoOpinion(_)
        ));
        assert_eq!(get(&n2, "pods", "static"), Verdict::Allow);
        // A selector with an escaped comma is one term, not the node's name.
        assert!(matches!(
            ask(
                &g,
                &n1,
                "list",
                "pods",
                "",
                "/",
                "spec.nodeName!=x\\,spec.nodeName=n1"
            ),
            Verdict::NoOpinion(_)
        ));

        // The pod moves away: the relationship goes with it, once for each pod that gave it.
        let ev = CacheEvent {
            rev: 2,
            ty: EventType::Deleted,
            obj: Arc::new(pod("web", "n1", volumes)),
            prev: None,
        };
        g.pod_changed(&ev);
        assert!(matches!(
            get(&n1, "secrets", "db-password"),
            Verdict::NoOpinion(_)
        ));
    }
}
