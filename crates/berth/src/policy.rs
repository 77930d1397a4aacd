//! Puts Kubernetes' bootstrap RBAC policy in place at every start: roles and bindings that are
//! missing are created, and those still marked for automatic update get back any rule or
//! subject they lost, as kube-apiserver's RBAC bootstrap does. Objects whose
//! `rbac.authorization.kubernetes.io/autoupdate` annotation is `"false"` are left as they are.

use std::collections::HashMap;

use anyhow::{Context, Result};
use api::rbac::AUTOUPDATE_ANNOTATION;
use client::Client;
use http::Method;
use serde_json::Value;
use tracing::info;

const KINDS: [(&str, &str); 4] = [
    ("ClusterRole", "clusterroles"),
    ("ClusterRoleBinding", "clusterrolebindings"),
    ("Role", "roles"),
    ("RoleBinding", "rolebindings"),
];

fn key(o: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn path(plural: &str, namespace: &str, name: Option<&str>) -> String {
    let mut p = String::from("/apis/rbac.authorization.k8s.io/v1/");
    if !namespace.is_empty() {
        p.push_str(&format!("namespaces/{namespace}/"));
    }
    p.push_str(plural);
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    p
}

/// Add to `have[field]` the entries of `want[field]` it lacks; whether anything was added.
fn add_missing(have: &mut Value, want: &Value, field: &str) -> bool {
    let Some(wanted) = want[field].as_array() else {
        return false;
    };
    let mut changed = false;
    for w in wanted {
        let present = have[field].as_array().is_some_and(|a| a.contains(w));
        if !present {
            match have[field].as_array_mut() {
                Some(a) => a.push(w.clone()),
                None => have[field] = Value::Array(vec![w.clone()]),
            }
            changed = true;
        }
    }
    changed
}

pub async fn ensure(c: &Client) -> Result<()> {
    let mut existing: HashMap<(String, String, String), Value> = HashMap::new();
    for (kind, plural) in KINDS {
        let list = c
            .request_json(Method::GET, &path(plural, "", None), None)
            .await
            .with_context(|| format!("listing {plural}"))?;
        for mut item in list["items"].as_array().cloned().unwrap_or_default() {
            item["kind"] = kind.into();
            existing.insert(key(&item), item);
        }
    }
    let (mut created, mut updated) = (0, 0);
    for want in api::rbac::bootstrap_objects() {
        let (kind, ns, name) = key(&want);
        let plural = KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| *p)
            .expect("the policy holds only RBAC kinds");
        match existing.get(&(kind.clone(), ns.clone(), name.clone())) {
            None => {
                let r = c
                    .request_json(Method::POST, &path(plural, &ns, None), Some(&want))
                    .await;
                match r {
                    Ok(_) => created += 1,
                    Err(e) if e.is_conflict() || e.is_already_exists() => {}
                    Err(e) => return Err(e).with_context(|| format!("creating {kind} {name}")),
                }
            }
            Some(have) => {
                if have["metadata"]["annotations"][AUTOUPDATE_ANNOTATION] != "true" {
                    continue;
                }
                let mut new = have.clone();
                let mut changed = false;
                if kind.ends_with("Binding") {
                    changed |= add_missing(&mut new, &want, "subjects");
                } else {
                    changed |= add_missing(&mut new, &want, "rules");
                    if !want["aggregationRule"].is_null() {
                        changed |= add_missing(
                            &mut new["aggregationRule"],
                            &want["aggregationRule"],
                            "clusterRoleSelectors",
                        );
                    }
                }
                if changed {
                    c.request_json(Method::PUT, &path(plural, &ns, Some(&name)), Some(&new))
                        .await
                        .with_context(|| format!("restoring {kind} {name}"))?;
                    updated += 1;
                }
            }
        }
    }
    if created + updated > 0 {
        info!(created, updated, "bootstrap RBAC policy in place");
    }
    Ok(())
}
