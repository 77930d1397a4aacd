//! OpenAPI for every served kind, as kube-apiserver publishes it: v3 per group-version
//! (`/openapi/v3` lists them, each under a content hash) and v2 as one document, in JSON or in
//! gnostic's protobuf (what kubectl 1.27 and 1.28 read), chosen by Accept.
//!
//! The schemas are Kubernetes' own, from `k8s-openapi` (descriptions and all), reshaped as the
//! real server shapes them: a `$ref` with a description beside it is wrapped in `allOf` in v3,
//! int-or-string and quantity fields get their documented forms, and each kind's schema names
//! its group, version and kind, which `kubectl explain` looks for. Every operation carries its
//! kind and the `fieldValidation` parameter, so kubectl leaves validation to the server. PATCH
//! operations list no strategic-merge body: the schemas carry no patch strategies, so kubectl
//! keeps computing `apply` patches from its built-in types, as it would from complete ones.
//!
//! The documents are built on first use (a few MB that an idle server need not hold).

mod gnostic;

use std::sync::Arc;

use api::resources::Served;
use api::{Registry, Resource};
use bytes::Bytes;
use serde_json::{Map, Value, json};

/// The Content-Type kubectl parses for protobuf OpenAPI v2 (`@` in it breaks Go's parser).
pub const V2_PROTO_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const REF_V3: &str = "#/components/schemas/";
const REF_V2: &str = "#/definitions/";
const PATCH_SCHEMA: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const STATUS_SCHEMA: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";

pub struct OpenApi {
    version: String,
    /// The documents and the registry generation they describe.
    docs: std::sync::Mutex<Option<(u64, Arc<Documents>)>>,
    /// One build at a time; requests meanwhile wait for it.
    building: tokio::sync::Mutex<()>,
}

struct Documents {
    v2_json: Bytes,
    v2_proto: Bytes,
    v3_index: Bytes,
    v3: Vec<(String, Bytes)>,
}

impl OpenApi {
    /// `version` is the server's version, as `info.version` says it.
    pub fn new(version: &str) -> OpenApi {
        OpenApi {
            version: version.to_string(),
            docs: std::sync::Mutex::new(None),
            building: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self, generation: u64) -> Option<Arc<Documents>> {
        let docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        docs.as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, d)| d.clone())
    }

    /// The documents of what `registry` serves, built off the async threads when what it
    /// serves changed (it takes a moment: every schema).
    async fn docs(&self, registry: &Arc<Registry>) -> Arc<Documents> {
        let generation = registry.generation();
        if let Some(d) = self.current(generation) {
            return d;
        }
        let _one = self.building.lock().await;
        if let Some(d) = self.current(generation) {
            return d;
        }
        let version = self.version.clone();
        let reg = registry.clone();
        let built = tokio::task::spawn_blocking(move || build(&version, &reg)).await;
        let docs = Arc::new(built.unwrap_or_else(|_| build(&self.version, registry)));
        *self.docs.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, docs.clone()));
        docs
    }

    pub async fn v2_json(&self, registry: &Arc<Registry>) -> Bytes {
        self.docs(registry).await.v2_json.clone()
    }

    pub async fn v2_proto(&self, registry: &Arc<Registry>) -> Bytes {
        self.docs(registry).await.v2_proto.clone()
    }

    pub async fn v3_index(&self, registry: &Arc<Registry>) -> Bytes {
        self.docs(registry).await.v3_index.clone()
    }

    /// The v3 document of `api/v1` or `apis/{group}/{version}`.
    pub async fn v3(&self, registry: &Arc<Registry>, key: &str) -> Option<Bytes> {
        self.docs(registry)
            .await
            .v3
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }
}

/// `apps` -> `Apps`, `networking.k8s.io` -> `Networking`, `` -> `Core`: the group as
/// operation ids spell it.
fn group_title(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group
        .trim_end_matches(".k8s.io")
        .split(['.', '-'])
        .map(title)
        .collect()
}

