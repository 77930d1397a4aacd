//! Discovery documents: what groups, versions and resources exist. Served both in the legacy
//! form (one request per group-version) and aggregated (everything in one response, which is
//! what kubectl asks for first). Built once at startup.

use api::resources::Served;
use api::{Registry, Resource};
use bytes::Bytes;
use serde_json::{Value, json};

/// The verbs of a custom resource, in the order Kubernetes lists them.
const CUSTOM_VERBS: &[&str] = &[
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "create",
    "update",
    "watch",
];

fn verbs(r: &Resource) -> &'static [&'static str] {
    if r.ops.custom().is_some() {
        CUSTOM_VERBS
    } else {
        VERBS
    }
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A subresource as discovery lists it.
struct Sub {
    name: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    verbs: &'static [&'static str],
}

fn subresources(r: &Resource, group: &'static str, version: &'static str) -> Vec<Sub> {
    let mut out = Vec::new();
    if r.status {
        out.push(Sub {
            name: "status",
            group,
            version,
            kind: r.kind,
            verbs: &["get", "patch", "update"],
        });
    }
    if r.scale {
        out.push(Sub {
            name: "scale",
            group: "autoscaling",
            version: "v1",
            kind: "Scale",
            verbs: &["get", "patch", "update"],
        });
    }
    out.extend(r.subresources.iter().map(|s| Sub {
        name: s.name,
        group: s.group,
        version: s.version,
        kind: s.kind,
        verbs: s.verbs,
    }));
    out
}

