//! From a pod's container and its image to what the runtime runs. Pure: the ConfigMaps,
//! Secrets and volume paths it needs are looked up by the caller and handed in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use api::k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use api::quantity::Quantity;
use runtime::containers::{
    ContainerSpec, MountSpec, Resources, Seccomp, Security, SharedNamespaces,
};
use runtime::images::RunConfig;

/// Why a container cannot be configured; reported as `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Data the container's environment may reference, fetched by the caller.
#[derive(Default)]
pub struct Refs {
    /// ConfigMap name -> data (`None` if it does not exist).
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Secret name -> decoded data.
    pub secrets: HashMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

/// Node and pod facts the container spec depends on.
pub struct Ctx<'a> {
    pub id: String,
    pub node_name: &'a str,
    pub host_ip: &'a str,
    /// The pod's addresses, the primary family's first (empty before the network is up).
    pub pod_ips: &'a [String],
    pub namespaces: SharedNamespaces,
    pub cgroup: String,
    /// Volume name -> host directory holding it.
    pub volumes: &'a HashMap<String, PathBuf>,
    /// Files every container gets (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`).
    pub pod_files: Vec<(PathBuf, &'static str)>,
    /// `/etc/passwd` and `/etc/group` of the image, to resolve user names.
    pub passwd: &'a str,
    pub group: &'a str,
    pub max_open_files: u64,
    /// What a privileged container gets: the host's capabilities and device nodes.
    pub host_capabilities: &'a [String],
    pub host_devices: Vec<runtime::containers::DeviceSpec>,
    /// Service environment variables (`<NAME>_SERVICE_HOST`, ...): under everything else.
    pub service_env: &'a [(String, String)],
    /// Where `Localhost` seccomp profiles are.
    pub seccomp_dir: &'a Path,
}

/// A volume's sub-directory for a `subPath` mount, made if missing (as the kubelet does),
/// resolved one element at a time so that no symlink in the volume leads out of it (nothing is
/// made outside it either); returns the resolved path, which is what gets mounted.
fn sub_path(base: &Path, sub: &str) -> Result<PathBuf, ConfigError> {
    use std::path::Component;
    let fail = |why: String| ConfigError(format!("subPath {sub:?}: {why}"));
    let root = base
        .canonicalize()
        .map_err(|e| fail(format!("resolving its volume: {e}")))?;
    let mut at = root.clone();
    for part in Path::new(sub).components() {
        let part = match part {
            Component::Normal(p) => p,
            Component::CurDir => continue,
            _ => return Err(fail("must be relative and without '..'".into())),
        };
        let next = at.join(part);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                let real = next
                    .canonicalize()
                    .map_err(|e| fail(format!("resolving {}: {e}", next.display())))?;
                if !real.starts_with(&root) {
                    return Err(fail("leads outside its volume".into()));
                }
                at = real;
            }
            Ok(_) => at = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&next)
                    .map_err(|e| fail(format!("creating {}: {e}", next.display())))?;
                at = next;
            }
            Err(e) => return Err(fail(format!("reading {}: {e}", next.display()))),
        }
    }
    Ok(at)
}

