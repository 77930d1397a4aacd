//! Writes: create, update, patch (all four kinds), delete and deletecollection, and the status,
//! scale and finalize subresources. Every write goes through the same steps: server-owned
//! metadata, admission (defaulting and validation), field ownership, then a compare-and-swap
//! in the store, retried from a fresh read when someone else wrote first.

use std::collections::HashSet;
use std::net::IpAddr;

use api::Resource;
use api::kinds::{Admission, AdmitError, Operation};
use api::patch::fields::{self, Scope, Writer};
use api::patch::{PatchType, schema, strategic};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use jiff::Timestamp;
use serde_json::{Value, json};
use store::{Condition, Op, OpResult, StoreError};
use tracing::debug;

use crate::alloc;
use crate::binding::{self, Refusal};
use crate::errors::{ApiError, ApiResult};
use crate::read::{entry_key, filter_from};
use crate::request::{Params, Target};
use crate::server::{ApiServer, Identity, Reply, parse_body};

/// Attempts of a read-modify-write before giving up under contention.
const MAX_ATTEMPTS: usize = 16;
/// Namespaces that exist for the cluster to work and cannot be deleted.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validation {
    Strict,
    Warn,
    Ignore,
}

pub(crate) struct WriteOpts {
    who: Identity,
    dry_run: bool,
    manager: String,
    validation: Validation,
    force: bool,
}

impl WriteOpts {
    pub(crate) fn dry_run(&self) -> bool {
        self.dry_run
    }
}

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn write_opts(
    req: &Request<Bytes>,
    params: &Params,
    who: &Identity,
) -> ApiResult<WriteOpts> {
    let dry_run = match params.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid dry run value {other:?}: only \"All\" is supported"
            )));
        }
    };
    let validation = match params.get("fieldValidation") {
        None | Some("") | Some("Warn") => Validation::Warn,
        Some("Strict") => Validation::Strict,
        Some("Ignore") => Validation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {other:?}"
            )));
        }
    };
    let manager = match params.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            // Like Kubernetes: the user agent's first word names the manager.
            let ua = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match (
                ua.split('/').next().filter(|s| !s.is_empty()),
                &who.component,
            ) {
                (Some(first), _) => first.to_string(),
                (None, Some(name)) => name.to_string(),
                _ => "unknown".to_string(),
            }
        }
    };
    if manager.len() > 128 || manager.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request(
            "fieldManager must be at most 128 printable characters",
        ));
    }
    Ok(WriteOpts {
        who: who.clone(),
        dry_run,
        manager,
        validation,
        force: params.flag("force"),
    })
}

/// The result of a write.
pub(crate) struct Written {
    obj: Value,
    /// The revision it was written at; 0 for a dry-run create, which was not, and whose
    /// reply has no resourceVersion (a client that sends it back must not be refused).
    rev: u64,
    warnings: Vec<String>,
}

impl Written {
    fn reply(mut self, status: StatusCode) -> Reply {
        if self.rev != 0 {
            self.obj["metadata"]["resourceVersion"] = json!(self.rev.to_string());
        }
        let mut r = Reply::json(status, &self.obj);
        r.warnings = self.warnings;
        r
    }
}

fn gv_kind_mismatch(r: &Resource, obj: &Value) -> Option<ApiError> {
    if let Some(av) = obj["apiVersion"].as_str().filter(|s| !s.is_empty())
        && av != r.group_version()
    {
        return Some(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            r.group_version()
        )));
    }
    if let Some(k) = obj["kind"].as_str().filter(|s| !s.is_empty())
        && k != r.kind
    {
        return Some(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            r.kind
        )));
    }
    None
}

/// Where a binding reads the pod from, in the order it falls back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The cache as it is.
    Cached,
    /// The cache once it has caught up with every acknowledged write.
    Fresh,
    /// The store itself (after a conflict).
    Store,
}

/// An object written through `t`, in the version it is stored in, with warnings for fields
/// the written version does not have (or an error, if the request validates strictly).
fn stored_form(t: &Target, obj: Value, opts: &WriteOpts) -> ApiResult<(Value, Vec<String>)> {
    let Some(view) = t.view else {
        return Ok((obj, Vec::new()));
    };
    let r = t.resource;
    let gv = view.group_version();
    if let Some(av) = obj["apiVersion"].as_str().filter(|s| !s.is_empty())
        && av != gv
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({gv})"
        )));
    }
    if let Some(e) = gv_kind_mismatch(r, &json!({"kind": obj["kind"]})) {
        return Err(e);
    }
    let converted = (view.read)(obj).map_err(|e| cannot_handle(r, view.version, &e.to_string()))?;
    let warnings = judge_unknown(r, view.version, &converted.unknown_fields, opts)?;
    Ok((converted.object, warnings))
}

/// A body that cannot be read as `r` in `version`, in Kubernetes' words.
fn cannot_handle(r: &Resource, version: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{} in version \"{version}\" cannot be handled as a {}: {why}",
        r.kind, r.kind
    ))
}

/// Fields of a body that nothing in `r` (as `version`) knew, judged by the request's
/// `fieldValidation`: an error when strict, warnings when warning, nothing when ignored.
fn judge_unknown(
    r: &Resource,
    version: &str,
    fields: &[String],
    opts: &WriteOpts,
) -> ApiResult<Vec<String>> {
    let unknown: Vec<String> = fields
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match opts.validation {
        Validation::Strict if !unknown.is_empty() => Err(cannot_handle(
            r,
            version,
            &format!("strict decoding error: {}", unknown.join(", ")),
        )),
        Validation::Warn => Ok(unknown),
        _ => Ok(Vec::new()),
    }
}

fn object_meta(obj: &mut Value) -> ApiResult<&mut serde_json::Map<String, Value>> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    if obj.get("metadata").is_none_or(Value::is_null) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// An object's namespace is the one in the URL: filled in when missing, refused when
/// different, and dropped for cluster-scoped kinds.
fn settle_namespace(meta: &mut serde_json::Map<String, Value>, t: &Target) -> ApiResult<()> {
    if !t.resource.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let path_ns = t.namespace.clone().unwrap_or_default();
    match meta.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            meta.insert("namespace".into(), json!(path_ns));
            Ok(())
        }
        Some(ns) if ns != path_ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        Some(_) => Ok(()),
    }
}

fn strip_rv(obj: &mut Value) {
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("selfLink");
    }
}

/// The resource version a client pinned in an object, if any.
fn pinned_rv(obj: &Value) -> ApiResult<Option<u64>> {
    match obj["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}"))),
    }
}

const RANDOM_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    (0..5)
        .map(|_| RANDOM_ALPHABET[fastrand::usize(..RANDOM_ALPHABET.len())] as char)
        .collect()
}

