//! Admission webhook configurations (admissionregistration.k8s.io/v1), with Kubernetes'
//! defaults and checks.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Kind, default_if_none, default_str};
use crate::errors::{FieldErrors, Path};

/// What one webhook of either kind holds that is checked alike.
struct Common<'a> {
    name: &'a str,
    client: &'a WebhookClientConfig,
    rules: Option<&'a Vec<RuleWithOperations>>,
    failure_policy: Option<&'a str>,
    match_policy: Option<&'a str>,
    side_effects: &'a str,
    timeout: Option<i32>,
    review_versions: &'a [String],
}

fn defaults(
    failure: &mut Option<String>,
    matching: &mut Option<String>,
    ns: &mut Option<LabelSelector>,
    obj: &mut Option<LabelSelector>,
    timeout: &mut Option<i32>,
    client: &mut WebhookClientConfig,
    rules: &mut Option<Vec<RuleWithOperations>>,
) {
    default_str(failure, "Fail");
    default_str(matching, "Equivalent");
    default_if_none(ns, LabelSelector::default());
    default_if_none(obj, LabelSelector::default());
    default_if_none(timeout, 10);
    if let Some(s) = client.service.as_mut() {
        default_if_none(&mut s.port, 443);
    }
    for r in rules.iter_mut().flatten() {
        default_str(&mut r.scope, "*");
    }
}

fn check(w: &Common<'_>, p: &Path, seen: &mut Vec<String>, errs: &mut FieldErrors) {
    if w.name.is_empty() {
        errs.required(&p.child("name"), "");
    } else {
        for e in crate::names::dns1123_subdomain(w.name) {
            errs.invalid(&p.child("name"), w.name, e);
        }
        if w.name.split('.').count() < 3 {
            errs.invalid(
                &p.child("name"),
                w.name,
                "should be a domain with at least three segments separated by dots",
            );
        }
        if seen.iter().any(|s| s == w.name) {
            errs.duplicate(&p.child("name"), w.name);
        }
        seen.push(w.name.to_string());
    }
    check_client(w.client, &p.child("clientConfig"), errs);
    for (i, r) in w.rules.into_iter().flatten().enumerate() {
        let rp = p.child("rules").index(i);
        for (j, op) in r.operations.iter().flatten().enumerate() {
            errs.one_of(
                &rp.child("operations").index(j),
                op,
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            );
        }
        if r.resources.as_ref().is_none_or(Vec::is_empty) {
            errs.required(&rp.child("resources"), "");
        }
        if r.api_versions.as_ref().is_none_or(Vec::is_empty) {
            errs.required(&rp.child("apiVersions"), "");
        }
        if r.api_groups.is_none() {
            errs.required(&rp.child("apiGroups"), "");
        }
        if let Some(scope) = &r.scope {
            errs.one_of(&rp.child("scope"), scope, &["*", "Cluster", "Namespaced"]);
        }
    }
    if let Some(f) = w.failure_policy {
        errs.one_of(&p.child("failurePolicy"), f, &["Fail", "Ignore"]);
    }
    if let Some(m) = w.match_policy {
        errs.one_of(&p.child("matchPolicy"), m, &["Equivalent", "Exact"]);
    }
    match w.side_effects {
        "" => errs.required(
            &p.child("sideEffects"),
            "must specify one of None, NoneOnDryRun",
        ),
        s => errs.one_of(&p.child("sideEffects"), s, &["None", "NoneOnDryRun"]),
    }
    if let Some(t) = w.timeout
        && !(1..=30).contains(&t)
    {
        errs.invalid(
            &p.child("timeoutSeconds"),
            t,
            "the timeout value must be between 1 and 30 seconds",
        );
    }
    if w.review_versions.is_empty() {
        errs.required(
            &p.child("admissionReviewVersions"),
            "must specify one of v1, v1beta1",
        );
    } else if !w
        .review_versions
        .iter()
        .any(|v| v == "v1" || v == "v1beta1")
    {
        errs.invalid(
            &p.child("admissionReviewVersions"),
            w.review_versions.join(","),
            "must include at least one of v1, v1beta1",
        );
    }
}