/// The ConfigMaps and Secrets a container's environment names.
pub fn referenced(c: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for e in c.env.iter().flatten() {
        if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &f.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Expand `$(VAR)` references from `vars`; `$$` escapes; unknown references stay as written.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_value(pod: &Pod, ctx: &Ctx<'_>, path: &str) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = map_key("metadata.labels", m.labels.as_ref())
        .or_else(|| map_key("metadata.annotations", m.annotations.as_ref()))
    {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => ctx.node_name.to_string(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_string(),
        "status.podIP" => ctx.pod_ips.first().cloned().unwrap_or_default(),
        // As the kubelet gives it: every address, comma-separated.
        "status.podIPs" => ctx.pod_ips.join(","),
        other => return Err(ConfigError(format!("unsupported fieldRef {other:?}"))),
    })
}

fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, ConfigError> {
    let r = c.resources.as_ref();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", n)) => (r.and_then(|r| r.limits.as_ref()), n),
        Some(("requests", n)) => (r.and_then(|r| r.requests.as_ref()), n),
        _ => {
            return Err(ConfigError(format!(
                "unsupported resourceFieldRef {resource:?}"
            )));
        }
    };
    let q = map
        .and_then(|m| m.get(name))
        .and_then(|q| Quantity::parse(&q.0).ok())
        .unwrap_or(Quantity::ZERO);
    let div = divisor
        .and_then(|d| Quantity::parse(d).ok())
        .filter(|d| *d != Quantity::ZERO)
        .unwrap_or(Quantity::from_units(1));
    // Rounded up, as the downward API does.
    let v = (q.nanos() + div.nanos() - 1) / div.nanos();
    Ok(v.to_string())
}

/// The container's environment, in order: the Services', the image's, then `envFrom`, then
/// `env` (each overriding what came before; `$(VAR)` in `env` sees them all).
pub fn environment(
    pod: &Pod,
    c: &Container,
    image: &RunConfig,
    refs: &Refs,
    ctx: &Ctx<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in ctx.service_env {
        set(&mut vars, k.clone(), v.clone());
    }
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut vars, k.to_string(), v.to_string());
    }
    for f in c.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        if let Some(r) = &f.config_map_ref {
            match refs.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &f.secret_ref {
            match refs.secrets.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.iter().flatten()
    {
        let v = match (value, value_from) {
            (_, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_value(pod, ctx, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))?
                } else if let Some(r) = &from.config_map_key_ref {
                    let data = refs.config_maps.get(&r.name).cloned().flatten();
                    match data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None if data.is_none() => {
                            return Err(ConfigError(format!("configmap \"{}\" not found", r.name)));
                        }
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {}",
                                r.key, r.name
                            )));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let data = refs.secrets.get(&r.name).cloned().flatten();
                    match data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None if data.is_none() => {
                            return Err(ConfigError(format!("secret \"{}\" not found", r.name)));
                        }
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {}",
                                r.key, r.name
                            )));
                        }
                    }
                } else {
                    String::new()
                }
            }
            (Some(v), None) => expand(v, &vars),
            (None, None) => String::new(),
        };
        set(&mut vars, name.clone(), v);
    }
    Ok(order
        .into_iter()
        .map(|k| format!("{k}={}", vars[&k]))
        .collect())
}

/// What runs: Kubernetes' rules for `command`, `args` and the image's entrypoint and cmd.
pub fn argv(c: &Container, image: &RunConfig, env: &[String]) -> Vec<String> {
    let vars: BTreeMap<String, String> = env
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let x = |v: &Vec<String>| v.iter().map(|s| expand(s, &vars)).collect::<Vec<_>>();
    match (&c.command, &c.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            [x(cmd), x(args.as_ref().unwrap_or(&Vec::new()))].concat()
        }
        (_, Some(args)) if !args.is_empty() => [image.entrypoint.clone(), x(args)].concat(),
        _ => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

fn lookup(table: &str, name: &str, field: usize) -> Option<u32> {
    table.lines().find_map(|l| {
        let parts: Vec<&str> = l.split(':').collect();
        (parts.first() == Some(&name))
            .then(|| parts.get(field)?.parse().ok())
            .flatten()
    })
}

/// The uid and gid a container runs as.
pub fn user(
    pod: &Pod,
    c: &Container,
    image: &RunConfig,
    ctx: &Ctx<'_>,
) -> Result<(u32, u32), ConfigError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        == Some(true);
    let (image_user, image_group) = image.user.split_once(':').unwrap_or((&image.user, ""));
    let image_uid = if image_user.is_empty() {
        Some(0)
    } else if let Ok(n) = image_user.parse() {
        Some(n)
    } else {
        lookup(ctx.passwd, image_user, 2)
    };
    let uid = match run_as_user {
        Some(u) => u as u32,
        None => image_uid.ok_or_else(|| {
            ConfigError(format!(
                "unable to find user {image_user}: no matching entries in passwd file"
            ))
        })?,
    };
    if non_root && uid == 0 {
        return Err(ConfigError(if run_as_user.is_some() {
            "container's runAsUser breaks non-root policy".into()
        } else {
            "container has runAsNonRoot and image will run as root".into()
        }));
    }
    if non_root
        && run_as_user.is_none()
        && !image_user.is_empty()
        && image_user.parse::<u32>().is_err()
    {
        return Err(ConfigError(format!(
            "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root"
        )));
    }
    let gid = match run_as_group {
        Some(g) => g as u32,
        None if !image_group.is_empty() => image_group
            .parse()
            .ok()
            .or_else(|| lookup(ctx.group, image_group, 2))
            .ok_or_else(|| ConfigError(format!("unable to find group {image_group}")))?,
        None if run_as_user.is_none() && !image_user.is_empty() => {
            lookup(ctx.passwd, image_user, 3).unwrap_or(0)
        }
        None => 0,
    };
    Ok((uid, gid))
}

