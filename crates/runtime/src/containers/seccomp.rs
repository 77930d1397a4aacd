//! seccomp for containers: `RuntimeDefault` is containerd's default profile (its facts kept in
//! `seccomp_default.profile`, in a notation of our own, and turned into the OCI `linux.seccomp`
//! for the container's architecture and capabilities, as containerd does), `Localhost` a JSON
//! profile file from the node, `Unconfined` none.

use std::path::PathBuf;

use serde_json::{Value, json};

const PROFILE: &str = include_str!("seccomp_default.profile");

/// Which filter a container runs under.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Seccomp {
    Unconfined,
    #[default]
    RuntimeDefault,
    /// A profile from the node (`localhost`), as OCI `linux.seccomp`.
    Localhost(Value),
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("reading the seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the seccomp profile {path} is not a JSON profile: {why}")]
    Parse { path: PathBuf, why: String },
}

/// The OCI architecture names for the native one (`std::env::consts::ARCH`) and its companions.
fn scmp_arch(a: &str) -> String {
    format!("SCMP_ARCH_{}", a.to_ascii_uppercase())
}

fn op(name: &str) -> &'static str {
    match name {
        "eq" => "SCMP_CMP_EQ",
        "ne" => "SCMP_CMP_NE",
        "lt" => "SCMP_CMP_LT",
        "le" => "SCMP_CMP_LE",
        "gt" => "SCMP_CMP_GT",
        "ge" => "SCMP_CMP_GE",
        _ => "SCMP_CMP_MASKED_EQ",
    }
}

fn number(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap_or(0),
        None => s.parse().unwrap_or(0),
    }
}

/// Whether a line's `cap=`/`nocap=`/`arch=` gates hold; returns the words after them.
fn gates<'a>(words: &'a [&'a str], caps: &[String], arch: &str) -> Option<&'a [&'a str]> {
    let mut rest = words;
    while let Some((w, tail)) = rest.split_first() {
        let ok = if let Some(c) = w.strip_prefix("cap=") {
            caps.iter().any(|x| x == c)
        } else if let Some(c) = w.strip_prefix("nocap=") {
            !caps.iter().any(|x| x == c)
        } else if let Some(a) = w.strip_prefix("arch=") {
            a == arch
        } else {
            return Some(rest);
        };
        if !ok {
            return None;
        }
        rest = tail;
    }
    Some(rest)
}

/// containerd's default profile for a container with `caps` in its bounding set, on `arch`
/// (`x86_64`, `aarch64`), as OCI `linux.seccomp`.
pub fn runtime_default(caps: &[String], arch: &str) -> Value {
    let mut allowed: Vec<String> = Vec::new();
    let mut rules: Vec<Value> = Vec::new();
    let mut architectures = vec![scmp_arch(arch)];
    let mut default_errno = 1;
    for line in PROFILE.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["default", "errno", n] => default_errno = number(n),
            ["arch", native, extra @ ..] if *native == arch => {
                architectures.extend(extra.iter().map(|a| scmp_arch(a)));
            }
            ["allow", names @ ..] => allowed.extend(names.iter().map(|n| n.to_string())),
            ["allow-if", rest @ ..] => {
                if let Some(names) = gates(rest, caps, arch) {
                    allowed.extend(names.iter().map(|n| n.to_string()));
                }
            }
            ["rule", rest @ ..] | ["rule-if", rest @ ..] => {
                let Some(rest) = gates(rest, caps, arch) else {
                    continue;
                };
                let Some((action, rest)) = rest.split_first() else {
                    continue;
                };
                let split = rest.iter().position(|w| *w == "args").unwrap_or(rest.len());
                let (names, args) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
                let mut rule = match action.strip_prefix("errno:") {
                    Some(n) => {
                        json!({"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": number(n)})
                    }
                    None => json!({"names": names, "action": "SCMP_ACT_ALLOW"}),
                };
                let conditions: Vec<Value> = args
                    .split(|w| *w == ";")
                    .filter(|c| !c.is_empty())
                    .map(|c| match c {
                        [i, "masked_eq", mask, value] => {
                            json!({"index": number(i), "op": op("masked_eq"),
                            "value": number(mask), "valueTwo": number(value)})
                        }
                        [i, o, value, ..] => {
                            json!({"index": number(i), "op": op(o), "value": number(value)})
                        }
                        _ => json!({}),
                    })
                    .collect();
                if !conditions.is_empty() {
                    rule["args"] = Value::Array(conditions);
                }
                rules.push(rule);
            }
            _ => {}
        }
    }
    // A name allowed by several groups is added once.
    let mut seen = std::collections::HashSet::new();
    allowed.retain(|n| seen.insert(n.clone()));
    let mut syscalls = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    syscalls.extend(rules);
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": default_errno,
        "architectures": architectures,
        "syscalls": syscalls,
    })
}

