//! Custom objects in another of their definition's versions than the one they are stored in.
//! With `None` conversion only `apiVersion` changes; with `Webhook` conversion the
//! definition's webhook converts them (a `ConversionReview`, many objects in one call) and may
//! change nothing of their metadata but labels and annotations. Writes are converted to the
//! storage version just before they are stored (`write.rs`); objects read back are converted
//! to the version asked, alone, in lists, table rows and watch events.

use std::sync::Arc;
use std::time::Duration;

use api::Resource;
use api::custom::Conversion;
use api::k8s_openapi::api::admissionregistration::v1::WebhookClientConfig;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::errors::{ApiError, ApiResult};
use crate::server::Reply;

/// How long a conversion webhook may take: Kubernetes gives each call 30 seconds.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Whether replies about custom kind `r` may hold objects of another version than `r`'s: its
/// definition serves several, or stores in another.
pub(crate) fn converts(r: &Resource) -> bool {
    r.ops.custom().is_some_and(|c| {
        let k = c.kind();
        k.served_versions.len() > 1 || k.storage_version != r.version
    })
}

/// Convert those of `objects` (all of custom kind `r`) that are not in version `to` to it.
pub(crate) async fn convert(
    cache: &Cache,
    r: &Resource,
    objects: &mut [Value],
    to: &str,
) -> ApiResult<()> {
    let Some(ops) = r.ops.custom() else {
        return Ok(());
    };
    let desired = format!("{}/{to}", r.group);
    let away: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i]["apiVersion"].as_str() != Some(desired.as_str()))
        .collect();
    let Some(&first) = away.first() else {
        return Ok(());
    };
    let kind = ops.kind();
    match &kind.conversion {
        Conversion::None => {
            for i in away {
                objects[i]["apiVersion"] = json!(desired);
            }
        }
        Conversion::Webhook {
            client,
            review_versions,
        } => {
            let from = format!(
                "{}, Kind={}",
                objects[first]["apiVersion"].as_str().unwrap_or(""),
                r.kind
            );
            let sent: Vec<Value> = away.iter().map(|&i| objects[i].clone()).collect();
            let converted = call(cache, client, review_versions, &sent, &desired, r.kind)
                .await
                .map_err(|why| {
                    ApiError::internal(format!("conversion webhook for {from} {why}"))
                })?;
            // What the webhook answers is held to the target version's schema, as what is
            // read from storage is.
            let target = if to == r.version {
                Some(kind.clone())
            } else {
                cache
                    .registry()
                    .find(r.group, to, r.plural)
                    .and_then(|t| t.ops.custom())
                    .map(|c| c.kind())
            };
            for (i, mut obj) in away.into_iter().zip(converted) {
                if let Some(s) = target.as_ref().and_then(|k| k.schema.as_ref()) {
                    s.prune(&mut obj, "", true, &mut Vec::new());
                    s.apply_defaults(&mut obj);
                }
                objects[i] = obj;
            }
        }
    }
    Ok(())
}

/// One `ConversionReview` round trip; the error completes "conversion webhook for X ...".
async fn call(
    cache: &Cache,
    client: &WebhookClientConfig,
    review_versions: &[String],
    objects: &[Value],
    desired: &str,
    kind: &str,
) -> Result<Vec<Value>, String> {
    let version = review_versions
        .iter()
        .find(|v| *v == "v1" || *v == "v1beta1")
        .ok_or_else(|| {
            format!(
                "failed: none of the ConversionReview versions {review_versions:?} is supported"
            )
        })?;
    let uid = uuid::Uuid::new_v4().to_string();
    let review = json!({
        "apiVersion": format!("apiextensions.k8s.io/{version}"),
        "kind": "ConversionReview",
        "request": {"uid": uid, "desiredAPIVersion": desired, "objects": objects},
    });
    let answer = tokio::time::timeout(
        TIMEOUT,
        crate::webhooks::post_review(cache, client, &review),
    )
    .await
    .map_err(|_| "failed: context deadline exceeded".to_string())?
    .map_err(|e| format!("failed: {e}"))?;
    let response = answer
        .get("response")
        .filter(|r| r.is_object())
        .ok_or("returned invalid response: no response provided")?;
    let got = response["uid"].as_str().unwrap_or("");
    if got != uid {
        return Err(format!(
            "returned invalid response: expected response uid {uid:?}, got {got:?}"
        ));
    }
    if response["result"]["status"].as_str() != Some("Success") {
        return Err(format!(
            "returned failure: {}",
            response["result"]["message"].as_str().unwrap_or("")
        ));
    }
    let converted = response["convertedObjects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if converted.len() != objects.len() {
        return Err(format!(
            "returned {} objects, expected {}",
            converted.len(),
            objects.len()
        ));
    }
    converted
        .into_iter()
        .zip(objects)
        .enumerate()
        .map(|(i, (c, original))| {
            checked(c, original, desired, kind)
                .map_err(|e| format!("returned invalid converted object at index {i}: {e}"))
        })
        .collect()
}

/// A converted object as the server keeps it: the version and kind asked for, and the
/// original's metadata with only the webhook's labels and annotations taken over.
fn checked(mut c: Value, original: &Value, desired: &str, kind: &str) -> Result<Value, String> {
    if !c.is_object() {
        return Err("not an object".into());
    }
    let got = c["apiVersion"].as_str().unwrap_or("");
    if got != desired {
        return Err(format!("invalid apiVersion {got:?}, expected {desired:?}"));
    }
    let got = c["kind"].as_str().unwrap_or("");
    if got != kind {
        return Err(format!("invalid kind {got:?}, expected {kind:?}"));
    }
    let meta = c.get("metadata").cloned().unwrap_or(Value::Null);
    if !(meta.is_object() || meta.is_null()) {
        return Err("invalid metadata: must be an object".into());
    }
    let mut kept = original["metadata"].clone();
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {
                if let Some(m) = kept.as_object_mut() {
                    m.remove(field);
                }
            }
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {
                kept[field] = Value::Object(m.clone());
            }
            Some(_) => {
                return Err(format!(
                    "invalid metadata: {field} must be a map of strings"
                ));
            }
        }
    }
    c["metadata"] = kept;
    Ok(c)
}