fn capabilities(c: &Container, host: &[String]) -> Vec<String> {
    let mut caps: Vec<String> = runtime::containers::spec::DEFAULT_CAPABILITIES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Some(cc) = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
    else {
        return caps;
    };
    let norm = |s: &String| {
        let up = s.to_uppercase();
        if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    let drops: Vec<String> = cc.drop.iter().flatten().map(norm).collect();
    if drops.iter().any(|d| d == "CAP_ALL") {
        caps.clear();
    } else {
        caps.retain(|c| !drops.contains(c));
    }
    for add in cc.add.iter().flatten().map(norm) {
        if add == "CAP_ALL" {
            // Every capability the host can grant (asking for more fails to start).
            caps = host.to_vec();
        } else if !caps.contains(&add) {
            caps.push(add);
        }
    }
    caps
}

/// cgroup limits from requests and limits.
pub fn resources(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let get = |m: Option<
        &BTreeMap<String, api::k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               k: &str| {
        m.and_then(|m| m.get(k))
            .and_then(|q| Quantity::parse(&q.0).ok())
    };
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    Resources {
        // 1024 shares per CPU requested, at least 2 (the kernel's minimum).
        cpu_shares: Some(
            get(requests, "cpu").map_or(2, |q| ((q.milli().max(0) as u64) * 1024 / 1000).max(2)),
        ),
        cpu_quota: get(limits, "cpu").map(|q| (q.milli() * 100).max(1000)),
        memory_limit: get(limits, "memory").map(|q| q.value()),
    }
}

/// The container's seccomp filter: its own `seccompProfile`, else the pod's, else
/// `RuntimeDefault` (berth applies the runtime's default as the kubelet's `--seccomp-default`
/// does); a privileged container that names none runs unconfined.
fn seccomp(pod: &Pod, c: &Container, privileged: bool, dir: &Path) -> Result<Seccomp, ConfigError> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let profile = c
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(pod_sc.and_then(|s| s.seccomp_profile.as_ref()));
    let Some(p) = profile else {
        return Ok(if privileged {
            Seccomp::Unconfined
        } else {
            Seccomp::RuntimeDefault
        });
    };
    match p.type_.as_str() {
        "Unconfined" => Ok(Seccomp::Unconfined),
        "Localhost" => {
            let name = p.localhost_profile.as_deref().unwrap_or("");
            let rel = Path::new(name);
            if name.is_empty()
                || rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(ConfigError(format!(
                    "seccomp profile {name:?} must be a path inside the node's seccomp directory"
                )));
            }
            runtime::containers::seccomp::localhost(&dir.join(rel))
                .map(Seccomp::Localhost)
                .map_err(|e| ConfigError(e.to_string()))
        }
        _ => Ok(Seccomp::RuntimeDefault),
    }
}

