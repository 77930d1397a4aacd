//! Pod Security admission's judgement (the Pod Security Standards as Kubernetes 1.33 checks
//! them): a namespace's `pod-security.kubernetes.io/*` labels read into a policy, a pod spec
//! checked against a level and version, and the violations worded as Kubernetes words them.
//! Pure; the API server applies it to pods (enforce, warn, audit) and workloads (warn, audit).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, PodSecurityContext, PodSpec, SecurityContext,
};

pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";
/// The newest policy version Kubernetes 1.33 has rules for; later versions read as it.
const NEWEST: u32 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// `latest` or `v1.<minor>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Latest,
    Minor(u32),
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        if s == "latest" {
            return Some(Version::Latest);
        }
        let minor = s.strip_prefix("v1.")?;
        if minor.is_empty() || (minor.len() > 1 && minor.starts_with('0')) {
            return None;
        }
        minor.parse().ok().map(Version::Minor)
    }

    /// The minor version whose rules apply.
    fn rules(self) -> u32 {
        match self {
            Version::Latest => NEWEST,
            Version::Minor(m) => m.min(NEWEST),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(m) => write!(f, "v1.{m}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelVersion {
    pub level: Level,
    pub version: Version,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.as_str(), self.version)
    }
}

impl LevelVersion {
    pub const PRIVILEGED: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };
}

/// What a namespace asks for in each mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

impl Policy {
    pub fn is_privileged(&self) -> bool {
        [self.enforce, self.audit, self.warn]
            .iter()
            .all(|m| m.level == Level::Privileged)
    }
}

/// A label that does not read, as Kubernetes reports it (`metadata.labels[...]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub detail: &'static str,
}

/// Read a namespace's labels. Unset modes take `default` (the cluster's); an invalid enforce
/// level reads as restricted, an invalid audit or warn level as privileged, an invalid version
/// as latest, each with an error. An unset warn follows a stricter valid enforce.
pub fn policy(
    labels: &BTreeMap<String, String>,
    default: LevelVersion,
) -> (Policy, Vec<LabelError>) {
    let mut errors = Vec::new();
    let mut mode = |name: &str, invalid: Level| -> (LevelVersion, bool, bool) {
        let key = format!("{LABEL_PREFIX}{name}");
        let vkey = format!("{key}-version");
        let (level, level_ok, level_set) = match labels.get(&key) {
            None => (default.level, true, false),
            Some(v) => match Level::parse(v) {
                Some(l) => (l, true, true),
                None => {
                    errors.push(LabelError {
                        label: key.clone(),
                        value: v.clone(),
                        detail: "must be one of privileged, baseline, restricted",
                    });
                    (invalid, false, true)
                }
            },
        };
        let version = match labels.get(&vkey) {
            None => default.version,
            Some(v) => Version::parse(v).unwrap_or_else(|| {
                errors.push(LabelError {
                    label: vkey.clone(),
                    value: v.clone(),
                    detail: "must be \"latest\" or \"v1.x\"",
                });
                Version::Latest
            }),
        };
        (LevelVersion { level, version }, level_ok, level_set)
    };
    let (enforce, enforce_ok, enforce_set) = mode("enforce", Level::Restricted);
    let (audit, _, _) = mode("audit", Level::Privileged);
    let (mut warn, _, warn_set) = mode("warn", Level::Privileged);
    if enforce_set && enforce_ok && !warn_set && enforce.level > warn.level {
        warn.level = enforce.level;
        if !labels.contains_key(&format!("{LABEL_PREFIX}warn-version")) {
            warn.version = enforce.version;
        }
    }
    (
        Policy {
            enforce,
            audit,
            warn,
        },
        errors,
    )
}

/// One failed check: `reason (detail)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub reason: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

/// The violations joined as Kubernetes joins them.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `violates PodSecurity "restricted:latest": ...` (enforce) or `would violate ...` (warn).
pub fn message(lv: LevelVersion, violations: &[Violation], would: bool) -> String {
    let verb = if would { "would violate" } else { "violates" };
    format!("{verb} PodSecurity \"{lv}\": {}", describe(violations))
}

