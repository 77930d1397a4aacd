//! Pods and pod templates: the defaults and checks every workload kind shares.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use k8s_openapi::api::core::v1::{
    Container, Pod, PodSpec, PodStatus, PodTemplateSpec, Probe, ResourceRequirements, Toleration,
    Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as WireQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Kind, default_if_none, default_str, validate_labels, validate_port, validate_quantity,
};
use crate::errors::{FieldErrors, Path};
use crate::names;
use crate::quantity::Quantity;

/// How long a pod tolerates its node being unready or unreachable before eviction, unless the
/// pod says otherwise (Kubernetes' DefaultTolerationSeconds admission).
pub const DEFAULT_NOT_READY_TOLERATION_SECONDS: i64 = 300;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Where a pod spec lives decides some rules (a Deployment's pods must restart Always).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpecContext {
    Pod,
    Template,
}

impl Kind for Pod {
    fn prepare_create(&mut self) {
        self.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        default_pod_spec(spec);
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            requests_default_to_limits(c.resources.get_or_insert_with(Default::default));
        }
        default_str(&mut spec.service_account_name, "default");
        default_str(
            &mut spec.service_account,
            spec.service_account_name
                .clone()
                .as_deref()
                .unwrap_or("default"),
        );
        let qos = qos_class(spec);
        let status = self.status.get_or_insert_with(Default::default);
        default_str(&mut status.qos_class, qos);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        let path = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&path, "");
            return;
        };
        validate_pod_spec(spec, &path, SpecContext::Pod, errs);
        validate_ephemeral(spec, &path, errs);
        // They are added to running pods only, through their subresource.
        if old.is_none()
            && spec
                .ephemeral_containers
                .as_ref()
                .is_some_and(|e| !e.is_empty())
        {
            errs.forbidden(
                &path.child("ephemeralContainers"),
                "cannot be set on create",
            );
        }
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            validate_pod_spec_update(spec, old_spec, errs);
        }
    }
}

/// Defaults of a pod spec, for pods and templates alike.
pub(crate) fn default_pod_spec(spec: &mut PodSpec) {
    default_str(&mut spec.restart_policy, "Always");
    default_str(&mut spec.dns_policy, "ClusterFirst");
    default_str(&mut spec.scheduler_name, "default-scheduler");
    default_if_none(&mut spec.termination_grace_period_seconds, 30);
    default_if_none(&mut spec.security_context, Default::default());
    default_if_none(&mut spec.enable_service_links, true);
    let host_network = spec.host_network == Some(true);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        default_container(c, host_network);
    }
    for v in spec.volumes.iter_mut().flatten() {
        default_volume(v);
    }
}

fn default_container(c: &mut Container, host_network: bool) {
    default_str(&mut c.termination_message_path, "/dev/termination-log");
    default_str(&mut c.termination_message_policy, "File");
    if c.image_pull_policy.as_deref().is_none_or(str::is_empty) {
        let image = c.image.as_deref().unwrap_or("");
        c.image_pull_policy = Some(default_pull_policy(image).to_string());
    }
    default_if_none(&mut c.resources, Default::default());
    for p in c.ports.iter_mut().flatten() {
        default_str(&mut p.protocol, "TCP");
        if host_network && p.host_port.is_none_or(|h| h == 0) {
            p.host_port = Some(p.container_port);
        }
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(field_ref) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            default_str(&mut field_ref.api_version, "v1");
        }
    }
    for probe in [
        &mut c.liveness_probe,
        &mut c.readiness_probe,
        &mut c.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        default_probe(probe);
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(p: &mut Probe) {
    default_if_none(&mut p.timeout_seconds, 1);
    default_if_none(&mut p.period_seconds, 10);
    default_if_none(&mut p.success_threshold, 1);
    default_if_none(&mut p.failure_threshold, 3);
    if let Some(h) = p.http_get.as_mut() {
        default_str(&mut h.scheme, "HTTP");
        default_str(&mut h.path, "/");
    }
}

fn default_volume(v: &mut Volume) {
    const MODE: i32 = 0o644;
    if volume_sources(v) == 0 {
        v.empty_dir = Some(Default::default());
    }
    if let Some(s) = v.config_map.as_mut() {
        default_if_none(&mut s.default_mode, MODE);
    }
    if let Some(s) = v.secret.as_mut() {
        default_if_none(&mut s.default_mode, MODE);
    }
    if let Some(s) = v.downward_api.as_mut() {
        default_if_none(&mut s.default_mode, MODE);
    }
    if let Some(s) = v.projected.as_mut() {
        default_if_none(&mut s.default_mode, MODE);
        for t in s
            .sources
            .iter_mut()
            .flatten()
            .filter_map(|src| src.service_account_token.as_mut())
        {
            default_if_none(&mut t.expiration_seconds, 3600);
        }
    }
    if let Some(s) = v.host_path.as_mut() {
        default_if_none(&mut s.type_, String::new());
    }
}

/// How many sources a volume names; exactly one is valid.
fn volume_sources(v: &Volume) -> usize {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m.keys().filter(|k| *k != "name").count(),
        _ => 0,
    }
}

