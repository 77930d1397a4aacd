//! Kubernetes protobuf request bodies, decoded into the same JSON the API would receive
//! otherwise. kubectl 1.32 and later send typed creates (`kubectl create configmap`,
//! `kubectl create deployment`, `kubectl run`) this way.
//!
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` envelope that names the kind
//! and carries the object's own message. Messages are decoded by a table of field numbers and
//! JSON names (`schema.rs`, generated); a few well-known types have their own JSON forms.

mod encode;
mod schema;

pub use encode::{EncodeError, encode_object};

use std::collections::HashMap;
use std::sync::LazyLock;

use base64::Engine;
use serde_json::{Map, Value, json};

pub const MAGIC: &[u8] = b"k8s\0";
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

pub struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

pub struct Field {
    pub tag: u32,
    pub json: &'static str,
    pub ty: Ty,
    pub shape: Shape,
}

#[derive(Clone, Copy)]
pub enum Ty {
    Str,
    Bytes,
    Bool,
    I32,
    I64,
    F64,
    Msg(&'static str),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Repeated,
    /// `map<string, T>`: entries are messages with the key at 1 and the value at 2.
    Map,
    /// A Go struct embedded inline: its own message in protobuf, its fields the enclosing
    /// object's in JSON (`json` is empty).
    Inline,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("the body does not start with the Kubernetes protobuf magic number")]
    Magic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies of kind {0:?} are not supported")]
    UnknownKind(String),
}

static BY_NAME: LazyLock<HashMap<&'static str, &'static Message>> =
    LazyLock::new(|| schema::MESSAGES.iter().map(|m| (m.name, m)).collect());

/// A message of the schema by its full name (`api.core.v1.Pod`).
pub fn message(name: &str) -> Option<&'static Message> {
    BY_NAME.get(name).copied()
}

/// The message of a kind (`apps/v1` + `Deployment`), if it is in the schema.
pub fn message_of_kind(api_version: &str, kind: &str) -> Option<&'static Message> {
    message(&message_name(api_version, kind))
}

/// Whether `name` is one of the types whose JSON is not an object of their fields (times,
/// quantities, int-or-strings, embedded raw JSON).
pub fn is_special(name: &str) -> bool {
    SPECIAL.contains(&name)
}

const SPECIAL: &[&str] = &[
    "apimachinery.pkg.apis.meta.v1.Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration",
    "apimachinery.pkg.api.resource.Quantity",
    "apimachinery.pkg.util.intstr.IntOrString",
    "apimachinery.pkg.runtime.RawExtension",
    "apimachinery.pkg.apis.meta.v1.FieldsV1",
    "apimachinery.pkg.apis.meta.v1.Verbs",
    "api.authentication.v1.ExtraValue",
    "api.authorization.v1.ExtraValue",
    "api.certificates.v1.ExtraValue",
];

/// Decode a whole request body into the object's JSON, with `apiVersion` and `kind` set.
pub fn decode_object(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError::Magic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for item in Reader::new(rest) {
        let (tag, v) = item?;
        match (tag, v) {
            (1, Wire::Len(type_meta)) => {
                for item in Reader::new(type_meta) {
                    match item? {
                        (1, Wire::Len(b)) => api_version = utf8(b)?,
                        (2, Wire::Len(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(b)) => raw = b,
            (3, Wire::Len(enc)) if !enc.is_empty() => {
                return Err(ProtoError::Malformed("compressed bodies are not supported"));
            }
            _ => {}
        }
    }
    let name = message_name(&api_version, &kind);
    let msg = BY_NAME
        .get(name.as_str())
        .ok_or_else(|| ProtoError::UnknownKind(format!("{api_version}/{kind}")))?;
    let mut obj = decode_message(raw, msg)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

/// `apps/v1` + `Deployment` -> `api.apps.v1.Deployment`.
fn message_name(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    // Options, Status and the discovery documents are kinds of every group; the meta group's
    // own kinds live there too.
    let meta = [
        "DeleteOptions",
        "Status",
        "APIGroupList",
        "APIGroup",
        "APIResourceList",
        "APIVersions",
    ];
    if meta.contains(&kind) || group == "meta.k8s.io" {
        return format!("apimachinery.pkg.apis.meta.v1.{kind}");
    }
    let module = match group.split('.').next() {
        Some("") | None => "core",
        Some(g) => g,
    };
    format!("api.{module}.{version}.{kind}")
}

fn utf8(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Malformed("string is not UTF-8"))
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32,
}

struct Reader<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, failed: false }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(ProtoError::Malformed("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Malformed("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u32, Wire<'a>), ProtoError> {
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| ProtoError::Malformed("tag out of range"))?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("took 8 bytes"),
            )),
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| ProtoError::Malformed("length out of range"))?;
                Wire::Len(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return Err(ProtoError::Malformed("unsupported wire type")),
        };
        Ok((tag, wire))
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Wire<'a>), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let r = self.field();
        self.failed = r.is_err();
        Some(r)
    }
}

fn decode_message(buf: &[u8], msg: &Message) -> Result<Value, ProtoError> {
    let mut obj = Map::new();
    decode_into(buf, msg, &mut obj)?;
    Ok(Value::Object(obj))
}

fn decode_into(buf: &[u8], msg: &Message, obj: &mut Map<String, Value>) -> Result<(), ProtoError> {
    for item in Reader::new(buf) {
        let (tag, wire) = item?;
        let Some(f) = msg.fields.iter().find(|f| f.tag == tag) else {
            continue;
        };
        match f.shape {
            Shape::Inline => {
                let (Ty::Msg(name), Wire::Len(b)) = (f.ty, wire) else {
                    return Err(ProtoError::Malformed("embedded field is not a message"));
                };
                let inner = message(name)
                    .ok_or(ProtoError::Malformed("reference to an unknown message"))?;
                decode_into(b, inner, obj)?;
            }
            Shape::Single => {
                // Go's JSON leaves out empty strings and unset times; protobuf sends them.
                let v = value(f.ty, wire)?;
                if v.is_null() || v.as_str() == Some("") {
                    continue;
                }
                obj.insert(f.json.to_string(), v);
            }
            Shape::Repeated => {
                let v = value(f.ty, wire)?;
                match obj
                    .entry(f.json.to_string())
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(a) => a.push(v),
                    _ => return Err(ProtoError::Malformed("repeated field seen as single")),
                }
            }
            Shape::Map => {
                let Wire::Len(entry) = wire else {
                    return Err(ProtoError::Malformed("map entry is not a message"));
                };
                let (mut key, mut val) = (String::new(), None);
                for item in Reader::new(entry) {
                    match item? {
                        (1, Wire::Len(k)) => key = utf8(k)?,
                        (2, w) => val = Some(value(f.ty, w)?),
                        _ => {}
                    }
                }
                let val = val.unwrap_or_else(|| zero(f.ty));
                match obj
                    .entry(f.json.to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    Value::Object(m) => {
                        m.insert(key, val);
                    }
                    _ => return Err(ProtoError::Malformed("map field seen as single")),
                }
            }
        }
    }
    Ok(())
}

fn zero(ty: Ty) -> Value {
    match ty {
        Ty::Str | Ty::Bytes => json!(""),
        Ty::Bool => json!(false),
        Ty::I32 | Ty::I64 | Ty::F64 => json!(0),
        Ty::Msg(_) => json!({}),
    }
}

fn value(ty: Ty, wire: Wire<'_>) -> Result<Value, ProtoError> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Len(b)) => Value::String(utf8(b)?),
        (Ty::Bytes, Wire::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // Negative int32s travel sign-extended to 64 bits.
        (Ty::I32, Wire::Varint(v)) => json!(v as i64 as i32),
        (Ty::I64, Wire::Varint(v)) => json!(v as i64),
        (Ty::F64, Wire::Fixed64(v)) => json!(f64::from_bits(v)),
        (Ty::Msg(name), Wire::Len(b)) => special(name, b)?.map_or_else(
            || {
                let msg = BY_NAME
                    .get(name)
                    .ok_or(ProtoError::Malformed("reference to an unknown message"))?;
                decode_message(b, msg)
            },
            Ok,
        )?,
        _ => return Err(ProtoError::Malformed("field has an unexpected wire type")),
    })
}

/// Seconds of Go's zero time, which Kubernetes encodes for unset non-pointer times.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Types whose JSON is not an object of their fields.
fn special(name: &str, b: &[u8]) -> Result<Option<Value>, ProtoError> {
    let ints = |b: &[u8]| -> Result<HashMap<u32, i64>, ProtoError> {
        let mut m = HashMap::new();
        for item in Reader::new(b) {
            if let (tag, Wire::Varint(v)) = item? {
                m.insert(tag, v as i64);
            }
        }
        Ok(m)
    };
    let bytes_at = |b: &'_ [u8], want: u32| -> Result<Vec<u8>, ProtoError> {
        for item in Reader::new(b) {
            if let (tag, Wire::Len(v)) = item?
                && tag == want
            {
                return Ok(v.to_vec());
            }
        }
        Ok(Vec::new())
    };
    Ok(Some(match name {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let m = ints(b)?;
            let secs = m.get(&1).copied().unwrap_or(0);
            let nanos = m.get(&2).copied().unwrap_or(0);
            // Go writes a zero time as an empty message; its JSON is null.
            if m.is_empty() || (secs == GO_ZERO_TIME && nanos == 0) {
                return Ok(Some(Value::Null));
            }
            let ts = jiff::Timestamp::new(secs, nanos as i32)
                .map_err(|_| ProtoError::Malformed("time out of range"))?;
            let fmt = if name.ends_with("MicroTime") {
                "%Y-%m-%dT%H:%M:%S%.6fZ"
            } else {
                "%Y-%m-%dT%H:%M:%SZ"
            };
            Value::String(ts.strftime(fmt).to_string())
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let nanos = ints(b)?.get(&1).copied().unwrap_or(0);
            Value::String(go_duration(nanos))
        }
        "apimachinery.pkg.api.resource.Quantity" => Value::String(utf8(&bytes_at(b, 1)?)?),
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let m = ints(b)?;
            if m.get(&1).copied().unwrap_or(0) == 1 {
                Value::String(utf8(&bytes_at(b, 3)?)?)
            } else {
                json!(m.get(&2).copied().unwrap_or(0) as i32)
            }
        }
        // A list of strings wrapped in a message (`items`), written in JSON as the bare list.
        "apimachinery.pkg.apis.meta.v1.Verbs"
        | "api.authentication.v1.ExtraValue"
        | "api.authorization.v1.ExtraValue"
        | "api.certificates.v1.ExtraValue" => {
            let mut verbs = Vec::new();
            for item in Reader::new(b) {
                if let (1, Wire::Len(v)) = item? {
                    verbs.push(Value::String(utf8(v)?));
                }
            }
            Value::Array(verbs)
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let raw = bytes_at(b, 1)?;
            if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&raw)
                    .map_err(|_| ProtoError::Malformed("embedded object is not JSON"))?
            }
        }
        _ => return Ok(None),
    }))
}

/// A duration as Go prints it: `1h2m3.5s`, `150ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = if n < 1_000 {
            ("ns", 1)
        } else if n < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let (h, rem) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim_fraction(rem, 1_000_000_000)));
    out
}