/// The runtime spec of container `c` of `pod`.
pub fn container_spec(
    pod: &Pod,
    c: &Container,
    image: &RunConfig,
    refs: &Refs,
    ctx: &Ctx<'_>,
) -> Result<ContainerSpec, ConfigError> {
    let env = environment(pod, c, image, refs, ctx)?;
    let args = argv(c, image, &env);
    if args.is_empty() {
        return Err(ConfigError("no command specified".into()));
    }
    let (uid, gid) = user(pod, c, image, ctx)?;
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let extra_gids = pod_sc
        .map(|s| {
            s.supplemental_groups
                .iter()
                .flatten()
                .chain(s.fs_group.iter())
                .map(|g| *g as u32)
                .collect()
        })
        .unwrap_or_default();
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    let security = Security {
        privileged,
        capabilities: if privileged {
            ctx.host_capabilities.to_vec()
        } else {
            capabilities(c, ctx.host_capabilities)
        },
        no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        readonly_rootfs: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        seccomp: seccomp(pod, c, privileged, ctx.seccomp_dir)?,
    };
    let mut mounts: Vec<MountSpec> = ctx
        .pod_files
        .iter()
        .map(|(src, dest)| MountSpec {
            source: src.clone(),
            destination: dest.to_string(),
            readonly: false,
            tmpfs: false,
        })
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        let base = ctx
            .volumes
            .get(&m.name)
            .ok_or_else(|| ConfigError(format!("volume {:?} is not ready", m.name)))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => sub_path(base, sub)?,
            None => base.clone(),
        };
        // A claim mounted read-only is read-only in every container.
        let claim_read_only = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .find(|v| v.name == m.name)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .is_some_and(|c| c.read_only == Some(true));
        mounts.push(MountSpec {
            source,
            destination: m.mount_path.clone(),
            readonly: m.read_only == Some(true) || claim_read_only,
            tmpfs: false,
        });
    }
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    Ok(ContainerSpec {
        id: ctx.id.clone(),
        args,
        env,
        cwd,
        uid,
        gid,
        extra_gids,
        tty: c.tty == Some(true),
        stdin: c.stdin == Some(true),
        stdin_once: c.stdin_once == Some(true),
        mounts,
        devices: if privileged {
            ctx.host_devices.clone()
        } else {
            Vec::new()
        },
        resources: resources(c),
        security,
        namespaces: ctx.namespaces.clone(),
        cgroup: ctx.cgroup.clone(),
        max_open_files: ctx.max_open_files,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": containers}})).unwrap()
    }

    fn ctx(volumes: &HashMap<String, PathBuf>) -> Ctx<'_> {
        Ctx {
            id: "u1_app_0".into(),
            node_name: "node-1",
            host_ip: "10.0.0.1",
            pod_ips: Box::leak(Box::new(["10.244.0.5".to_string()])),
            namespaces: SharedNamespaces::default(),
            cgroup: "/berth/podu1/u1_app_0".into(),
            volumes,
            pod_files: vec![],
            passwd: "root:x:0:0::/root:/bin/sh\napp:x:1000:2000::/home/app:/bin/sh\n",
            group: "root:x:0:\nstaff:x:50:\n",
            max_open_files: 1024,
            host_capabilities: &[],
            host_devices: vec![],
            service_env: &[],
            seccomp_dir: Path::new("/nonexistent"),
        }
    }

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            working_dir: "/srv".into(),
            user: String::new(),
        }
    }

    #[test]
    fn command_rules() {
        let img = image();
        let c = |v: serde_json::Value| -> Container { serde_json::from_value(v).unwrap() };
        assert_eq!(
            argv(&c(json!({"name": "a"})), &img, &[]),
            ["/entry", "serve"]
        );
        assert_eq!(
            argv(&c(json!({"name": "a", "args": ["x"]})), &img, &[]),
            ["/entry", "x"]
        );
        assert_eq!(
            argv(&c(json!({"name": "a", "command": ["sh"]})), &img, &[]),
            ["sh"]
        );
        assert_eq!(
            argv(
                &c(json!({"name": "a", "command": ["echo"], "args": ["$(WHO)", "$$(WHO)"]})),
                &img,
                &["WHO=me".into()]
            ),
            ["echo", "me", "$(WHO)"]
        );
    }

    #[test]
    fn environment_sources() {
        let p = pod(json!([{"name": "app", "image": "x",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [{"name": "MODE", "value": "pod"}, {"name": "GREETING", "value": "hi $(MODE)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "p"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}],
            "resources": {"limits": {"memory": "64Mi"}}}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut refs = Refs::default();
        refs.config_maps.insert(
            "cfg".into(),
            Some(BTreeMap::from([("level".into(), "3".into())])),
        );
        refs.secrets.insert(
            "s".into(),
            Some(BTreeMap::from([("p".into(), b"pw".to_vec())])),
        );
        let vols = HashMap::new();
        // Service variables come first, and anything the pod or image sets wins.
        let services = [
            ("WEB_SERVICE_HOST".to_string(), "10.43.0.7".to_string()),
            ("MODE".to_string(), "service".to_string()),
        ];
        let with_services = Ctx {
            service_env: &services,
            ..ctx(&vols)
        };
        let env = environment(&p, c, &image(), &refs, &with_services).unwrap();
        assert_eq!(
            env,
            [
                "WEB_SERVICE_HOST=10.43.0.7",
                "MODE=pod",
                "PATH=/bin",
                "CFG_level=3",
                "GREETING=hi pod",
                "POD=web",
                "APP=web",
                "PASS=pw",
                "MEM=64"
            ]
        );
        refs.secrets.insert("s".into(), None);
        assert_eq!(
            environment(&p, c, &image(), &refs, &ctx(&vols)).unwrap_err(),
            ConfigError("secret \"s\" not found".into())
        );
    }

    #[test]
    fn users_and_non_root() {
        let vols = HashMap::new();
        let mut img = image();
        let p = pod(json!([{"name": "app", "image": "x"}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(user(&p, c, &img, &ctx(&vols)).unwrap(), (0, 0));
        img.user = "app".into();
        assert_eq!(user(&p, c, &img, &ctx(&vols)).unwrap(), (1000, 2000));
        img.user = "app:staff".into();
        assert_eq!(user(&p, c, &img, &ctx(&vols)).unwrap(), (1000, 50));
        let strict =
            pod(json!([{"name": "app", "image": "x", "securityContext": {"runAsNonRoot": true}}]));
        let sc = &strict.spec.as_ref().unwrap().containers[0];
        assert!(
            user(&strict, sc, &image(), &ctx(&vols))
                .unwrap_err()
                .0
                .contains("will run as root")
        );
        let set = pod(
            json!([{"name": "app", "image": "x", "securityContext": {"runAsNonRoot": true, "runAsUser": 42}}]),
        );
        let sc = &set.spec.as_ref().unwrap().containers[0];
        assert_eq!(user(&set, sc, &image(), &ctx(&vols)).unwrap(), (42, 0));
    }

    #[test]
    fn limits_capabilities_and_mounts() {
        let p = pod(json!([{"name": "app", "image": "x",
            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
            "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
            "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "sub", "readOnly": true}]}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        // A subPath is resolved in the volume's real directory (and made there).
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().canonicalize().unwrap().join("data");
        std::fs::create_dir(&data).unwrap();
        let vols = HashMap::from([("data".to_string(), data.clone())]);
        let spec = container_spec(&p, c, &image(), &Refs::default(), &ctx(&vols)).unwrap();
        assert_eq!(
            spec.resources,
            Resources {
                cpu_shares: Some(256),
                cpu_quota: Some(50_000),
                memory_limit: Some(128 << 20)
            }
        );
        assert_eq!(spec.security.capabilities, ["CAP_NET_ADMIN"]);
        assert!(spec.security.no_new_privileges && spec.security.readonly_rootfs);
        assert_eq!(spec.mounts[0].source, data.join("sub"));
        assert!(data.join("sub").is_dir());
        assert!(spec.mounts[0].readonly);
        assert_eq!(spec.cwd, "/srv");
        assert_eq!(spec.args, ["/entry", "serve"]);
    }

    #[test]
    fn expansion_edge_cases() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$-$", &vars), "1-$(B)-$-$");
        assert_eq!(expand("$(A", &vars), "$(A");
    }
}

#[cfg(test)]
mod sub_path_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sub_path_is_made_inside_its_volume_and_never_outside() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(vol.join("data")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join("escape")).unwrap();
        std::os::unix::fs::symlink(vol.join("data"), vol.join("inside")).unwrap();
        let real = vol.canonicalize().unwrap();
        assert_eq!(sub_path(&vol, "a/b").unwrap(), real.join("a/b"));
        assert!(vol.join("a/b").is_dir());
        assert_eq!(sub_path(&vol, "inside/x").unwrap(), real.join("data/x"));
        assert!(sub_path(&vol, "escape/new").is_err());
        assert!(
            !outside.join("new").exists(),
            "nothing is made outside the volume"
        );
        assert!(sub_path(&vol, "../x").is_err());
    }
}
