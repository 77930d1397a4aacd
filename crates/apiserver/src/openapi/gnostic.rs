//! A swagger 2.0 document (JSON) in gnostic's protobuf form (`openapi.v2.Document`, the field
//! numbers of gnostic's OpenAPIv2.proto), which kubectl 1.27 and 1.28 read. Only what our
//! documents use is encoded: info, paths with their operations, parameters and responses, and
//! definitions with their schemas. Vendor extensions and other free-form values travel as YAML
//! text, for which JSON text serves.

use serde_json::{Map, Value};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        bytes(out, field, s.as_bytes());
    }
}

fn strings(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
    for s in v.and_then(Value::as_array).into_iter().flatten() {
        string(out, field, Some(s));
    }
}

fn boolean(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
    if let Some(b) = v.and_then(Value::as_bool) {
        varint(out, u64::from(field << 3));
        varint(out, u64::from(b));
    }
}

fn message(out: &mut Vec<u8>, field: u32, build: impl FnOnce(&mut Vec<u8>)) {
    let mut m = Vec::new();
    build(&mut m);
    bytes(out, field, &m);
}

/// `Any { yaml }`.
fn any(out: &mut Vec<u8>, field: u32, v: &Value) {
    message(out, field, |m| bytes(m, 2, yaml(v).as_bytes()));
}

fn yaml(v: &Value) -> String {
    format!("{v}\n")
}

/// Every `x-` key of `m` as `NamedAny` entries in `field`.
fn extensions(out: &mut Vec<u8>, field: u32, m: &Map<String, Value>) {
    for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
        message(out, field, |n| {
            bytes(n, 1, k.as_bytes());
            any(n, 2, v);
        });
    }
}

/// A whole document.
pub fn document(doc: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, doc.get("swagger"));
    if let Some(info) = doc.get("info") {
        message(&mut out, 2, |m| {
            string(m, 1, info.get("title"));
            string(m, 2, info.get("version"));
        });
    }
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        message(&mut out, 8, |m| {
            for (path, item) in paths {
                message(m, 2, |n| {
                    bytes(n, 1, path.as_bytes());
                    message(n, 2, |p| path_item(p, item));
                });
            }
        });
    }
    if let Some(defs) = doc.get("definitions").and_then(Value::as_object) {
        message(&mut out, 9, |m| {
            for (name, s) in defs {
                message(m, 1, |n| {
                    bytes(n, 1, name.as_bytes());
                    message(n, 2, |x| schema(x, s));
                });
            }
        });
    }
    out
}

fn path_item(out: &mut Vec<u8>, item: &Value) {
    for (method, field) in [
        ("get", 2),
        ("put", 3),
        ("post", 4),
        ("delete", 5),
        ("options", 6),
        ("head", 7),
        ("patch", 8),
    ] {
        if let Some(op) = item.get(method) {
            message(out, field, |m| operation(m, op));
        }
    }
    for p in item
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        message(out, 9, |m| parameters_item(m, p));
    }
}

fn operation(out: &mut Vec<u8>, op: &Value) {
    strings(out, 1, op.get("tags"));
    string(out, 2, op.get("summary"));
    string(out, 3, op.get("description"));
    string(out, 5, op.get("operationId"));
    strings(out, 6, op.get("produces"));
    strings(out, 7, op.get("consumes"));
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        message(out, 8, |m| parameters_item(m, p));
    }
    if let Some(responses) = op.get("responses").and_then(Value::as_object) {
        message(out, 9, |m| {
            for (code, r) in responses {
                message(m, 1, |n| {
                    bytes(n, 1, code.as_bytes());
                    // ResponseValue.response
                    message(n, 2, |v| {
                        message(v, 1, |resp| {
                            string(resp, 1, r.get("description"));
                            if let Some(s) = r.get("schema") {
                                // SchemaItem.schema
                                message(resp, 2, |si| message(si, 1, |x| schema(x, s)));
                            }
                        });
                    });
                });
            }
        });
    }
    strings(out, 10, op.get("schemes"));
    boolean(out, 11, op.get("deprecated"));
    if let Some(m) = op.as_object() {
        extensions(out, 13, m);
    }
}

