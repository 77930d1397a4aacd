//! rbac.authorization.k8s.io/v1 kinds with Kubernetes' defaults and checks: rules that name
//! either resources or URLs, bindings whose role cannot change, subjects of known kinds.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use super::{Kind, default_str};
use crate::errors::{FieldErrors, Path};
use crate::names;

const GROUP: &str = "rbac.authorization.k8s.io";

fn check_rules(rules: Option<&[PolicyRule]>, namespaced: bool, errs: &mut FieldErrors) {
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let path = Path::root("rules").index(i);
        if rule.verbs.is_empty() {
            errs.required(
                &path.child("verbs"),
                "verbs must contain at least one value",
            );
        }
        let some = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        if some(&rule.non_resource_urls) {
            let urls = rule.non_resource_urls.clone().unwrap_or_default();
            if namespaced {
                errs.invalid(
                    &path.child("nonResourceURLs"),
                    &urls,
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if some(&rule.api_groups) || some(&rule.resources) || some(&rule.resource_names) {
                errs.invalid(
                    &path.child("nonResourceURLs"),
                    &urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if !some(&rule.api_groups) {
            errs.required(
                &path.child("apiGroups"),
                "resource rules must supply at least one api group",
            );
        }
        if !some(&rule.resources) {
            errs.required(
                &path.child("resources"),
                "resource rules must supply at least one resource",
            );
        }
    }
}

fn default_role_ref(r: &mut RoleRef) {
    if r.api_group.is_empty() {
        r.api_group = GROUP.to_string();
    }
}

/// User and Group subjects are in the RBAC group (service accounts are in the core one, which
/// is written as no group at all).
fn default_subjects(subjects: &mut Option<Vec<Subject>>) {
    for s in subjects.iter_mut().flatten() {
        match s.kind.as_str() {
            "User" | "Group" => default_str(&mut s.api_group, GROUP),
            "ServiceAccount" if s.api_group.as_deref() == Some("") => s.api_group = None,
            _ => {}
        }
    }
}

/// A role reference printed as Go prints it in a field error (`%#v`).
struct GoRoleRef<'a>(&'a RoleRef);

impl std::fmt::Debug for GoRoleRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
            self.0.api_group, self.0.kind, self.0.name
        )
    }
}

fn check_binding(
    role_ref: &RoleRef,
    old_role_ref: Option<&RoleRef>,
    subjects: Option<&[Subject]>,
    namespaced: bool,
    errs: &mut FieldErrors,
) {
    let path = Path::root("roleRef");
    if role_ref.api_group != GROUP {
        errs.not_supported(&path.child("apiGroup"), &role_ref.api_group, &[GROUP]);
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    errs.one_of(&path.child("kind"), &role_ref.kind, kinds);
    if role_ref.name.is_empty() {
        errs.required(&path.child("name"), "");
    } else {
        for e in names::path_segment(&role_ref.name) {
            errs.invalid(&path.child("name"), &role_ref.name, e);
        }
    }
    if let Some(old) = old_role_ref
        && old != role_ref
    {
        errs.invalid(&path, GoRoleRef(role_ref), "cannot change roleRef");
    }
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let path = Path::root("subjects").index(i);
        if s.name.is_empty() {
            errs.required(&path.child("name"), "");
        }
        let group = s.api_group.as_deref().unwrap_or("");
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errs.not_supported(&path.child("apiGroup"), group, &[""]);
                }
                if !s.name.is_empty() {
                    for e in names::dns1123_subdomain(&s.name) {
                        errs.invalid(&path.child("name"), &s.name, e);
                    }
                }
                if !namespaced && s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.required(&path.child("namespace"), "");
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    errs.not_supported(&path.child("apiGroup"), group, &[GROUP]);
                }
            }
            other => errs.not_supported(
                &path.child("kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            ),
        }
    }
}

impl Kind for Role {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        check_rules(self.rules.as_deref(), true, errs);
    }
}

impl Kind for ClusterRole {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        check_rules(self.rules.as_deref(), false, errs);
    }
}

impl Kind for RoleBinding {
    fn default(&mut self) {
        default_role_ref(&mut self.role_ref);
        default_subjects(&mut self.subjects);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        check_binding(
            &self.role_ref,
            old.map(|o| &o.role_ref),
            self.subjects.as_deref(),
            true,
            errs,
        );
    }
}

impl Kind for ClusterRoleBinding {
    fn default(&mut self) {
        default_role_ref(&mut self.role_ref);
        default_subjects(&mut self.subjects);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut FieldErrors) {
        check_binding(
            &self.role_ref,
            old.map(|o| &o.role_ref),
            self.subjects.as_deref(),
            false,
            errs,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors<T: Kind>(v: serde_json::Value, old: Option<serde_json::Value>) -> Vec<String> {
        let mut obj: T = serde_json::from_value(v).expect("decodes");
        let old: Option<T> = old.map(|o| serde_json::from_value(o).expect("decodes"));
        obj.default();
        let mut errs = FieldErrors::default();
        obj.validate(old.as_ref(), &mut errs);
        errs.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn rules_name_resources_or_urls_never_both() {
        let e = errors::<Role>(
            json!({"metadata": {"name": "r"}, "rules": [
                {"verbs": [], "apiGroups": [""], "resources": ["pods"]},
                {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
                {"verbs": ["get"]},
            ]}),
            None,
        );
        assert_eq!(
            e,
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[1].nonResourceURLs: Invalid value: [\"/healthz\"]: namespaced rules cannot apply to non-resource URLs",
                "rules[2].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[2].resources: Required value: resource rules must supply at least one resource",
            ]
        );
        let e = errors::<ClusterRole>(
            json!({"metadata": {"name": "r"}, "rules": [
                {"verbs": ["get"], "nonResourceURLs": ["/healthz"], "resources": ["pods"]},
            ]}),
            None,
        );
        assert_eq!(
            e,
            [
                "rules[0].nonResourceURLs: Invalid value: [\"/healthz\"]: rules cannot apply to both regular resources and non-resource URLs"
            ]
        );
    }

    #[test]
    fn bindings_are_defaulted_and_keep_their_role() {
        let binding = |role: &str| {
            json!({"metadata": {"name": "b", "namespace": "ns"},
                   "roleRef": {"kind": "ClusterRole", "name": role},
                   "subjects": [{"kind": "User", "name": "bob"}, {"kind": "ServiceAccount", "name": "ci"}]})
        };
        assert!(errors::<RoleBinding>(binding("view"), None).is_empty());
        assert_eq!(
            errors::<RoleBinding>(binding("edit"), Some(binding("view"))),
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"
            ]
        );
        let e = errors::<ClusterRoleBinding>(
            json!({"metadata": {"name": "b"},
                   "roleRef": {"kind": "Role", "name": "r"},
                   "subjects": [{"kind": "ServiceAccount", "name": "ci"}, {"kind": "Robot", "name": "x"}]}),
            None,
        );
        assert_eq!(
            e,
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[0].namespace: Required value",
                "subjects[1].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
            ]
        );
    }
}
