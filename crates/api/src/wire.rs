//! JSON as Kubernetes writes it. Go encodes a struct's fields in their declaration order, after
//! the inline `TypeMeta` (`kind`, then `apiVersion`); map keys sorted; `<`, `>` and `&` escaped
//! as `\u003c`, `\u003e`, `\u0026`. Clients compare these texts (and tools diff them), so the
//! server writes its objects the same way. The declaration order comes from the protobuf
//! schema table, which keeps the Go order; fields it does not know follow, sorted.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::proto::{self, Message, Shape, Ty};

/// An object's JSON text, ordered by its kind.
pub fn to_vec(obj: &Value) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    let msg = match obj {
        Value::Object(m) => {
            let av = m.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
            proto::message_of_kind(av, kind)
        }
        _ => None,
    };
    value(obj, msg.map(Schema::Message), &mut out);
    out.into_bytes()
}

/// A value's JSON text, ordered as the schema message `name` (`api.core.v1.PodStatus`).
pub fn to_vec_as(v: &Value, name: &str) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    value(v, proto::message(name).map(Schema::Message), &mut out);
    out.into_bytes()
}

/// The JSON fields of the schema message `name`, in the order Kubernetes writes them.
pub fn declared_fields(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    if let Some(msg) = proto::message(name) {
        fields_of(msg, &mut out);
    }
    out.into_iter().map(|(k, _)| k).collect()
}

/// What is known of a value's type.
#[derive(Clone, Copy)]
enum Schema {
    Message(&'static Message),
    /// `map<string, T>`: a JSON object whose values are each of this type.
    Map(Ty),
}

fn schema_of(ty: Ty) -> Option<Schema> {
    match ty {
        Ty::Msg(name) if !proto::is_special(name) => proto::message(name).map(Schema::Message),
        _ => None,
    }
}

fn value(v: &Value, schema: Option<Schema>, out: &mut String) {
    match v {
        Value::Object(m) => match schema {
            Some(Schema::Map(ty)) => {
                out.push('{');
                for (i, (k, item)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    string(k, out);
                    out.push(':');
                    value(item, schema_of(ty), out);
                }
                out.push('}');
            }
            Some(Schema::Message(msg)) => object(m, Some(msg), out),
            None => object(m, None, out),
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                value(item, schema, out);
            }
            out.push(']');
        }
        Value::String(s) => string(s, out),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Null => out.push_str("null"),
    }
}

fn object(m: &Map<String, Value>, msg: Option<&'static Message>, out: &mut String) {
    out.push('{');
    let mut first = true;
    let mut member = |k: &str, v: &Value, schema: Option<Schema>, out: &mut String| {
        if !first {
            out.push(',');
        }
        first = false;
        string(k, out);
        out.push(':');
        value(v, schema, out);
    };
    // TypeMeta first, unless the message has fields of those names (an owner reference's).
    let mut done: Vec<&str> = Vec::new();
    let mut own = Vec::new();
    if let Some(msg) = msg {
        fields_of(msg, &mut own);
    }
    for k in ["kind", "apiVersion"] {
        if let Some(v) = m.get(k)
            && !own.iter().any(|(name, _)| *name == k)
        {
            member(k, v, None, out);
            done.push(k);
        }
    }
    for (k, f) in &own {
        if let Some(v) = m.get(*k) {
            let schema = match f.shape {
                Shape::Map => Some(Schema::Map(f.ty)),
                _ => schema_of(f.ty),
            };
            member(k, v, schema, out);
            done.push(k);
        }
    }
    for (k, v) in m {
        if !done.contains(&k.as_str()) {
            member(k, v, None, out);
        }
    }
    out.push('}');
}

/// A message's JSON fields in order, with the fields of inline members in their place.
fn fields_of(msg: &'static Message, out: &mut Vec<(&'static str, &'static proto::Field)>) {
    for f in msg.fields {
        match (f.shape, f.ty) {
            (Shape::Inline, Ty::Msg(name)) => {
                if let Some(inner) = proto::message(name) {
                    fields_of(inner, out);
                }
            }
            _ => out.push((f.json, f)),
        }
    }
}

/// A JSON string as Go's encoder writes it.
fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn text(v: &Value) -> String {
        String::from_utf8(to_vec(v)).unwrap()
    }

    #[test]
    fn a_pod_is_written_in_go_order() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "status": {"phase": "Running"},
            "spec": {"restartPolicy": "Always",
                     "containers": [{"name": "c", "image": "i", "args": ["a"], "command": ["sh"]}],
                     "volumes": [{"name": "v", "configMap": {"name": "cm"}}]},
            "metadata": {"uid": "u", "name": "p", "labels": {"z": "1", "a": "2"},
                         "resourceVersion": "5", "namespace": "ns"}
        });
        assert_eq!(
            text(&pod),
            concat!(
                r#"{"kind":"Pod","apiVersion":"v1","#,
                r#""metadata":{"name":"p","namespace":"ns","uid":"u","resourceVersion":"5","labels":{"a":"2","z":"1"}},"#,
                r#""spec":{"volumes":[{"name":"v","configMap":{"name":"cm"}}],"#,
                r#""containers":[{"name":"c","image":"i","command":["sh"],"args":["a"]}],"restartPolicy":"Always"},"#,
                r#""status":{"phase":"Running"}}"#
            )
        );
        // Nothing is lost or changed, whatever the order.
        let back: Value = serde_json::from_slice(&to_vec(&pod)).unwrap();
        assert_eq!(back, pod);
    }

    #[test]
    fn owner_references_keep_their_own_api_version_and_kind_in_place() {
        let cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x",
            "ownerReferences": [{"uid": "u", "name": "o", "kind": "Deployment", "apiVersion": "apps/v1"}]}});
        assert_eq!(
            text(&cm),
            r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x","ownerReferences":[{"apiVersion":"apps/v1","kind":"Deployment","name":"o","uid":"u"}]}}"#
        );
    }

    #[test]
    fn status_errors_and_unknown_kinds() {
        let s = json!({"code": 404, "details": {"kind": "pods", "name": "x"}, "reason": "NotFound",
                       "message": "pods \"x\" not found", "status": "Failure", "metadata": {},
                       "apiVersion": "v1", "kind": "Status"});
        assert_eq!(
            text(&s),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods \"x\" not found","reason":"NotFound","details":{"name":"x","kind":"pods"},"code":404}"#
        );
        // A kind the schema does not know keeps its TypeMeta first and the rest sorted.
        let w = json!({"spec": 1, "apiVersion": "example.com/v1", "kind": "Widget", "a": 2});
        assert_eq!(
            text(&w),
            r#"{"kind":"Widget","apiVersion":"example.com/v1","a":2,"spec":1}"#
        );
    }

    #[test]
    fn strings_are_escaped_as_go_does() {
        let v = json!({"kind": "ConfigMap", "apiVersion": "v1",
                       "data": {"k": "<a href=\"x\">&\u{1}\n"}});
        assert_eq!(
            text(&v),
            r#"{"kind":"ConfigMap","apiVersion":"v1","data":{"k":"\u003ca href=\"x\"\u003e\u0026\u0001\n"}}"#
        );
    }
}