fn quote_all<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 { one } else { many }
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[&str]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        quote_all(names)
    )
}

fn sorted_set(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Go's `%q` of a string.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A container of any kind, as the checks see it.
struct C<'a> {
    name: &'a str,
    sc: Option<&'a SecurityContext>,
    ports: &'a [ContainerPort],
}

fn containers(spec: &PodSpec) -> Vec<C<'_>> {
    let mut out = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        out.push(C {
            name: &c.name,
            sc: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or_default(),
        });
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        out.push(C {
            name: &c.name,
            sc: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or_default(),
        });
    }
    out
}

/// `pod and containers "a", "b"` from whether the pod sets it and which containers do.
fn setters(pod: bool, names: &[&str], extra: Option<String>) -> String {
    let mut parts = Vec::new();
    if pod {
        parts.push("pod".to_string());
    }
    if !names.is_empty() {
        parts.push(containers_phrase(names));
    }
    parts.extend(extra);
    parts.join(" and ")
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn safe_sysctls(minor: u32) -> Vec<&'static str> {
    let mut v = vec![
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    ];
    if minor >= 27 {
        v.push("net.ipv4.ip_local_reserved_ports");
    }
    if minor >= 29 {
        v.extend([
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ]);
    }
    if minor >= 32 {
        v.extend(["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]);
    }
    v
}

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

fn check_apparmor(
    annotations: &BTreeMap<String, String>,
    psc: Option<&PodSecurityContext>,
    cs: &[C<'_>],
) -> Option<Violation> {
    let ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let mut bad_types = Vec::new();
    let pod_bad = match psc.and_then(|s| s.app_armor_profile.as_ref()) {
        Some(p) if !ok(&p.type_) => {
            bad_types.push(p.type_.clone());
            true
        }
        _ => false,
    };
    let mut names = Vec::new();
    for c in cs {
        if let Some(p) = c.sc.and_then(|s| s.app_armor_profile.as_ref())
            && !ok(&p.type_)
        {
            bad_types.push(p.type_.clone());
            names.push(c.name);
        }
    }
    let mut bad_annotations = Vec::new();
    for (k, v) in annotations {
        if k.starts_with(APPARMOR_ANNOTATION)
            && !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/"))
        {
            bad_annotations.push(format!("{k}={}", go_quote(v)));
        }
    }
    if !pod_bad && names.is_empty() && bad_annotations.is_empty() {
        return None;
    }
    let extra = (!bad_annotations.is_empty())
        .then(|| plural("annotation", "annotations", bad_annotations.len()).to_string());
    let mut values = sorted_set(bad_types);
    bad_annotations.sort();
    values.extend(bad_annotations);
    Some(Violation {
        reason: plural(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            values.len(),
        )
        .into(),
        detail: format!(
            "{} must not set AppArmor profile type to {}",
            setters(pod_bad, &names, extra),
            quote_all(&values)
        ),
    })
}

fn caps_of(sc: Option<&SecurityContext>) -> Option<&Capabilities> {
    sc.and_then(|s| s.capabilities.as_ref())
}

fn check_capabilities_baseline(cs: &[C<'_>]) -> Option<Violation> {
    let mut names = Vec::new();
    let mut bad = Vec::new();
    for c in cs {
        let added: Vec<&String> = caps_of(c.sc)
            .and_then(|k| k.add.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| !BASELINE_CAPS.contains(&a.as_str()))
            .collect();
        if !added.is_empty() {
            names.push(c.name);
            bad.extend(added.into_iter().cloned());
        }
    }
    (!names.is_empty()).then(|| Violation {
        reason: "non-default capabilities".into(),
        detail: format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&names),
            quote_all(&sorted_set(bad))
        ),
    })
}

fn check_capabilities_restricted(cs: &[C<'_>]) -> Option<Violation> {
    let mut missing = Vec::new();
    let mut adding = Vec::new();
    let mut bad = Vec::new();
    for c in cs {
        let Some(caps) = caps_of(c.sc) else {
            missing.push(c.name);
            continue;
        };
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            missing.push(c.name);
        }
        let added: Vec<&String> = caps
            .add
            .iter()
            .flatten()
            .filter(|a| *a != "NET_BIND_SERVICE")
            .collect();
        if !added.is_empty() {
            adding.push(c.name);
            bad.extend(added.into_iter().cloned());
        }
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing)
        ));
    }
    if !adding.is_empty() {
        parts.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding),
            quote_all(&sorted_set(bad))
        ));
    }
    (!parts.is_empty()).then(|| Violation {
        reason: "unrestricted capabilities".into(),
        detail: parts.join("; "),
    })
}