fn title(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn base_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

/// The last segment of a `$ref`.
fn ref_name(schema: &schemars::Schema) -> String {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default()
        .to_string()
}

/// A served kind and the name of its schema.
struct Kind {
    served: Served,
    schema: String,
}

/// The kinds' schemas, keyed by name, as kube-apiserver's v3 document has them.
fn schemas(registry: &Registry, kinds: &mut Vec<Kind>) -> Map<String, Value> {
    use schemars::generate::SchemaSettings;
    let mut generator = SchemaSettings::default()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.transforms = vec![Box::new(schemars::transform::RemoveRefSiblings::default())];
        })
        .into_generator();
    let mut custom = Vec::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            for served in registry.served(group, version) {
                if served.resource.ops.custom().is_some() {
                    // A custom kind's schema is its definition's, named as Kubernetes names
                    // it (reversed group, version, kind).
                    let name = custom_schema_name(served.resource);
                    custom.push((name.clone(), custom_schema(&served, &mut generator)));
                    kinds.push(Kind {
                        served,
                        schema: name,
                    });
                    continue;
                }
                let schema =
                    match api::versions::find(served.group, served.version, served.resource.plural)
                    {
                        Some(view) => (view.schema)(&mut generator),
                        None => served.resource.ops.schema(&mut generator),
                    };
                kinds.push(Kind {
                    served,
                    schema: ref_name(&schema),
                });
            }
        }
    }
    // The scale subresource's kind.
    generator.subschema_for::<api::k8s_openapi::api::autoscaling::v1::Scale>();
    generator.subschema_for::<api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    generator.subschema_for::<api::k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    let mut defs = generator.take_definitions(true);
    defs.extend(custom);
    for k in kinds.iter() {
        if let Some(Value::Object(s)) = defs.get_mut(&k.schema) {
            let gvk = json!({"group": k.served.group, "kind": k.served.resource.kind,
                             "version": k.served.version});
            match s.get_mut("x-kubernetes-group-version-kind") {
                Some(Value::Array(list)) if !list.contains(&gvk) => list.push(gvk),
                Some(_) => {}
                None => {
                    s.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
                }
            }
        }
    }
    let gvk_of = |kind: &str, version: &str, group: &str| json!([{"group": group, "kind": kind, "version": version}]);
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.api.autoscaling.v1.Scale") {
        s.insert(
            "x-kubernetes-group-version-kind".into(),
            gvk_of("Scale", "v1", "autoscaling"),
        );
    }
    if let Some(Value::Object(s)) = defs.get_mut(STATUS_SCHEMA) {
        s.insert(
            "x-kubernetes-group-version-kind".into(),
            gvk_of("Status", "v1", ""),
        );
    }
    // Int-or-strings and quantities as kube-apiserver documents them.
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.apimachinery.pkg.util.intstr.IntOrString")
    {
        s.remove("x-kubernetes-int-or-string");
        s.insert("format".into(), json!("int-or-string"));
        s.insert(
            "oneOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if let Some(Value::Object(s)) = defs.get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity") {
        s.remove("x-kubernetes-int-or-string");
        s.insert(
            "oneOf".into(),
            json!([{"type": "string"}, {"type": "number"}]),
        );
    }
    defs.insert(
        PATCH_SCHEMA.into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
               "type": "object"}),
    );
    defs
}

/// `com.example.v1.Widget` for `widgets.example.com/v1`.
fn custom_schema_name(r: &Resource) -> String {
    let mut parts: Vec<&str> = r.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), r.version, r.kind)
}

