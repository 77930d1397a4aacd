//! The roles and bindings every cluster starts with: Kubernetes' bootstrap policy (the same
//! names and rules, so `kubectl auth can-i --list` reads the same), kept in `bootstrap.policy`
//! in a compact notation of our own and turned into objects here.
//!
//! The notation, one object per block:
//! ```text
//! clusterrole NAME [LABEL=VALUE ...]          role NAMESPACE NAME [LABEL=VALUE ...]
//!   aggregate LABEL=VALUE ...                   (one cluster role selector per line)
//!   allow GROUPS RESOURCES VERBS [names=N,..]   (comma lists; `core` is the group "")
//!   url PATHS VERBS
//! clusterrolebinding NAME clusterrole ROLE    rolebinding NAMESPACE NAME role|clusterrole ROLE
//!   user NAME | group NAME | sa NAMESPACE/NAME
//! ```

use serde_json::{Map, Value, json};

/// Bootstrap objects carry this label (`rbac-defaults`).
pub const BOOTSTRAPPING_LABEL: &str = "kubernetes.io/bootstrapping";
/// Bootstrap objects with this annotation `"true"` get missing permissions and subjects back
/// at every start; set it to `"false"` to keep an edited object as it is.
pub const AUTOUPDATE_ANNOTATION: &str = "rbac.authorization.kubernetes.io/autoupdate";

const POLICY: &str = include_str!("bootstrap.policy");
/// berth's own additions (what its nodes do beyond a kubelet), in the same notation.
const BERTH_POLICY: &str = include_str!("berth.policy");
const GROUP: &str = "rbac.authorization.k8s.io";

/// Every bootstrap role and binding, Kubernetes' and berth's, as JSON objects ready to create.
pub fn bootstrap_objects() -> Vec<Value> {
    let mut objects =
        parse(POLICY).expect("the bootstrap policy is well formed (its unit test reads it)");
    objects.extend(parse(BERTH_POLICY).expect("berth's policy is well formed (its test reads it)"));
    objects
}

fn list(s: &str) -> Value {
    Value::Array(
        s.split(',')
            .map(|x| Value::String(if x == "core" { "" } else { x }.to_string()))
            .collect(),
    )
}

fn labels(words: &[&str]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    out.insert(BOOTSTRAPPING_LABEL.into(), "rbac-defaults".into());
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("label {w:?} is not KEY=VALUE"))?;
        out.insert(k.into(), v.into());
    }
    Ok(out)
}

fn object(kind: &str, namespace: Option<&str>, name: &str, labels: Map<String, Value>) -> Value {
    let mut meta = json!({
        "name": name,
        "labels": labels,
        "annotations": {AUTOUPDATE_ANNOTATION: "true"},
    });
    if let Some(ns) = namespace {
        meta["namespace"] = ns.into();
    }
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": kind, "metadata": meta})
}

fn role_ref(kind: &str, name: &str) -> Result<Value, String> {
    let kind = match kind {
        "role" => "Role",
        "clusterrole" => "ClusterRole",
        other => return Err(format!("unknown role kind {other:?}")),
    };
    Ok(json!({"apiGroup": GROUP, "kind": kind, "name": name}))
}

