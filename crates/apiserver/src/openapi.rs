//! The smallest OpenAPI that lets kubectl's default (strict) validation pass: for every
//! resource, a PATCH operation that advertises the `fieldValidation` parameter. kubectl then
//! leaves validation to the server. v2 is served as protobuf (every kubectl version reads it),
//! v3 as JSON (kubectl 1.29+ asks for it first).

use api::Resource;
use api::resources;
use bytes::Bytes;
use serde_json::{Value, json};

/// The Content-Type kubectl parses for protobuf OpenAPI v2 (`@` in it breaks Go's parser).
pub const V2_CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Protobuf length-delimited field.
fn field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn message(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    build(&mut out);
    out
}

/// The URL template of one object of a resource, served in `version`.
pub fn object_path(r: &Resource, version: &str) -> String {
    let base = if r.group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{}/{version}", r.group)
    };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

/// One path entry of the gnostic `openapi.v2.Document` (field numbers from OpenAPIv2.proto).
fn named_path_item(
    path: &str,
    operation_id: &str,
    group: &str,
    kind: &str,
    version: &str,
) -> Vec<u8> {
    let query = message(|m| {
        field(m, 2, b"query");
        field(m, 4, b"fieldValidation");
        field(m, 6, b"string");
    });
    let non_body = message(|m| field(m, 3, &query));
    let parameter = message(|m| field(m, 2, &non_body));
    let parameters_item = message(|m| field(m, 1, &parameter));
    let gvk_yaml = format!("group: \"{group}\"\nkind: {kind}\nversion: {version}\n");
    let any = message(|m| field(m, 2, gvk_yaml.as_bytes()));
    let named_any = message(|m| {
        field(m, 1, b"x-kubernetes-group-version-kind");
        field(m, 2, &any);
    });
    let operation = message(|m| {
        field(m, 5, operation_id.as_bytes());
        field(m, 8, &parameters_item);
        field(m, 13, &named_any);
    });
    let path_item = message(|m| field(m, 8, &operation));
    message(|m| {
        field(m, 1, path.as_bytes());
        field(m, 2, &path_item);
    })
}

fn v2_document(items: &[Vec<u8>], version: &str) -> Vec<u8> {
    let info = message(|m| {
        field(m, 1, b"Kubernetes");
        field(m, 2, version.as_bytes());
    });
    let paths = message(|m| {
        for item in items {
            field(m, 2, item);
        }
    });
    message(|m| {
        field(m, 1, b"2.0");
        field(m, 2, &info);
        field(m, 8, &paths);
    })
}

/// `patchNamespacedDeployment`; an older version's view names its group and version too
/// (`patchAutoscalingV1NamespacedHorizontalPodAutoscaler`), as ids are unique per document.
fn operation_id(r: &Resource, version: &str) -> String {
    let scope = if r.namespaced { "Namespaced" } else { "" };
    if version == r.version {
        return format!("patch{scope}{}", r.kind);
    }
    let title = |s: &str| {
        let mut c = s.chars();
        c.next()
            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
            .unwrap_or_default()
    };
    format!("patch{}{}{scope}{}", title(r.group), title(version), r.kind)
}

pub struct OpenApi {
    pub v2: Bytes,
    pub v3_index: Bytes,
    v3: Vec<(String, Bytes)>,
}

impl OpenApi {
    pub fn new(version: &str) -> OpenApi {
        let mut items = Vec::new();
        let mut v3 = Vec::new();
        let mut index = serde_json::Map::new();
        for (group, versions) in resources::groups() {
            for v in versions {
                let key = if group.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{group}/{v}")
                };
                let mut paths = serde_json::Map::new();
                for served in resources::served(group, v) {
                    let (r, v) = (served.resource, served.version);
                    items.push(named_path_item(
                        &object_path(r, v),
                        &operation_id(r, v),
                        r.group,
                        r.kind,
                        v,
                    ));
                    paths.insert(
                        object_path(r, v),
                        json!({"patch": {
                            "operationId": operation_id(r, v),
                            "x-kubernetes-action": "patch",
                            "x-kubernetes-group-version-kind": {"group": r.group, "version": v, "kind": r.kind},
                            "parameters": [{"name": "fieldValidation", "in": "query",
                                            "schema": {"type": "string", "uniqueItems": true}}],
                            "responses": {"200": {"description": "OK"}}
                        }}),
                    );
                }
                let doc = json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": version},
                                 "components": {"schemas": {}}, "paths": Value::Object(paths)});
                let body = Bytes::from(doc.to_string());
                let hash = content_hash(&body);
                index.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
                );
                v3.push((key, body));
            }
        }
        OpenApi {
            v2: Bytes::from(v2_document(&items, version)),
            v3_index: Bytes::from(json!({"paths": Value::Object(index)}).to_string()),
            v3,
        }
    }

    pub fn v3(&self, key: &str) -> Option<Bytes> {
        self.v3
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }
}

/// A stable hash for cache-busting URLs (FNV-1a; not for security).
fn content_hash(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document measured against every kubectl version (shared/kubectl-wire.md §4.2).
    const KNOWN_GOOD: &str = "0a03322e3012150a0a4b756265726e65746573120776312e33302e3042cd0112ca010a372f617069732f617070732f76312f6e616d657370616365732f7b6e616d6573706163657d2f6465706c6f796d656e74732f7b6e616d657d128e01428b012a0f70617463684465706c6f796d656e7442260a2412221a2012057175657279220f6669656c6456616c69646174696f6e3206737472696e676a500a1f782d6b756265726e657465732d67726f75702d76657273696f6e2d6b696e64122d122b67726f75703a202261707073220a6b696e643a204465706c6f796d656e740a76657273696f6e3a2076310a";

    #[test]
    fn protobuf_encoding_matches_the_verified_bytes() {
        let item = named_path_item(
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
            "patchDeployment",
            "apps",
            "Deployment",
            "v1",
        );
        let doc = v2_document(&[item], "v1.30.0");
        let hex: String = doc.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, KNOWN_GOOD);
    }

    #[test]
    fn v3_index_points_at_documents() {
        let o = OpenApi::new("v1.33.0");
        let index: Value = serde_json::from_slice(&o.v3_index).unwrap();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc: Value = serde_json::from_slice(&o.v3("apis/apps/v1").unwrap()).unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["parameters"][0]["name"], "fieldValidation");
        assert!(o.v3("api/v1").is_some());
    }
}