fn requests_default_to_limits(r: &mut ResourceRequirements) {
    let Some(limits) = r.limits.clone() else {
        return;
    };
    let requests = r.requests.get_or_insert_with(BTreeMap::new);
    for (k, v) in limits {
        requests.entry(k).or_insert(v);
    }
}

/// Kubernetes' DefaultTolerationSeconds admission: a new pod that does not say how long it
/// stays on a not-ready or unreachable node tolerates that for `seconds`. Admission, not
/// defaulting: what it adds belongs to no client.
pub fn add_default_tolerations(tolerations: &mut Vec<Toleration>, seconds: i64) {
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = tolerations.iter().any(|t| {
            let effect_ok = t
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "NoExecute");
            let key_ok = t.key.as_deref().is_none_or(|k| k.is_empty() || k == key);
            effect_ok && key_ok && t.operator.as_deref() == Some("Exists")
        });
        if !covered {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(seconds),
                value: None,
            });
        }
    }
}

/// The pod's quality-of-service class from its containers' requests and limits.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let r = c.resources.as_ref();
        let requests = r.and_then(|r| r.requests.as_ref());
        let limits = r.and_then(|r| r.limits.as_ref());
        let compute = |m: Option<&BTreeMap<String, WireQuantity>>| -> BTreeMap<String, Quantity> {
            m.into_iter()
                .flatten()
                .filter(|(k, _)| *k == "cpu" || *k == "memory")
                .filter_map(|(k, v)| Quantity::parse(&v.0).ok().map(|q| (k.clone(), q)))
                .filter(|(_, q)| *q != Quantity::ZERO)
                .collect()
        };
        let (req, lim) = (compute(requests), compute(limits));
        if !req.is_empty() || !lim.is_empty() {
            any = true;
        }
        if lim.len() != 2 || req.iter().any(|(k, v)| lim.get(k) != Some(v)) {
            guaranteed = false;
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(crate) fn validate_template<'a>(
    t: Option<&'a PodTemplateSpec>,
    path: &Path,
    errs: &mut FieldErrors,
) -> Option<&'a PodSpec> {
    let Some(t) = t else {
        errs.required(path, "");
        return None;
    };
    if let Some(meta) = &t.metadata {
        validate_labels(
            meta.labels.as_ref(),
            &path.child("metadata").child("labels"),
            errs,
        );
    }
    match &t.spec {
        Some(spec) => {
            validate_pod_spec(spec, &path.child("spec"), SpecContext::Template, errs);
            if spec
                .ephemeral_containers
                .as_ref()
                .is_some_and(|e| !e.is_empty())
            {
                errs.forbidden(
                    &path.child("spec").child("ephemeralContainers"),
                    "ephemeral containers not allowed in pod template",
                );
            }
            Some(spec)
        }
        None => {
            errs.required(&path.child("spec"), "");
            None
        }
    }
}