fn parse(text: &str) -> Result<Vec<Value>, String> {
    let mut out: Vec<Value> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if !line.starts_with(' ') {
            let obj = match words.as_slice() {
                ["clusterrole", name, rest @ ..] => {
                    object("ClusterRole", None, name, labels(rest).map_err(at)?)
                }
                ["role", ns, name, rest @ ..] => {
                    object("Role", Some(ns), name, labels(rest).map_err(at)?)
                }
                ["clusterrolebinding", name, kind, role] => {
                    let mut o = object("ClusterRoleBinding", None, name, labels(&[])?);
                    o["roleRef"] = role_ref(kind, role).map_err(at)?;
                    o
                }
                ["rolebinding", ns, name, kind, role] => {
                    let mut o = object("RoleBinding", Some(ns), name, labels(&[])?);
                    o["roleRef"] = role_ref(kind, role).map_err(at)?;
                    o
                }
                _ => return Err(at(format!("cannot read {trimmed:?}"))),
            };
            out.push(obj);
            continue;
        }
        let obj = out
            .last_mut()
            .ok_or_else(|| at("a rule or subject before any object".into()))?;
        let push = |obj: &mut Value, field: &str, v: Value| {
            match obj[field].as_array_mut() {
                Some(a) => a.push(v),
                None => obj[field] = Value::Array(vec![v]),
            };
        };
        match words.as_slice() {
            ["allow", groups, resources, verbs, rest @ ..] => {
                let mut rule = json!({
                    "apiGroups": list(groups),
                    "resources": list(resources),
                    "verbs": list(verbs),
                });
                match rest {
                    [] => {}
                    [names] => {
                        let names = names
                            .strip_prefix("names=")
                            .ok_or_else(|| at(format!("expected names=..., got {names:?}")))?;
                        rule["resourceNames"] = list(names);
                    }
                    _ => return Err(at(format!("cannot read {trimmed:?}"))),
                }
                push(obj, "rules", rule);
            }
            ["url", paths, verbs] => {
                push(
                    obj,
                    "rules",
                    json!({"nonResourceURLs": list(paths), "verbs": list(verbs)}),
                );
            }
            ["aggregate", selector @ ..] if !selector.is_empty() => {
                let mut match_labels = labels(selector).map_err(at)?;
                match_labels.remove(BOOTSTRAPPING_LABEL);
                let sel = json!({"matchLabels": match_labels});
                match obj["aggregationRule"]["clusterRoleSelectors"].as_array_mut() {
                    Some(a) => a.push(sel),
                    None => obj["aggregationRule"] = json!({"clusterRoleSelectors": [sel]}),
                }
            }
            ["user", name] => push(
                obj,
                "subjects",
                json!({"apiGroup": GROUP, "kind": "User", "name": name}),
            ),
            ["group", name] => push(
                obj,
                "subjects",
                json!({"apiGroup": GROUP, "kind": "Group", "name": name}),
            ),
            ["sa", account] => {
                let (ns, name) = account
                    .split_once('/')
                    .ok_or_else(|| at(format!("service account {account:?} is not NS/NAME")))?;
                push(
                    obj,
                    "subjects",
                    json!({"kind": "ServiceAccount", "name": name, "namespace": ns}),
                );
            }
            _ => return Err(at(format!("cannot read {trimmed:?}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

    #[test]
    fn the_policy_reads_into_valid_objects() {
        let objects = bootstrap_objects();
        let count = |kind: &str| objects.iter().filter(|o| o["kind"] == kind).count();
        // Kubernetes 1.33 starts with 66 cluster roles and 47 cluster role bindings.
        assert!(count("ClusterRole") > 60, "{}", count("ClusterRole"));
        assert!(count("ClusterRoleBinding") > 40);
        assert!(count("Role") > 3);
        assert!(count("RoleBinding") > 3);
        for o in &objects {
            let ok = match o["kind"].as_str() {
                Some("ClusterRole") => serde_json::from_value::<ClusterRole>(o.clone()).is_ok(),
                Some("Role") => serde_json::from_value::<Role>(o.clone()).is_ok(),
                Some("ClusterRoleBinding") => {
                    serde_json::from_value::<ClusterRoleBinding>(o.clone()).is_ok()
                }
                Some("RoleBinding") => serde_json::from_value::<RoleBinding>(o.clone()).is_ok(),
                _ => false,
            };
            assert!(ok, "{o}");
        }
        let find = |name: &str| {
            objects
                .iter()
                .find(|o| o["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{name} is in the policy"))
        };
        assert_eq!(
            find("cluster-admin")["rules"],
            json!([
                {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ])
        );
        assert_eq!(
            find("view")["aggregationRule"],
            json!({"clusterRoleSelectors": [{"matchLabels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}]})
        );
        assert_eq!(
            find("system:basic-user")["metadata"]["labels"][BOOTSTRAPPING_LABEL],
            "rbac-defaults"
        );
        let masters = find("cluster-admin");
        assert_eq!(masters["kind"], "ClusterRole");
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRoleBinding" && o["metadata"]["name"] == "cluster-admin")
            .expect("cluster-admin is bound");
        assert_eq!(binding["subjects"][0]["name"], "system:masters");
    }

    #[test]
    fn mistakes_in_the_notation_name_their_line() {
        assert_eq!(
            parse("clusterrole x\n  allow core pods").unwrap_err(),
            "line 2: cannot read \"allow core pods\""
        );
        assert!(parse("  user bob").unwrap_err().starts_with("line 1:"));
        assert!(parse("rolebinding ns b thing r").is_err());
    }
}
