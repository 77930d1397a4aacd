//! Core/v1 Events as the components write them: the object they are about and the Event
//! itself, built the same way by the node agent and the scheduler.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// A reference to `pod`, or to one of its containers when `field_path` is given.
pub fn pod_reference(pod: &Pod, field_path: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}

/// Who reports an event: the component, and the host it runs on if it is a node's.
pub struct Reporter<'a> {
    pub component: &'a str,
    pub host: Option<&'a str>,
}

/// A first occurrence (count 1) of an event of `kind` (`Normal` or `Warning`) about
/// `reference`, named `name` (or generated from the object's name when `None`).
pub fn new(
    reference: ObjectReference,
    name: Option<String>,
    kind: &str,
    reason: &str,
    message: &str,
    by: &Reporter<'_>,
    now: jiff::Timestamp,
) -> Event {
    let generate_name = name
        .is_none()
        .then(|| format!("{}.", reference.name.as_deref().unwrap_or_default()));
    Event {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: reference.namespace.clone(),
            ..Default::default()
        },
        involved_object: reference,
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(kind.into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        source: Some(EventSource {
            component: Some(by.component.into()),
            host: by.host.map(str::to_string),
        }),
        reporting_component: Some(by.component.into()),
        reporting_instance: by.host.map(str::to_string),
        ..Default::default()
    }
}