pub(crate) fn validate_pod_spec(
    spec: &PodSpec,
    path: &Path,
    _ctx: SpecContext,
    errs: &mut FieldErrors,
) {
    let volumes = validate_volumes(
        spec.volumes.as_deref().unwrap_or(&[]),
        &path.child("volumes"),
        errs,
    );
    if spec.containers.is_empty() {
        errs.required(&path.child("containers"), "");
    }
    let mut names = HashSet::new();
    let host_network = spec.host_network == Some(true);
    for (field, list) in [
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("containers", spec.containers.as_slice()),
    ] {
        for (i, c) in list.iter().enumerate() {
            let p = path.child(field).index(i);
            if !c.name.is_empty() && !names.insert(c.name.as_str()) {
                errs.duplicate(&p.child("name"), &c.name);
            }
            validate_container(
                c,
                &p,
                &volumes,
                host_network,
                field == "initContainers",
                errs,
            );
        }
    }
    if let Some(rp) = &spec.restart_policy {
        errs.one_of(&path.child("restartPolicy"), rp, RESTART_POLICIES);
    }
    if let Some(dp) = &spec.dns_policy {
        errs.one_of(&path.child("dnsPolicy"), dp, DNS_POLICIES);
    }
    errs.non_negative(
        &path.child("terminationGracePeriodSeconds"),
        spec.termination_grace_period_seconds,
    );
    if let Some(a) = spec.active_deadline_seconds
        && a < 1
    {
        errs.invalid(
            &path.child("activeDeadlineSeconds"),
            a,
            "must be between 1 and 2147483647, inclusive",
        );
    }
    validate_labels(
        spec.node_selector.as_ref(),
        &path.child("nodeSelector"),
        errs,
    );
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        validate_toleration(t, &path.child("tolerations").index(i), errs);
    }
    for (field, value) in [
        ("serviceAccountName", &spec.service_account_name),
        ("nodeName", &spec.node_name),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            for e in names::dns1123_subdomain(v) {
                errs.invalid(&path.child(field), v, e);
            }
        }
    }
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        for e in names::dns1123_label(h) {
            errs.invalid(&path.child("hostname"), h, e);
        }
    }
}

fn validate_volumes(volumes: &[Volume], path: &Path, errs: &mut FieldErrors) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let p = path.index(i);
        if v.name.is_empty() {
            errs.required(&p.child("name"), "");
        } else {
            for e in names::dns1123_label(&v.name) {
                errs.invalid(&p.child("name"), &v.name, e);
            }
            if !seen.insert(v.name.clone()) {
                errs.duplicate(&p.child("name"), &v.name);
            }
        }
        match volume_sources(v) {
            1 => {}
            0 => errs.required(&p, "must specify a volume type"),
            _ => errs.forbidden(&p, "may not specify more than 1 volume type"),
        }
        if let Some(cm) = &v.config_map
            && cm.name.is_empty()
        {
            errs.required(&p.child("configMap").child("name"), "");
        }
        if let Some(hp) = &v.host_path
            && hp.path.is_empty()
        {
            errs.required(&p.child("hostPath").child("path"), "");
        }
        let sources = v
            .projected
            .iter()
            .flat_map(|pr| pr.sources.iter().flatten());
        for (j, src) in sources.enumerate() {
            let Some(t) = &src.service_account_token else {
                continue;
            };
            let tp = p
                .child("projected")
                .child("sources")
                .index(j)
                .child("serviceAccountToken");
            match t.expiration_seconds {
                Some(s) if s < 600 => errs.invalid(
                    &tp.child("expirationSeconds"),
                    s,
                    "may not specify a duration less than 10 minutes",
                ),
                Some(s) if s > 1 << 32 => errs.invalid(
                    &tp.child("expirationSeconds"),
                    s,
                    "may not specify a duration larger than 2^32 seconds",
                ),
                _ => {}
            }
            if t.path.is_empty() {
                errs.required(&tp.child("path"), "");
            }
        }
    }
    seen
}