/// `ParametersItem.parameter`: a body parameter, or a query or path one.
fn parameters_item(out: &mut Vec<u8>, p: &Value) {
    message(out, 1, |param| match p.get("in").and_then(Value::as_str) {
        Some("body") => message(param, 1, |b| {
            string(b, 1, p.get("description"));
            string(b, 2, p.get("name"));
            string(b, 3, p.get("in"));
            boolean(b, 4, p.get("required"));
            if let Some(s) = p.get("schema") {
                message(b, 5, |x| schema(x, s));
            }
        }),
        Some("path") => message(param, 2, |nb| {
            message(nb, 4, |q| {
                boolean(q, 1, p.get("required"));
                string(q, 2, p.get("in"));
                string(q, 3, p.get("description"));
                string(q, 4, p.get("name"));
                string(q, 5, p.get("type"));
                boolean(q, 19, p.get("uniqueItems"));
            });
        }),
        _ => message(param, 2, |nb| {
            message(nb, 3, |q| {
                boolean(q, 1, p.get("required"));
                string(q, 2, p.get("in"));
                string(q, 3, p.get("description"));
                string(q, 4, p.get("name"));
                string(q, 6, p.get("type"));
                boolean(q, 20, p.get("uniqueItems"));
            });
        }),
    });
}

fn schema(out: &mut Vec<u8>, s: &Value) {
    let Some(m) = s.as_object() else {
        return;
    };
    string(out, 1, m.get("$ref"));
    string(out, 2, m.get("format"));
    string(out, 3, m.get("title"));
    string(out, 4, m.get("description"));
    if let Some(d) = m.get("default") {
        any(out, 5, d);
    }
    strings(out, 19, m.get("required"));
    for e in m
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        any(out, 20, e);
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => message(out, 21, |a| boolean(a, 2, Some(&Value::Bool(*b)))),
        Some(ap @ Value::Object(_)) => message(out, 21, |a| message(a, 1, |x| schema(x, ap))),
        _ => {}
    }
    match m.get("type") {
        Some(Value::String(t)) => message(out, 22, |ty| bytes(ty, 1, t.as_bytes())),
        Some(Value::Array(ts)) => message(out, 22, |ty| {
            for t in ts {
                string(ty, 1, Some(t));
            }
        }),
        _ => {}
    }
    if let Some(items) = m.get("items") {
        message(out, 23, |it| match items {
            Value::Array(list) => list.iter().for_each(|i| message(it, 1, |x| schema(x, i))),
            one => message(it, 1, |x| schema(x, one)),
        });
    }
    for a in m
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        message(out, 24, |x| schema(x, a));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        message(out, 25, |p| {
            for (name, ps) in props {
                message(p, 1, |n| {
                    bytes(n, 1, name.as_bytes());
                    message(n, 2, |x| schema(x, ps));
                });
            }
        });
    }
    extensions(out, 31, m);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The one-path document measured against every kubectl version
    /// (shared/kubectl-wire.md §4.2), but for its extension, which is JSON here.
    #[test]
    fn the_verified_layout_of_a_patch_operation() {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.30.0"},
            "paths": {"/apis/apps/v1/namespaces/{namespace}/deployments/{name}": {"patch": {
                "operationId": "patchDeployment",
                "parameters": [{"in": "query", "name": "fieldValidation", "type": "string"}]}}}});
        let hex: String = document(&doc).iter().map(|b| format!("{b:02x}")).collect();
        // Document.swagger, .info, then paths/path/name ... operation_id, parameters: as the
        // hand-checked bytes have them.
        assert!(hex.starts_with("0a03322e3012150a0a4b756265726e65746573120776312e33302e30"));
        assert!(hex.contains(
            "2a0f70617463684465706c6f796d656e7442260a2412221a2012057175657279220f6669656c6456616c69646174696f6e3206737472696e67"
        ));
    }
}