fn is_terminal_pod(obj: &Value) -> bool {
    matches!(
        obj["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

impl ApiServer {
    /// Fail unless `ns` exists and accepts new content.
    async fn check_namespace(&self, r: &Resource, ns: Option<&str>) -> ApiResult<()> {
        let Some(ns) = ns.filter(|_| r.namespaced) else {
            return Ok(());
        };
        let namespaces =
            api::resources::find("", "v1", "namespaces").expect("namespaces are served");
        let rc = self.cache.resource(namespaces);
        let entry = match rc.get(ns) {
            Some(e) => e,
            None => {
                self.cache.wait_fresh().await?;
                rc.get(ns)
                    .ok_or_else(|| ApiError::not_found(namespaces, ns))?
            }
        };
        if entry.field("status.phase") == Some("Terminating") {
            let mut e = ApiError::forbidden_on(
                r,
                "",
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            );
            e.details.causes.push(crate::errors::Cause {
                reason: "NamespaceTerminating".into(),
                message: format!("namespace {ns} is being terminated"),
                field: Some("metadata.namespace".into()),
            });
            return Err(e);
        }
        Ok(())
    }

    /// Run admission for `r`, turning its errors into API errors.
    fn admit(
        &self,
        r: &'static Resource,
        obj: &Value,
        old: Option<&Value>,
        op: Operation,
        opts: &WriteOpts,
    ) -> ApiResult<(Value, Vec<String>)> {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let admitted = r
            .ops
            .admit(Admission {
                object: obj,
                old,
                operation: op,
                resource: r,
                find_unknown_fields: opts.validation != Validation::Ignore,
            })
            .map_err(|e| match e {
                AdmitError::Decode(msg) => cannot_handle(r, r.version, &msg),
                AdmitError::Invalid(errs) => ApiError::invalid(r, &name, &errs),
            })?;
        let warnings = judge_unknown(r, r.version, &admitted.unknown_fields, opts)?;
        let mut admitted = admitted;
        if crate::crds::is_definitions(r) {
            crate::crds::settle(
                self.cache.registry(),
                &mut admitted.object,
                op == Operation::Create,
            )?;
        }
        self.authorizer
            .check_escalation(r, &admitted.object, old, &opts.who)?;
        crate::auth::noderestriction::node_object(&opts.who, r, &admitted.object, old)?;
        Ok((admitted.object, warnings))
    }

    /// An object as it is stored: a custom object in its definition's storage version
    /// (converted just before it is stored; everything before sees the version asked).
    async fn stored(&self, r: &Resource, obj: &Value) -> ApiResult<Bytes> {
        if let Some(c) = r.ops.custom() {
            let storage = c.kind().storage_version.clone();
            if storage != r.version {
                let mut one = [obj.clone()];
                crate::conversion::convert(&self.cache, r, &mut one, &storage).await?;
                return Ok(Bytes::from(api::wire::to_vec(&one[0])));
            }
        }
        Ok(Bytes::from(api::wire::to_vec(obj)))
    }

    /// Store operations that Services need besides their own key.
    fn allocations(
        &self,
        r: &Resource,
        old: Option<&Value>,
        new: Option<&mut Value>,
        owner: &str,
    ) -> ApiResult<Vec<Op>> {
        if r.kind != "Service" {
            return Ok(Vec::new());
        }
        let services = self
            .cache
            .resource(api::resources::find("", "v1", "services").expect("services are served"))
            .snapshot(self.cache.synced());
        let mut ips: HashSet<IpAddr> = HashSet::new();
        let mut ports: HashSet<i64> = HashSet::new();
        for e in services.items.values() {
            let v = e.value();
            ips.extend(alloc::cluster_ips(&v));
            for p in v["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(n) = p["nodePort"].as_i64() {
                    ports.insert(n);
                }
            }
        }
        let ranges = alloc::Ranges::new(&self.config.service_cidrs);
        alloc::plan(ranges, old, new, owner, &ips, &ports)
    }

    fn scope_of(r: &Resource, sub: Option<&str>) -> Scope {
        match (sub, r.status) {
            (Some("status"), _) => Scope::Status,
            (Some("ephemeralcontainers"), _) => Scope::EphemeralContainers,
            (Some("approval"), _) => Scope::Approval,
            (_, true) => Scope::Main,
            (_, false) => Scope::Whole,
        }
    }

    /// Turn a failed store transaction into the API's answer.
    fn store_failure(&self, r: &Resource, name: &str, e: StoreError) -> ApiError {
        self.store_failure_of(r, name, None, e)
    }

    /// As `store_failure`, naming the field of `obj` that asked for an address or port
    /// someone else holds.
    fn store_failure_of(
        &self,
        r: &Resource,
        name: &str,
        obj: Option<&Value>,
        e: StoreError,
    ) -> ApiError {
        match e {
            StoreError::AlreadyExists { key } if alloc::is_allocation_key(&key) => {
                let mut errs = api::errors::FieldErrors::default();
                let spec = api::errors::Path::root("spec");
                match alloc::taken(&key) {
                    Some(alloc::Taken::Port(port)) => {
                        // Kubernetes names the port entry that asked for it.
                        let index =
                            obj.and_then(|o| o["spec"]["ports"].as_array())
                                .and_then(|ps| {
                                    ps.iter().position(|p| p["nodePort"].as_i64() == Some(port))
                                });
                        match index {
                            Some(i) => errs.invalid(
                                &spec.child("ports").index(i).child("nodePort"),
                                port,
                                "provided port is already allocated",
                            ),
                            None => errs.invalid(
                                &spec.child("ports"),
                                "",
                                format!("provided port {port} is already allocated"),
                            ),
                        }
                    }
                    Some(alloc::Taken::Ip(ip)) => errs.invalid(
                        &spec.child("clusterIPs"),
                        "",
                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ),
                    None => errs.invalid(&spec, "", "already allocated"),
                }
                ApiError::invalid(
                    api::resources::find("", "v1", "services").expect("served"),
                    name,
                    &errs,
                )
            }
            StoreError::AlreadyExists { .. } => ApiError::already_exists(r, name),
            StoreError::NotFound { .. } => ApiError::not_found(r, name),
            StoreError::Conflict { .. } => ApiError::modified(r, name),
            other => ApiError::from(other),
        }
    }

    // ----- create -------------------------------------------------------------------------

    pub(crate) async fn create(
        &self,
        t: &Target,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let opts = write_opts(req, params, who)?;
        let (body, warnings) = stored_form(t, parse_body(req, false)?, &opts)?;
        let mut written = self.create_object(t, body, &opts, false).await?;
        written.warnings.extend(warnings);
        Ok(written.reply(StatusCode::CREATED))
    }

    /// Create `obj`. With `managed_already`, its managed fields were computed by server-side
    /// apply and are kept as they are.
    async fn create_object(
        &self,
        t: &Target,
        mut obj: Value,
        opts: &WriteOpts,
        managed_already: bool,
    ) -> ApiResult<Written> {
        let r = t.resource;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if let Some(e) = gv_kind_mismatch(r, &obj) {
            return Err(e);
        }
        crate::crds::refuse_create_while_terminating(&self.cache, r)?;
        obj["apiVersion"] = json!(r.group_version());
        obj["kind"] = json!(r.kind);
        let meta = object_meta(&mut obj)?;
        settle_namespace(meta, t)?;
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        for f in [
            "resourceVersion",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            meta.remove(f);
        }
        let generated = meta
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && meta
                .get("generateName")
                .and_then(Value::as_str)
                .is_some_and(|g| !g.is_empty());
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        let time = now();
        meta.insert("creationTimestamp".into(), json!(time));
        if r.generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if r.reset_status_on_create
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if r.kind == crate::certificates::KIND {
            crate::certificates::admit_subject(&obj)?;
            crate::certificates::prepare_create(&mut obj, &opts.who);
        }
        self.check_namespace(r, t.namespace.as_deref()).await?;
        let _quota = self.quota_lock(t.namespace.as_deref()).await?;
        for _ in 0..MAX_ATTEMPTS {
            let mut attempt = obj.clone();
            if generated {
                let prefix = attempt["metadata"]["generateName"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                attempt["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
            }
            let name = attempt["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let (mut admitted, mut warnings) =
                self.admit(r, &attempt, None, Operation::Create, opts)?;
            let call = crate::webhooks::Call {
                resource: r,
                subresource: None,
                operation: "CREATE",
                namespace: t.namespace.as_deref(),
                name: &name,
                object: None,
                old: None,
                user: &opts.who.user,
                dry_run: opts.dry_run,
            };
            let before = admitted.clone();
            let (mutated, hooked) = self.mutate_by_webhooks(&call, &mut admitted).await?;
            warnings.extend(hooked);
            if mutated {
                crate::webhooks::keep_identity(&before, &mut admitted, r.status, false)?;
                // What the webhooks changed is defaulted and validated like the rest.
                let (again, more) = self.admit(r, &admitted, None, Operation::Create, opts)?;
                admitted = again;
                warnings.extend(more);
            }
            // The creator owns what it sent and its defaults, as in Kubernetes; not what
            // admission and the allocators add after (a Service's cluster IP and IP
            // families, a pod's priority), or a later server-side apply could not leave
            // them out.
            if !managed_already {
                let gv = r.group_version();
                let w = Writer {
                    manager: &opts.manager,
                    api_version: &gv,
                    time: &time,
                    scope: Self::scope_of(r, None),
                };
                fields::record_update(None, &mut admitted, r.ops.merge_type(), &w);
            }
            self.admit_with_context(r, t.namespace.as_deref(), &mut admitted)
                .await?;
            warnings.extend(self.admit_pod_security(
                r,
                t.namespace.as_deref(),
                &admitted,
                None,
                None,
            )?);
            warnings.extend(
                self.validate_by_webhooks(&crate::webhooks::Call {
                    object: Some(&admitted),
                    ..call
                })
                .await?,
            );
            if r.kind == "Namespace" {
                warnings.extend(self.admit_namespace_labels(r, &admitted, None)?);
            }
            let owner = format!("{}/{}", t.namespace.as_deref().unwrap_or(""), name);
            let mut ops = self.allocations(r, None, Some(&mut admitted), &owner)?;
            strip_rv(&mut admitted);
            if opts.dry_run {
                return Ok(Written {
                    obj: admitted,
                    rev: 0,
                    warnings,
                });
            }
            let key = r.key(t.namespace.as_deref(), &name);
            ops.insert(
                0,
                Op::Put {
                    key,
                    value: self.stored(r, &admitted).await?,
                    condition: Condition::Absent,
                },
            );
            match self.store.txn(ops).await {
                Ok(res) => {
                    let rev = match &res.results[0] {
                        OpResult::Put(kv) => kv.mod_revision,
                        OpResult::Deleted(kv) => kv.mod_revision,
                    };
                    debug!(resource = r.plural, name, rev, "created");
                    return Ok(Written {
                        obj: admitted,
                        rev,
                        warnings,
                    });
                }
                // A generated name or a randomly picked address collided: pick again.
                Err(StoreError::AlreadyExists { key })
                    if generated && !alloc::is_allocation_key(&key) =>
                {
                    continue;
                }
                Err(StoreError::AlreadyExists { key })
                    if alloc::is_allocation_key(&key) && self.picked_randomly(&obj, &key) =>
                {
                    continue;
                }
                Err(e) => return Err(self.store_failure_of(r, &name, Some(&obj), e)),
            }
        }
        Err(ApiError::unavailable(
            "too many conflicts while creating; try again",
        ))
    }

    /// Whether an allocation key names an address the server chose (so another may be tried).
    fn picked_randomly(&self, requested: &Value, key: &str) -> bool {
        if key.contains("serviceips") {
            requested["spec"]["clusterIP"]
                .as_str()
                .is_none_or(str::is_empty)
        } else {
            let port = key.rsplit('/').next().and_then(|p| p.parse::<i64>().ok());
            !requested["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["nodePort"].as_i64() == port)
        }
    }

    // ----- read-modify-write --------------------------------------------------------------

    /// The current object and its revision, from the cache (after catching up) or, after a
    /// conflict, straight from the store.
    async fn current(
        &self,
        t: &Target,
        name: &str,
        from_store: bool,
    ) -> ApiResult<Option<(Value, u64)>> {
        let r = t.resource;
        let (v, rev) = if !from_store {
            self.cache.wait_fresh().await?;
            match self.cache.resource(r).get(&entry_key(t, name)) {
                Some(e) => (e.value(), e.rev),
                None => return Ok(None),
            }
        } else {
            let Some(kv) = self.store.get(&r.key(t.namespace.as_deref(), name)).await? else {
                return Ok(None);
            };
            let mut v: Value = serde_json::from_slice(&kv.value)
                .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
            v["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
            (v, kv.mod_revision)
        };
        // A custom object stored in another version is changed as the version asked shows it.
        let mut one = [v];
        crate::conversion::convert(&self.cache, r, &mut one, r.version).await?;
        let [v] = one;
        Ok(Some((v, rev)))
    }

    /// Bring `new` in line with the stored `old` before admission: identity and server-owned
    /// metadata come from `old`, and each side of the status split keeps the other's half.
    /// Writes the server makes itself (marking a deletion) keep their metadata.
    fn prepare_update(
        &self,
        t: &Target,
        name: &str,
        new: &mut Value,
        old: &Value,
        scope: Scope,
        server_write: bool,
    ) -> ApiResult<()> {
        let r = t.resource;
        if let Some(e) = gv_kind_mismatch(r, new) {
            return Err(e);
        }
        let meta = object_meta(new)?;
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".into(), json!(name));
            }
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
        }
        settle_namespace(meta, t)?;
        if let (Some(u), Some(ou)) = (
            meta.get("uid").and_then(Value::as_str),
            old["metadata"]["uid"].as_str(),
        ) && !u.is_empty()
            && u != ou
        {
            return Err(ApiError::conflict(
                r,
                name,
                &format!("Precondition failed: UID in precondition: {u}, UID in object meta: {ou}"),
            ));
        }
        let owned: &[&str] = if server_write {
            &[]
        } else {
            &[
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "generateName",
            ]
        };
        for f in owned {
            match old["metadata"].get(*f) {
                Some(v) => {
                    meta.insert((*f).into(), v.clone());
                }
                None => {
                    meta.remove(*f);
                }
            }
        }
        new["apiVersion"] = json!(r.group_version());
        new["kind"] = json!(r.kind);
        strip_rv(new);
        match scope {
            Scope::Main => {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                // A pod's ephemeral containers change only through their subresource.
                if r.kind == "Pod"
                    && let Some(spec) = new["spec"].as_object_mut()
                {
                    match old["spec"].get("ephemeralContainers") {
                        Some(e) => spec.insert("ephemeralContainers".into(), e.clone()),
                        None => spec.remove("ephemeralContainers"),
                    };
                }
            }
            Scope::Status => {
                let mut merged = old.clone();
                merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                if merged["status"].is_null()
                    && let Some(m) = merged.as_object_mut()
                {
                    m.remove("status");
                }
                if let Some(mf) = new["metadata"].get("managedFields") {
                    merged["metadata"]["managedFields"] = mf.clone();
                }
                strip_rv(&mut merged);
                *new = merged;
            }
            Scope::EphemeralContainers => {
                // Only the ephemeral containers change here; they cannot change elsewhere.
                let mut merged = old.clone();
                merged["spec"]["ephemeralContainers"] = new["spec"]
                    .get("ephemeralContainers")
                    .cloned()
                    .unwrap_or(Value::Null);
                if merged["spec"]["ephemeralContainers"].is_null()
                    && let Some(m) = merged["spec"].as_object_mut()
                {
                    m.remove("ephemeralContainers");
                }
                if let Some(mf) = new["metadata"].get("managedFields") {
                    merged["metadata"]["managedFields"] = mf.clone();
                }
                strip_rv(&mut merged);
                *new = merged;
            }
            Scope::Whole | Scope::Approval => {}
        }
        if r.kind == crate::certificates::KIND {
            let part = match scope {
                Scope::Status => crate::certificates::Part::Status,
                Scope::Approval => crate::certificates::Part::Approval,
                _ => crate::certificates::Part::Main,
            };
            crate::certificates::merge_update(part, new, old, &now())?;
        }
        Ok(())
    }

    /// Read, change with `mutate`, admit and swap in, retrying on conflicts unless the client
    /// pinned a resource version. `mutate` gets the current object (with its resourceVersion)
    /// and returns the desired one.
    #[allow(clippy::too_many_arguments)]
    async fn update_loop(
        &self,
        t: &Target,
        name: &str,
        scope: Scope,
        opts: &WriteOpts,
        record: bool,
        mutate: &mut Mutate<'_>,
    ) -> ApiResult<Written> {
        let r = t.resource;
        let mut from_store = false;
        for _ in 0..MAX_ATTEMPTS {
            let (old, old_rev) = self
                .current(t, name, from_store)
                .await?
                .ok_or_else(|| ApiError::not_found(r, name))?;
            let (mut new, pinned) = mutate(&old)?;
            if let Some(p) = pinned
                && p != old_rev
            {
                return Err(ApiError::modified(r, name));
            }
            match self
                .commit(t, name, &mut new, &old, old_rev, scope, opts, record, false)
                .await
            {
                Ok(w) => return Ok(w),
                Err(Commit::Conflict) if pinned.is_none() => {
                    from_store = true;
                    continue;
                }
                Err(Commit::Conflict) => return Err(ApiError::modified(r, name)),
                Err(Commit::Failed(e)) => return Err(e),
            }
        }
        Err(ApiError::modified(r, name))
    }

    /// Admit `new` as the successor of `old` and write it, or delete the object if it was
    /// waiting only for its last finalizer.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        t: &Target,
        name: &str,
        new: &mut Value,
        old: &Value,
        old_rev: u64,
        scope: Scope,
        opts: &WriteOpts,
        record: bool,
        server_write: bool,
    ) -> Result<Written, Commit> {
        let r = t.resource;
        if r.kind == crate::certificates::KIND {
            // Who may approve, or sign, is judged on the request as stored now.
            crate::certificates::may_change(&self.authorizer, &opts.who, scope, new, old)?;
        }
        self.prepare_update(t, name, new, old, scope, server_write)?;
        let (mut admitted, mut warnings) =
            self.admit(r, new, Some(old), Operation::Update, opts)?;
        let sub = match scope {
            Scope::Status => Some("status"),
            Scope::EphemeralContainers => Some("ephemeralcontainers"),
            Scope::Approval => Some("approval"),
            _ => None,
        };
        let call = crate::webhooks::Call {
            resource: r,
            subresource: sub,
            operation: "UPDATE",
            namespace: t.namespace.as_deref(),
            name,
            object: None,
            old: Some(old),
            user: &opts.who.user,
            dry_run: opts.dry_run,
        };
        // Writes the server makes itself (marking a deletion, releasing finalizers) are not
        // sent to webhooks.
        if !server_write {
            let before = admitted.clone();
            let (mutated, hooked) = self.mutate_by_webhooks(&call, &mut admitted).await?;
            warnings.extend(hooked);
            if mutated {
                crate::webhooks::keep_identity(
                    &before,
                    &mut admitted,
                    r.status && sub.is_none_or(|s| s == "status"),
                    sub == Some("status"),
                )?;
                let (again, more) = self.admit(r, &admitted, Some(old), Operation::Update, opts)?;
                admitted = again;
                warnings.extend(more);
            }
        }
        warnings.extend(self.admit_pod_security(
            r,
            t.namespace.as_deref(),
            &admitted,
            Some(old),
            sub,
        )?);
        if r.kind == "Namespace" && sub.is_none() {
            warnings.extend(self.admit_namespace_labels(r, &admitted, Some(old))?);
        }
        if r.kind == "PersistentVolumeClaim" && matches!(scope, Scope::Main) {
            self.admit_resize(r, name, &admitted, old)?;
        }
        if !server_write {
            warnings.extend(
                self.validate_by_webhooks(&crate::webhooks::Call {
                    object: Some(&admitted),
                    ..call
                })
                .await?,
            );
        }
        if r.generation && admitted.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            admitted["metadata"]["generation"] = json!(g);
        }
        let owner = format!("{}/{}", t.namespace.as_deref().unwrap_or(""), name);
        let mut ops = self.allocations(r, Some(old), Some(&mut admitted), &owner)?;
        let time = now();
        if record {
            let gv = r.group_version();
            let w = Writer {
                manager: &opts.manager,
                api_version: &gv,
                time: &time,
                scope,
            };
            fields::record_update(Some(old), &mut admitted, r.ops.merge_type(), &w);
        }
        let mut old_plain = old.clone();
        strip_rv(&mut old_plain);
        if admitted == old_plain {
            return Ok(Written {
                obj: admitted,
                rev: old_rev,
                warnings,
            });
        }
        if opts.dry_run {
            return Ok(Written {
                obj: admitted,
                rev: old_rev,
                warnings,
            });
        }
        let key = r.key(t.namespace.as_deref(), name);
        let finished =
            !admitted["metadata"]["deletionTimestamp"].is_null() && ready_to_go(&admitted);
        if finished {
            let mut release = self.allocations(r, Some(old), None, &owner)?;
            release.insert(
                0,
                Op::Delete {
                    key,
                    condition: Condition::ModRevision(old_rev),
                },
            );
            return match self.store.txn(release).await {
                Ok(res) => Ok(Written {
                    obj: admitted,
                    rev: res.revision,
                    warnings,
                }),
                Err(StoreError::Conflict { .. }) => Err(Commit::Conflict),
                Err(e) => Err(Commit::Failed(self.store_failure(r, name, e))),
            };
        }
        ops.insert(
            0,
            Op::Put {
                key,
                value: self.stored(r, &admitted).await?,
                condition: Condition::ModRevision(old_rev),
            },
        );
        match self.store.txn(ops).await {
            Ok(res) => {
                let rev = res.results[0].clone().into_kv().mod_revision;
                Ok(Written {
                    obj: admitted,
                    rev,
                    warnings,
                })
            }
            Err(StoreError::Conflict { .. }) => Err(Commit::Conflict),
            Err(e) => Err(Commit::Failed(self.store_failure_of(
                r,
                name,
                Some(&admitted),
                e,
            ))),
        }
    }

    // ----- update and patch ---------------------------------------------------------------

    pub(crate) async fn update(
        &self,
        t: &Target,
        name: &str,
        sub: Option<&str>,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let opts = write_opts(req, params, who)?;
        let (body, warnings) = stored_form(t, parse_body(req, false)?, &opts)?;
        let pinned = pinned_rv(&body)?;
        let scope = Self::scope_of(t.resource, sub);
        let mut written = self
            .update_loop(t, name, scope, &opts, true, &mut |_old| {
                Ok((body.clone(), pinned))
            })
            .await?;
        written.warnings.extend(warnings);
        Ok(written.reply(StatusCode::OK))
    }

    pub(crate) async fn patch(
        &self,
        t: &Target,
        name: &str,
        sub: Option<&str>,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let opts = write_opts(req, params, who)?;
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ty =
            PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
        let r = t.resource;
        if ty == PatchType::Strategic && r.ops.custom().is_some() {
            // Custom kinds have no patch strategies to merge by, as in Kubernetes.
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".to_string(),
            ));
        }
        let patch = parse_body(req, ty == PatchType::Apply)?;
        let scope = Self::scope_of(r, sub);
        let kind_schema = r.ops.merge_type();
        if ty == PatchType::Apply {
            if let Some(view) = t.view {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "server-side apply of {} is served in {} only, not {}",
                        r.plural,
                        r.group_version(),
                        view.group_version()
                    ),
                ));
            }
            return self.apply(t, name, scope, patch, &opts).await;
        }
        let mut warnings = Vec::new();
        let mut written = self
            .update_loop(t, name, scope, &opts, true, &mut |old| {
                // Through an older version, the patch applies to the object as it shows it.
                let new = match t.view {
                    None => apply_patch(ty, old, &patch, kind_schema)?,
                    Some(view) => {
                        let shown = (view.show)(old.clone()).map_err(|e| {
                            ApiError::internal(format!(
                                "converting to {}: {e}",
                                view.group_version()
                            ))
                        })?;
                        let patched = apply_patch(ty, &shown, &patch, kind_schema)?;
                        let (new, w) = stored_form(t, patched, &opts)?;
                        warnings = w;
                        new
                    }
                };
                // A patch that sets resourceVersion makes it a precondition.
                let pinned = pinned_rv(&new)?.filter(|p| Some(*p) != pinned_rv(old).ok().flatten());
                Ok((new, pinned))
            })
            .await?;
        written.warnings.extend(warnings);
        Ok(written.reply(StatusCode::OK))
    }

    /// Server-side apply: merge the manager's configuration, creating the object if missing.
    async fn apply(
        &self,
        t: &Target,
        name: &str,
        scope: Scope,
        config: Value,
        opts: &WriteOpts,
    ) -> ApiResult<Reply> {
        let r = t.resource;
        if opts.manager.is_empty() {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply patches",
            ));
        }
        if !config.is_object() || !(config["metadata"].is_object() || config["metadata"].is_null())
        {
            return Err(ApiError::bad_request(
                "an apply patch must be an object with object metadata",
            ));
        }
        if config["apiVersion"].as_str().is_none_or(str::is_empty)
            || config["kind"].as_str().is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply patch",
            ));
        }
        if let Some(e) = gv_kind_mismatch(r, &config) {
            return Err(e);
        }
        if let Some(n) = config["metadata"]["name"].as_str()
            && !n.is_empty()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        let gv = r.group_version();
        let time = now();
        let w = Writer {
            manager: &opts.manager,
            api_version: &gv,
            time: &time,
            scope,
        };
        let ty = r.ops.merge_type();
        // The object may be created concurrently; then apply onto it.
        for _ in 0..MAX_ATTEMPTS {
            if self.current(t, name, false).await?.is_none() {
                let mut created = fields::apply(None, &config, ty, &w, opts.force)
                    .map_err(|c| self.apply_conflict(r, name, &c))?;
                created["metadata"]["name"] = json!(name);
                match self.create_object(t, created, opts, true).await {
                    Ok(written) => return Ok(written.reply(StatusCode::CREATED)),
                    Err(e) if e.reason == "AlreadyExists" => continue,
                    Err(e) => return Err(e),
                }
            }
            let result = self
                .update_loop(t, name, scope, opts, false, &mut |old| {
                    let merged = fields::apply(Some(old), &config, ty, &w, opts.force)
                        .map_err(|c| self.apply_conflict(r, name, &c))?;
                    Ok((merged, None))
                })
                .await;
            match result {
                Ok(written) => return Ok(written.reply(StatusCode::OK)),
                Err(e) if e.reason == "NotFound" && e.details.kind.as_deref() == Some(r.plural) => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::modified(r, name))
    }

    fn apply_conflict(&self, r: &Resource, name: &str, conflicts: &[fields::Conflict]) -> ApiError {
        ApiError::apply_conflict(
            r,
            name,
            fields::conflict_message(conflicts),
            conflicts.iter().map(|c| c.path.clone()).collect(),
        )
    }

    // ----- delete -------------------------------------------------------------------------

    pub(crate) async fn delete(
        &self,
        t: &Target,
        name: &str,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let opts = write_opts(req, params, who)?;
        let del = DeleteOptions::from(req, params)?;
        let (written, gone) = self.delete_object(t, name, &opts, &del).await?;
        if gone && !t.resource.delete_returns_object {
            // Kubernetes' success Status: no code, and no group for the core group.
            let mut details = json!({"name": name, "kind": t.resource.plural,
                                     "uid": written.obj["metadata"]["uid"]});
            if !t.resource.group.is_empty() {
                details["group"] = json!(t.resource.group);
            }
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details,
            });
            return Ok(Reply::json(StatusCode::OK, &status));
        }
        // An object still there (finalizers, a graceful pod deletion) comes back as it is
        // now; 202 only for the deprecated `orphanDependents: false`, as in Kubernetes.
        let status = if !gone && del.orphan_dependents == Some(false) {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        Ok(written.reply(status))
    }

    /// Delete one object; returns its last state and whether it is gone (rather than
    /// waiting for finalizers or a graceful shutdown).
    pub(crate) async fn delete_object(
        &self,
        t: &Target,
        name: &str,
        opts: &WriteOpts,
        del: &DeleteOptions,
    ) -> ApiResult<(Written, bool)> {
        let r = t.resource;
        if r.kind == "Namespace" && PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden_on(
                r,
                name,
                "this namespace may not be deleted",
            ));
        }
        let mut from_store = false;
        for _ in 0..MAX_ATTEMPTS {
            let (old, old_rev) = self
                .current(t, name, from_store)
                .await?
                .ok_or_else(|| ApiError::not_found(r, name))?;
            if let Some(uid) = &del.uid
                && old["metadata"]["uid"].as_str() != Some(uid.as_str())
            {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        old["metadata"]["uid"].as_str().unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = &del.resource_version
                && old["metadata"]["resourceVersion"].as_str() != Some(rv.as_str())
            {
                return Err(ApiError::conflict(
                    r,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        old["metadata"]["resourceVersion"].as_str().unwrap_or("")
                    ),
                ));
            }
            // Deletes are sent to the validating webhooks that ask for DELETE, with the object
            // being deleted as the old object.
            self.validate_by_webhooks(&crate::webhooks::Call {
                resource: r,
                subresource: None,
                operation: "DELETE",
                namespace: t.namespace.as_deref(),
                name,
                object: None,
                old: Some(&old),
                user: &opts.who.user,
                dry_run: opts.dry_run,
            })
            .await?;
            match self.deletion_step(r, &old, del) {
                Step::Now => {
                    let mut plain = old.clone();
                    strip_rv(&mut plain);
                    if opts.dry_run {
                        return Ok((
                            Written {
                                obj: plain,
                                rev: old_rev,
                                warnings: Vec::new(),
                            },
                            true,
                        ));
                    }
                    let owner = format!("{}/{}", t.namespace.as_deref().unwrap_or(""), name);
                    let mut ops = self.allocations(r, Some(&old), None, &owner)?;
                    ops.insert(
                        0,
                        Op::Delete {
                            key: r.key(t.namespace.as_deref(), name),
                            condition: Condition::ModRevision(old_rev),
                        },
                    );
                    match self.store.txn(ops).await {
                        Ok(res) => {
                            debug!(resource = r.plural, name, "deleted");
                            return Ok((
                                Written {
                                    obj: plain,
                                    rev: res.revision,
                                    warnings: Vec::new(),
                                },
                                true,
                            ));
                        }
                        Err(StoreError::Conflict { .. }) => {
                            from_store = true;
                            continue;
                        }
                        Err(e) => return Err(self.store_failure(r, name, e)),
                    }
                }
                Step::AlreadyPending => {
                    let mut plain = old.clone();
                    strip_rv(&mut plain);
                    return Ok((
                        Written {
                            obj: plain,
                            rev: old_rev,
                            warnings: Vec::new(),
                        },
                        false,
                    ));
                }
                Step::Mark(mut marked) => {
                    match self
                        .commit(
                            t,
                            name,
                            &mut marked,
                            &old,
                            old_rev,
                            Scope::Whole,
                            opts,
                            true,
                            true,
                        )
                        .await
                    {
                        Ok(w) => {
                            let gone = w.obj["metadata"]["deletionTimestamp"].is_string()
                                && ready_to_go(&w.obj);
                            return Ok((w, gone));
                        }
                        Err(Commit::Conflict) => {
                            from_store = true;
                            continue;
                        }
                        Err(Commit::Failed(e)) => return Err(e),
                    }
                }
            }
        }
        Err(ApiError::modified(r, name))
    }

    /// Decide how deleting `old` proceeds.
    fn deletion_step(&self, r: &Resource, old: &Value, del: &DeleteOptions) -> Step {
        let meta = &old["metadata"];
        let pending = !meta["deletionTimestamp"].is_null();
        let has_finalizers = meta["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if r.kind == "Namespace" {
            if pending {
                return Step::AlreadyPending;
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            marked["status"]["phase"] = json!("Terminating");
            return if ready_to_go(&marked) {
                Step::Now
            } else {
                Step::Mark(marked)
            };
        }
        if r.kind == "Pod" {
            let grace = del
                .grace_period
                .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0);
            let bound = old["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
            if grace > 0 && bound && !is_terminal_pod(old) {
                let current = meta["deletionGracePeriodSeconds"].as_i64();
                if pending && current.is_some_and(|c| c <= grace) {
                    return Step::AlreadyPending;
                }
                let mut marked = old.clone();
                let at = Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                marked["metadata"]["deletionTimestamp"] =
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                return Step::Mark(marked);
            }
        }
        // Pods own nothing in berth: their deletion is the agent's, never held for dependents.
        let propagation = del
            .propagation
            .unwrap_or_else(|| Propagation::default_for(r));
        if r.kind != "Pod"
            && let Some(f) = propagation.finalizer()
        {
            let mut finalizers: Vec<Value> =
                meta["finalizers"].as_array().cloned().unwrap_or_default();
            let held = finalizers.iter().any(|x| x == f);
            if pending && held {
                return Step::AlreadyPending;
            }
            // Switching between orphaning and foreground deletion replaces the other.
            let other = match propagation {
                Propagation::Orphan => "foregroundDeletion",
                _ => "orphan",
            };
            finalizers.retain(|x| x != other);
            finalizers.push(json!(f));
            let mut marked = old.clone();
            marked["metadata"]["finalizers"] = json!(finalizers);
            if !pending {
                marked["metadata"]["deletionTimestamp"] = json!(now());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            return Step::Mark(marked);
        }
        if has_finalizers {
            if pending {
                return Step::AlreadyPending;
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            return Step::Mark(marked);
        }
        Step::Now
    }

    pub(crate) async fn delete_collection(
        &self,
        t: &Target,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let r = t.resource;
        let opts = write_opts(req, params, who)?;
        let del = DeleteOptions::from(req, params)?;
        let filter = filter_from(t, params)?;
        self.cache.wait_fresh().await?;
        let snap = self.cache.resource(r).snapshot(self.cache.synced());
        let targets: Vec<(Option<String>, String)> = snap
            .items
            .values()
            .filter(|e| filter.matches(e))
            .map(|e| (e.namespace.clone(), e.name.clone()))
            .collect();
        let mut items = Vec::new();
        for (ns, name) in targets {
            let one = Target {
                resource: r,
                namespace: ns,
                name: Some(name.clone()),
                subresource: None,
                view: None,
            };
            match self.delete_object(&one, &name, &opts, &del).await {
                Ok((w, _)) => items.push(w.obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let list = json!({"kind": r.list_kind(), "apiVersion": r.group_version(),
                          "metadata": {"resourceVersion": self.cache.synced().to_string()}, "items": items});
        Ok(Reply::json(StatusCode::OK, &list))
    }

    // ----- subresources -------------------------------------------------------------------

    /// Write `new`'s status if the object is still at `old_rev`; false if it moved on.
    pub(crate) async fn write_status_at(
        &self,
        t: &Target,
        name: &str,
        mut new: Value,
        old_rev: u64,
        opts: &WriteOpts,
    ) -> ApiResult<bool> {
        let (old, rev) = self
            .current(t, name, false)
            .await?
            .ok_or_else(|| ApiError::not_found(t.resource, name))?;
        if rev != old_rev {
            return Ok(false);
        }
        strip_rv(&mut new);
        match self
            .commit(
                t,
                name,
                &mut new,
                &old,
                rev,
                Scope::Status,
                opts,
                true,
                true,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(Commit::Conflict) => Ok(false),
            Err(Commit::Failed(e)) => Err(e),
        }
    }

    /// `namespaces/{name}/finalize`: the namespace controller clears `spec.finalizers` here.
    pub(crate) async fn finalize(
        &self,
        t: &Target,
        name: &str,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let opts = write_opts(req, params, who)?;
        let body = parse_body(req, false)?;
        let pinned = pinned_rv(&body)?;
        let finalizers = body["spec"]["finalizers"].clone();
        let written = self
            .update_loop(t, name, Scope::Whole, &opts, true, &mut |old| {
                let mut new = old.clone();
                new["spec"]["finalizers"] = if finalizers.is_null() {
                    json!([])
                } else {
                    finalizers.clone()
                };
                Ok((new, pinned))
            })
            .await?;
        Ok(written.reply(StatusCode::OK))
    }

    /// `pods/{name}/binding`: put an unbound pod on a node. The scheduler's one write; it
    /// never moves a pod that is bound already (409), which makes racing binders safe.
    pub(crate) async fn bind(
        &self,
        t: &Target,
        name: &str,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let r = t.resource;
        let opts = write_opts(req, params, who)?;
        let body = parse_body(req, false)?;
        if let Some(n) = body["metadata"]["name"].as_str()
            && !n.is_empty()
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the binding ({n}) does not match the pod on the URL ({name})"
            )));
        }
        let node = body["target"]["name"].as_str().unwrap_or("");
        if node.is_empty() {
            let mut errs = api::errors::FieldErrors::default();
            errs.required(&api::errors::Path::root("target").child("name"), "");
            return Err(ApiError::invalid(r, name, &errs));
        }
        let uid = body["metadata"]["uid"].as_str().filter(|u| !u.is_empty());
        let annotations = body["metadata"]["annotations"]
            .as_object()
            .filter(|a| !a.is_empty());
        let scheduled = binding::scheduled(&now());
        let refused = |why: Refusal| {
            let message = match why {
                Refusal::Uid => "the pod's UID does not match the binding".to_string(),
                Refusal::Deleting => {
                    format!("pod {name} is being deleted, cannot be assigned to a host")
                }
                Refusal::Bound(n) => format!("pod {name} is already assigned to node \"{n}\""),
            };
            ApiError::conflict(r, name, &message)
        };
        // The first try reads the cache as it is, without waiting for it to catch up with
        // the store: the write is conditional on the revision read, so a stale read costs a
        // retry, never a wrong binding. Waiting would make every binding in flight queue
        // behind the cache's apply of all the others. A refusal is only believed fresh.
        let key = entry_key(t, name);
        let mut read = Read::Cached;
        for _ in 0..MAX_ATTEMPTS {
            // The cached text, edited in place, when it can be; else the JSON tree.
            let mut text = None;
            if read != Read::Store && annotations.is_none() {
                let cached = match read {
                    Read::Cached => self.cache.resource(r).get(&key),
                    _ => None,
                };
                let e = match cached {
                    Some(e) => e,
                    None => {
                        read = Read::Fresh;
                        self.fresh(t, name).await?
                    }
                };
                match binding::bind_text(&e.json, e.rev, node, uid, &scheduled) {
                    Some(Err(_)) if read == Read::Cached => {
                        read = Read::Fresh;
                        continue;
                    }
                    Some(bound) => text = Some((bound.map_err(refused)?, e.rev)),
                    None => {}
                }
            }
            let (text, rev) = match text {
                Some(t) => t,
                None => {
                    let (mut pod, rev) = self
                        .current(t, name, read == Read::Store)
                        .await?
                        .ok_or_else(|| ApiError::not_found(r, name))?;
                    strip_rv(&mut pod);
                    binding::bind_tree(&mut pod, node, uid, annotations, &scheduled)
                        .map_err(refused)?;
                    (api::wire::to_vec(&pod), rev)
                }
            };
            if opts.dry_run {
                break;
            }
            let op = Op::Put {
                key: r.key(t.namespace.as_deref(), name),
                value: Bytes::from(text),
                condition: Condition::ModRevision(rev),
            };
            match self.store.txn(vec![op]).await {
                Ok(_) => break,
                Err(StoreError::Conflict { .. }) => read = Read::Store,
                Err(e) => return Err(self.store_failure(r, name, e)),
            }
        }
        Ok(Reply::bytes(
            StatusCode::CREATED,
            "application/json",
            Bytes::from_static(
                br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}"#,
            ),
        ))
    }

    pub(crate) async fn scale(
        &self,
        t: &Target,
        name: &str,
        method: &Method,
        req: &Request<Bytes>,
        params: &Params,
        who: &Identity,
    ) -> ApiResult<Reply> {
        let r = t.resource;
        if method == Method::GET {
            let e = self.fresh(t, name).await?;
            return Ok(Reply::json(StatusCode::OK, &scale_of(r, &e.value())));
        }
        let opts = write_opts(req, params, who)?;
        let body = parse_body(req, false)?;
        let patch_type = if method == Method::PATCH {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Some(
                PatchType::from_content_type(ct)
                    .ok_or_else(|| ApiError::unsupported_media_type(ct))?,
            )
        } else if method == Method::PUT {
            None
        } else {
            return Err(ApiError::method_not_allowed());
        };
        let written = self
            .update_loop(t, name, Scope::Main, &opts, true, &mut |old| {
                let current = scale_of(r, old);
                let desired = match patch_type {
                    None => body.clone(),
                    Some(PatchType::Apply) => api::patch::merge_patch(&current, &body),
                    Some(ty) => apply_patch(ty, &current, &body, schema::Type::empty())?,
                };
                let pinned = pinned_rv(&desired)?.filter(|_| patch_type.is_none());
                let replicas = desired["spec"]["replicas"].as_i64().unwrap_or(0);
                if replicas < 0 {
                    let mut errs = api::errors::FieldErrors::default();
                    errs.invalid(
                        &api::errors::Path::root("spec").child("replicas"),
                        replicas,
                        "must be greater than or equal to 0",
                    );
                    return Err(ApiError::invalid(r, name, &errs));
                }
                let mut new = old.clone();
                match r.ops.custom().and_then(|c| c.kind().scale.clone()) {
                    Some(paths) => {
                        api::custom::set_path(&mut new, &paths.spec_replicas, json!(replicas))
                    }
                    None => new["spec"]["replicas"] = json!(replicas),
                }
                Ok((new, pinned))
            })
            .await?;
        let mut obj = written.obj;
        obj["metadata"]["resourceVersion"] = json!(written.rev.to_string());
        Ok(Reply::json(StatusCode::OK, &scale_of(r, &obj)))
    }
}