/// A custom kind's schema as OpenAPI shows it: the definition's, with `apiVersion`, `kind`
/// and `metadata` declared as every object has them.
fn custom_schema(served: &Served, generator: &mut schemars::SchemaGenerator) -> Value {
    let meta = generator
        .subschema_for::<api::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    let mut v = served.resource.ops.schema(generator).to_value();
    if !v.is_object() {
        v = json!({"type": "object"});
    }
    let props = v
        .as_object_mut()
        .expect("made an object above")
        .entry("properties")
        .or_insert_with(|| json!({}));
    if let Some(p) = props.as_object_mut() {
        p.insert("apiVersion".into(), json!({"type": "string",
            "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values."}));
        p.insert("kind".into(), json!({"type": "string",
            "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase."}));
        p.insert("metadata".into(), json!({"allOf": [meta.to_value()],
            "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
    }
    v
}

/// Every schema name `v` refers to, directly or through others.
fn closure(defs: &Map<String, Value>, roots: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut queue: Vec<String> = roots.to_vec();
    while let Some(name) = queue.pop() {
        if seen.contains(&name) {
            continue;
        }
        if let Some(s) = defs.get(&name) {
            collect_refs(s, &mut queue);
        }
        seen.push(name);
    }
    seen.sort();
    seen
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref"
                    && let Some(r) = x.as_str()
                {
                    out.push(r.rsplit('/').next().unwrap_or_default().to_string());
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// One operation of a path, in both versions' words.
struct Op {
    method: &'static str,
    action: &'static str,
    id: String,
    /// The kind the operation is about (the item, for lists).
    gvk: Value,
    /// The schema it answers with.
    reply: String,
    /// The schema of its body, for creates and replaces.
    body: Option<String>,
    params: &'static [&'static str],
}

const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
const PATCH_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
const LIST_PARAMS: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];
const DELETE_PARAMS: &[&str] = &["dryRun", "gracePeriodSeconds", "propagationPolicy"];

fn param_type(name: &str) -> &'static str {
    match name {
        "allowWatchBookmarks" | "watch" | "force" | "sendInitialEvents" => "boolean",
        "limit" | "timeoutSeconds" | "gracePeriodSeconds" => "integer",
        _ => "string",
    }
}

/// The paths of one served kind, with their operations.
fn paths_of(k: &Kind) -> Vec<(String, Vec<Op>)> {
    let r: &Resource = k.served.resource;
    let (group, version) = (k.served.group, k.served.version);
    let base = base_path(group, version);
    let gv = format!("{}{}", group_title(group), title(version));
    let ns = if r.namespaced { "Namespaced" } else { "" };
    let kind = r.kind;
    let gvk = json!({"group": group, "kind": kind, "version": version});
    let item = k.schema.clone();
    let list = format!("{}List", k.schema);
    let op = |method, action, id: String, reply: &str, body: Option<&str>, params| Op {
        method,
        action,
        id,
        gvk: gvk.clone(),
        reply: reply.to_string(),
        body: body.map(str::to_string),
        params,
    };
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let object = format!("{collection}/{{name}}");
    let mut out = vec![
        (
            collection.clone(),
            vec![
                op(
                    "get",
                    "list",
                    format!("list{gv}{ns}{kind}"),
                    &list,
                    None,
                    LIST_PARAMS,
                ),
                op(
                    "post",
                    "post",
                    format!("create{gv}{ns}{kind}"),
                    &item,
                    Some(&item),
                    WRITE_PARAMS,
                ),
                op(
                    "delete",
                    "deletecollection",
                    format!("deleteCollection{gv}{ns}{kind}"),
                    STATUS_SCHEMA,
                    None,
                    DELETE_PARAMS,
                ),
            ],
        ),
        (
            object.clone(),
            vec![
                op(
                    "get",
                    "get",
                    format!("read{gv}{ns}{kind}"),
                    &item,
                    None,
                    &[],
                ),
                op(
                    "put",
                    "put",
                    format!("replace{gv}{ns}{kind}"),
                    &item,
                    Some(&item),
                    WRITE_PARAMS,
                ),
                op(
                    "patch",
                    "patch",
                    format!("patch{gv}{ns}{kind}"),
                    &item,
                    None,
                    PATCH_PARAMS,
                ),
                op(
                    "delete",
                    "delete",
                    format!("delete{gv}{ns}{kind}"),
                    &item,
                    None,
                    DELETE_PARAMS,
                ),
            ],
        ),
    ];
    if r.namespaced {
        out.push((
            format!("{base}/{}", r.plural),
            vec![op(
                "get",
                "list",
                format!("list{gv}{kind}ForAllNamespaces"),
                &list,
                None,
                LIST_PARAMS,
            )],
        ));
    }
    if r.status {
        out.push((
            format!("{object}/status"),
            vec![
                op(
                    "get",
                    "get",
                    format!("read{gv}{ns}{kind}Status"),
                    &item,
                    None,
                    &[],
                ),
                op(
                    "put",
                    "put",
                    format!("replace{gv}{ns}{kind}Status"),
                    &item,
                    Some(&item),
                    WRITE_PARAMS,
                ),
                op(
                    "patch",
                    "patch",
                    format!("patch{gv}{ns}{kind}Status"),
                    &item,
                    None,
                    PATCH_PARAMS,
                ),
            ],
        ));
    }
    if r.scale {
        let scale = "io.k8s.api.autoscaling.v1.Scale";
        let sgvk = json!({"group": "autoscaling", "kind": "Scale", "version": "v1"});
        let mut ops = vec![
            op(
                "get",
                "get",
                format!("read{gv}{ns}{kind}Scale"),
                scale,
                None,
                &[],
            ),
            op(
                "put",
                "put",
                format!("replace{gv}{ns}{kind}Scale"),
                scale,
                Some(scale),
                WRITE_PARAMS,
            ),
            op(
                "patch",
                "patch",
                format!("patch{gv}{ns}{kind}Scale"),
                scale,
                None,
                PATCH_PARAMS,
            ),
        ];
        for o in &mut ops {
            o.gvk = sgvk.clone();
        }
        out.push((format!("{object}/scale"), ops));
    }
    out
}

fn path_params(path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, about) in [
        ("name", "name of the object"),
        (
            "namespace",
            "object name and auth scope, such as for teams and projects",
        ),
    ] {
        if path.contains(&format!("{{{name}}}")) {
            out.push(
                json!({"name": name, "in": "path", "required": true, "description": about,
                            "schema": {"type": "string", "uniqueItems": true}}),
            );
        }
    }
    out.push(json!({"name": "pretty", "in": "query",
                    "description": "If 'true', then the output is pretty printed.",
                    "schema": {"type": "string", "uniqueItems": true}}));
    out
}

fn v3_operation(o: &Op, tag: &str) -> Value {
    let params: Vec<Value> = o
        .params
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": param_type(p), "uniqueItems": true}}))
        .collect();
    let reply_ref = json!({"$ref": format!("{REF_V3}{}", o.reply)});
    let mut v = json!({
        "tags": [tag],
        "operationId": o.id,
        "x-kubernetes-action": o.action,
        "x-kubernetes-group-version-kind": o.gvk,
        "responses": {
            "200": {"description": "OK", "content": {
                "application/json": {"schema": reply_ref},
                "application/yaml": {"schema": reply_ref}}},
            "401": {"description": "Unauthorized"}
        }
    });
    if !params.is_empty() {
        v["parameters"] = Value::Array(params);
    }
    if let Some(b) = &o.body {
        v["requestBody"] = json!({"required": true, "content": {
            "*/*": {"schema": {"$ref": format!("{REF_V3}{b}")}}}});
    }
    v
}

fn v2_operation(o: &Op, tag: &str) -> Value {
    let mut params: Vec<Value> = o
        .params
        .iter()
        .map(|p| json!({"name": p, "in": "query", "type": param_type(p), "uniqueItems": true}))
        .collect();
    if let Some(b) = &o.body {
        params.push(json!({"name": "body", "in": "body", "required": true,
                           "schema": {"$ref": format!("{REF_V2}{b}")}}));
    }
    if o.method == "patch" {
        params.push(json!({"name": "body", "in": "body", "required": true,
                           "schema": {"$ref": format!("{REF_V2}{PATCH_SCHEMA}")}}));
    }
    let mut v = json!({
        "tags": [tag],
        "operationId": o.id,
        "produces": ["application/json", "application/yaml"],
        "schemes": ["https"],
        "x-kubernetes-action": o.action,
        "x-kubernetes-group-version-kind": o.gvk,
        "responses": {
            "200": {"description": "OK", "schema": {"$ref": format!("{REF_V2}{}", o.reply)}},
            "401": {"description": "Unauthorized"}
        }
    });
    if o.method == "patch" {
        // No strategic merge here: see the module comment.
        v["consumes"] = json!([
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml"
        ]);
    } else {
        v["consumes"] = json!(["*/*"]);
    }
    if !params.is_empty() {
        v["parameters"] = Value::Array(params);
    }
    v
}

/// A list kind's schema, as the real server has one per kind.
fn list_schema(item: &str, kind: &str, group: &str, version: &str, refs: &str) -> Value {
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"},
            "items": {"type": "array", "description": format!("items is the list of {kind}s."),
                      "items": {"$ref": format!("{refs}{item}")}},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"},
            "metadata": {"description": "Standard list metadata.",
                         "allOf": [{"$ref": format!("{refs}io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")}]}
        },
        "x-kubernetes-group-version-kind": [{"group": group, "kind": format!("{kind}List"), "version": version}]
    })
}