fn validate_container(
    c: &Container,
    path: &Path,
    volumes: &BTreeSet<String>,
    host_network: bool,
    init: bool,
    errs: &mut FieldErrors,
) {
    if c.name.is_empty() {
        errs.required(&path.child("name"), "");
    } else {
        for e in names::dns1123_label(&c.name) {
            errs.invalid(&path.child("name"), &c.name, e);
        }
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.required(&path.child("image"), "");
    }
    if let Some(pp) = &c.image_pull_policy {
        errs.one_of(&path.child("imagePullPolicy"), pp, PULL_POLICIES);
    }
    if let Some(tmp) = &c.termination_message_policy {
        errs.one_of(
            &path.child("terminationMessagePolicy"),
            tmp,
            &["File", "FallbackToLogsOnError"],
        );
    }
    let mut port_names = HashSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = path.child("ports").index(i);
        validate_port(errs, &pp.child("containerPort"), p.container_port, false);
        if let Some(h) = p.host_port {
            validate_port(errs, &pp.child("hostPort"), h, true);
            if host_network && h != 0 && h != p.container_port {
                errs.invalid(
                    &pp.child("hostPort"),
                    h,
                    "must match `containerPort` when `hostNetwork` is true",
                );
            }
        }
        if let Some(proto) = &p.protocol {
            errs.one_of(&pp.child("protocol"), proto, PROTOCOLS);
        }
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            for e in names::iana_svc_name(n) {
                errs.invalid(&pp.child("name"), n, e);
            }
            if !port_names.insert(n) {
                errs.duplicate(&pp.child("name"), n);
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let ep = path.child("env").index(i);
        if e.name.is_empty() {
            errs.required(&ep.child("name"), "");
        } else {
            for m in names::env_var_name(&e.name) {
                errs.invalid(&ep.child("name"), &e.name, m);
            }
        }
        if let Some(from) = &e.value_from {
            if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.invalid(
                    &ep.child("valueFrom"),
                    "",
                    "may not be specified when `value` is not empty",
                );
            }
            let sources = [
                from.field_ref.is_some(),
                from.resource_field_ref.is_some(),
                from.config_map_key_ref.is_some(),
                from.secret_key_ref.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if sources != 1 {
                errs.invalid(&ep.child("valueFrom"), "", "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`");
            }
        }
    }
    if let Some(r) = &c.resources {
        validate_resources(r, &path.child("resources"), errs);
    }
    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = path.child("volumeMounts").index(i);
        if m.name.is_empty() {
            errs.required(&mp.child("name"), "");
        } else if !volumes.contains(&m.name) {
            errs.invalid(&mp.child("name"), &m.name, "volume not found");
        }
        if m.mount_path.is_empty() {
            errs.required(&mp.child("mountPath"), "");
        } else if !mount_paths.insert(m.mount_path.as_str()) {
            errs.invalid(&mp.child("mountPath"), &m.mount_path, "must be unique");
        }
        if let Some(sp) = m.sub_path.as_deref()
            && (sp.starts_with('/') || sp.split('/').any(|s| s == ".."))
        {
            errs.invalid(
                &mp.child("subPath"),
                sp,
                "must be a relative path without '..'",
            );
        }
    }
    for (field, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let Some(probe) = probe else { continue };
        let pp = path.child(field);
        if init && c.restart_policy.as_deref() != Some("Always") {
            errs.forbidden(
                &pp,
                "may not be set for init containers without restartPolicy=Always",
            );
            continue;
        }
        validate_probe(
            probe,
            &pp,
            field == "livenessProbe" || field == "startupProbe",
            errs,
        );
    }
}

fn validate_resources(r: &ResourceRequirements, path: &Path, errs: &mut FieldErrors) {
    let mut parsed = |field: &str, m: &Option<BTreeMap<String, WireQuantity>>| {
        let mut out = BTreeMap::new();
        for (k, v) in m.iter().flatten() {
            let p = path.child(field).key(k);
            for e in names::qualified_name(k) {
                errs.invalid(&p, k, e);
            }
            validate_quantity(errs, &p, &v.0);
            if let Ok(q) = Quantity::parse(&v.0) {
                out.insert(k.clone(), q);
            }
        }
        out
    };
    let limits = parsed("limits", &r.limits);
    let requests = parsed("requests", &r.requests);
    for (k, req) in &requests {
        if let Some(lim) = limits.get(k)
            && req > lim
        {
            let v = &r.requests.as_ref().expect("parsed from requests")[k].0;
            errs.invalid(
                &path.child("requests").key(k),
                v,
                format!(
                    "must be less than or equal to {k} limit of {}",
                    r.limits.as_ref().expect("parsed from limits")[k].0
                ),
            );
        }
    }
}

fn validate_probe(p: &Probe, path: &Path, success_must_be_one: bool, errs: &mut FieldErrors) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    match handlers {
        1 => {}
        0 => errs.required(path, "must specify a handler type"),
        _ => errs.forbidden(path, "may not specify more than 1 handler type"),
    }
    for (field, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("periodSeconds", p.period_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if let Some(v) = v
            && v < min
        {
            errs.invalid(
                &path.child(field),
                v,
                format!("must be greater than or equal to {min}"),
            );
        }
    }
    if success_must_be_one && p.success_threshold.is_some_and(|s| s != 1) {
        errs.invalid(
            &path.child("successThreshold"),
            p.success_threshold,
            "must be 1",
        );
    }
    if let Some(h) = &p.http_get {
        validate_probe_port(&h.port, &path.child("httpGet").child("port"), errs);
        if let Some(s) = &h.scheme {
            errs.one_of(
                &path.child("httpGet").child("scheme"),
                s,
                &["HTTP", "HTTPS"],
            );
        }
    }
    if let Some(t) = &p.tcp_socket {
        validate_probe_port(&t.port, &path.child("tcpSocket").child("port"), errs);
    }
    if let Some(e) = &p.exec
        && e.command.as_ref().is_none_or(Vec::is_empty)
    {
        errs.required(&path.child("exec").child("command"), "");
    }
}