/// A reply about custom kind `r`, its objects shown in `r`'s version. A reply that is one
/// document fails as a whole if its objects cannot be converted; a watch reports the event it
/// could not convert as an `ERROR` event.
pub(crate) async fn show_reply(
    cache: Arc<Cache>,
    r: &'static Resource,
    mut reply: Reply,
) -> ApiResult<Reply> {
    if let Some(whole) = reply.body.whole() {
        let out = convert_message(&cache, r, whole).await?;
        reply.body = crate::body::Body::from_bytes(out);
        return Ok(reply);
    }
    reply.body = reply
        .body
        .then_messages(move |b| {
            let cache = cache.clone();
            async move {
                let newline = b.ends_with(b"\n");
                match convert_message(&cache, r, b).await {
                    Ok(out) => out,
                    Err(e) => {
                        let line = crate::read::error_line(&e);
                        if newline {
                            line
                        } else {
                            line.slice(..line.len() - 1)
                        }
                    }
                }
            }
        })
        .await;
    Ok(reply)
}

async fn convert_message(cache: &Cache, r: &'static Resource, b: Bytes) -> ApiResult<Bytes> {
    let Ok(mut v) = serde_json::from_slice::<Value>(&b) else {
        return Ok(b);
    };
    let mut found = Vec::new();
    collect(r, &mut v, &mut Vec::new(), &mut found);
    if found.is_empty() {
        return Ok(b);
    }
    let mut objects: Vec<Value> = found.iter().map(|p| at(&mut v, p).take()).collect();
    convert(cache, r, &mut objects, r.version).await?;
    for (p, o) in found.iter().zip(objects) {
        *at(&mut v, p) = o;
    }
    let mut out = api::wire::to_vec(&v);
    if b.ends_with(b"\n") {
        out.push(b'\n');
    }
    Ok(Bytes::from(out))
}

/// A step into a reply document: a member or an array element.
#[derive(Clone)]
enum Step {
    Key(&'static str),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[*k],
        Step::Index(i) => &mut v[*i],
    })
}

/// Where objects of kind `r` sit in a reply: the reply itself, a list's items, table rows'
/// objects, a watch event's object.
fn collect(r: &Resource, v: &mut Value, here: &mut Vec<Step>, found: &mut Vec<Vec<Step>>) {
    let kind = v["kind"].as_str().unwrap_or("");
    if kind == r.kind {
        found.push(here.clone());
    } else if kind == r.list_kind() {
        v["apiVersion"] = json!(r.group_version());
        for i in 0..v["items"].as_array().map_or(0, Vec::len) {
            here.extend([Step::Key("items"), Step::Index(i)]);
            collect(r, &mut v["items"][i], here, found);
            here.truncate(here.len() - 2);
        }
    } else if kind == "Table" {
        for i in 0..v["rows"].as_array().map_or(0, Vec::len) {
            here.extend([Step::Key("rows"), Step::Index(i), Step::Key("object")]);
            collect(r, &mut v["rows"][i]["object"], here, found);
            here.truncate(here.len() - 3);
        }
    } else if v["type"].is_string() && v.get("object").is_some() {
        here.push(Step::Key("object"));
        collect(r, &mut v["object"], here, found);
        here.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_objects_keep_their_metadata_but_labels_and_annotations() {
        let original = json!({"apiVersion": "x.io/v1", "kind": "Thing",
            "metadata": {"name": "a", "uid": "u1", "labels": {"a": "1"}, "resourceVersion": "7"},
            "spec": {"host": "h", "port": 1}});
        let back = json!({"apiVersion": "x.io/v2", "kind": "Thing",
            "metadata": {"name": "renamed", "uid": "u2", "labels": {"b": "2"},
                         "annotations": {"c": "3"}},
            "spec": {"address": "h:1"}});
        let kept = checked(back, &original, "x.io/v2", "Thing").expect("valid");
        assert_eq!(kept["metadata"]["name"], "a");
        assert_eq!(kept["metadata"]["uid"], "u1");
        assert_eq!(kept["metadata"]["resourceVersion"], "7");
        assert_eq!(kept["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(kept["metadata"]["annotations"], json!({"c": "3"}));
        assert_eq!(kept["spec"], json!({"address": "h:1"}));
    }

    #[test]
    fn converted_objects_in_the_wrong_version_or_kind_are_refused() {
        let original = json!({"apiVersion": "x.io/v1", "kind": "Thing", "metadata": {}});
        let wrong_version = json!({"apiVersion": "x.io/v1", "kind": "Thing"});
        let e = checked(wrong_version, &original, "x.io/v2", "Thing").unwrap_err();
        assert_eq!(e, "invalid apiVersion \"x.io/v1\", expected \"x.io/v2\"");
        let wrong_kind = json!({"apiVersion": "x.io/v2", "kind": "Other"});
        let e = checked(wrong_kind, &original, "x.io/v2", "Thing").unwrap_err();
        assert_eq!(e, "invalid kind \"Other\", expected \"Thing\"");
        let bad_labels = json!({"apiVersion": "x.io/v2", "kind": "Thing",
            "metadata": {"labels": {"a": 1}}});
        assert!(checked(bad_labels, &original, "x.io/v2", "Thing").is_err());
    }
}