/// The `autoscaling/v1` Scale view of an object with `spec.replicas` (or, for a custom kind,
/// where its definition says).
fn scale_of(r: &Resource, obj: &Value) -> Value {
    if let Some(paths) = r.ops.custom().and_then(|c| c.kind().scale.clone()) {
        let at = |p: &str| api::custom::at_path(obj, p);
        let selector = paths
            .label_selector
            .as_deref()
            .and_then(at)
            .and_then(Value::as_str)
            .unwrap_or("");
        let m = &obj["metadata"];
        return json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                         "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": at(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
            "status": {"replicas": at(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
                       "selector": selector},
        });
    }
    let sel: Option<api::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector> =
        serde_json::from_value(obj["spec"]["selector"].clone()).ok();
    let selector = api::selector::LabelSelectorExpr::from_object(sel.as_ref())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// Nothing holds a deleted object any more: no finalizers, no grace period left to wait out
/// (and for namespaces, no spec finalizers).
fn ready_to_go(obj: &Value) -> bool {
    let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
    let graceful = obj["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|g| g > 0);
    let spec_done = obj["kind"] != "Namespace" || empty(&obj["spec"]["finalizers"]);
    empty(&obj["metadata"]["finalizers"]) && spec_done && !graceful
}

fn apply_patch(
    ty: PatchType,
    old: &Value,
    patch: &Value,
    kind_schema: &schema::Type,
) -> ApiResult<Value> {
    let out = match ty {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            api::patch::merge_patch(old, patch)
        }
        PatchType::Json => api::patch::json_patch(old, patch).map_err(|e| match e {
            api::patch::PatchError::Invalid(m) => ApiError::bad_request(m),
            api::patch::PatchError::Failed(m) => {
                let mut e =
                    ApiError::bad_request(format!("the JSON patch could not be applied: {m}"));
                e.code = 422;
                e.reason = "Invalid";
                e
            }
        })?,
        PatchType::Strategic => strategic::apply(old, patch, kind_schema)
            .map_err(|e| ApiError::bad_request(format!("invalid strategic merge patch: {e}")))?,
        PatchType::Apply => unreachable!("apply patches take their own path"),
    };
    if !out.is_object() {
        return Err(ApiError::bad_request(
            "the patched object is not a JSON object",
        ));
    }
    Ok(out)
}

/// Computes the desired object from the current one, and the resource version the client
/// pinned, if any.
type Mutate<'a> = dyn FnMut(&Value) -> ApiResult<(Value, Option<u64>)> + Send + 'a;

enum Commit {
    Conflict,
    Failed(ApiError),
}

impl From<ApiError> for Commit {
    fn from(e: ApiError) -> Commit {
        Commit::Failed(e)
    }
}

enum Step {
    /// Remove the object now.
    Now,
    /// It is already on its way out.
    AlreadyPending,
    /// Record the deletion (timestamp, grace) and let finalizers or the agent finish it.
    Mark(Value),
}

/// What happens to an object's dependents (objects naming it in their ownerReferences).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Propagation {
    /// Keep them, without the reference (the `orphan` finalizer, for the garbage collector).
    Orphan,
    /// Delete the owner now; the garbage collector deletes the dependents after.
    Background,
    /// Delete the dependents first (the `foregroundDeletion` finalizer).
    Foreground,
}