/// Where a webhook is called: exactly one of an HTTPS URL or a Service (admission webhooks and
/// custom resource conversion webhooks alike).
pub(crate) fn check_client(client: &WebhookClientConfig, cp: &Path, errs: &mut FieldErrors) {
    match (&client.url, &client.service) {
        (Some(_), Some(_)) | (None, None) => {
            errs.required(cp, "exactly one of url or service is required")
        }
        (Some(url), None) => match url.parse::<http_uri::Uri>() {
            Ok(u) if u.scheme == "https" && !u.host.is_empty() => {
                if u.has_fragment || u.has_userinfo {
                    errs.invalid(
                        &cp.child("url"),
                        url,
                        "fragments and user information are not permitted in the URL",
                    );
                }
            }
            Ok(u) if u.scheme != "https" => errs.invalid(
                &cp.child("url"),
                url,
                "'https' is the only allowed URL scheme",
            ),
            _ => errs.invalid(&cp.child("url"), url, "host must be specified"),
        },
        (None, Some(s)) => {
            let sp = cp.child("service");
            if s.name.is_empty() {
                errs.required(&sp.child("name"), "service name is required");
            }
            if s.namespace.is_empty() {
                errs.required(&sp.child("namespace"), "service namespace is required");
            }
            if let Some(port) = s.port
                && !(1..=65535).contains(&port)
            {
                errs.invalid(
                    &sp.child("port"),
                    port,
                    "port is not valid: must be between 1 and 65535, inclusive",
                );
            }
            if let Some(path) = &s.path
                && !path.starts_with('/')
            {
                errs.invalid(&sp.child("path"), path, "must start with a '/'");
            }
        }
    }
}

impl Kind for MutatingWebhookConfiguration {
    fn default(&mut self) {
        for w in self.webhooks.iter_mut().flatten() {
            defaults(
                &mut w.failure_policy,
                &mut w.match_policy,
                &mut w.namespace_selector,
                &mut w.object_selector,
                &mut w.timeout_seconds,
                &mut w.client_config,
                &mut w.rules,
            );
            default_str(&mut w.reinvocation_policy, "Never");
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let mut seen = Vec::new();
        for (i, w) in self.webhooks.iter().flatten().enumerate() {
            let p = Path::root("webhooks").index(i);
            check(
                &Common {
                    name: &w.name,
                    client: &w.client_config,
                    rules: w.rules.as_ref(),
                    failure_policy: w.failure_policy.as_deref(),
                    match_policy: w.match_policy.as_deref(),
                    side_effects: &w.side_effects,
                    timeout: w.timeout_seconds,
                    review_versions: &w.admission_review_versions,
                },
                &p,
                &mut seen,
                errs,
            );
            if let Some(r) = &w.reinvocation_policy {
                errs.one_of(&p.child("reinvocationPolicy"), r, &["IfNeeded", "Never"]);
            }
        }
    }
}

impl Kind for ValidatingWebhookConfiguration {
    fn default(&mut self) {
        for w in self.webhooks.iter_mut().flatten() {
            defaults(
                &mut w.failure_policy,
                &mut w.match_policy,
                &mut w.namespace_selector,
                &mut w.object_selector,
                &mut w.timeout_seconds,
                &mut w.client_config,
                &mut w.rules,
            );
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let mut seen = Vec::new();
        for (i, w) in self.webhooks.iter().flatten().enumerate() {
            check(
                &Common {
                    name: &w.name,
                    client: &w.client_config,
                    rules: w.rules.as_ref(),
                    failure_policy: w.failure_policy.as_deref(),
                    match_policy: w.match_policy.as_deref(),
                    side_effects: &w.side_effects,
                    timeout: w.timeout_seconds,
                    review_versions: &w.admission_review_versions,
                },
                &Path::root("webhooks").index(i),
                &mut seen,
                errs,
            );
        }
    }
}

/// Just enough of a URL to judge a webhook's: scheme, host, and whether it has a fragment or
/// user information.
mod http_uri {
    pub struct Uri {
        pub scheme: String,
        pub host: String,
        pub has_fragment: bool,
        pub has_userinfo: bool,
    }

    impl std::str::FromStr for Uri {
        type Err = ();