fn validate_probe_port(port: &IntOrString, path: &Path, errs: &mut FieldErrors) {
    match port {
        IntOrString::Int(n) => validate_port(errs, path, *n, false),
        IntOrString::String(s) => {
            for e in names::iana_svc_name(s) {
                errs.invalid(path, s, e);
            }
        }
    }
}

fn validate_toleration(t: &Toleration, path: &Path, errs: &mut FieldErrors) {
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty()) {
        for e in names::qualified_name(k) {
            errs.invalid(&path.child("key"), k, e);
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Equal" | "" => {}
        "Exists" => {
            if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errs.invalid(
                    &path.child("operator"),
                    t.value.as_deref(),
                    "value must be empty when `operator` is 'Exists'",
                );
            }
        }
        other => errs.not_supported(&path.child("operator"), other, &["Equal", "Exists"]),
    }
    if t.key.as_deref().is_none_or(str::is_empty) && t.operator.as_deref() != Some("Exists") {
        errs.invalid(&path.child("operator"), t.operator.as_deref().unwrap_or(""), "operator must be Exists when `key` is empty, which means \"match all values and all keys\"");
    }
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        errs.one_of(&path.child("effect"), e, TAINT_EFFECTS);
    }
    if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
        errs.invalid(
            &path.child("effect"),
            t.effect.as_deref().unwrap_or(""),
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        );
    }
}

/// Only images, the active deadline and added tolerations may change on a running pod.
fn validate_pod_spec_update(new: &PodSpec, old: &PodSpec, errs: &mut FieldErrors) {
    validate_ephemeral_update(new, old, errs);
    let mut a = new.clone();
    let mut b = old.clone();
    a.ephemeral_containers = None;
    b.ephemeral_containers = None;
    if a.containers.len() == b.containers.len() {
        for (x, y) in a.containers.iter_mut().zip(b.containers.iter_mut()) {
            x.image = None;
            y.image = None;
        }
    }
    if let (Some(xs), Some(ys)) = (a.init_containers.as_mut(), b.init_containers.as_mut())
        && xs.len() == ys.len()
    {
        for (x, y) in xs.iter_mut().zip(ys.iter_mut()) {
            x.image = None;
            y.image = None;
        }
    }
    if let Some(ad) = new.active_deadline_seconds
        && old.active_deadline_seconds.is_none_or(|o| ad <= o)
    {
        a.active_deadline_seconds = None;
        b.active_deadline_seconds = None;
    }
    let old_tolerations = old.tolerations.clone().unwrap_or_default();
    let kept_old = old_tolerations
        .iter()
        .all(|t| new.tolerations.iter().flatten().any(|n| n == t));
    if kept_old {
        a.tolerations = None;
        b.tolerations = None;
    }
    if a != b {
        errs.forbidden(
            &Path::root("spec"),
            "pod updates may not change fields other than `spec.containers[*].image`, \
             `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` (only to set or \
             shorten it) and `spec.tolerations` (only additions to existing tolerations)",
        );
    }
}

/// Ephemeral containers may be added to a running pod, never changed or removed, and lack
/// what a debugging container cannot have (ports, probes, lifecycle hooks, resources).
fn validate_ephemeral_update(new: &PodSpec, old: &PodSpec, errs: &mut FieldErrors) {
    let path = Path::root("spec").child("ephemeralContainers");
    let olds = old.ephemeral_containers.as_deref().unwrap_or(&[]);
    let news = new.ephemeral_containers.as_deref().unwrap_or(&[]);
    for (i, o) in olds.iter().enumerate() {
        match news.iter().find(|n| n.name == o.name) {
            Some(n) if n == o => {}
            Some(_) => errs.forbidden(
                &path.index(i),
                format!(
                    "existing ephemeral containers \"{}\" may not be changed",
                    o.name
                ),
            ),
            None => errs.forbidden(
                &path,
                format!(
                    "existing ephemeral containers \"{}\" may not be removed",
                    o.name
                ),
            ),
        }
    }
}

