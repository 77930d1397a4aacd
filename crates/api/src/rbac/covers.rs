//! Escalation prevention: whether the rules a user holds cover every permission of a role they
//! want to create or bind (Kubernetes' `validation.Covers`).

use super::{ALL, Rule};

/// The permissions in `wanted` that `held` does not cover, each as one narrow rule; empty when
/// `held` covers them all. A wildcard in `wanted` is covered only by the same wildcard.
pub fn covers(held: &[&Rule], wanted: &[Rule]) -> Vec<Rule> {
    let mut missing = Vec::new();
    for w in wanted {
        for part in break_down(w) {
            if !held.iter().any(|h| rule_covers(h, &part)) {
                missing.push(part);
            }
        }
    }
    missing
}

/// One rule per group, resource, verb (and name), or per URL and verb.
fn break_down(r: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    let one = |s: &String| vec![s.clone()];
    for g in &r.api_groups {
        for res in &r.resources {
            for v in &r.verbs {
                if r.resource_names.is_empty() {
                    out.push(Rule {
                        verbs: one(v),
                        api_groups: one(g),
                        resources: one(res),
                        ..Rule::default()
                    });
                }
                for n in &r.resource_names {
                    out.push(Rule {
                        verbs: one(v),
                        api_groups: one(g),
                        resources: one(res),
                        resource_names: one(n),
                        ..Rule::default()
                    });
                }
            }
        }
    }
    for u in &r.non_resource_urls {
        for v in &r.verbs {
            out.push(Rule {
                verbs: one(v),
                non_resource_urls: one(u),
                ..Rule::default()
            });
        }
    }
    out
}

fn has(set: &[String], s: &str) -> bool {
    set.iter().any(|x| x == s)
}

fn rule_covers(owner: &Rule, sub: &Rule) -> bool {
    let all =
        |set: &[String], wanted: &[String]| has(set, ALL) || wanted.iter().all(|w| has(set, w));
    let resources = has(&owner.resources, ALL)
        || sub.resources.iter().all(|r| {
            has(&owner.resources, r)
                || r.split_once('/')
                    .is_some_and(|(_, s)| has(&owner.resources, &format!("*/{s}")))
        });
    let urls = sub.non_resource_urls.iter().all(|u| {
        owner
            .non_resource_urls
            .iter()
            .any(|o| o == ALL || o == u || o.strip_suffix('*').is_some_and(|p| u.starts_with(p)))
    });
    let names = owner.resource_names.is_empty()
        || (!sub.resource_names.is_empty()
            && sub
                .resource_names
                .iter()
                .all(|n| has(&owner.resource_names, n)));
    all(&owner.verbs, &sub.verbs)
        && all(&owner.api_groups, &sub.api_groups)
        && resources
        && urls
        && names
}

/// A rule as Kubernetes prints it in an escalation refusal:
/// `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
pub fn describe_rule(r: &Rule) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !r.api_groups.is_empty() {
        parts.push(format!("APIGroups:[{}]", list(&r.api_groups)));
    }
    if !r.resources.is_empty() {
        parts.push(format!("Resources:[{}]", list(&r.resources)));
    }
    if !r.resource_names.is_empty() {
        parts.push(format!("ResourceNames:[{}]", list(&r.resource_names)));
    }
    if !r.non_resource_urls.is_empty() {
        parts.push(format!("NonResourceURLs:[{}]", list(&r.non_resource_urls)));
    }
    parts.push(format!("Verbs:[{}]", list(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    #[test]
    fn held_rules_cover_narrower_ones_only() {
        let edit = r(
            &["get", "list", "create"],
            &[""],
            &["pods", "configmaps"],
            &[],
        );
        assert!(covers(&[&edit], &[r(&["get"], &[""], &["pods"], &[])]).is_empty());
        assert!(covers(&[&edit], &[r(&["get"], &[""], &["pods"], &["web"])]).is_empty());
        let missing = covers(
            &[&edit],
            &[r(&["get", "delete"], &[""], &["secrets", "pods"], &[])],
        );
        assert_eq!(
            missing.iter().map(describe_rule).collect::<Vec<_>>(),
            [
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\"]}",
                "{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\"]}",
            ]
        );
        // A wildcard is covered only by the same wildcard.
        assert!(!covers(&[&edit], &[r(&["*"], &[""], &["pods"], &[])]).is_empty());
        let admin = r(&["*"], &["*"], &["*"], &[]);
        assert!(covers(&[&admin], &[r(&["*"], &["*"], &["*"], &[])]).is_empty());
        // Names narrow: a rule for one object does not cover all of them.
        let one = r(&["get"], &[""], &["pods"], &["web"]);
        assert!(!covers(&[&one], &[r(&["get"], &[""], &["pods"], &[])]).is_empty());
        // `*/status` covers every resource's status.
        let status = r(&["get"], &[""], &["*/status"], &[]);
        assert!(covers(&[&status], &[r(&["get"], &[""], &["pods/status"], &[])]).is_empty());
        assert!(!covers(&[&status], &[r(&["get"], &[""], &["pods"], &[])]).is_empty());
        let urls = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/apis/*".into()],
            ..Rule::default()
        };
        let want = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/apis/apps".into()],
            ..Rule::default()
        };
        assert!(covers(&[&urls], std::slice::from_ref(&want)).is_empty());
        assert!(!covers(&[&edit], &[want]).is_empty());
    }
}