fn scope(r: &Resource) -> &'static str {
    if r.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(served: Served) -> Value {
    let (r, group, version) = (served.resource, served.group, served.version);
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": group, "version": version, "kind": r.kind},
        "scope": scope(r),
        "singularResource": r.singular,
        "verbs": verbs(r),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    let subs: Vec<Value> = subresources(r, group, version)
        .iter()
        .map(|s| {
            json!({"subresource": s.name,
                   "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                   "verbs": s.verbs})
        })
        .collect();
    if !subs.is_empty() {
        v["subresources"] = Value::Array(subs);
    }
    v
}

fn legacy_resources(registry: &Registry, group: &str, version: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for served in registry.served(group, version) {
        let (r, version) = (served.resource, served.version);
        let mut v = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            v["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        out.push(v);
        for s in subresources(r, served.group, version) {
            let mut sv = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != served.group || s.version != version {
                sv["group"] = json!(s.group);
                sv["version"] = json!(s.version);
            }
            out.push(sv);
        }
    }
    out
}

/// A document's text, as Kubernetes writes it.
fn wire(v: &Value) -> Bytes {
    Bytes::from(api::wire::to_vec(v))
}

/// Every discovery document, rendered.
pub struct Discovery {
    /// `/api` and `/apis` aggregated, in v2 and v2beta1.
    pub core_v2: Bytes,
    pub core_v2beta1: Bytes,
    pub groups_v2: Bytes,
    pub groups_v2beta1: Bytes,
    pub core_versions: Bytes,
    pub group_list: Bytes,
    groups: Vec<(String, Bytes)>,
    resource_lists: Vec<(String, Bytes)>,
}

impl Discovery {
    /// `aggregated`: each available Service-backed APIService's group, version and
    /// APIResourceList (as its server answered it).
    pub fn new(
        server_address: &str,
        registry: &Registry,
        aggregated: &[(String, String, Value)],
    ) -> Discovery {
        let mut core_item = None;
        let mut group_items = Vec::new();
        let mut legacy_groups = Vec::new();
        let mut groups = Vec::new();
        let mut resource_lists = Vec::new();
        for (group, versions) in registry.groups() {
            let versions_json: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let rs: Vec<Value> = registry
                        .served(group, v)
                        .into_iter()
                        .map(aggregated_resource)
                        .collect();
                    json!({"version": v, "resources": rs, "freshness": "Current"})
                })
                .collect();
            let item = json!({"metadata": {"name": group}, "versions": versions_json});
            for v in &versions {
                let gv = if group.is_empty() {
                    v.to_string()
                } else {
                    format!("{group}/{v}")
                };
                let list = json!({
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": gv,
                    "resources": legacy_resources(registry, group, v),
                });
                resource_lists.push((gv, wire(&list)));
            }
            if group.is_empty() {
                core_item = Some(item);
                continue;
            }
            group_items.push(item);
            let gvs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            let g = json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]});
            groups.push((
                group.to_string(),
                wire(
                    &json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
                           "versions": g["versions"], "preferredVersion": g["preferredVersion"]}),
                ),
            ));
            legacy_groups.push(g);
        }
        // Groups served by handlers of their own, outside the registry: metrics.k8s.io (from
        // the agents' usage summaries) and the create-only reviews of authentication.k8s.io
        // and authorization.k8s.io.
        let metrics: &[(&str, &str, bool, &[&str])] = &[
            ("nodes", "NodeMetrics", false, &["get", "list"]),
            ("pods", "PodMetrics", true, &["get", "list"]),
        ];
        let mut extra = vec![(
            crate::metrics::GROUP,
            crate::metrics::VERSION,
            metrics.to_vec(),
        )];
        for (group, resources) in crate::auth::Review::groups() {
            extra.push((group, "v1", resources));
        }
        for (group, v, served) in extra {
            let gv = format!("{group}/{v}");
            let mut aggregated = Vec::new();
            let mut legacy = Vec::new();
            for (plural, kind, namespaced, verbs) in served {
                aggregated.push(json!({"resource": plural, "singularResource": "",
                       "responseKind": {"group": group, "version": v, "kind": kind},
                       "scope": if namespaced { "Namespaced" } else { "Cluster" },
                       "verbs": verbs}));
                legacy.push(
                    json!({"name": plural, "singularName": "", "namespaced": namespaced,
                       "kind": kind, "verbs": verbs}),
                );
            }
            group_items.push(json!({"metadata": {"name": group}, "versions": [
                {"version": v, "resources": aggregated, "freshness": "Current"}]}));
            resource_lists.push((
                gv.clone(),
                wire(
                    &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                           "resources": legacy}),
                ),
            ));
            let gvs = json!([{"groupVersion": gv, "version": v}]);
            let g = json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]});
            groups.push((
                group.to_string(),
                wire(
                    &json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
                           "versions": g["versions"], "preferredVersion": g["preferredVersion"]}),
                ),
            ));
            legacy_groups.push(g);
        }
        // Aggregated APIs: their group, and their resources as their server lists them.
        for (group, v, list) in aggregated {
            if groups.iter().any(|(g, _)| g == group) {
                continue;
            }
            let gv = format!("{group}/{v}");
            let resources: Vec<Value> = list["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["name"].as_str().is_some_and(|n| !n.contains('/')))
                .map(|r| {
                    json!({"resource": r["name"], "singularResource": r["singularName"].as_str().unwrap_or(""),
                           "responseKind": {"group": group, "version": v, "kind": r["kind"]},
                           "scope": if r["namespaced"].as_bool().unwrap_or(false) { "Namespaced" } else { "Cluster" },
                           "verbs": r["verbs"], "shortNames": r.get("shortNames").cloned().unwrap_or(json!([]))})
                })
                .collect();
            group_items.push(json!({"metadata": {"name": group}, "versions": [
                {"version": v, "resources": resources, "freshness": "Current"}]}));
            let gvs = json!([{"groupVersion": gv, "version": v}]);
            let g = json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]});
            groups.push((
                group.to_string(),
                wire(
                    &json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
                           "versions": g["versions"], "preferredVersion": g["preferredVersion"]}),
                ),
            ));
            legacy_groups.push(g);
        }
        let aggregated = |items: Vec<Value>, version: &str| -> Bytes {
            wire(&json!({"kind": "APIGroupDiscoveryList",
                       "apiVersion": format!("apidiscovery.k8s.io/{version}"),
                       "metadata": {}, "items": items}))
        };
        let core = vec![core_item.expect("the core group is served")];
        Discovery {
            core_v2: aggregated(core.clone(), "v2"),
            core_v2beta1: aggregated(core, "v2beta1"),
            groups_v2: aggregated(group_items.clone(), "v2"),
            groups_v2beta1: aggregated(group_items, "v2beta1"),
            core_versions: wire(&json!({"kind": "APIVersions", "versions": ["v1"],
                       "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})),
            group_list: wire(
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": legacy_groups}),
            ),
            groups,
            resource_lists,
        }
    }

    pub fn group(&self, name: &str) -> Option<Bytes> {
        self.groups
            .iter()
            .find(|(g, _)| g == name)
            .map(|(_, b)| b.clone())
    }

    /// The `APIResourceList` of `group/version` (`v1` for core).
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Bytes> {
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        self.resource_lists
            .iter()
            .find(|(g, _)| *g == gv)
            .map(|(_, b)| b.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let d = Discovery::new("127.0.0.1:6443", &Registry::default(), &[]);
        let core: Value = serde_json::from_slice(&d.core_v2).unwrap();
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap()
            .clone();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["subresources"][0]["subresource"], "status");
        let apps: Value = serde_json::from_slice(&d.resource_list("apps", "v1").unwrap()).unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap()
            .clone();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
        let groups: Value = serde_json::from_slice(&d.group_list).unwrap();
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "batch")
        );
        assert!(d.resource_list("nope", "v1").is_none());
    }
}