/// The rules for one ephemeral container, beside those of every container.
fn validate_ephemeral(spec: &PodSpec, path: &Path, errs: &mut FieldErrors) {
    let mut names: BTreeSet<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    for (i, e) in spec.ephemeral_containers.iter().flatten().enumerate() {
        let p = path.child("ephemeralContainers").index(i);
        if e.name.is_empty() {
            errs.required(&p.child("name"), "");
        } else if !names.insert(e.name.as_str()) {
            errs.duplicate(&p.child("name"), &e.name);
        }
        if e.image.as_deref().is_none_or(str::is_empty) {
            errs.required(&p.child("image"), "");
        }
        let forbidden = [
            ("ports", e.ports.as_ref().is_some_and(|x| !x.is_empty())),
            ("livenessProbe", e.liveness_probe.is_some()),
            ("readinessProbe", e.readiness_probe.is_some()),
            ("startupProbe", e.startup_probe.is_some()),
            ("lifecycle", e.lifecycle.is_some()),
            (
                "resources",
                e.resources
                    .as_ref()
                    .is_some_and(|r| r.limits.is_some() || r.requests.is_some()),
            ),
        ];
        for (field, set) in forbidden {
            if set {
                errs.forbidden(&p.child(field), "cannot be set for an Ephemeral Container");
            }
        }
        if let Some(t) = e.target_container_name.as_deref().filter(|t| !t.is_empty())
            && !spec.containers.iter().any(|c| c.name == t)
            && !spec.init_containers.iter().flatten().any(|c| c.name == t)
        {
            errs.invalid(
                &p.child("targetContainerName"),
                t,
                "must reference a container in the pod",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_fill_what_kubectl_shows() {
        let mut p = pod(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "web", "image": "nginx",
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                "livenessProbe": {"httpGet": {"port": 80}}}]}
        }));
        p.prepare_create();
        p.default();
        let spec = p.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("TCP")
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        // Tolerations are admission's, not defaults.
        assert!(spec.tolerations.is_none());
        assert_eq!(c.liveness_probe.as_ref().unwrap().period_seconds, Some(10));
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(
            status.qos_class.as_deref(),
            Some("Guaranteed"),
            "requests default to limits"
        );
    }

    #[test]
    fn default_tolerations_are_added_unless_covered() {
        let mut t = Vec::new();
        add_default_tolerations(&mut t, 300);
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|x| x.toleration_seconds == Some(300)));
        // A toleration of everything covers both.
        let mut all = vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        add_default_tolerations(&mut all, 60);
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/app"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/app:v1"), "IfNotPresent");
        assert_eq!(default_pull_policy("app@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn qos_classes() {
        let spec = |res: serde_json::Value| -> PodSpec {
            serde_json::from_value(json!({"containers": [{"name": "a", "resources": res}]}))
                .unwrap()
        };
        assert_eq!(qos_class(&spec(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(json!({"requests": {"cpu": "100m"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&spec(
                json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
            )),
            "Guaranteed"
        );
    }

    fn errors_of(v: serde_json::Value) -> Vec<String> {
        let p = pod(v);
        let mut errs = FieldErrors::default();
        p.validate(None, &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn validation_names_the_field() {
        let errs = errors_of(json!({"spec": {"containers": [
            {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]},
            {"name": "a"},
        ]}}));
        assert!(
            errs.contains(&"spec.containers[1].name: Duplicate value: \"a\"".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"spec.containers[1].image: Required value".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(&"spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive".to_string()),
            "{errs:?}"
        );
        let errs = errors_of(json!({"spec": {"containers": [
            {"name": "a", "image": "x", "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
             "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}],
            "restartPolicy": "Sometimes"}}));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errors_of(json!({"spec": {"containers": []}}))
                .contains(&"spec.containers: Required value".to_string())
        );
    }

    #[test]
    fn running_pods_only_change_images() {
        let old = pod(json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}}));
        let mut new = old.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("x:2".into());
        let mut errs = FieldErrors::default();
        new.validate(Some(&old), &mut errs);
        assert!(errs.is_empty(), "{errs}");
        new.spec.as_mut().unwrap().containers[0].command = Some(vec!["sh".into()]);
        new.validate(Some(&old), &mut errs);
        assert_eq!(errs.0.len(), 1);
        assert_eq!(errs.0[0].reason(), "FieldValueForbidden");
    }
}
