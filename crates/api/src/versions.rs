//! Resources served in more than one version. Each is stored in one version (the one in the
//! registry); a `View` converts objects between that and an older version clients may still
//! speak, e.g. kubectl 1.27's `autoscale`, which writes `autoscaling/v1`.
//!
//! Conversion must not lose what the older version cannot express, or a read-modify-write
//! through it (`kubectl edit` with an old client) would drop it. As Kubernetes does, the parts
//! only the storage version has travel in annotations of the older view and are lifted back
//! out when an object is written through it.

use k8s_openapi::api::autoscaling::{v1, v2};
use serde_json::Value;

use crate::kinds::unknown_fields;
use crate::resources::{self, Resource};

/// An older version a stored resource is also served in, or another group serving the same
/// objects (events.k8s.io Events are core Events).
pub struct View {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    /// The group the objects are stored in.
    pub storage_group: &'static str,
    /// The stored object, as this version shows it.
    pub show: fn(Value) -> Result<Value, ConvertError>,
    /// An object written in this version, in the stored version.
    pub read: fn(Value) -> Result<Converted, ConvertError>,
    /// This version's JSON schema (for OpenAPI), added to the generator's definitions.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Field selectors this version names differently: (its name, the stored version's).
    pub field_labels: &'static [(&'static str, &'static str)],
}

impl View {
    /// A field selector's field, in the stored version's name.
    pub fn stored_field(&self, field: &str) -> String {
        self.field_labels
            .iter()
            .find(|(ours, _)| *ours == field)
            .map_or_else(|| field.to_string(), |(_, stored)| stored.to_string())
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "View({}/{} {})", self.group, self.version, self.plural)
    }
}

impl View {
    /// `autoscaling/v1`.
    pub fn group_version(&self) -> String {
        format!("{}/{}", self.group, self.version)
    }

    /// The registry entry this view is stored as.
    pub fn storage(&self) -> &'static Resource {
        resources::all()
            .iter()
            .find(|r| r.group == self.storage_group && r.plural == self.plural)
            .expect("every view names a stored resource")
    }
}

/// An object converted to the stored version, and the fields of the written version that
/// nothing in it knew (for `fieldValidation`).
#[derive(Debug)]
pub struct Converted {
    pub object: Value,
    pub unknown_fields: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}")]
    Decode(#[source] serde_json::Error),
    #[error("annotation {annotation}: {source}")]
    Annotation {
        annotation: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

static VIEWS: &[View] = &[
    View {
        group: "autoscaling",
        version: "v1",
        plural: "horizontalpodautoscalers",
        storage_group: "autoscaling",
        show: hpa::show,
        read: hpa::read,
        schema: |g| g.subschema_for::<v1::HorizontalPodAutoscaler>(),
        field_labels: &[],
    },
    View {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        storage_group: "",
        show: events::show,
        read: events::read,
        schema: |g| g.subschema_for::<k8s_openapi::api::events::v1::Event>(),
        field_labels: &[
            ("regarding.kind", "involvedObject.kind"),
            ("regarding.namespace", "involvedObject.namespace"),
            ("regarding.name", "involvedObject.name"),
            ("regarding.uid", "involvedObject.uid"),
            ("regarding.apiVersion", "involvedObject.apiVersion"),
            (
                "regarding.resourceVersion",
                "involvedObject.resourceVersion",
            ),
            ("regarding.fieldPath", "involvedObject.fieldPath"),
            ("reportingController", "reportingComponent"),
            ("deprecatedSource", "source"),
        ],
    },
];

/// Every view, in discovery order (after its stored version, which stays preferred).
pub fn all() -> &'static [View] {
    VIEWS
}

/// The view served at `group/version` under `plural`, if that is not the stored version.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static View> {
    VIEWS
        .iter()
        .find(|v| v.group == group && v.version == version && v.plural == plural)
}

/// events.k8s.io/v1 Events over the stored core/v1 Events: the same fields under newer names
/// (kube-rs' and client-go's newer recorders write these).
mod events {
    use k8s_openapi::api::events::v1::Event;
    use serde_json::Map;

    use super::*;

    /// core/v1 name -> events.k8s.io/v1 name.
    const RENAMED: &[(&str, &str)] = &[
        ("involvedObject", "regarding"),
        ("message", "note"),
        ("reportingComponent", "reportingController"),
        ("source", "deprecatedSource"),
        ("firstTimestamp", "deprecatedFirstTimestamp"),
        ("lastTimestamp", "deprecatedLastTimestamp"),
        ("count", "deprecatedCount"),
    ];