fn trim_fraction(n: u64, div: u64) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal protobuf writer for building test bodies.
    fn tagged(tag: u32, wire: u8, out: &mut Vec<u8>) {
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
        tagged(tag, 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn num(tag: u32, v: i64, out: &mut Vec<u8>) {
        tagged(tag, 0, out);
        varint(v as u64, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        len(1, api_version.as_bytes(), &mut tm);
        len(2, kind.as_bytes(), &mut tm);
        let mut out = MAGIC.to_vec();
        len(1, &tm, &mut out);
        len(2, raw, &mut out);
        out
    }

    #[test]
    fn config_map_with_maps_and_zero_time() {
        let mut time = Vec::new();
        num(1, GO_ZERO_TIME, &mut time);
        let mut meta = Vec::new();
        len(1, b"settings", &mut meta);
        len(8, &time, &mut meta);
        // What Go writes for a zero time since it stopped writing year 1: nothing.
        len(9, &[], &mut meta);
        let mut entry = Vec::new();
        len(1, b"mode", &mut entry);
        len(2, b"fast", &mut entry);
        let mut bin = Vec::new();
        len(1, b"blob", &mut bin);
        len(2, &[0, 1, 2], &mut bin);
        let mut cm = Vec::new();
        len(1, &meta, &mut cm);
        len(2, &entry, &mut cm);
        len(3, &bin, &mut cm);
        let obj = decode_object(&envelope("v1", "ConfigMap", &cm)).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings"},
                   "data": {"mode": "fast"}, "binaryData": {"blob": "AAEC"}})
        );
    }

    #[test]
    fn fields_named_after_keywords_are_kept() {
        let mut meta = Vec::new();
        len(1, b"web", &mut meta);
        let mut spec = Vec::new();
        len(4, b"NodePort", &mut spec);
        let mut svc = Vec::new();
        len(1, &meta, &mut svc);
        len(2, &spec, &mut svc);
        let obj = decode_object(&envelope("v1", "Service", &svc)).unwrap();
        assert_eq!(obj["spec"]["type"], "NodePort");
    }

    #[test]
    fn deployment_with_int_or_string_and_negative_numbers() {
        let mut port = Vec::new();
        num(3, 80, &mut port);
        len(4, b"TCP", &mut port);
        let mut container = Vec::new();
        len(1, b"web", &mut container);
        len(2, b"nginx", &mut container);
        len(6, &port, &mut container);
        let mut pod_spec = Vec::new();
        len(2, &container, &mut pod_spec);
        let mut template = Vec::new();
        len(2, &pod_spec, &mut template);
        let mut surge = Vec::new();
        num(1, 1, &mut surge);
        len(3, b"25%", &mut surge);
        let mut rolling = Vec::new();
        len(2, &surge, &mut rolling);
        let mut strategy = Vec::new();
        len(1, b"RollingUpdate", &mut strategy);
        len(2, &rolling, &mut strategy);
        let mut spec = Vec::new();
        num(1, 3, &mut spec);
        len(3, &template, &mut spec);
        len(4, &strategy, &mut spec);
        num(6, -1, &mut spec);
        let mut d = Vec::new();
        len(2, &spec, &mut d);
        let obj = decode_object(&envelope("apps/v1", "Deployment", &d)).unwrap();
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["spec"]["revisionHistoryLimit"], -1);
        assert_eq!(obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &obj["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "nginx");
        assert_eq!(c["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode_object(b"{\"kind\":1}"), Err(ProtoError::Magic));
        assert!(decode_object(b"k8s\0\x0a\x05ab").is_err());
        let unknown = envelope("v1", "Widget", &[]);
        assert!(matches!(
            decode_object(&unknown),
            Err(ProtoError::UnknownKind(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
    }
}
