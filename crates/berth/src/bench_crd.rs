//! The custom resource figures of `berth bench api`: a definition's create until its kind is
//! served, custom object creates beside the ConfigMap figure of the same run, and admission of
//! a 1,000-field custom object with a CEL rule (in process, no server).

use std::time::{Duration, Instant};

use anyhow::Result;
use api::custom::descriptors;
use api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use api::kinds::{Admission, Operation};
use bytes::Bytes;
use client::Client;
use http::Method;
use serde_json::{Value, json};

use crate::bench::{ms, percentile};

/// A definition of group `group` with a schema like an operator's: typed fields, an enum,
/// a bounded integer, a 1 KiB payload, and a CEL rule.
fn definition(group: &str, plural: &str, extra: serde_json::Map<String, Value>) -> Value {
    let mut spec_props = json!({
        "replicas": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 1},
        "mode": {"type": "string", "enum": ["fast", "safe"], "default": "safe"},
        "payload": {"type": "string", "maxLength": 4096},
        "limit": {"type": "integer", "default": 10},
    });
    spec_props
        .as_object_mut()
        .expect("an object literal")
        .extend(extra);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "kind": "Thing"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": spec_props,
                             "x-kubernetes-validations": [
                                 {"rule": "self.replicas <= self.limit * 100",
                                  "message": "too many replicas for the limit"}]},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}],
        }
    })
}

/// Create definitions one after another and time each from its create call until a list of
/// its kind answers (kubectl's next call); returns the latencies, sorted.
async fn definitions_served(c: &Client, count: usize) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(count);
    for i in 0..count {
        let group = format!("g{i}.bench.example.com");
        let body = definition(&group, "things", Default::default());
        let t = Instant::now();
        c.request_json(
            Method::POST,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(&body),
        )
        .await?;
        c.request_json(
            Method::GET,
            &format!("/apis/{group}/v1/namespaces/default/things"),
            None,
        )
        .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// The custom object create figure: the same count, clients and 1 KiB payload as the
/// ConfigMap one. Returns creates per second and latencies.
async fn custom_creates(c: &Client, count: usize, clients: usize) -> Result<(f64, Vec<Duration>)> {
    let group = "objects.bench.example.com";
    c.request_json(
        Method::POST,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        Some(&definition(group, "things", Default::default())),
    )
    .await?;
    let payload = "x".repeat(1024);
    let (lat, elapsed) = crate::bench::create_many(
        c,
        &format!("/apis/{group}/v1/namespaces/bench/things"),
        count,
        clients,
        move |i| {
            Bytes::from(
                json!({"apiVersion": format!("{group}/v1"), "kind": "Thing",
                       "metadata": {"name": format!("t-{i}")},
                       "spec": {"replicas": 3, "mode": "fast", "payload": payload}})
                .to_string(),
            )
        },
    )
    .await?;
    Ok((count as f64 / elapsed.as_secs_f64(), lat))
}

/// Admission of one object with `fields` typed fields (prune, default, validate, the CEL
/// rule), timed `rounds` times; returns the sorted latencies.
fn admission_of_wide_objects(fields: usize, rounds: usize) -> Result<Vec<Duration>> {
    let mut extra = serde_json::Map::new();
    let mut spec = serde_json::Map::new();
    for i in 0..fields {
        let (schema, value) = match i % 4 {
            0 => (
                json!({"type": "string", "maxLength": 64}),
                json!(format!("value-{i}")),
            ),
            1 => (json!({"type": "integer", "minimum": 0}), json!(i)),
            2 => (json!({"type": "boolean"}), json!(true)),
            _ => (
                json!({"type": "string", "enum": ["a", "b", "c"]}),
                json!("b"),
            ),
        };
        extra.insert(format!("f{i:04}"), schema);
        spec.insert(format!("f{i:04}"), value);
    }
    spec.insert("replicas".into(), json!(5));
    let crd: CustomResourceDefinition =
        serde_json::from_value(definition("wide.bench.example.com", "things", extra))?;
    let mut crd = crd;
    api::custom::definition::settle_status(&mut crd, None);
    let r = *descriptors(&crd)
        .first()
        .ok_or_else(|| anyhow::anyhow!("the definition serves nothing"))?;
    let obj = json!({"apiVersion": "wide.bench.example.com/v1", "kind": "Thing",
                     "metadata": {"name": "wide", "namespace": "bench"}, "spec": spec});
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        r.ops
            .admit(Admission {
                object: &obj,
                old: None,
                operation: Operation::Create,
                resource: r,
                find_unknown_fields: true,
            })
            .map_err(|e| anyhow::anyhow!("the wide object was refused: {e}"))?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// A set of definitions like a large operator's: `count` definitions of two versions, each
/// with `fields` documented fields. Returns the seconds to create them all and to create one
/// object of each, and the definitions' size in bytes.
async fn large_set(c: &Client, count: usize, fields: usize) -> Result<(Duration, Duration, usize)> {
    let mut bodies = Vec::with_capacity(count);
    for n in 0..count {
        let mut props = serde_json::Map::new();
        for i in 0..fields {
            props.insert(
                format!("field{i:04}"),
                json!({"type": "string", "maxLength": 256,
                       "description": "A documented setting of this operator. ".repeat(4)}),
            );
        }
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": props},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
        let version = |name: &str, storage: bool| {
            json!({"name": name, "served": true, "storage": storage,
                   "subresources": {"status": {}}, "schema": {"openAPIV3Schema": schema}})
        };
        bodies.push(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("kinds{n}.large.bench.example.com")},
            "spec": {"group": "large.bench.example.com", "scope": "Namespaced",
                     "names": {"plural": format!("kinds{n}"), "kind": format!("Kind{n}")},
                     "versions": [version("v1", true), version("v1beta1", false)]}}));
    }
    let bytes = bodies.iter().map(|b| b.to_string().len()).sum();
    let t = Instant::now();
    for b in &bodies {
        c.request_json(
            Method::POST,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(b),
        )
        .await?;
    }
    let installed = t.elapsed();
    let t = Instant::now();
    for n in 0..count {
        c.request_json(
            Method::POST,
            &format!("/apis/large.bench.example.com/v1/namespaces/bench/kinds{n}"),
            Some(
                &json!({"apiVersion": "large.bench.example.com/v1", "kind": format!("Kind{n}"),
                         "metadata": {"name": "one"}, "spec": {"field0001": "x"}}),
            ),
        )
        .await?;
    }
    Ok((installed, t.elapsed(), bytes))
}

