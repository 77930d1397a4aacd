//! Every field of every served type survives protobuf: a fully populated object of each kind
//! (every optional field set, every list and map with an item, built by walking the
//! `k8s-openapi` type itself) goes to protobuf by the schema table and back, and must come out
//! exactly as it went in. A field the table lacks fails the encoding; one the decoder drops
//! fails the comparison.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fmt;

use api::k8s_openapi;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenReview};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::autoscaling::v1::{HorizontalPodAutoscaler as HpaV1, Scale};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Endpoints, Event, LimitRange, Namespace, Node, PersistentVolume,
    PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as NewEvent;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::{Eviction, PodDisruptionBudget};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{
    CSIDriver, CSINode, CSIStorageCapacity, StorageClass, VolumeAttachment,
};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug)]
struct FillError(String);

impl fmt::Display for FillError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FillError {}

impl de::Error for FillError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        FillError(msg.to_string())
    }
}

/// A deserializer that answers every question with "yes, one, set": each struct gets every
/// field it names, each option is `Some`, each list and map one item. Strings are valid base64
/// (byte strings take them too); times, quantities and raw JSON get values of their own form.
#[derive(Clone, Copy)]
struct Filler {
    depth: usize,
}

const TEXT: &str = "YWJj";

/// Kinds that appear whole inside other objects.
const EMBEDDED_OBJECTS: &[&str] = &["PersistentVolumeClaim", "DeleteOptions"];

impl Filler {
    fn deeper(self) -> Filler {
        Filler {
            depth: self.depth + 1,
        }
    }
}

