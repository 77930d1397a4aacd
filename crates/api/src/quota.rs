//! Resource quotas and limit ranges as admission applies them, free of IO: what a pod uses in
//! a quota's terms, whether a quota can take it, and how a namespace's LimitRanges default and
//! bound its containers. Messages are Kubernetes'.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, LimitRange, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;

use crate::quantity::Quantity;

/// Resources whose quantities are shown in thousandths (`500m`); the rest in bytes or units.
fn is_cpu(resource: &str) -> bool {
    resource == "cpu" || resource.ends_with(".cpu")
}

/// A quantity as Kubernetes writes it: `500m`, `2`, `128Mi`, `1500`.
pub fn format(resource: &str, q: Quantity) -> String {
    if is_cpu(resource) {
        let m = q.milli();
        return if m % 1000 == 0 {
            (m / 1000).to_string()
        } else {
            format!("{m}m")
        };
    }
    let v = q.value();
    for (suffix, unit) in [
        ("Ti", 1i64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if v != 0 && v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    v.to_string()
}

fn parse(q: &Q) -> Quantity {
    Quantity::parse(&q.0).unwrap_or(Quantity::ZERO)
}

fn add(m: &mut BTreeMap<String, Quantity>, k: &str, q: Quantity) {
    let e = m.entry(k.to_string()).or_insert(Quantity::ZERO);
    *e = e.checked_add(q).unwrap_or(*e);
}

/// Per resource name, what the pod's containers request (or are limited to): containers add
/// up, init containers count by the largest, the overhead comes on top.
fn totals(
    spec: &PodSpec,
    pick: fn(&ResourceRequirements) -> Option<&BTreeMap<String, Q>>,
) -> BTreeMap<String, Quantity> {
    let of = |c: &Container| -> BTreeMap<String, Quantity> {
        c.resources
            .as_ref()
            .and_then(pick)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), parse(v)))
            .collect()
    };
    let mut sum = BTreeMap::new();
    for c in &spec.containers {
        for (k, v) in of(c) {
            add(&mut sum, &k, v);
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, v) in of(c) {
            let e = sum.entry(k).or_insert(Quantity::ZERO);
            if v > *e {
                *e = v;
            }
        }
    }
    for (k, v) in spec.overhead.iter().flatten() {
        add(&mut sum, k, parse(v));
    }
    sum
}

/// What a (running) pod counts against quotas, under every name a quota may use.
pub fn pod_usage(spec: &PodSpec) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    out.insert("pods".to_string(), Quantity::from_units(1));
    out.insert("count/pods".to_string(), Quantity::from_units(1));
    for (k, v) in totals(spec, |r| r.requests.as_ref()) {
        if matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            out.insert(k.clone(), v);
        }
        out.insert(format!("requests.{k}"), v);
    }
    for (k, v) in totals(spec, |r| r.limits.as_ref()) {
        out.insert(format!("limits.{k}"), v);
    }
    out
}