/// A v3 schema in v2's form: references point at `definitions`, a reference with siblings
/// stands beside them (v2 allows it), and v3-only keywords go.
fn to_v2(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                match k.as_str() {
                    "$ref" => {
                        let r = x.as_str().unwrap_or_default().replace(REF_V3, REF_V2);
                        out.insert(k.clone(), Value::String(r));
                    }
                    "oneOf" | "anyOf" | "nullable" => {}
                    _ => {
                        out.insert(k.clone(), to_v2(x));
                    }
                }
            }
            // `allOf: [{$ref}]` with a description beside it: the plain reference.
            if let Some(Value::Array(all)) = out.get("allOf")
                && all.len() == 1
                && let Some(r) = all[0].get("$ref").cloned()
            {
                out.remove("allOf");
                out.remove("default");
                out.insert("$ref".into(), r);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v2).collect()),
        other => other.clone(),
    }
}

fn build(version: &str, registry: &Registry) -> Documents {
    let mut kinds = Vec::new();
    let mut defs = schemas(registry, &mut kinds);
    for k in &kinds {
        let (group, v) = (k.served.group, k.served.version);
        defs.insert(
            format!("{}List", k.schema),
            list_schema(&k.schema, k.served.resource.kind, group, v, REF_V3),
        );
    }
    let info = json!({"title": "Kubernetes", "version": version});
    let mut v3 = Vec::new();
    let mut index = Map::new();
    let mut v2_paths = Map::new();
    for (group, versions) in registry.groups() {
        for gv_version in versions {
            let key = if group.is_empty() {
                format!("api/{gv_version}")
            } else {
                format!("apis/{group}/{gv_version}")
            };
            let tag = format!("{}_{gv_version}", group_title(group).to_lowercase());
            let mut paths = Map::new();
            let mut roots = vec![STATUS_SCHEMA.to_string(), PATCH_SCHEMA.to_string()];
            for k in kinds
                .iter()
                .filter(|k| k.served.group == group && k.served.version == gv_version)
            {
                roots.push(k.schema.clone());
                roots.push(format!("{}List", k.schema));
                if k.served.resource.scale {
                    roots.push("io.k8s.api.autoscaling.v1.Scale".into());
                }
                for (path, ops) in paths_of(k) {
                    let mut item3 = Map::new();
                    let mut item2 = Map::new();
                    for o in &ops {
                        item3.insert(o.method.into(), v3_operation(o, &tag));
                        item2.insert(o.method.into(), v2_operation(o, &tag));
                    }
                    item3.insert("parameters".into(), Value::Array(path_params(&path)));
                    let v2_params: Vec<Value> = path_params(&path)
                        .into_iter()
                        .map(|mut p| {
                            if let Some(m) = p.as_object_mut() {
                                m.remove("schema");
                                m.insert("type".into(), json!("string"));
                                m.insert("uniqueItems".into(), json!(true));
                            }
                            p
                        })
                        .collect();
                    item2.insert("parameters".into(), Value::Array(v2_params));
                    paths.insert(path.clone(), Value::Object(item3));
                    v2_paths.insert(path, Value::Object(item2));
                }
            }
            let schemas: Map<String, Value> = closure(&defs, &roots)
                .into_iter()
                .filter_map(|n| defs.get(&n).map(|s| (n, s.clone())))
                .collect();
            let doc = json!({
                "openapi": "3.0.0",
                "info": info,
                "paths": paths,
                "components": {
                    "schemas": schemas,
                    "securitySchemes": {"BearerToken": {"type": "apiKey", "name": "authorization",
                                                        "in": "header", "description": "Bearer Token authentication"}}
                }
            });
            let body = Bytes::from(doc.to_string());
            let hash = content_hash(&body);
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            );
            v3.push((key, body));
        }
    }
    let definitions: Map<String, Value> = defs.iter().map(|(k, v)| (k.clone(), to_v2(v))).collect();
    let v2 = json!({
        "swagger": "2.0",
        "info": info,
        "paths": v2_paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization",
                                                "in": "header", "description": "Bearer Token authentication"}},
        "security": [{"BearerToken": []}]
    });
    Documents {
        v2_proto: Bytes::from(gnostic::document(&v2)),
        v2_json: Bytes::from(v2.to_string()),
        v3_index: Bytes::from(json!({"paths": index}).to_string()),
        v3,
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn v3(o: &OpenApi, key: &str) -> Value {
        serde_json::from_slice(&o.v3(&Arc::new(Registry::default()), key).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn v3_documents_hold_every_kind_with_its_schema() {
        let o = OpenApi::new("v1.33.0");
        let index: Value =
            serde_json::from_slice(&o.v3_index(&Arc::new(Registry::default())).await).unwrap();
        let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="));
        let apps = v3(&o, "apis/apps/v1").await;
        let op = &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        // No strategic merge body: kubectl keeps using its built-in patch strategies.
        assert!(op.get("requestBody").is_none());
        let schemas = &apps["components"]["schemas"];
        let d = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
        );
        assert!(
            d["description"]
                .as_str()
                .unwrap()
                .contains("declarative updates")
        );
        // A reference with a description is wrapped, as kube-apiserver does.
        assert_eq!(
            d["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        // Everything referenced is there.
        for name in [
            "io.k8s.api.core.v1.Container",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        ] {
            assert!(schemas.get(name).is_some(), "{name}");
        }
        let ios = &schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"];
        assert_eq!(ios["format"], "int-or-string");
        // Every served kind of every group-version has its GVK on its schema.
        for (group, versions) in api::resources::groups() {
            for v in versions {
                let key = if group.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{group}/{v}")
                };
                let doc = v3(&o, &key).await;
                for served in api::resources::served(group, v) {
                    let gvk = json!({"group": group, "kind": served.resource.kind, "version": v});
                    let found = doc["components"]["schemas"]
                        .as_object()
                        .unwrap()
                        .values()
                        .any(|s| {
                            s["x-kubernetes-group-version-kind"]
                                .as_array()
                                .is_some_and(|l| l.contains(&gvk))
                        });
                    assert!(found, "{gvk}");
                }
            }
        }
    }

    #[tokio::test]
    async fn v2_has_definitions_without_v3_forms() {
        let o = OpenApi::new("v1.33.0");
        let doc: Value =
            serde_json::from_slice(&o.v2_json(&Arc::new(Registry::default())).await).unwrap();
        let pod = &doc["definitions"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.core.v1.PodSpec"
        );
        assert!(pod["properties"]["spec"].get("allOf").is_none());
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert!(
            !patch["consumes"]
                .as_array()
                .unwrap()
                .contains(&json!("application/strategic-merge-patch+json"))
        );
        assert!(!o.v2_proto(&Arc::new(Registry::default())).await.is_empty());
    }
}