    fn rename(obj: Value, api_version: &str, to_new: bool) -> Value {
        let Value::Object(fields) = obj else {
            return obj;
        };
        let mut out = Map::new();
        for (k, v) in fields {
            let k = RENAMED
                .iter()
                .find(|(old, new)| if to_new { *old == k } else { *new == k })
                .map(|(old, new)| if to_new { *new } else { *old })
                .map(str::to_string)
                .unwrap_or(k);
            out.insert(k, v);
        }
        out.insert("apiVersion".into(), Value::String(api_version.into()));
        out.insert("kind".into(), Value::String("Event".into()));
        Value::Object(out)
    }

    pub(super) fn show(stored: Value) -> Result<Value, ConvertError> {
        Ok(rename(stored, "events.k8s.io/v1", true))
    }

    pub(super) fn read(written: Value) -> Result<Converted, ConvertError> {
        let typed: Event = serde_json::from_value(written.clone()).map_err(ConvertError::Decode)?;
        let mut unknown = Vec::new();
        if let Ok(round) = serde_json::to_value(&typed) {
            unknown_fields(&written, &round, "", &mut unknown);
        }
        let known = serde_json::to_value(&typed).map_err(ConvertError::Decode)?;
        Ok(Converted {
            object: rename(known, "v1", false),
            unknown_fields: unknown,
        })
    }
}

/// autoscaling/v1 HorizontalPodAutoscalers over the stored autoscaling/v2.
mod hpa {
    use super::*;

    const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
    const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
    const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
    const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

    fn is_cpu(name: &str, kind: &str) -> bool {
        kind == "Resource" && name == "cpu"
    }

    /// The v1 target: the first CPU metric aimed at utilization.
    fn cpu_target(m: &v2::MetricSpec) -> Option<i32> {
        let r = m.resource.as_ref()?;
        if is_cpu(&r.name, &m.type_) && r.target.type_ == "Utilization" {
            r.target.average_utilization
        } else {
            None
        }
    }

    fn cpu_current(m: &v2::MetricStatus) -> Option<i32> {
        let r = m.resource.as_ref()?;
        if is_cpu(&r.name, &m.type_) {
            r.current.average_utilization
        } else {
            None
        }
    }

    fn annotate<T: serde::Serialize>(
        annotations: &mut std::collections::BTreeMap<String, String>,
        key: &str,
        value: &T,
    ) {
        if let Ok(text) = serde_json::to_string(value) {
            annotations.insert(key.to_string(), text);
        }
    }

