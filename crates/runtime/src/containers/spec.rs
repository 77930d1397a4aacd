//! From what a container should be to its OCI runtime configuration (`config.json`). Pure:
//! plain data in, a validated `oci_spec::runtime::Spec` out.

use std::path::PathBuf;

use oci_spec::runtime::Spec;

use super::seccomp::{self, Seccomp};
use serde_json::{Value, json};

/// Capabilities a container gets unless it asks otherwise (Docker's and containerd's set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged containers.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A mount into the container.
#[derive(Clone, Debug, PartialEq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
    /// `tmpfs` mounts a fresh tmpfs (source ignored); anything else is a bind mount.
    pub tmpfs: bool,
}

/// A device node made in the container's `/dev`, with access allowed in its cgroup.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSpec {
    pub path: String,
    /// `c` (character) or `b` (block).
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// cgroup limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// `cpu.shares` (from the CPU request).
    pub cpu_shares: Option<u64>,
    /// CFS quota per 100ms period, microseconds (from the CPU limit).
    pub cpu_quota: Option<i64>,
    /// Bytes (from the memory limit).
    pub memory_limit: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Security {
    /// Every device allowed, `/sys` writable, no masked paths. The capabilities and devices
    /// a privileged container gets are the host's, given in `capabilities` and `devices`.
    pub privileged: bool,
    /// The full capability set (after adds and drops).
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    pub readonly_rootfs: bool,
    pub seccomp: Seccomp,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            privileged: false,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            no_new_privileges: false,
            readonly_rootfs: false,
            seccomp: Seccomp::RuntimeDefault,
        }
    }
}

/// Namespaces a container joins (paths of bind-mounted namespace files); `None` means the host's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedNamespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pid namespace shared by the pod's containers (`shareProcessNamespace`).
    pub pid: Option<PathBuf>,
    /// Use the host's pid namespace.
    pub host_pid: bool,
}

/// Everything needed to run one container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// Unique on the node; also the OCI runtime's container ID.
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub extra_gids: Vec<u32>,
    pub tty: bool,
    /// Keep stdin open for attached clients (`stdin: true`).
    pub stdin: bool,
    /// Close stdin after the first attach session (`stdinOnce: true`).
    pub stdin_once: bool,
    pub mounts: Vec<MountSpec>,
    /// Device nodes beyond the usual few (a privileged container gets the host's).
    pub devices: Vec<DeviceSpec>,
    pub resources: Resources,
    pub security: Security,
    /// The pod's namespaces; its hostname was set when its UTS namespace was made.
    pub namespaces: SharedNamespaces,
    /// cgroup path relative to each controller's root.
    pub cgroup: String,
    /// The highest open-files limit the node can grant.
    pub max_open_files: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid runtime configuration: {0}")]
pub struct SpecError(String);