        fn from_str(s: &str) -> Result<Uri, ()> {
            let (scheme, rest) = s.split_once("://").ok_or(())?;
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let has_userinfo = authority.contains('@');
            let host = authority.rsplit('@').next().unwrap_or("");
            let host = if let Some(h) = host.strip_prefix('[') {
                h.split(']').next().unwrap_or("").to_string()
            } else {
                host.split(':').next().unwrap_or("").to_string()
            };
            Ok(Uri {
                scheme: scheme.to_ascii_lowercase(),
                host,
                has_fragment: s.contains('#'),
                has_userinfo,
            })
        }
    }
}

impl Kind for k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy {
    fn default(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        default_str(&mut spec.failure_policy, "Fail");
        if let Some(m) = spec.match_constraints.as_mut() {
            default_str(&mut m.match_policy, "Equivalent");
            default_if_none(&mut m.namespace_selector, LabelSelector::default());
            default_if_none(&mut m.object_selector, LabelSelector::default());
            for r in m.resource_rules.iter_mut().flatten() {
                default_str(&mut r.scope, "*");
            }
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let sp = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&sp, "");
            return;
        };
        if spec
            .match_constraints
            .as_ref()
            .is_none_or(|m| m.resource_rules.as_ref().is_none_or(Vec::is_empty))
        {
            errs.required(&sp.child("matchConstraints").child("resourceRules"), "");
        }
        let validations = spec.validations.as_deref().unwrap_or_default();
        let audits = spec.audit_annotations.as_deref().unwrap_or_default();
        if validations.is_empty() && audits.is_empty() {
            errs.required(
                &sp.child("validations"),
                "validations or auditAnnotations must contain at least one item",
            );
        }
        if let Some(f) = &spec.failure_policy {
            errs.one_of(&sp.child("failurePolicy"), f, &["Fail", "Ignore"]);
        }
        let compiles = |expr: &str, p: &Path, errs: &mut FieldErrors| {
            if expr.trim().is_empty() {
                errs.required(p, "");
            } else if let Err(e) = crate::custom::cel::check_syntax(expr) {
                errs.invalid(p, expr, format!("compilation failed: {e}"));
            }
        };
        for (i, v) in validations.iter().enumerate() {
            compiles(
                &v.expression,
                &sp.child("validations").index(i).child("expression"),
                errs,
            );
        }
        for (i, v) in spec.variables.iter().flatten().enumerate() {
            compiles(
                &v.expression,
                &sp.child("variables").index(i).child("expression"),
                errs,
            );
        }
        for (i, m) in spec.match_conditions.iter().flatten().enumerate() {
            compiles(
                &m.expression,
                &sp.child("matchConditions").index(i).child("expression"),
                errs,
            );
        }
    }
}

impl Kind for k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding {
    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let sp = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&sp, "");
            return;
        };
        if spec.policy_name.as_deref().is_none_or(str::is_empty) {
            errs.required(&sp.child("policyName"), "");
        }
        let actions = spec.validation_actions.as_deref().unwrap_or_default();
        if actions.is_empty() {
            errs.required(&sp.child("validationActions"), "");
        }
        for (i, a) in actions.iter().enumerate() {
            errs.one_of(
                &sp.child("validationActions").index(i),
                a,
                &["Audit", "Deny", "Warn"],
            );
        }
        if actions.iter().any(|a| a == "Deny") && actions.iter().any(|a| a == "Warn") {
            errs.forbidden(
                &sp.child("validationActions"),
                "must not contain both Deny and Warn (repeating the same validation failure information in the API response and headers serves no purpose)",
            );
        }
    }
}

impl Kind for k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService {
    fn default(&mut self) {
        if let Some(spec) = self.spec.as_mut()
            && let Some(s) = spec.service.as_mut()
        {
            default_if_none(&mut s.port, 443);
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut FieldErrors) {
        let sp = Path::root("spec");
        let Some(spec) = &self.spec else {
            errs.required(&sp, "");
            return;
        };
        let group = spec.group.as_deref().unwrap_or("");
        let version = spec.version.as_deref().unwrap_or("");
        let name = self.metadata.name.as_deref().unwrap_or("");
        if name != format!("{version}.{group}") {
            errs.invalid(
                &Path::root("metadata").child("name"),
                name,
                format!("must be {version}.{group}"),
            );
        }
        if version.is_empty() {
            errs.required(&sp.child("version"), "");
        }
        if spec.group_priority_minimum <= 0 || spec.group_priority_minimum > 20000 {
            errs.invalid(
                &sp.child("groupPriorityMinimum"),
                spec.group_priority_minimum,
                "must be positive and less than 20000",
            );
        }
        if spec.version_priority <= 0 || spec.version_priority > 1000 {
            errs.invalid(
                &sp.child("versionPriority"),
                spec.version_priority,
                "must be positive and less than 1000",
            );
        }
        match &spec.service {
            None => {
                if spec.insecure_skip_tls_verify == Some(true) {
                    errs.invalid(
                        &sp.child("insecureSkipTLSVerify"),
                        true,
                        "must be false if service is nil",
                    );
                }
            }
            Some(s) => {
                if group.is_empty() {
                    errs.required(
                        &sp.child("group"),
                        "only v1 may have an empty group and it better be legacy kube",
                    );
                }
                if s.name.as_deref().is_none_or(str::is_empty) {
                    errs.required(&sp.child("service").child("name"), "");
                }
                if s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.required(&sp.child("service").child("namespace"), "");
                }
                if let Some(port) = s.port
                    && !(1..=65535).contains(&port)
                {
                    errs.invalid(
                        &sp.child("service").child("port"),
                        port,
                        "port is not valid: must be between 1 and 65535, inclusive",
                    );
                }
                if spec.insecure_skip_tls_verify == Some(true)
                    && spec.ca_bundle.as_ref().is_some_and(|b| !b.0.is_empty())
                {
                    errs.invalid(
                        &sp.child("insecureSkipTLSVerify"),
                        true,
                        "may not be true if caBundle is present",
                    );
                }
            }
        }
    }
}