/// Print the custom resource rows; `configmaps_per_s` is this run's ConfigMap figure.
pub async fn rows(
    c: &Client,
    creates: usize,
    clients: usize,
    configmaps_per_s: f64,
    row: &dyn Fn(&str, String, &str),
) -> Result<()> {
    let (rate, lat) = custom_creates(c, creates, clients).await?;
    row(
        &format!("create {creates} custom objects (1 KiB, schema + CEL), {clients} clients"),
        format!("{rate:.0}/s"),
        ">= 50% of ConfigMaps",
    );
    row(
        "  of the ConfigMap figure",
        format!("{:.0}%", 100.0 * rate / configmaps_per_s),
        ">= 50%",
    );
    row("  create latency p99", ms(percentile(&lat, 0.99)), "");
    let served = definitions_served(c, 50).await?;
    row(
        "definition create -> kind served (50 definitions), p50",
        ms(percentile(&served, 0.5)),
        "",
    );
    row(
        "definition create -> kind served, p99",
        ms(percentile(&served, 0.99)),
        "<= 50 ms",
    );
    let (installed, served, bytes) = large_set(c, 40, 600).await?;
    row(
        &format!(
            "install 40 two-version definitions ({:.1} MB)",
            bytes as f64 / 1e6
        ),
        ms(installed),
        "seconds",
    );
    row("  then one object of each kind", ms(served), "");
    let wide = admission_of_wide_objects(1000, 2000)?;
    row(
        "admit a 1,000-field custom object with a CEL rule, p50",
        ms(percentile(&wide, 0.5)),
        "",
    );
    row(
        "admit a 1,000-field custom object with a CEL rule, p99",
        ms(percentile(&wide, 0.99)),
        "",
    );
    Ok(())
}