/// The OCI runtime configuration of `c`, with its root filesystem at `rootfs` (relative to the
/// bundle).
pub fn runtime_spec(c: &ContainerSpec, rootfs: &str) -> Result<Spec, SpecError> {
    let caps = c.security.capabilities.clone();
    let mut namespaces = vec![json!({"type": "mount"})];
    let mut join = |ty: &str, path: &Option<PathBuf>, own: bool| match path {
        Some(p) => namespaces.push(json!({"type": ty, "path": p})),
        None if own => namespaces.push(json!({"type": ty})),
        None => {}
    };
    join("network", &c.namespaces.net, false);
    join("ipc", &c.namespaces.ipc, false);
    join("uts", &c.namespaces.uts, false);
    join("pid", &c.namespaces.pid, !c.namespaces.host_pid);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if c.security.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if c.security.privileged { "rw" } else { "ro" }]}),
    ];
    for m in &c.mounts {
        if m.tmpfs {
            let mut opts = vec!["nosuid", "nodev", "mode=1777"];
            if m.readonly {
                opts.push("ro");
            }
            mounts.push(json!({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": opts}));
        } else {
            let mut opts = vec!["rbind", "rprivate"];
            opts.push(if m.readonly { "ro" } else { "rw" });
            mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": opts}));
        }
    }
    let mut resources = json!({"devices": [{"allow": c.security.privileged, "access": "rwm"}]});
    if !c.security.privileged {
        // The usual character devices a container may use.
        let allowed: Vec<Value> = [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, -1),
        ]
        .iter()
        .map(|(maj, min)| {
            let mut d = json!({"allow": true, "type": "c", "major": maj, "access": "rwm"});
            if *min >= 0 {
                d["minor"] = json!(min);
            }
            d
        })
        .collect();
        resources["devices"]
            .as_array_mut()
            .expect("array")
            .extend(allowed);
    }
    if let Some(s) = c.resources.cpu_shares {
        resources["cpu"]["shares"] = json!(s);
    }
    if let Some(q) = c.resources.cpu_quota {
        resources["cpu"]["quota"] = json!(q);
        resources["cpu"]["period"] = json!(100_000u64);
    }
    if let Some(m) = c.resources.memory_limit {
        resources["memory"]["limit"] = json!(m);
        // No swap beyond the limit.
        resources["memory"]["swap"] = json!(m);
    }
    let devices: Vec<Value> = c
        .devices
        .iter()
        .map(|d| {
            json!({"path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
                   "fileMode": d.mode, "uid": d.uid, "gid": d.gid})
        })
        .collect();
    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": c.cgroup,
    });
    if !devices.is_empty() {
        linux["devices"] = json!(devices);
    }
    if !c.security.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    match &c.security.seccomp {
        Seccomp::Unconfined => {}
        Seccomp::RuntimeDefault => {
            linux["seccomp"] = seccomp::runtime_default(&caps, std::env::consts::ARCH);
        }
        Seccomp::Localhost(profile) => linux["seccomp"] = profile.clone(),
    }
    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": c.uid, "gid": c.gid, "additionalGids": c.extra_gids},
        "args": c.args,
        "env": c.env,
        "cwd": if c.cwd.is_empty() { "/" } else { &c.cwd },
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        // Clamped to what this node may grant: without CAP_SYS_RESOURCE a runtime cannot
        // raise a hard limit.
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": c.max_open_files, "soft": c.max_open_files}],
    });
    // Only when set: libcontainer reads a present `false` as set, and would then load the
    // seccomp filter after dropping the capabilities loading it needs.
    if c.security.no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    if c.uid != 0 {
        // A non-root user keeps only what it was explicitly given.
        process["capabilities"]["effective"] = json!([]);
        process["capabilities"]["permitted"] = json!([]);
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": c.security.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    });
    serde_json::from_value(spec).map_err(|e| SpecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            extra_gids: vec![],
            tty: false,
            stdin: false,
            stdin_once: false,
            mounts: vec![MountSpec {
                source: "/data/v".into(),
                destination: "/v".into(),
                readonly: true,
                tmpfs: false,
            }],
            devices: vec![],
            resources: Resources {
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                memory_limit: Some(64 << 20),
            },
            security: Security::default(),
            namespaces: SharedNamespaces {
                net: Some("/run/berth/ns/p/net".into()),
                ..Default::default()
            },
            cgroup: "/berth/podx/c1".into(),
            max_open_files: 20_000,
        }
    }

    #[test]
    fn spec_carries_limits_namespaces_and_mounts() {
        let spec = serde_json::to_value(runtime_spec(&base(), "rootfs").unwrap()).unwrap();
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/run/berth/ns/p/net"})));
        assert!(
            ns.contains(&json!({"type": "pid"})),
            "own pid namespace by default"
        );
        assert!(
            !ns.iter().any(|n| n["type"] == "ipc"),
            "no ipc path: the host's"
        );
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 512);
        assert_eq!(spec["process"]["rlimits"][0]["hard"], 20_000);
        assert_eq!(spec["process"]["cwd"], "/");
        let v = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/v")
            .unwrap()
            .clone();
        assert!(v["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(
            spec["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
    }

    #[test]
    fn privileged_and_non_root() {
        let mut c = base();
        c.security.privileged = true;
        c.security.capabilities = vec!["CAP_SYS_ADMIN".into()];
        c.devices = vec![DeviceSpec {
            path: "/dev/loop0".into(),
            kind: 'b',
            major: 7,
            minor: 0,
            mode: 0o660,
            uid: 0,
            gid: 6,
        }];
        let spec = serde_json::to_value(runtime_spec(&c, "rootfs").unwrap()).unwrap();
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            json!(["CAP_SYS_ADMIN"])
        );
        assert!(spec["linux"].get("maskedPaths").is_none());
        assert_eq!(spec["linux"]["devices"][0]["path"], "/dev/loop0");
        assert_eq!(spec["linux"]["devices"][0]["type"], "b");
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], true);
        let sys = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
        let mut c = base();
        c.uid = 1000;
        let spec = serde_json::to_value(runtime_spec(&c, "rootfs").unwrap()).unwrap();
        assert_eq!(spec["process"]["capabilities"]["effective"], json!([]));
    }
}