impl Propagation {
    /// What a delete without a policy does: batch/v1 Jobs keep their pods, as in
    /// Kubernetes (for compatibility with clients that predate garbage collection);
    /// everything else cascades in the background.
    fn default_for(r: &Resource) -> Propagation {
        if r.kind == "Job" {
            Propagation::Orphan
        } else {
            Propagation::Background
        }
    }

    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Orphan => Some("orphan"),
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Background => None,
        }
    }
}

/// `DeleteOptions`, from the body and the query string.
pub(crate) struct DeleteOptions {
    grace_period: Option<i64>,
    propagation: Option<Propagation>,
    orphan_dependents: Option<bool>,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    fn from(req: &Request<Bytes>, params: &Params) -> ApiResult<DeleteOptions> {
        let body = if req.body().iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            parse_body(req, false)?
        };
        DeleteOptions::from_value(&body, params)
    }

    /// From a `DeleteOptions` object (as an Eviction carries it) and the query string.
    pub(crate) fn from_value(body: &Value, params: &Params) -> ApiResult<DeleteOptions> {
        if let Some(dry) = body["dryRun"].as_array()
            && dry.iter().any(|d| d != "All")
        {
            return Err(ApiError::bad_request(
                "invalid dry run value: only \"All\" is supported",
            ));
        }
        let grace_period = match body["gracePeriodSeconds"].as_i64() {
            Some(g) => Some(g),
            None => params.number("gracePeriodSeconds")?,
        };
        let orphan_dependents = body["orphanDependents"]
            .as_bool()
            .or_else(|| params.get("orphanDependents").map(|v| v == "true"));
        let propagation = match body["propagationPolicy"]
            .as_str()
            .or(params.get("propagationPolicy"))
        {
            Some("Orphan") => Some(Propagation::Orphan),
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some(p) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy must be one of \"Orphan\", \"Background\" or \"Foreground\", not {p:?}"
                )));
            }
            None => match orphan_dependents {
                Some(true) => Some(Propagation::Orphan),
                Some(false) => Some(Propagation::Background),
                None => None,
            },
        };
        Ok(DeleteOptions {
            grace_period,
            propagation,
            orphan_dependents,
            uid: body["preconditions"]["uid"].as_str().map(str::to_string),
            resource_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_wait_for_their_finalizer() {
        let mut ns =
            json!({"kind": "Namespace", "metadata": {}, "spec": {"finalizers": ["kubernetes"]}});
        assert!(!ready_to_go(&ns));
        ns["spec"]["finalizers"] = json!([]);
        assert!(ready_to_go(&ns));
        ns["metadata"]["finalizers"] = json!(["example.com/hold"]);
        assert!(!ready_to_go(&ns));
    }

    #[test]
    fn scale_view() {
        let d = json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let s = scale_of(
            api::resources::find("apps", "v1", "deployments").unwrap(),
            &d,
        );
        assert_eq!(s["spec"]["replicas"], 3);
        assert_eq!(s["status"]["selector"], "app=web");
        assert_eq!(s["metadata"]["resourceVersion"], "7");
    }
}
