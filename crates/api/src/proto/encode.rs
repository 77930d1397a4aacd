//! The other direction: an object's JSON as a Kubernetes protobuf body, by the same schema
//! table the decoder reads. A JSON field the schema has no place for is an error, not a loss,
//! which is what the round-trip test of every served kind relies on.

use base64::Engine;
use serde_json::{Map, Value};

use super::{Field, MAGIC, Message, Shape, Ty, message, message_name};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("protobuf has no field for {0}")]
    UnknownField(String),
    #[error("no protobuf message for {0}")]
    UnknownKind(String),
    #[error("{path}: {why}")]
    BadValue { path: String, why: String },
}

/// The protobuf body of an object (`apiVersion` and `kind` go in the envelope).
pub fn encode_object(obj: &Value) -> Result<Vec<u8>, EncodeError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = message_name(api_version, kind);
    let msg = message(&name).ok_or_else(|| EncodeError::UnknownKind(name.clone()))?;
    let mut fields = obj.as_object().cloned().unwrap_or_default();
    fields.remove("apiVersion");
    fields.remove("kind");
    let raw = encode_message(&fields, msg, &name)?;
    let mut type_meta = Vec::new();
    len(1, api_version.as_bytes(), &mut type_meta);
    len(2, kind.as_bytes(), &mut type_meta);
    let mut out = MAGIC.to_vec();
    len(1, &type_meta, &mut out);
    len(2, &raw, &mut out);
    Ok(out)
}

/// Every JSON key a message holds, its inline members' included.
fn keys(msg: &Message, out: &mut Vec<&'static str>) {
    for f in msg.fields {
        match (f.shape, f.ty) {
            (Shape::Inline, Ty::Msg(name)) => {
                if let Some(inner) = message(name) {
                    keys(inner, out);
                }
            }
            _ => out.push(f.json),
        }
    }
}

fn encode_message(
    obj: &Map<String, Value>,
    msg: &Message,
    path: &str,
) -> Result<Vec<u8>, EncodeError> {
    let mut known = Vec::new();
    keys(msg, &mut known);
    // An object inside another (a StatefulSet's claim templates) may say its apiVersion and
    // kind in JSON; protobuf has no TypeMeta for them, as in Kubernetes.
    let type_meta = |k: &str| matches!(k, "apiVersion" | "kind") && !known.contains(&k);
    if let Some(k) = obj
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !type_meta(k))
    {
        return Err(EncodeError::UnknownField(format!("{path}.{k}")));
    }
    let mut out = Vec::new();
    for f in msg.fields {
        if f.shape == Shape::Inline {
            let Ty::Msg(name) = f.ty else { continue };
            let inner = message(name).ok_or_else(|| EncodeError::UnknownKind(name.into()))?;
            let mut inner_keys = Vec::new();
            keys(inner, &mut inner_keys);
            let part: Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| inner_keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !part.is_empty() {
                len(f.tag, &encode_message(&part, inner, path)?, &mut out);
            }
            continue;
        }
        let Some(v) = obj.get(f.json) else { continue };
        if v.is_null() {
            continue;
        }
        let here = format!("{path}.{}", f.json);
        match f.shape {
            Shape::Single => value(f, v, &here, &mut out)?,
            Shape::Repeated => {
                let items = v.as_array().ok_or_else(|| bad(&here, "not a list"))?;
                for item in items {
                    value(f, item, &here, &mut out)?;
                }
            }
            Shape::Map => {
                let entries = v.as_object().ok_or_else(|| bad(&here, "not an object"))?;
                for (k, item) in entries {
                    let mut entry = Vec::new();
                    len(1, k.as_bytes(), &mut entry);
                    let inner = Field {
                        tag: 2,
                        json: f.json,
                        ty: f.ty,
                        shape: Shape::Single,
                    };
                    value(&inner, item, &here, &mut entry)?;
                    len(f.tag, &entry, &mut out);
                }
            }
            Shape::Inline => {}
        }
    }
    Ok(out)
}

fn bad(path: &str, why: &str) -> EncodeError {
    EncodeError::BadValue {
        path: path.to_string(),
        why: why.to_string(),
    }
}