fn check_host_namespaces(spec: &PodSpec) -> Option<Violation> {
    let mut set = Vec::new();
    for (on, what) in [
        (spec.host_network, "hostNetwork=true"),
        (spec.host_pid, "hostPID=true"),
        (spec.host_ipc, "hostIPC=true"),
    ] {
        if on == Some(true) {
            set.push(what);
        }
    }
    (!set.is_empty()).then(|| Violation {
        reason: "host namespaces".into(),
        detail: set.join(", "),
    })
}

fn check_host_path(spec: &PodSpec) -> Option<Violation> {
    let names: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.as_str())
        .collect();
    (!names.is_empty()).then(|| Violation {
        reason: "hostPath volumes".into(),
        detail: format!(
            "{} {}",
            plural("volume", "volumes", names.len()),
            quote_all(&names)
        ),
    })
}

fn check_host_ports(cs: &[C<'_>]) -> Option<Violation> {
    let mut names = Vec::new();
    let mut ports = Vec::new();
    for c in cs {
        let used: Vec<String> = c
            .ports
            .iter()
            .filter_map(|p| p.host_port.filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !used.is_empty() {
            names.push(c.name);
            ports.extend(used);
        }
    }
    let ports = sorted_set(ports);
    (!names.is_empty()).then(|| Violation {
        reason: "hostPort".into(),
        detail: format!(
            "{} {} {}",
            containers_phrase(&names),
            format_args!(
                "{} {}",
                plural("uses", "use", names.len()),
                plural("hostPort", "hostPorts", ports.len())
            ),
            ports.join(", ")
        ),
    })
}

fn check_privileged(cs: &[C<'_>]) -> Option<Violation> {
    let names: Vec<&str> = cs
        .iter()
        .filter(|c| c.sc.and_then(|s| s.privileged) == Some(true))
        .map(|c| c.name)
        .collect();
    (!names.is_empty()).then(|| Violation {
        reason: "privileged".into(),
        detail: format!(
            "{} must not set securityContext.privileged=true",
            containers_phrase(&names)
        ),
    })
}

fn check_proc_mount(cs: &[C<'_>]) -> Option<Violation> {
    let mut names = Vec::new();
    let mut values = Vec::new();
    for c in cs {
        if let Some(m) = c.sc.and_then(|s| s.proc_mount.as_ref())
            && m != "Default"
        {
            names.push(c.name);
            values.push(m.clone());
        }
    }
    (!names.is_empty()).then(|| Violation {
        reason: "procMount".into(),
        detail: format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&names),
            quote_all(&sorted_set(values))
        ),
    })
}

fn check_selinux(psc: Option<&PodSecurityContext>, cs: &[C<'_>], minor: u32) -> Option<Violation> {
    let mut allowed = vec!["", "container_t", "container_init_t", "container_kvm_t"];
    if minor >= 31 {
        allowed.push("container_engine_t");
    }
    let mut types = Vec::new();
    let (mut user, mut role) = (false, false);
    let mut judge = |o: &k8s_openapi::api::core::v1::SELinuxOptions| -> bool {
        let mut bad = false;
        let t = o.type_.as_deref().unwrap_or("");
        if !allowed.contains(&t) {
            types.push(t.to_string());
            bad = true;
        }
        if o.user.as_deref().is_some_and(|u| !u.is_empty()) {
            user = true;
            bad = true;
        }
        if o.role.as_deref().is_some_and(|r| !r.is_empty()) {
            role = true;
            bad = true;
        }
        bad
    };
    let pod_bad = psc
        .and_then(|s| s.se_linux_options.as_ref())
        .is_some_and(&mut judge);
    let names: Vec<&str> = cs
        .iter()
        .filter(|c| {
            c.sc.and_then(|s| s.se_linux_options.as_ref())
                .is_some_and(&mut judge)
        })
        .map(|c| c.name)
        .collect();
    if !pod_bad && names.is_empty() {
        return None;
    }
    let types = sorted_set(types);
    let mut parts = Vec::new();
    if !types.is_empty() {
        parts.push(format!(
            "{} {}",
            plural("type", "types", types.len()),
            quote_all(&types)
        ));
    }
    if user {
        parts.push("user may not be set".into());
    }
    if role {
        parts.push("role may not be set".into());
    }
    Some(Violation {
        reason: "seLinuxOptions".into(),
        detail: format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            setters(pod_bad, &names, None),
            parts.join("; ")
        ),
    })
}

fn seccomp_ok(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

fn check_seccomp_baseline(
    annotations: &BTreeMap<String, String>,
    psc: Option<&PodSecurityContext>,
    cs: &[C<'_>],
    minor: u32,
) -> Option<Violation> {
    if minor < 19 {
        let ok = |v: &str| {
            v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/")
        };
        let mut bad = Vec::new();
        let pod_key = "seccomp.security.alpha.kubernetes.io/pod";
        if let Some(v) = annotations.get(pod_key)
            && !ok(v)
        {
            bad.push(format!("{pod_key}={}", go_quote(v)));
        }
        for c in cs {
            let key = format!("container.seccomp.security.alpha.kubernetes.io/{}", c.name);
            if let Some(v) = annotations.get(&key)
                && !ok(v)
            {
                bad.push(format!("{key}={}", go_quote(v)));
            }
        }
        let bad = sorted_set(bad);
        return (!bad.is_empty()).then(|| Violation {
            reason: "seccompProfile".into(),
            detail: format!(
                "forbidden {} {}",
                plural("annotation", "annotations", bad.len()),
                bad.join(", ")
            ),
        });
    }
    let mut types = Vec::new();
    let pod_bad = match psc.and_then(|s| s.seccomp_profile.as_ref()) {
        Some(p) if !seccomp_ok(&p.type_) => {
            types.push(p.type_.clone());
            true
        }
        _ => false,
    };
    let mut names = Vec::new();
    for c in cs {
        if let Some(p) = c.sc.and_then(|s| s.seccomp_profile.as_ref())
            && !seccomp_ok(&p.type_)
        {
            types.push(p.type_.clone());
            names.push(c.name);
        }
    }
    (pod_bad || !names.is_empty()).then(|| Violation {
        reason: "seccompProfile".into(),
        detail: format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            setters(pod_bad, &names, None),
            quote_all(&sorted_set(types))
        ),
    })
}

fn check_sysctls(psc: Option<&PodSecurityContext>, minor: u32) -> Option<Violation> {
    let safe = safe_sysctls(minor);
    let bad: Vec<&str> = psc
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| s.name.as_str())
        .filter(|n| !safe.contains(n))
        .collect();
    (!bad.is_empty()).then(|| Violation {
        reason: "forbidden sysctls".into(),
        detail: bad.join(", "),
    })
}

fn check_host_process(psc: Option<&PodSecurityContext>, cs: &[C<'_>]) -> Option<Violation> {
    let pod = psc
        .and_then(|s| s.windows_options.as_ref())
        .and_then(|w| w.host_process)
        == Some(true);
    let names: Vec<&str> = cs
        .iter()
        .filter(|c| {
            c.sc.and_then(|s| s.windows_options.as_ref())
                .and_then(|w| w.host_process)
                == Some(true)
        })
        .map(|c| c.name)
        .collect();
    (pod || !names.is_empty()).then(|| Violation {
        reason: "hostProcess".into(),
        detail: format!(
            "{} must not set securityContext.windowsOptions.hostProcess=true",
            setters(pod, &names, None)
        ),
    })
}

fn check_privilege_escalation(cs: &[C<'_>]) -> Option<Violation> {
    let names: Vec<&str> = cs
        .iter()
        .filter(|c| c.sc.and_then(|s| s.allow_privilege_escalation) != Some(false))
        .map(|c| c.name)
        .collect();
    (!names.is_empty()).then(|| Violation {
        reason: "allowPrivilegeEscalation != false".into(),
        detail: format!(
            "{} must set securityContext.allowPrivilegeEscalation=false",
            containers_phrase(&names)
        ),
    })
}

fn volume_type(v: &k8s_openapi::api::core::v1::Volume) -> Option<&'static str> {
    let allowed = v.config_map.is_some()
        || v.csi.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
        || v.ephemeral.is_some()
        || v.image.is_some()
        || v.persistent_volume_claim.is_some()
        || v.projected.is_some()
        || v.secret.is_some();
    if allowed {
        return None;
    }
    let kinds = [
        (v.host_path.is_some(), "hostPath"),
        (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
        (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
        (v.git_repo.is_some(), "gitRepo"),
        (v.nfs.is_some(), "nfs"),
        (v.iscsi.is_some(), "iscsi"),
        (v.glusterfs.is_some(), "glusterfs"),
        (v.rbd.is_some(), "rbd"),
        (v.flex_volume.is_some(), "flexVolume"),
        (v.cinder.is_some(), "cinder"),
        (v.cephfs.is_some(), "cephfs"),
        (v.flocker.is_some(), "flocker"),
        (v.fc.is_some(), "fc"),
        (v.azure_file.is_some(), "azureFile"),
        (v.vsphere_volume.is_some(), "vsphereVolume"),
        (v.quobyte.is_some(), "quobyte"),
        (v.azure_disk.is_some(), "azureDisk"),
        (v.photon_persistent_disk.is_some(), "photonPersistentDisk"),
        (v.portworx_volume.is_some(), "portworxVolume"),
        (v.scale_io.is_some(), "scaleIO"),
        (v.storageos.is_some(), "storageos"),
    ];
    Some(
        kinds
            .iter()
            .find(|(set, _)| *set)
            .map_or("unknown", |(_, name)| name),
    )
}

fn check_volumes(spec: &PodSpec) -> Option<Violation> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(t) = volume_type(v) {
            names.push(v.name.as_str());
            types.push(t.to_string());
        }
    }
    let types = sorted_set(types);
    (!names.is_empty()).then(|| Violation {
        reason: "restricted volume types".into(),
        detail: format!(
            "{} {} {} {} {}",
            plural("volume", "volumes", names.len()),
            quote_all(&names),
            plural("uses", "use", names.len()),
            plural(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            quote_all(&types)
        ),
    })
}

fn check_run_as_non_root(psc: Option<&PodSecurityContext>, cs: &[C<'_>]) -> Option<Violation> {
    let pod = psc.and_then(|s| s.run_as_non_root);
    let pod_bad = pod == Some(false);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in cs {
        match c.sc.and_then(|s| s.run_as_non_root) {
            Some(false) => explicit.push(c.name),
            Some(true) => {}
            None if pod != Some(true) => implicit.push(c.name),
            None => {}
        }
    }
    if pod_bad || !explicit.is_empty() {
        return Some(Violation {
            reason: "runAsNonRoot != true".into(),
            detail: format!(
                "{} must not set securityContext.runAsNonRoot=false",
                setters(pod_bad, &explicit, None)
            ),
        });
    }
    (!implicit.is_empty()).then(|| Violation {
        reason: "runAsNonRoot != true".into(),
        detail: format!(
            "pod or {} must set securityContext.runAsNonRoot=true",
            containers_phrase(&implicit)
        ),
    })
}

fn check_run_as_user(psc: Option<&PodSecurityContext>, cs: &[C<'_>]) -> Option<Violation> {
    let pod = psc.and_then(|s| s.run_as_user) == Some(0);
    let names: Vec<&str> = cs
        .iter()
        .filter(|c| c.sc.and_then(|s| s.run_as_user) == Some(0))
        .map(|c| c.name)
        .collect();
    (pod || !names.is_empty()).then(|| Violation {
        reason: "runAsUser=0".into(),
        detail: format!("{} must not set runAsUser=0", setters(pod, &names, None)),
    })
}

fn check_seccomp_restricted(psc: Option<&PodSecurityContext>, cs: &[C<'_>]) -> Option<Violation> {
    let pod = psc.and_then(|s| s.seccomp_profile.as_ref());
    let pod_valid = pod.is_some_and(|p| seccomp_ok(&p.type_));
    let mut types = Vec::new();
    let pod_bad = match pod {
        Some(p) if !seccomp_ok(&p.type_) => {
            types.push(p.type_.clone());
            true
        }
        _ => false,
    };
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in cs {
        match c.sc.and_then(|s| s.seccomp_profile.as_ref()) {
            Some(p) if !seccomp_ok(&p.type_) => {
                types.push(p.type_.clone());
                explicit.push(c.name);
            }
            Some(_) => {}
            None if !pod_valid => implicit.push(c.name),
            None => {}
        }
    }
    if pod_bad || !explicit.is_empty() {
        return Some(Violation {
            reason: "seccompProfile".into(),
            detail: format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                setters(pod_bad, &explicit, None),
                quote_all(&sorted_set(types))
            ),
        });
    }
    (!implicit.is_empty()).then(|| Violation {
        reason: "seccompProfile".into(),
        detail: format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&implicit)
        ),
    })
}

/// Check a pod (its template's metadata annotations and spec) against one level and version.
pub fn check(
    lv: LevelVersion,
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
) -> Vec<Violation> {
    if lv.level == Level::Privileged {
        return Vec::new();
    }
    let minor = lv.version.rules();
    let restricted = lv.level == Level::Restricted;
    let psc = spec.security_context.as_ref();
    let cs = containers(spec);
    let mut out: Vec<Option<Violation>> = vec![
        check_apparmor(annotations, psc, &cs),
        if restricted && minor >= 22 {
            None
        } else {
            check_capabilities_baseline(&cs)
        },
        check_host_namespaces(spec),
        if restricted {
            None
        } else {
            check_host_path(spec)
        },
        check_host_ports(&cs),
        check_privileged(&cs),
        check_proc_mount(&cs),
        check_selinux(psc, &cs, minor),
        if restricted && minor >= 19 {
            None
        } else {
            check_seccomp_baseline(annotations, psc, &cs, minor)
        },
        check_sysctls(psc, minor),
        check_host_process(psc, &cs),
    ];
    if restricted {
        // Kubernetes skips three of these for pods whose `os.name` is windows, relying on its
        // validation of Windows pods; berth runs every pod as a Linux container, so a pod's
        // word about its OS exempts it from nothing.
        out.extend([
            (minor >= 8)
                .then(|| check_privilege_escalation(&cs))
                .flatten(),
            (minor >= 22)
                .then(|| check_capabilities_restricted(&cs))
                .flatten(),
            check_volumes(spec),
            check_run_as_non_root(psc, &cs),
            (minor >= 23).then(|| check_run_as_user(psc, &cs)).flatten(),
            (minor >= 19)
                .then(|| check_seccomp_restricted(psc, &cs))
                .flatten(),
        ]);
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("a pod spec")
    }

    fn lv(level: Level) -> LevelVersion {
        LevelVersion {
            level,
            version: Version::Latest,
        }
    }

    #[test]
    fn a_plain_pod_violates_restricted_as_kubernetes_says() {
        let s = spec(json!({"containers": [{"name": "nginx", "image": "nginx"}]}));
        let v = check(lv(Level::Restricted), &BTreeMap::new(), &s);
        assert_eq!(
            message(lv(Level::Restricted), &v, false),
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert!(check(lv(Level::Baseline), &BTreeMap::new(), &s).is_empty());
    }

    #[test]
    fn a_compliant_pod_passes_restricted() {
        let s = spec(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "v", "emptyDir": {}}]}));
        assert_eq!(check(lv(Level::Restricted), &BTreeMap::new(), &s), vec![]);
    }

    #[test]
    fn baseline_words_each_violation() {
        let s = spec(json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}], "seccompProfile": {"type": "Unconfined"}},
            "initContainers": [{"name": "a", "image": "i", "securityContext": {"privileged": true}}],
            "containers": [
                {"name": "b", "image": "i", "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 443, "hostPort": 443}],
                 "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CHOWN", "SYS_ADMIN"]}, "procMount": "Unmasked"}},
                {"name": "c", "image": "i", "ports": [{"containerPort": 1, "hostPort": 10000}]}],
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}));
        let v = check(lv(Level::Baseline), &BTreeMap::new(), &s);
        let got: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "non-default capabilities (container \"b\" must not include \"NET_ADMIN\", \"SYS_ADMIN\" in securityContext.capabilities.add)",
                "host namespaces (hostNetwork=true, hostPID=true)",
                "hostPath volumes (volume \"root\")",
                "hostPort (containers \"b\", \"c\" use hostPorts 10000, 443, 80)",
                "privileged (container \"a\" must not set securityContext.privileged=true)",
                "procMount (container \"b\" must not set securityContext.procMount to \"Unmasked\")",
                "seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\")",
                "forbidden sysctls (kernel.msgmax)",
            ]
        );
    }

    #[test]
    fn restricted_volumes_and_explicit_settings() {
        let s = spec(json!({
            "securityContext": {"runAsNonRoot": false, "runAsUser": 0},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "Unconfined"}}}],
            "volumes": [{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "nfs": {"server": "s", "path": "/"}}]}));
        let got: Vec<String> = check(lv(Level::Restricted), &BTreeMap::new(), &s)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "restricted volume types (volumes \"a\", \"b\" use restricted volume types \"hostPath\", \"nfs\")",
                "runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)",
                "runAsUser=0 (pod must not set runAsUser=0)",
                "seccompProfile (container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
            ]
        );
    }

    #[test]
    fn labels_read_with_kubernetes_defaults_and_fallbacks() {
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let (p, e) = policy(
            &labels(&[("enforce", "restricted")]),
            LevelVersion::PRIVILEGED,
        );
        assert!(e.is_empty());
        assert_eq!(p.enforce.level, Level::Restricted);
        // An unset warn follows a stricter enforce.
        assert_eq!(p.warn.level, Level::Restricted);
        assert_eq!(p.audit.level, Level::Privileged);
        let (p, e) = policy(
            &labels(&[
                ("enforce", "strict"),
                ("warn", "x"),
                ("audit-version", "v1.01"),
            ]),
            LevelVersion::PRIVILEGED,
        );
        assert_eq!(p.enforce.level, Level::Restricted);
        assert_eq!(p.warn.level, Level::Privileged);
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0].detail,
            "must be one of privileged, baseline, restricted"
        );
        assert_eq!(Version::parse("v1.29"), Some(Version::Minor(29)));
        assert_eq!(Version::parse("1.29"), None);
        let default = LevelVersion {
            level: Level::Baseline,
            version: Version::Latest,
        };
        let (p, _) = policy(&BTreeMap::new(), default);
        assert_eq!(p.enforce, default);
    }

    #[test]
    fn a_pod_saying_it_is_windows_is_judged_all_the_same() {
        let s = spec(json!({
            "os": {"name": "windows"},
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "capabilities": {"add": ["SYS_ADMIN"]}, "seccompProfile": {"type": "Unconfined"}}}]}));
        let reasons: Vec<String> = check(lv(Level::Restricted), &BTreeMap::new(), &s)
            .into_iter()
            .map(|v| v.reason)
            .collect();
        assert_eq!(
            reasons,
            [
                "allowPrivilegeEscalation != false",
                "unrestricted capabilities",
                "seccompProfile"
            ]
        );
    }

    #[test]
    fn go_quoting_escapes_as_go_does() {
        assert_eq!(go_quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