/// Quota keys a pod must set on every container to be admitted under `hard`: naming cpu or
/// memory requests or limits in a quota makes them mandatory. Returns Kubernetes' complaint.
pub fn unspecified(hard: &BTreeMap<String, Q>, spec: &PodSpec) -> Option<String> {
    let mut missing = Vec::new();
    for key in [
        "limits.cpu",
        "limits.memory",
        "requests.cpu",
        "requests.memory",
        "cpu",
        "memory",
    ] {
        if !hard.contains_key(key) {
            continue;
        }
        let (limits, res) = match key.split_once('.') {
            Some(("limits", r)) => (true, r),
            Some((_, r)) => (false, r),
            None => (false, key),
        };
        let lacking: Vec<&str> = spec
            .containers
            .iter()
            .filter(|c| {
                let r = c.resources.as_ref();
                let m = if limits {
                    r.and_then(|r| r.limits.as_ref())
                } else {
                    r.and_then(|r| r.requests.as_ref())
                };
                m.is_none_or(|m| !m.contains_key(res))
            })
            .map(|c| c.name.as_str())
            .collect();
        if !lacking.is_empty() {
            missing.push(format!("{key} for: {}", lacking.join(",")));
        }
    }
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// Would `requested` on top of `used` stay within `hard`? If not, Kubernetes' message parts:
/// `requested: …, used: …, limited: …` for the keys that overflow.
pub fn exceeds(
    hard: &BTreeMap<String, Q>,
    used: &BTreeMap<String, Quantity>,
    requested: &BTreeMap<String, Quantity>,
) -> Option<String> {
    let mut req = Vec::new();
    let mut use_ = Vec::new();
    let mut lim = Vec::new();
    for (k, limit) in hard {
        let Some(r) = requested.get(k) else { continue };
        let u = used.get(k).copied().unwrap_or(Quantity::ZERO);
        let limit = parse(limit);
        if u.checked_add(*r).is_none_or(|t| t > limit) {
            req.push(format!("{k}={}", format(k, *r)));
            use_.push(format!("{k}={}", format(k, u)));
            lim.push(format!("{k}={}", format(k, limit)));
        }
    }
    (!req.is_empty()).then(|| {
        format!(
            "requested: {}, used: {}, limited: {}",
            req.join(","),
            use_.join(","),
            lim.join(",")
        )
    })
}

/// Fill in containers' missing requests and limits from the namespace's LimitRanges, then
/// check their bounds; the errors are Kubernetes' words.
pub fn apply_limit_ranges(spec: &mut PodSpec, ranges: &[LimitRange]) -> Result<(), Vec<String>> {
    let items: Vec<_> = ranges
        .iter()
        .filter_map(|r| r.spec.as_ref())
        .flat_map(|s| s.limits.iter())
        .filter(|l| l.type_ == "Container")
        .collect();
    let mut errors = Vec::new();
    let containers = spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten());
    for c in containers {
        let res = c.resources.get_or_insert_with(Default::default);
        let own_limits = res.limits.clone().unwrap_or_default();
        for item in &items {
            // As Kubernetes defaults a LimitRange: default from max, defaultRequest from
            // default, then from min.
            let default = item.default.as_ref().or(item.max.as_ref());
            let default_request = item
                .default_request
                .as_ref()
                .or(item.default.as_ref())
                .or(item.min.as_ref());
            for (k, v) in default.into_iter().flatten() {
                res.limits
                    .get_or_insert_with(BTreeMap::new)
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
            for (k, v) in default_request.into_iter().flatten() {
                let limit = own_limits.get(k).cloned();
                res.requests
                    .get_or_insert_with(BTreeMap::new)
                    .entry(k.clone())
                    // A container that set only its limit requests that much.
                    .or_insert_with(|| limit.unwrap_or_else(|| v.clone()));
            }
        }
        let get =
            |m: &Option<BTreeMap<String, Q>>, k: &str| m.as_ref().and_then(|m| m.get(k)).map(parse);
        for item in &items {
            for (k, min) in item.min.iter().flatten() {
                let min = parse(min);
                match get(&res.requests, k) {
                    Some(r) if r < min => errors.push(format!(
                        "minimum {k} usage per Container is {}, but request is {}",
                        format(k, min),
                        format(k, r)
                    )),
                    None => errors.push(format!(
                        "minimum {k} usage per Container is {}.  No request is specified",
                        format(k, min)
                    )),
                    _ => {}
                }
            }
            for (k, max) in item.max.iter().flatten() {
                let max = parse(max);
                match get(&res.limits, k) {
                    Some(l) if l > max => errors.push(format!(
                        "maximum {k} usage per Container is {}, but limit is {}",
                        format(k, max),
                        format(k, l)
                    )),
                    None => errors.push(format!(
                        "maximum {k} usage per Container is {}.  No limit is specified",
                        format(k, max)
                    )),
                    _ => {}
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn usage_and_quota_messages() {
        let s = spec(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]}));
        let u = pod_usage(&s);
        assert_eq!(format("requests.cpu", u["requests.cpu"]), "2");
        assert_eq!(format("requests.memory", u["requests.memory"]), "64Mi");
        assert_eq!(format("limits.cpu", u["limits.cpu"]), "1");
        assert_eq!(format("pods", u["pods"]), "1");
        let hard: BTreeMap<String, Q> = [
            ("requests.cpu".to_string(), Q("3".into())),
            ("pods".to_string(), Q("5".into())),
        ]
        .into();
        let used: BTreeMap<String, Quantity> =
            [("requests.cpu".to_string(), Quantity::from_milli(1500))].into();
        assert_eq!(
            exceeds(&hard, &used, &u).as_deref(),
            Some("requested: requests.cpu=2, used: requests.cpu=1500m, limited: requests.cpu=3")
        );
        assert_eq!(exceeds(&hard, &BTreeMap::new(), &u), None);
        let hard: BTreeMap<String, Q> = [("limits.memory".to_string(), Q("1Gi".into()))].into();
        assert_eq!(
            unspecified(&hard, &s).as_deref(),
            Some("limits.memory for: a,b")
        );
    }

    #[test]
    fn limit_ranges_default_and_bound_containers() {
        let lr: LimitRange =
            serde_json::from_value(json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "100m"},
            "max": {"cpu": "1"}, "min": {"cpu": "50m"}}]}}))
            .unwrap_or_default();
        let mut s = spec(
            json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"limits": {"cpu": "800m"}}}]}),
        );
        apply_limit_ranges(&mut s, std::slice::from_ref(&lr)).unwrap_or_default();
        let r = |i: usize, which: &str| {
            let res = s.containers[i].resources.clone().unwrap_or_default();
            let m = if which == "limits" {
                res.limits
            } else {
                res.requests
            };
            m.and_then(|m| m.get("cpu").map(|q| q.0.clone()))
                .unwrap_or_default()
        };
        assert_eq!(
            (r(0, "requests"), r(0, "limits")),
            ("100m".into(), "500m".into())
        );
        assert_eq!(
            (r(1, "requests"), r(1, "limits")),
            ("800m".into(), "800m".into())
        );
        let mut big =
            spec(json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "2"}}}]}));
        assert_eq!(
            apply_limit_ranges(&mut big, &[lr]),
            Err(vec![
                "maximum cpu usage per Container is 1, but limit is 2".to_string()
            ])
        );
    }
}