fn value(f: &Field, v: &Value, path: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match f.ty {
        Ty::Str => len(
            f.tag,
            v.as_str()
                .ok_or_else(|| bad(path, "not a string"))?
                .as_bytes(),
            out,
        ),
        Ty::Bytes => {
            let text = v.as_str().ok_or_else(|| bad(path, "not a string"))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| bad(path, "not base64"))?;
            len(f.tag, &raw, out);
        }
        Ty::Bool => num(
            f.tag,
            u64::from(v.as_bool().ok_or_else(|| bad(path, "not a bool"))?),
            out,
        ),
        Ty::I32 | Ty::I64 => num(
            f.tag,
            v.as_i64().ok_or_else(|| bad(path, "not an integer"))? as u64,
            out,
        ),
        Ty::F64 => {
            let x = v.as_f64().ok_or_else(|| bad(path, "not a number"))?;
            key(f.tag, 1, out);
            out.extend_from_slice(&x.to_bits().to_le_bytes());
        }
        Ty::Msg(name) => {
            let body = match special(name, v, path)? {
                Some(b) => b,
                None => {
                    let msg = message(name).ok_or_else(|| EncodeError::UnknownKind(name.into()))?;
                    let obj = v.as_object().ok_or_else(|| bad(path, "not an object"))?;
                    encode_message(obj, msg, path)?
                }
            };
            len(f.tag, &body, out);
        }
    }
    Ok(())
}

/// The protobuf form of the types whose JSON is not an object of their fields.
fn special(name: &str, v: &Value, path: &str) -> Result<Option<Vec<u8>>, EncodeError> {
    let mut out = Vec::new();
    match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let text = v.as_str().ok_or_else(|| bad(path, "not a time"))?;
            let ts: jiff::Timestamp = text.parse().map_err(|_| bad(path, "not a time"))?;
            num(1, ts.as_second() as u64, &mut out);
            if ts.subsec_nanosecond() != 0 {
                num(2, ts.subsec_nanosecond() as u64, &mut out);
            }
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let text = v.as_str().ok_or_else(|| bad(path, "not a duration"))?;
            let nanos = parse_go_duration(text).ok_or_else(|| bad(path, "not a duration"))?;
            num(1, nanos as u64, &mut out);
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(bad(path, "not a quantity")),
            };
            len(1, text.as_bytes(), &mut out);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => match v {
            Value::String(s) => {
                num(1, 1, &mut out);
                len(3, s.as_bytes(), &mut out);
            }
            Value::Number(n) => {
                num(1, 0, &mut out);
                num(
                    2,
                    n.as_i64().ok_or_else(|| bad(path, "not an integer"))? as u64,
                    &mut out,
                );
            }
            _ => return Err(bad(path, "not an int or string")),
        },
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            len(1, v.to_string().as_bytes(), &mut out);
        }
        "apimachinery.pkg.apis.meta.v1.Verbs"
        | "api.authentication.v1.ExtraValue"
        | "api.authorization.v1.ExtraValue"
        | "api.certificates.v1.ExtraValue" => {
            for verb in v.as_array().ok_or_else(|| bad(path, "not a list"))? {
                len(
                    1,
                    verb.as_str()
                        .ok_or_else(|| bad(path, "not a string"))?
                        .as_bytes(),
                    &mut out,
                );
            }
        }
        _ => return Ok(None),
    }
    Ok(Some(out))
}

/// Go's duration syntax (`1h2m3.5s`, `150ms`) in nanoseconds.
fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|i| *i > 0)?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    let nanos = total.round() as i64;
    Some(if neg { -nanos } else { nanos })
}

fn key(tag: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | u32::from(wire)), out);
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    key(tag, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn num(tag: u32, v: u64, out: &mut Vec<u8>) {
    key(tag, 0, out);
    varint(v, out);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::proto::decode_object;

    #[test]
    fn a_pod_with_volumes_and_probes_comes_back() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"},
                         "creationTimestamp": "2024-01-02T03:04:05Z"},
            "spec": {
                "containers": [{"name": "c", "image": "i",
                    "livenessProbe": {"httpGet": {"port": 8080, "path": "/"}, "periodSeconds": 3},
                    "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}],
                    "resources": {"limits": {"cpu": "500m"}}}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}},
                    {"name": "host", "hostPath": {"path": "/var/log", "type": ""}}
                ],
                "ephemeralContainers": [{"name": "dbg", "image": "busybox", "targetContainerName": "c"}]
            }
        });
        let body = encode_object(&pod).unwrap();
        let mut back = decode_object(&body).unwrap();
        // Go's JSON leaves out an empty string, and so does the decoder.
        back["spec"]["volumes"][1]["hostPath"]["type"] = json!("");
        assert_eq!(back, pod);
    }

    #[test]
    fn fields_protobuf_cannot_carry_are_errors() {
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "extra": 1});
        assert_eq!(
            encode_object(&cm),
            Err(EncodeError::UnknownField(
                "api.core.v1.ConfigMap.extra".into()
            ))
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(3_723_500_000_000));
        assert_eq!(parse_go_duration("150ms"), Some(150_000_000));
        assert_eq!(parse_go_duration("0s"), Some(0));
        assert_eq!(parse_go_duration("-1m"), Some(-60_000_000_000));
        assert_eq!(parse_go_duration("x"), None);
    }
}
