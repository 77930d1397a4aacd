//! Every served kind, built-in or custom, against every table that says something per kind:
//! routing, discovery (legacy and aggregated), OpenAPI, Table columns and cells, merge shapes
//! and the protobuf table. A kind added to the registry but missed in one of them fails here.

use std::sync::Arc;

use api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use api::{Registry, Resource};
use serde_json::{Value, json};

use crate::discovery::Discovery;
use crate::openapi::OpenApi;

/// Kinds served in JSON only (see `api/tests/proto_roundtrip.rs`).
const JSON_ONLY: &[&str] = &[
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "APIService",
];

fn registry_with_a_custom_kind() -> Arc<Registry> {
    let mut crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "gizmos.check.example.com"},
        "spec": {"group": "check.example.com", "scope": "Namespaced",
            "names": {"plural": "gizmos", "kind": "Gizmo", "shortNames": ["gz"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                "additionalPrinterColumns": [{"name": "Replicas", "type": "integer",
                                              "jsonPath": ".spec.replicas"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"replicas": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}}]}
    }))
    .expect("a definition");
    api::custom::definition::settle_status(&mut crd, None);
    let registry = Arc::new(Registry::default());
    registry.set_definition("gizmos.check.example.com", api::custom::descriptors(&crd));
    registry
}

fn doc(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("a JSON document")
}

#[tokio::test]
async fn every_served_kind_is_in_every_table() {
    let registry = registry_with_a_custom_kind();
    let all: Vec<&'static Resource> = registry.all();
    assert!(all.iter().any(|r| r.kind == "Gizmo"));
    let discovery = Discovery::new("127.0.0.1:6443", &registry, &[]);
    let openapi = OpenApi::new("v1.33.0");
    let aggregated = doc(&discovery.groups_v2);
    let core = doc(&discovery.core_v2);
    for r in all {
        let what = format!("{}/{}", r.group_version(), r.kind);
        // Routing.
        assert!(
            std::ptr::eq(registry.find(r.group, r.version, r.plural).expect(&what), r),
            "{what}: found by its path"
        );
        assert!(
            registry.by_kind(&r.group_version(), r.kind).is_some(),
            "{what}: by kind"
        );
        // Legacy discovery.
        let list = doc(&discovery.resource_list(r.group, r.version).expect(&what));
        let listed = list["resources"].as_array().expect("resources");
        assert!(
            listed
                .iter()
                .any(|x| x["name"] == r.plural && x["kind"] == r.kind),
            "{what}: legacy discovery"
        );
        for (sub, on) in [("status", r.status), ("scale", r.scale)] {
            let has = listed
                .iter()
                .any(|x| x["name"] == format!("{}/{sub}", r.plural));
            assert_eq!(has, on, "{what}: {sub} subresource in discovery");
        }
        for sub in r.subresources {
            let entry = listed
                .iter()
                .find(|x| x["name"] == format!("{}/{}", r.plural, sub.name))
                .unwrap_or_else(|| panic!("{what}: {} subresource in discovery", sub.name));
            assert_eq!(entry["kind"], sub.kind, "{what}: {} kind", sub.name);
        }
        // Aggregated discovery.
        let groups = if r.group.is_empty() {
            &core
        } else {
            &aggregated
        };
        let group = groups["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|g| {
                g["metadata"]["name"] == r.group
                    || (r.group.is_empty() && g["metadata"]["name"].is_null())
            })
            .unwrap_or_else(|| panic!("{what}: group in aggregated discovery"));
        let in_version = group["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .find(|v| v["version"] == r.version)
            .unwrap_or_else(|| panic!("{what}: version in aggregated discovery"));
        assert!(
            in_version["resources"]
                .as_array()
                .expect("resources")
                .iter()
                .any(|x| x["resource"] == r.plural),
            "{what}: aggregated discovery"
        );
        // OpenAPI v3: a schema naming this group, version and kind.
        let key = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        let v3 = doc(&openapi
            .v3(&registry, &key)
            .await
            .unwrap_or_else(|| panic!("{what}: OpenAPI v3 document")));
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let named = v3["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .values()
            .any(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|l| l.contains(&gvk))
            });
        assert!(named, "{what}: a schema in OpenAPI v3 names it");
        // Tables: as many cells as columns, for an empty object and a typical one.
        let columns = crate::table::column_definitions(r);
        let n = columns.as_array().expect("columns").len();
        for obj in [
            json!({}),
            json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"},
                                      "spec": {}, "status": {}}),
        ] {
            assert_eq!(
                crate::table::cells_of(r, &obj).len(),
                n,
                "{what}: cells and columns"
            );
        }
        // Merge shapes: metadata merges as metadata (finalizers a set) for every kind.
        let meta = r.ops.merge_type().child("metadata");
        assert!(
            matches!(
                meta.elem("finalizers"),
                Some(api::patch::schema::Elem::SetList)
            ),
            "{what}: metadata merge shape"
        );
        // Protobuf: built-in kinds have a message, unless served in JSON only; custom ones
        // are JSON only, as in Kubernetes.
        let has_message = api::proto::message_of_kind(&r.group_version(), r.kind).is_some();
        let expected = r.ops.custom().is_none() && !JSON_ONLY.contains(&r.kind);
        assert_eq!(has_message, expected, "{what}: protobuf message");
    }
}