    pub(super) fn show(stored: Value) -> Result<Value, ConvertError> {
        let hpa: v2::HorizontalPodAutoscaler =
            serde_json::from_value(stored).map_err(ConvertError::Decode)?;
        let mut metadata = hpa.metadata;
        let mut annotations = metadata.annotations.take().unwrap_or_default();
        let spec = hpa.spec.unwrap_or_default();
        let metrics = spec.metrics.unwrap_or_default();
        let cpu = metrics.iter().position(|m| cpu_target(m).is_some());
        let target_cpu_utilization_percentage = cpu.and_then(|i| cpu_target(&metrics[i]));
        let others: Vec<&v2::MetricSpec> = metrics
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != cpu)
            .map(|(_, m)| m)
            .collect();
        if !others.is_empty() {
            // All of them, in order: reading it back must give the same list.
            annotate(&mut annotations, METRICS, &metrics);
        }
        if let Some(b) = &spec.behavior {
            annotate(&mut annotations, BEHAVIOR, b);
        }
        let status = hpa.status.map(|s| {
            let current = s.current_metrics.unwrap_or_default();
            if !current.is_empty() {
                annotate(&mut annotations, CURRENT_METRICS, &current);
            }
            if let Some(c) = s.conditions.as_ref().filter(|c| !c.is_empty()) {
                annotate(&mut annotations, CONDITIONS, c);
            }
            v1::HorizontalPodAutoscalerStatus {
                current_cpu_utilization_percentage: current.iter().find_map(cpu_current),
                current_replicas: s.current_replicas.unwrap_or(0),
                desired_replicas: s.desired_replicas,
                last_scale_time: s.last_scale_time,
                observed_generation: s.observed_generation,
            }
        });
        metadata.annotations = (!annotations.is_empty()).then_some(annotations);
        let out = v1::HorizontalPodAutoscaler {
            metadata,
            spec: Some(v1::HorizontalPodAutoscalerSpec {
                max_replicas: spec.max_replicas,
                min_replicas: spec.min_replicas,
                scale_target_ref: v1::CrossVersionObjectReference {
                    api_version: spec.scale_target_ref.api_version,
                    kind: spec.scale_target_ref.kind,
                    name: spec.scale_target_ref.name,
                },
                target_cpu_utilization_percentage,
            }),
            status,
        };
        serde_json::to_value(&out).map_err(ConvertError::Decode)
    }

    fn lift<T: serde::de::DeserializeOwned>(
        annotations: &mut std::collections::BTreeMap<String, String>,
        key: &'static str,
    ) -> Result<Option<T>, ConvertError> {
        annotations
            .remove(key)
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|source| ConvertError::Annotation {
                annotation: key,
                source,
            })
    }

    fn cpu_metric(utilization: i32) -> v2::MetricSpec {
        v2::MetricSpec {
            type_: "Resource".into(),
            resource: Some(v2::ResourceMetricSource {
                name: "cpu".into(),
                target: v2::MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(utilization),
                    ..Default::default()
                },
            }),
            ..Default::default()
        }
    }

    pub(super) fn read(written: Value) -> Result<Converted, ConvertError> {
        let hpa: v1::HorizontalPodAutoscaler =
            serde_json::from_value(written.clone()).map_err(ConvertError::Decode)?;
        let mut unknown = Vec::new();
        if let Ok(round) = serde_json::to_value(&hpa) {
            unknown_fields(&written, &round, "", &mut unknown);
        }
        let mut metadata = hpa.metadata;
        let mut annotations = metadata.annotations.take().unwrap_or_default();
        let saved_metrics: Option<Vec<v2::MetricSpec>> = lift(&mut annotations, METRICS)?;
        let behavior: Option<v2::HorizontalPodAutoscalerBehavior> =
            lift(&mut annotations, BEHAVIOR)?;
        let current_metrics: Option<Vec<v2::MetricStatus>> =
            lift(&mut annotations, CURRENT_METRICS)?;
        let conditions: Option<Vec<v2::HorizontalPodAutoscalerCondition>> =
            lift(&mut annotations, CONDITIONS)?;
        metadata.annotations = (!annotations.is_empty()).then_some(annotations);
        let spec = hpa.spec.map(|s| {
            // The v1 field wins over what the annotation remembers of the CPU target.
            let mut metrics = saved_metrics.unwrap_or_default();
            match (
                s.target_cpu_utilization_percentage,
                metrics.iter().position(|m| cpu_target(m).is_some()),
            ) {
                (Some(t), Some(i)) => metrics[i] = cpu_metric(t),
                (Some(t), None) => metrics.insert(0, cpu_metric(t)),
                (None, Some(i)) => {
                    metrics.remove(i);
                }
                (None, None) => {}
            }
            v2::HorizontalPodAutoscalerSpec {
                behavior,
                max_replicas: s.max_replicas,
                min_replicas: s.min_replicas,
                metrics: (!metrics.is_empty()).then_some(metrics),
                scale_target_ref: v2::CrossVersionObjectReference {
                    api_version: s.scale_target_ref.api_version,
                    kind: s.scale_target_ref.kind,
                    name: s.scale_target_ref.name,
                },
            }
        });
        let status = hpa.status.map(|s| {
            let current = current_metrics.or_else(|| {
                s.current_cpu_utilization_percentage.map(|u| {
                    vec![v2::MetricStatus {
                        type_: "Resource".into(),
                        resource: Some(v2::ResourceMetricStatus {
                            name: "cpu".into(),
                            current: v2::MetricValueStatus {
                                average_utilization: Some(u),
                                ..Default::default()
                            },
                        }),
                        ..Default::default()
                    }]
                })
            });
            v2::HorizontalPodAutoscalerStatus {
                conditions,
                current_metrics: current,
                current_replicas: Some(s.current_replicas),
                desired_replicas: s.desired_replicas,
                last_scale_time: s.last_scale_time,
                observed_generation: s.observed_generation,
            }
        });
        let out = v2::HorizontalPodAutoscaler {
            metadata,
            spec,
            status,
        };
        let object = serde_json::to_value(&out).map_err(ConvertError::Decode)?;
        Ok(Converted {
            object,
            unknown_fields: unknown,
        })
    }
}