impl<'de> de::Deserializer<'de> for Filler {
    type Error = FillError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        // Int-or-strings and free-form JSON: a number is a fine answer for both.
        v.visit_i64(7)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_bool(true)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_i8(7)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_i16(7)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_i32(7)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_i64(7)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_u8(7)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_u16(7)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_u32(7)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_u64(7)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_f32(1.5)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_f64(1.5)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_char('x')
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_str(TEXT)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_str(TEXT)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_bytes(b"abc")
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_bytes(b"abc")
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, FillError> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        v: V,
    ) -> Result<V::Value, FillError> {
        let json = |x: Value| x.into_deserializer();
        let wrap = |e: serde_json::Error| FillError(e.to_string());
        match name {
            "Time" => v
                .visit_newtype_struct(json(json!("2024-01-02T03:04:05Z")))
                .map_err(wrap),
            "MicroTime" => v
                .visit_newtype_struct(json(json!("2024-01-02T03:04:05.123456Z")))
                .map_err(wrap),
            "Quantity" => v.visit_newtype_struct(json(json!("250m"))).map_err(wrap),
            "RawExtension" | "FieldsV1" | "JSON" => v
                .visit_newtype_struct(json(json!({"f:spec": {"f:a": {}}})))
                .map_err(wrap),
            _ => v.visit_newtype_struct(self),
        }
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_seq(One {
            filler: self.deeper(),
            left: 1,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, n: usize, v: V) -> Result<V::Value, FillError> {
        v.visit_seq(One {
            filler: self.deeper(),
            left: n,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        n: usize,
        v: V,
    ) -> Result<V::Value, FillError> {
        self.deserialize_tuple(n, v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_map(Fields {
            filler: self.deeper(),
            keys: vec![TEXT],
            value_next: false,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, FillError> {
        assert!(self.depth < 40, "runaway recursion in a type");
        // An object checks its own apiVersion and kind, and the serializer adds them. Objects
        // embedded in others (a StatefulSet's claim templates, an Eviction's options) carry
        // them in JSON but not in protobuf, which has no TypeMeta: leave them out there too.
        let type_meta = self.depth == 0 || EMBEDDED_OBJECTS.contains(&name);
        let keys = fields
            .iter()
            .copied()
            .filter(|f| !type_meta || !matches!(*f, "apiVersion" | "kind"))
            .rev()
            .collect();
        v.visit_map(Fields {
            filler: self.deeper(),
            keys,
            value_next: false,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, FillError> {
        Err(FillError("enums are not filled".into()))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_str(TEXT)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, FillError> {
        v.visit_unit()
    }
}

struct One {
    filler: Filler,
    left: usize,
}

impl<'de> SeqAccess<'de> for One {
    type Error = FillError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, FillError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.filler).map(Some)
    }
}

struct Fields {
    filler: Filler,
    /// Keys still to give, last first.
    keys: Vec<&'static str>,
    value_next: bool,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = FillError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, FillError> {
        let Some(k) = self.keys.pop() else {
            return Ok(None);
        };
        self.value_next = true;
        let key: de::value::StrDeserializer<'_, FillError> = k.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, FillError> {
        assert!(self.value_next);
        self.value_next = false;
        seed.deserialize(self.filler)
    }
}

/// Where two JSON trees differ, as paths.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => differences(l, r, &p, out),
                    (Some(_), None) => out.push(format!("{p} lost")),
                    (None, Some(_)) => out.push(format!("{p} appeared")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} became {b}")),
        _ => {}
    }
}

/// Fill a `T`, send it through protobuf and back; what did not come back.
fn round_trip<T>() -> (String, Result<Vec<String>, String>)
where
    T: for<'de> Deserialize<'de> + Serialize + k8s_openapi::Resource,
{
    let name = format!("{}/{}", T::API_VERSION, T::KIND);
    let filled = T::deserialize(Filler { depth: 0 }).map_err(|e| format!("filling: {e}"));
    let result = filled.and_then(|obj| {
        let sent = serde_json::to_value(&obj).unwrap();
        let body = api::proto::encode_object(&sent).map_err(|e| e.to_string())?;
        let decoded = api::proto::decode_object(&body).map_err(|e| e.to_string())?;
        // Through the type again, so both sides are in its canonical form (time precision).
        let typed: T = serde_json::from_value(decoded.clone())
            .map_err(|e| format!("decoded object does not fit the type: {e}"))?;
        let back = serde_json::to_value(&typed).unwrap();
        let mut diffs = Vec::new();
        differences(&sent, &back, "", &mut diffs);
        Ok(diffs)
    });
    (name, result)
}

#[test]
fn every_field_of_every_served_kind_survives_protobuf() {
    let results = vec![
        round_trip::<Namespace>(),
        round_trip::<Pod>(),
        round_trip::<Node>(),
        round_trip::<Service>(),
        round_trip::<Endpoints>(),
        round_trip::<ConfigMap>(),
        round_trip::<Secret>(),
        round_trip::<ServiceAccount>(),
        round_trip::<Event>(),
        round_trip::<Binding>(),
        round_trip::<ResourceQuota>(),
        round_trip::<LimitRange>(),
        round_trip::<Deployment>(),
        round_trip::<ReplicaSet>(),
        round_trip::<DaemonSet>(),
        round_trip::<StatefulSet>(),
        round_trip::<ControllerRevision>(),
        round_trip::<Job>(),
        round_trip::<CronJob>(),
        round_trip::<Lease>(),
        round_trip::<HorizontalPodAutoscaler>(),
        round_trip::<HpaV1>(),
        round_trip::<Scale>(),
        round_trip::<PodDisruptionBudget>(),
        round_trip::<Eviction>(),
        round_trip::<PriorityClass>(),
        round_trip::<ReplicationController>(),
        round_trip::<PersistentVolume>(),
        round_trip::<PersistentVolumeClaim>(),
        round_trip::<Ingress>(),
        round_trip::<IngressClass>(),
        round_trip::<NetworkPolicy>(),
        round_trip::<EndpointSlice>(),
        round_trip::<NewEvent>(),
        round_trip::<StorageClass>(),
        round_trip::<CSIDriver>(),
        round_trip::<CSINode>(),
        round_trip::<VolumeAttachment>(),
        round_trip::<CSIStorageCapacity>(),
        round_trip::<Role>(),
        round_trip::<ClusterRole>(),
        round_trip::<RoleBinding>(),
        round_trip::<ClusterRoleBinding>(),
        round_trip::<SelfSubjectAccessReview>(),
        round_trip::<SelfSubjectRulesReview>(),
        round_trip::<SubjectAccessReview>(),
        round_trip::<LocalSubjectAccessReview>(),
        round_trip::<SelfSubjectReview>(),
        round_trip::<TokenReview>(),
        round_trip::<TokenRequest>(),
        round_trip::<CertificateSigningRequest>(),
    ];
    // Every kind the server serves is among them.
    let checked: BTreeSet<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    // Definitions are served in JSON only: no client sends them as protobuf (kubectl's typed
    // creates cover built-in workload kinds), and their schemas' free-form JSON has no
    // protobuf form of its own here.
    let json_only = [
        "apiextensions.k8s.io/v1/CustomResourceDefinition",
        "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration",
        "admissionregistration.k8s.io/v1/ValidatingWebhookConfiguration",
        "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
        "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding",
        "apiregistration.k8s.io/v1/APIService",
    ];
    let missing: Vec<String> = api::resources::all()
        .iter()
        .map(|r| format!("{}/{}", r.group_version(), r.kind))
        .filter(|k| !checked.contains(k.as_str()) && !json_only.contains(&k.as_str()))
        .collect();
    assert!(missing.is_empty(), "served kinds not checked: {missing:?}");
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(name, r)| match r {
            Ok(d) if d.is_empty() => None,
            Ok(d) => Some(format!("{name}:\n  {}", d.join("\n  "))),
            Err(e) => Some(format!("{name}: {e}")),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