/// Read a Localhost profile: Docker's and the OCI runtime spec's JSON form (`defaultAction`,
/// `architectures`, `syscalls` with `names`, `action`, `args`).
pub fn localhost(path: &std::path::Path) -> Result<Value, SeccompError> {
    let text = std::fs::read(path).map_err(|source| SeccompError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut v: Value = serde_json::from_slice(&text).map_err(|e| SeccompError::Parse {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if !v["defaultAction"].is_string() {
        return Err(SeccompError::Parse {
            path: path.to_path_buf(),
            why: "it has no defaultAction".into(),
        });
    }
    // Docker's `archMap` form names arches with their subarches; the OCI form lists them.
    if v.get("architectures").is_none()
        && let Some(map) = v.get("archMap").and_then(Value::as_array).cloned()
    {
        let native = scmp_arch(std::env::consts::ARCH);
        if let Some(entry) = map.iter().find(|m| m["architecture"] == native.as_str()) {
            let mut arches = vec![Value::String(native)];
            arches.extend(
                entry["subArchitectures"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            v["architectures"] = Value::Array(arches);
        }
    }
    if let Some(obj) = v.as_object_mut() {
        obj.remove("archMap");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(profile: &Value) -> Vec<String> {
        profile["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn the_default_profile_follows_capabilities_and_arch() {
        let plain: Vec<String> = vec!["CAP_CHOWN".into()];
        let p = runtime_default(&plain, "x86_64");
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(
            p["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let allowed = names(&p);
        for n in ["read", "write", "execve", "openat", "arch_prctl"] {
            assert!(allowed.iter().any(|a| a == n), "{n} allowed");
        }
        for n in [
            "mount",
            "unshare",
            "reboot",
            "init_module",
            "kcmp",
            "bpf",
            "cacheflush",
        ] {
            assert!(!allowed.iter().any(|a| a == n), "{n} refused");
        }
        // Without CAP_SYS_ADMIN, clone may not make namespaces and clone3 says ENOSYS.
        let rules = p["syscalls"].as_array().unwrap();
        assert!(rules.iter().any(|r| r["names"] == json!(["clone"])
            && r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
            && r["args"][0]["value"] == 0x7E02_0000u64));
        assert!(rules.iter().any(|r| r["names"] == json!(["clone3"])
            && r["action"] == "SCMP_ACT_ERRNO"
            && r["errnoRet"] == 38));
        let admin: Vec<String> = vec!["CAP_SYS_ADMIN".into(), "CAP_SYSLOG".into()];
        let p = runtime_default(&admin, "aarch64");
        let allowed = names(&p);
        assert!(allowed.iter().any(|a| a == "mount"));
        assert!(allowed.iter().any(|a| a == "cacheflush"));
        assert_eq!(allowed.iter().filter(|a| *a == "syslog").count(), 1);
        assert!(
            !p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["names"] == json!(["clone3"]))
        );
    }
}