/// How Kubernetes ranks API versions (higher first in discovery): GA above beta above alpha,
/// higher numbers first within each, and versions of no such shape last, by name.
pub fn priority(v: &str) -> (u8, u32, u32, std::cmp::Reverse<String>) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0, std::cmp::Reverse(v.to_string()));
    };
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(major) = rest[..digits].parse::<u32>() else {
        return (0, 0, 0, std::cmp::Reverse(v.to_string()));
    };
    let tail = &rest[digits..];
    let (level, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(u32::MAX))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(u32::MAX))
    } else {
        return (0, 0, 0, std::cmp::Reverse(v.to_string()));
    };
    if minor == u32::MAX {
        return (0, 0, 0, std::cmp::Reverse(v.to_string()));
    }
    (level, major, minor, std::cmp::Reverse(String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1_view() -> &'static View {
        find("autoscaling", "v1", "horizontalpodautoscalers").unwrap()
    }

    #[test]
    fn every_view_has_a_stored_version_it_is_not() {
        for v in all() {
            let r = v.storage();
            assert_ne!((r.group, r.version), (v.group, v.version), "{v:?}");
            assert!(resources::find(v.group, v.version, v.plural).is_none());
        }
    }

    #[test]
    fn events_k8s_io_events_are_core_events_renamed() {
        let view = find("events.k8s.io", "v1", "events").unwrap();
        let written = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1", "namespace": "default"},
            "eventTime": "2026-12-01T00:00:00.000000Z", "reportingController": "me",
            "reportingInstance": "me-1", "action": "Tested", "reason": "Works",
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "note": "it works", "type": "Normal", "deprecatedCount": 3
        });
        let c = (view.read)(written.clone()).unwrap();
        assert!(c.unknown_fields.is_empty());
        assert_eq!(c.object["apiVersion"], "v1");
        assert_eq!(c.object["involvedObject"]["name"], "p");
        assert_eq!(c.object["message"], "it works");
        assert_eq!(c.object["reportingComponent"], "me");
        assert_eq!(c.object["count"], 3);
        let shown = (view.show)(c.object).unwrap();
        assert_eq!(shown, written);
    }

    #[test]
    fn a_v1_autoscaler_is_stored_as_a_cpu_metric() {
        let written = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                     "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60,
                     "bogus": true}
        });
        let c = (v1_view().read)(written).unwrap();
        assert_eq!(c.object["apiVersion"], "autoscaling/v2");
        assert_eq!(c.object["spec"]["maxReplicas"], 5);
        assert_eq!(
            c.object["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 60}}}])
        );
        assert_eq!(c.unknown_fields, vec!["spec.bogus".to_string()]);
        // And shown back as it was written (less the unknown field).
        let shown = (v1_view().show)(c.object).unwrap();
        assert_eq!(shown["apiVersion"], "autoscaling/v1");
        assert_eq!(shown["spec"]["targetCPUUtilizationPercentage"], 60);
        assert!(shown["metadata"]["annotations"].is_null(), "{shown}");
    }

    #[test]
    fn what_v1_cannot_say_survives_a_round_trip_through_it() {
        let stored = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2, "maxReplicas": 9,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory",
                        "target": {"type": "AverageValue", "averageValue": "1Gi"}}},
                    {"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70}}}
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}}
            },
            "status": {
                "currentReplicas": 3, "desiredReplicas": 4,
                "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "current": {"averageUtilization": 91}}}],
                "conditions": [{"type": "AbleToScale", "status": "True",
                                "lastTransitionTime": "2026-12-01T00:00:00Z"}]
            }
        });
        let shown = (v1_view().show)(stored.clone()).unwrap();
        assert_eq!(shown["spec"]["targetCPUUtilizationPercentage"], 70);
        assert_eq!(shown["status"]["currentCPUUtilizationPercentage"], 91);
        assert_eq!(shown["status"]["currentReplicas"], 3);
        assert_eq!(shown["metadata"]["annotations"]["team"], "a");
        assert!(shown["metadata"]["annotations"][hpa_annotation("metrics")].is_string());
        let back = (v1_view().read)(shown.clone()).unwrap().object;
        assert_eq!(back, stored);

        // A v1 client that changes the CPU target changes only that.
        let mut edited = shown;
        edited["spec"]["targetCPUUtilizationPercentage"] = json!(50);
        let back = (v1_view().read)(edited).unwrap().object;
        assert_eq!(
            back["spec"]["metrics"][1]["resource"]["target"]["averageUtilization"],
            50
        );
        assert_eq!(back["spec"]["metrics"][0], stored["spec"]["metrics"][0]);
    }

    fn hpa_annotation(name: &str) -> String {
        format!("autoscaling.alpha.kubernetes.io/{name}")
    }

    #[test]
    fn a_broken_annotation_is_refused_not_dropped() {
        let written = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "annotations": {hpa_annotation("metrics"): "[{"}},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 2}
        });
        let e = (v1_view().read)(written).unwrap_err();
        assert!(
            e.to_string()
                .contains("autoscaling.alpha.kubernetes.io/metrics"),
            "{e}"
        );
    }
}
