//! Table-driven cases: a snapshot and pods in, the chosen nodes or Kubernetes' reasons out.

#![allow(clippy::unwrap_used)]

use api::k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use crate::{Config, Decision, Demand, Plan, Snapshot, Strategy, schedule};

fn node(name: &str, cpu: &str, memory: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": "110",
                                   "ephemeral-storage": "100Gi"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    });
    merge(&mut n, extra);
    serde_json::from_value(n).unwrap()
}

fn pod(name: &str, cpu: &str, memory: &str, extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "i",
                 "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
    });
    merge(&mut p, extra);
    serde_json::from_value(p).unwrap()
}

/// A node of 8 CPUs and 16 GiB in `zone`.
fn host(name: &str, zone: &str) -> Node {
    node(
        name,
        "8",
        "16Gi",
        json!({"metadata": {"labels": {"zone": zone}}}),
    )
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn run(nodes: &[Node], bound: &[Pod], pods: &[Pod], strategy: Strategy) -> (Plan, Snapshot) {
    let mut s = Snapshot::new(nodes, bound);
    let demands: Vec<Demand> = pods.iter().map(|p| Demand::of(p).unwrap()).collect();
    let cfg = Config {
        strategy,
        ..Config::default()
    };
    (schedule(&mut s, &demands, &cfg), s)
}

fn outcome(d: &Decision) -> String {
    match d {
        Decision::Bind { node } => node.clone(),
        Decision::Unschedulable { message, .. } => message.clone(),
    }
}

fn bound_to(p: Pod, node: &str) -> Pod {
    let mut v = serde_json::to_value(p).unwrap();
    v["spec"]["nodeName"] = json!(node);
    serde_json::from_value(v).unwrap()
}

#[test]
fn one_pod_cases() {
    let small = || node("small", "1", "1Gi", json!({}));
    let big = || node("big", "8", "32Gi", json!({}));
    let gpu = || {
        node(
            "gpu",
            "8",
            "32Gi",
            json!({"metadata": {"labels": {"accel": "a100", "cores": "64"}},
                   "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
                   "status": {"allocatable": {"nvidia.com/gpu": "2"}}}),
        )
    };
    let cordoned = || {
        node(
            "cordoned",
            "8",
            "32Gi",
            json!({"spec": {"unschedulable": true}}),
        )
    };
    let tolerate_gpu = json!({"spec": {"tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}});
    let cases: Vec<(&str, Vec<Node>, Pod, &str)> = vec![
        (
            "fits where there is room",
            vec![small(), big()],
            pod("p", "2", "1Gi", json!({})),
            "big",
        ),
        (
            "no room anywhere",
            vec![small(), big()],
            pod("p", "16", "1Gi", json!({})),
            "0/2 nodes are available: 2 Insufficient cpu.",
        ),
        (
            "every reason counted, sorted",
            vec![small(), gpu(), cordoned()],
            pod("p", "500m", "2Gi", json!({})),
            "0/3 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint \
             {dedicated: gpu}, 1 node(s) were unschedulable.",
        ),
        (
            "a toleration opens the tainted node",
            vec![small(), gpu()],
            pod("p", "2", "1Gi", tolerate_gpu.clone()),
            "gpu",
        ),
        (
            "Exists with no key tolerates everything, cordons included",
            vec![cordoned()],
            pod(
                "p",
                "1",
                "1Gi",
                json!({"spec": {"tolerations": [{"operator": "Exists"}]}}),
            ),
            "cordoned",
        ),
        (
            "extended resources",
            vec![big(), gpu()],
            {
                let mut p = pod("p", "1", "1Gi", tolerate_gpu.clone());
                p.spec.as_mut().unwrap().containers[0]
                    .resources
                    .as_mut()
                    .unwrap()
                    .requests
                    .as_mut()
                    .unwrap()
                    .insert(
                        "nvidia.com/gpu".into(),
                        api::k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
                    );
                p
            },
            "gpu",
        ),
        (
            "too many of an extended resource",
            vec![big()],
            pod(
                "p",
                "1",
                "1Gi",
                json!({"spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"example.com/fpga": "1"}}}]}}),
            ),
            "0/1 nodes are available: 1 Insufficient example.com/fpga.",
        ),
        (
            "node selector",
            vec![small(), big()],
            pod(
                "p",
                "100m",
                "1Mi",
                json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "small"}}}),
            ),
            "small",
        ),
        (
            "node selector matching nothing",
            vec![small(), big()],
            pod(
                "p",
                "100m",
                "1Mi",
                json!({"spec": {"nodeSelector": {"zone": "mars"}}}),
            ),
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
        ),
        (
            "required affinity with Gt",
            vec![big(), gpu()],
            pod("p", "100m", "1Mi", {
                let mut v = tolerate_gpu.clone();
                merge(
                    &mut v,
                    json!({"spec": {"affinity": {"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["32"]}]}]}}}}}),
                );
                v
            }),
            "gpu",
        ),
        (
            "required affinity with NotIn, any term",
            vec![small(), big()],
            pod(
                "p",
                "100m",
                "1Mi",
                json!({"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["nowhere"]}]},
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["big"]}]}]}}}}}),
            ),
            "small",
        ),
        (
            "nodeName",
            vec![small(), big()],
            pod("p", "100m", "1Mi", json!({"spec": {"nodeName": "small"}})),
            "small",
        ),
        (
            "nodeName of a full node",
            vec![small(), big()],
            pod("p", "2", "1Mi", json!({"spec": {"nodeName": "small"}})),
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match the requested node name.",
        ),
        (
            "preferred affinity wins among equals",
            vec![
                node("a", "4", "8Gi", json!({})),
                node(
                    "b",
                    "4",
                    "8Gi",
                    json!({"metadata": {"labels": {"disk": "ssd"}}}),
                ),
            ],
            pod(
                "p",
                "100m",
                "1Mi",
                json!({"spec": {"affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "preference":
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}}),
            ),
            "b",
        ),
        (
            "nodes that are not Ready take only pods that tolerate it",
            vec![
                node(
                    "down",
                    "4",
                    "8Gi",
                    json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
                ),
                node("new", "4", "8Gi", json!({"status": {"conditions": []}})),
            ],
            pod("p", "100m", "1Mi", json!({})),
            "0/2 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
             1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }.",
        ),
        (
            "a toleration of not-ready (as DaemonSet pods have)",
            vec![node(
                "new",
                "4",
                "8Gi",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            )],
            pod(
                "p",
                "100m",
                "1Mi",
                json!({"spec": {"tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}}),
            ),
            "new",
        ),
        (
            "PreferNoSchedule is avoided when there is a choice",
            vec![
                node(
                    "a",
                    "4",
                    "8Gi",
                    json!({"spec": {"taints": [{"key": "old", "effect": "PreferNoSchedule"}]}}),
                ),
                node("b", "4", "8Gi", json!({})),
            ],
            pod("p", "100m", "1Mi", json!({})),
            "b",
        ),
    ];
    for (what, nodes, p, want) in cases {
        let (plan, _) = run(&nodes, &[], &[p], Strategy::LeastAllocated);
        assert_eq!(outcome(&plan.decisions[0]), want, "{what}");
    }
}

#[test]
fn running_pods_use_room_and_ports() {
    let nodes = [
        node(
            "a",
            "2",
            "4Gi",
            json!({"status": {"allocatable": {"pods": "2"}}}),
        ),
        node("b", "2", "4Gi", json!({})),
    ];
    let web = json!({"spec": {"containers": [{"name": "c", "image": "i",
        "resources": {"requests": {"cpu": "100m"}}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
    let bound = [
        bound_to(pod("x", "1", "1Gi", json!({})), "a"),
        bound_to(pod("y", "100m", "1Mi", web.clone()), "b"),
        // Ended pods hold nothing.
        {
            let mut p = bound_to(pod("done", "2", "4Gi", json!({})), "b");
            p.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
            p
        },
    ];
    let (plan, _) = run(
        &nodes,
        &bound,
        &[pod("z", "1500m", "1Gi", json!({}))],
        Strategy::LeastAllocated,
    );
    assert_eq!(outcome(&plan.decisions[0]), "b");
    let (plan, _) = run(
        &nodes,
        &bound,
        &[pod("w", "100m", "1Mi", web.clone())],
        Strategy::LeastAllocated,
    );
    assert_eq!(outcome(&plan.decisions[0]), "a", "b's host port is taken");
    // a holds one pod of two; with another bound it is full.
    let more = [
        bound.to_vec(),
        vec![bound_to(pod("v", "1m", "1Mi", json!({})), "a")],
    ]
    .concat();
    let (plan, _) = run(
        &nodes,
        &more,
        &[pod("w", "100m", "1Mi", web)],
        Strategy::LeastAllocated,
    );
    assert_eq!(
        outcome(&plan.decisions[0]),
        "0/2 nodes are available: 1 Too many pods, 1 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn a_batch_never_overbooks_and_strategies_spread_or_pack() {
    let nodes: Vec<Node> = (0..4)
        .map(|i| node(&format!("n{i}"), "4", "16Gi", json!({})))
        .collect();
    let pods: Vec<Pod> = (0..18)
        .map(|i| pod(&format!("p{i}"), "1", "1Gi", json!({})))
        .collect();
    for strategy in [
        Strategy::LeastAllocated,
        Strategy::MostAllocated,
        Strategy::Balanced,
    ] {
        let (plan, s) = run(&nodes, &[], &pods, strategy);
        let placed: Vec<String> = plan
            .decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Bind { node } => Some(node.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(placed.len(), 16, "{strategy:?}: 4 nodes x 4 cpu");
        assert_eq!(
            outcome(&plan.decisions[17]),
            "0/4 nodes are available: 4 Insufficient cpu.",
            "{strategy:?}"
        );
        let (cpu, total, _, _) = s.allocated();
        assert_eq!((cpu, total), (16_000, 16_000));
        let first_four: std::collections::BTreeSet<&String> = placed[..4].iter().collect();
        match strategy {
            Strategy::LeastAllocated => assert_eq!(first_four.len(), 4, "spread: {placed:?}"),
            Strategy::MostAllocated => assert_eq!(first_four.len(), 1, "packed: {placed:?}"),
            Strategy::Balanced => {}
        }
    }
}

#[test]
fn a_lone_pod_on_a_large_cluster_scores_a_sample() {
    let nodes: Vec<Node> = (0..2000)
        .map(|i| node(&format!("n{i}"), "4", "16Gi", json!({})))
        .collect();
    let mut s = Snapshot::new(&nodes, &[]);
    let d = Demand::of(&pod("p", "1", "1Gi", json!({}))).unwrap();
    let plan = schedule(&mut s, &[d], &Config::default());
    assert!(matches!(plan.decisions[0], Decision::Bind { .. }));
    // 2000 nodes: 50% - 16% = 34% -> 680 nodes looked at, not all 2000.
    assert_eq!(plan.nodes_evaluated, 680);
    let mut s = Snapshot::new(&nodes, &[]);
    let d = Demand::of(&pod("p", "1", "1Gi", json!({}))).unwrap();
    let cfg = Config {
        percentage_of_nodes_to_score: Some(100),
        ..Config::default()
    };
    assert_eq!(schedule(&mut s, &[d], &cfg).nodes_evaluated, 2000);
}

#[test]
fn requests_add_up_as_kubernetes_counts_them() {
    let p = pod(
        "p",
        "1",
        "1Gi",
        json!({"spec": {
        "containers": [
            {"name": "a", "image": "i", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"name": "b", "image": "i", "resources": {"requests": {"cpu": "250m"}}}],
        "initContainers": [{"name": "init", "image": "i", "resources": {"requests": {"cpu": "2", "memory": "100Mi"}}}],
        "overhead": {"cpu": "100m"}}}),
    );
    let d = Demand::of(&p).unwrap();
    assert_eq!(
        d.requests["cpu"], 2100,
        "the larger of init (2) and containers (0.75), plus overhead"
    );
    assert_eq!(d.requests["memory"], 1 << 30);
    // Scoring counts 200Mi for the container that asks no memory.
    assert_eq!(d.score_memory, (1 << 30) + 200 * 1024 * 1024);
    let same = Demand::of(&pod("q", "1", "1Gi", json!({"spec": {
        "containers": [
            {"name": "a", "image": "i", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"name": "b", "image": "i", "resources": {"requests": {"cpu": "250m"}}}],
        "initContainers": [{"name": "init", "image": "i", "resources": {"requests": {"cpu": "2", "memory": "100Mi"}}}],
        "overhead": {"cpu": "100m"}}}))).unwrap();
    assert_eq!(d.class, same.class, "same template, same class");
    let other = Demand::of(&pod("r", "1", "2Gi", json!({}))).unwrap();
    assert_ne!(d.class, other.class);
}

#[test]
fn topology_spread_keeps_zones_within_the_skew() {
    let zoned = |name: &str, zone: &str, cpu: &str| {
        node(
            name,
            cpu,
            "16Gi",
            json!({"metadata": {"labels": {"zone": zone}}}),
        )
    };
    let spread = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "web"}}}]}});
    // Two nodes in east, one in west: four web pods go two and two, whatever the room says.
    let nodes = [
        zoned("e1", "east", "8"),
        zoned("e2", "east", "8"),
        zoned("w1", "west", "8"),
    ];
    let pods: Vec<Pod> = (0..4)
        .map(|i| pod(&format!("web-{i}"), "100m", "1Mi", spread.clone()))
        .collect();
    let (plan, _) = run(&nodes, &[], &pods, Strategy::LeastAllocated);
    let west = plan.decisions.iter().filter(|d| outcome(d) == "w1").count();
    assert_eq!(west, 2, "{:?}", plan.decisions);
    // West is full: one more web pod in east would make the skew 3 - 1 = 2.
    let nodes = [
        zoned("e1", "east", "8"),
        zoned("e2", "east", "8"),
        zoned("w1", "west", "1"),
    ];
    let bound = [
        bound_to(pod("a", "100m", "1Mi", spread.clone()), "e1"),
        bound_to(pod("b", "100m", "1Mi", spread.clone()), "e2"),
        bound_to(pod("c", "900m", "1Mi", spread.clone()), "w1"),
        // Pods the selector does not match do not count.
        bound_to(pod("other", "100m", "1Mi", json!({})), "w1"),
    ];
    let (plan, _) = run(
        &nodes,
        &bound,
        &[pod("d", "500m", "1Mi", spread.clone())],
        Strategy::LeastAllocated,
    );
    assert_eq!(
        outcome(&plan.decisions[0]),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match pod topology spread constraints."
    );
    // A node without the topology label cannot take part.
    let nodes = [node("bare", "8", "16Gi", json!({}))];
    let (plan, _) = run(
        &nodes,
        &[],
        &[pod("e", "100m", "1Mi", spread.clone())],
        Strategy::LeastAllocated,
    );
    assert_eq!(
        outcome(&plan.decisions[0]),
        "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."
    );
    // ScheduleAnyway is a preference only.
    let soft = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "web"}}}]}});
    let (plan, _) = run(
        &nodes,
        &[],
        &[pod("f", "100m", "1Mi", soft)],
        Strategy::LeastAllocated,
    );
    assert_eq!(outcome(&plan.decisions[0]), "bare");
}

#[test]
fn inter_pod_affinity_and_anti_affinity() {
    let nodes = [host("n1", "east"), host("n2", "east"), host("n3", "west")];
    // One replica per node: three fit, the fourth has nowhere to go.
    let one_per_node = json!({"metadata": {"labels": {"app": "db"}}, "spec": {"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": "db"}}}]}}}});
    let pods: Vec<Pod> = (0..4)
        .map(|i| pod(&format!("db-{i}"), "100m", "1Mi", one_per_node.clone()))
        .collect();
    let (plan, _) = run(&nodes, &[], &pods, Strategy::MostAllocated);
    let mut placed: Vec<String> = plan.decisions[..3].iter().map(outcome).collect();
    placed.sort();
    assert_eq!(
        placed,
        ["n1", "n2", "n3"],
        "packing does not beat anti-affinity"
    );
    assert_eq!(
        outcome(&plan.decisions[3]),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    // A cache wants to be in the zone of the db it serves; another namespace's db is no use.
    let near_db = json!({"metadata": {"labels": {"app": "cache"}}, "spec": {"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "db"}}}]}}}});
    let db_in_west = bound_to(
        pod(
            "db",
            "100m",
            "1Mi",
            json!({"metadata": {"labels": {"app": "db"}}}),
        ),
        "n3",
    );
    let (plan, _) = run(
        &nodes,
        &[db_in_west],
        &[pod("cache", "100m", "1Mi", near_db.clone())],
        Strategy::LeastAllocated,
    );
    assert_eq!(outcome(&plan.decisions[0]), "n3");
    let mut elsewhere = bound_to(
        pod(
            "db",
            "100m",
            "1Mi",
            json!({"metadata": {"labels": {"app": "db"}}}),
        ),
        "n3",
    );
    elsewhere.metadata.namespace = Some("other".into());
    let (plan, _) = run(
        &nodes,
        &[elsewhere],
        &[pod("cache", "100m", "1Mi", near_db)],
        Strategy::LeastAllocated,
    );
    assert_eq!(
        outcome(&plan.decisions[0]),
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
    // A pod without rules of its own is kept out by a placed pod's anti-affinity against it.
    let loner = json!({"metadata": {"labels": {"app": "loner"}}, "spec": {"affinity": {"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "noisy"}}}]}}}});
    let placed = bound_to(pod("loner", "100m", "1Mi", loner), "n3");
    let noisy = json!({"metadata": {"labels": {"app": "noisy"}}});
    let pods: Vec<Pod> = (0..3)
        .map(|i| pod(&format!("noisy-{i}"), "100m", "1Mi", noisy.clone()))
        .collect();
    let (plan, _) = run(
        &nodes,
        std::slice::from_ref(&placed),
        &pods,
        Strategy::LeastAllocated,
    );
    assert!(
        plan.decisions.iter().all(|d| outcome(d) != "n3"),
        "{:?}",
        plan.decisions
    );
    let west_only = [host("n3", "west")];
    let (plan, _) = run(&west_only, &[placed], &pods[..1], Strategy::LeastAllocated);
    assert_eq!(
        outcome(&plan.decisions[0]),
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
    );
    // The first pod of a group that wants to be together may start it anywhere.
    let together = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
            "labelSelector": {"matchLabels": {"app": "web"}}}]}}}});
    let pods: Vec<Pod> = (0..3)
        .map(|i| pod(&format!("web-{i}"), "100m", "1Mi", together.clone()))
        .collect();
    let (plan, _) = run(&nodes, &[], &pods, Strategy::LeastAllocated);
    let zones: std::collections::BTreeSet<&str> = plan
        .decisions
        .iter()
        .map(|d| if outcome(d) == "n3" { "west" } else { "east" })
        .collect();
    assert_eq!(zones.len(), 1, "all in one zone: {:?}", plan.decisions);
}

#[test]
fn inter_pod_terms_select_namespaces_by_label() {
    let nodes = [host("n1", "east"), host("n2", "east"), host("n3", "west")];
    let mut db = bound_to(
        pod(
            "db",
            "100m",
            "1Mi",
            json!({"metadata": {"labels": {"app": "db"}}}),
        ),
        "n3",
    );
    db.metadata.namespace = Some("data".into());
    let namespaces: crate::NamespaceLabels = [
        ("default".to_string(), Default::default()),
        (
            "data".to_string(),
            [("team".to_string(), "storage".to_string())].into(),
        ),
    ]
    .into();
    let place = |namespace_selector: Value| {
        let near_db = json!({"spec": {"affinity": {"podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone",
                "namespaceSelector": namespace_selector,
                "labelSelector": {"matchLabels": {"app": "db"}}}]}}}});
        let mut s =
            Snapshot::new(&nodes, std::slice::from_ref(&db)).with_namespaces(namespaces.clone());
        let d = Demand::of(&pod("cache", "100m", "1Mi", near_db)).unwrap();
        outcome(&schedule(&mut s, &[d], &Config::default()).decisions[0])
    };
    assert_eq!(place(json!({"matchLabels": {"team": "storage"}})), "n3");
    // An empty selector is every namespace.
    assert_eq!(place(json!({})), "n3");
    assert_eq!(
        place(json!({"matchLabels": {"team": "web"}})),
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
    // Without a selector the term looks in the pod's own namespace only.
    assert_eq!(
        place(Value::Null),
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
}

#[test]
fn preferences_from_the_pods_around_weigh_in_scoring() {
    let nodes = [host("n1", "east"), host("n2", "east"), host("n3", "west")];
    // Packing alone puts replicas together...
    let plain = json!({"metadata": {"labels": {"app": "web"}}});
    let pods: Vec<Pod> = (0..3)
        .map(|i| pod(&format!("web-{i}"), "1", "2Gi", plain.clone()))
        .collect();
    let (plan, _) = run(&nodes, &[], &pods, Strategy::MostAllocated);
    let used: std::collections::BTreeSet<String> = plan.decisions.iter().map(outcome).collect();
    assert_eq!(used.len(), 1, "{:?}", plan.decisions);
    // ...preferring to be apart spreads them, one per node, and a fourth still runs.
    let apart = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}}]}}}});
    let pods: Vec<Pod> = (0..4)
        .map(|i| pod(&format!("web-{i}"), "1", "2Gi", apart.clone()))
        .collect();
    let (plan, _) = run(&nodes, &[], &pods, Strategy::MostAllocated);
    let mut first: Vec<String> = plan.decisions[..3].iter().map(outcome).collect();
    first.sort();
    assert_eq!(first, ["n1", "n2", "n3"], "{:?}", plan.decisions);
    assert!(
        matches!(plan.decisions[3], Decision::Bind { .. }),
        "a preference never refuses"
    );

    // A cache prefers the zone of its db, even on the busier node.
    let db = bound_to(
        pod(
            "db",
            "4",
            "1Mi",
            json!({"metadata": {"labels": {"app": "db"}}}),
        ),
        "n3",
    );
    let near_db = json!({"spec": {"affinity": {"podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "podAffinityTerm": {
            "topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}}]}}}});
    let cache = [pod("cache", "100m", "1Mi", near_db)];
    let (plan, _) = run(
        &nodes,
        std::slice::from_ref(&db),
        &cache,
        Strategy::LeastAllocated,
    );
    assert_eq!(outcome(&plan.decisions[0]), "n3");
    let (plan, _) = run(
        &nodes,
        &[db],
        &[pod("cache", "100m", "1Mi", json!({}))],
        Strategy::LeastAllocated,
    );
    assert_ne!(
        outcome(&plan.decisions[0]),
        "n3",
        "without the preference, room wins"
    );

    // ScheduleAnyway spread evens out zones where packing would not.
    let soft = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "web"}}}]}});
    let pods: Vec<Pod> = (0..4)
        .map(|i| pod(&format!("web-{i}"), "1", "2Gi", soft.clone()))
        .collect();
    let (plan, _) = run(&nodes, &[], &pods, Strategy::MostAllocated);
    let west = plan.decisions.iter().filter(|d| outcome(d) == "n3").count();
    assert_eq!(west, 2, "{:?}", plan.decisions);
}

/// A node's name and its placed pods: (name, priority, cpu).
type Layout<'a> = [(&'a str, &'a [(&'a str, i32, &'a str)])];

/// Preemption: which node, which victims (by pod name), for a pod of priority 100 asking
/// `cpu`; nodes of 2 CPUs hold the listed (name, priority, cpu) pods.
fn preempt_case(cpu: &str, layout: &Layout<'_>, extra: Value) -> Option<(String, Vec<String>)> {
    preempt_with_budgets(cpu, layout, extra, &[])
}

/// As `preempt_case`, with disruption budgets: (disruptions allowed, the pods covered).
fn preempt_with_budgets(
    cpu: &str,
    layout: &Layout<'_>,
    extra: Value,
    budgets: &[(i32, &[&str])],
) -> Option<(String, Vec<String>)> {
    let nodes: Vec<Node> = layout
        .iter()
        .map(|(n, _)| node(n, "2", "8Gi", json!({})))
        .collect();
    let mut bound = Vec::new();
    let mut placed: Vec<Vec<crate::Placed>> = Vec::new();
    for (n, pods) in layout {
        let mut here = Vec::new();
        for (name, prio, c) in *pods {
            let p = bound_to(pod(name, c, "100Mi", json!({})), n);
            here.push(crate::Placed {
                priority: *prio,
                demand: Demand::of(&p).unwrap(),
                budgets: (0..budgets.len())
                    .filter(|b| budgets[*b].1.contains(name))
                    .collect(),
            });
            bound.push(p);
        }
        placed.push(here);
    }
    let s = Snapshot::new(&nodes, &bound);
    let d = Demand::of(&pod("urgent", cpu, "100Mi", extra)).unwrap();
    let allowed: Vec<i32> = budgets.iter().map(|b| b.0).collect();
    crate::preemption(&s, &d, 100, &placed, &allowed).map(|p| {
        let (n, pods) = &layout[p.node];
        (
            n.to_string(),
            p.victims.iter().map(|v| pods[*v].0.to_string()).collect(),
        )
    })
}

#[test]
fn preemption_avoids_breaking_disruption_budgets() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let layout: &Layout<'_> = &[("a", &[("a1", 10, "2")]), ("b", &[("b1", 20, "2")])];
    assert_eq!(
        preempt_case("1", layout, json!({})),
        Some(("a".into(), s(&["a1"])))
    );
    // a1's budget allows no disruption: the node whose victim breaks none wins.
    assert_eq!(
        preempt_with_budgets("1", layout, json!({}), &[(0, &["a1"])]),
        Some(("b".into(), s(&["b1"])))
    );
    // On one node, the protected pod is reprieved before a more important unprotected one.
    let one: &Layout<'_> = &[("a", &[("a1", 10, "1"), ("a2", 20, "1")])];
    assert_eq!(
        preempt_case("1", one, json!({})),
        Some(("a".into(), s(&["a1"])))
    );
    assert_eq!(
        preempt_with_budgets("1", one, json!({}), &[(0, &["a1"])]),
        Some(("a".into(), s(&["a2"])))
    );
    // A budget that allows one disruption covers one victim, not two.
    assert_eq!(
        preempt_with_budgets(
            "2",
            &[
                ("a", &[("a1", 10, "1"), ("a2", 10, "1")]),
                ("b", &[("b1", 30, "2")])
            ],
            json!({}),
            &[(1, &["a1", "a2"])]
        ),
        Some(("b".into(), s(&["b1"])))
    );
    // A budget is a preference: with no other way, the pod still preempts.
    assert_eq!(
        preempt_with_budgets(
            "2",
            &[("a", &[("a1", 10, "2")])],
            json!({}),
            &[(0, &["a1"])]
        ),
        Some(("a".into(), s(&["a1"])))
    );
}

#[test]
fn preemption_cases() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // The fewest victims of the lowest priority; a pod that fits without them is spared.
    assert_eq!(
        preempt_case(
            "1",
            &[
                ("a", &[("a1", 10, "1"), ("a2", 50, "1")]),
                ("b", &[("b1", 20, "1500m")])
            ],
            json!({})
        ),
        Some(("a".into(), s(&["a1"])))
    );
    // Higher or equal priority pods are never victims.
    assert_eq!(
        preempt_case(
            "1",
            &[("a", &[("a1", 100, "2")]), ("b", &[("b1", 200, "2")])],
            json!({})
        ),
        None
    );
    // The node whose most important victim matters least wins, even with more victims.
    assert_eq!(
        preempt_case(
            "2",
            &[
                ("a", &[("a1", 90, "2")]),
                ("b", &[("b1", 5, "1"), ("b2", 6, "1")])
            ],
            json!({})
        ),
        Some(("b".into(), s(&["b1", "b2"])))
    );
    // A node the pod may not use anyway (node selector) is no candidate.
    assert_eq!(
        preempt_case(
            "1",
            &[("a", &[("a1", 1, "2")]), ("b", &[("b1", 50, "2")])],
            json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "b"}}})
        ),
        Some(("b".into(), s(&["b1"])))
    );
    // Too big even for an empty node: nothing to gain.
    assert_eq!(
        preempt_case("3", &[("a", &[("a1", 1, "1")])], json!({})),
        None
    );
}

#[test]
fn forgetting_a_pod_gives_back_all_it_held() {
    let nodes = [node("a", "2", "4Gi", json!({}))];
    let db = json!({"metadata": {"labels": {"app": "db"}}, "spec": {
        "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1500m"}},
                        "ports": [{"containerPort": 80, "hostPort": 8080}]}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname",
             "labelSelector": {"matchLabels": {"app": "db"}}}]}}}});
    let x = Demand::of(&pod("x", "1500m", "1Gi", db.clone())).unwrap();
    let y = Demand::of(&pod("y", "1500m", "1Gi", db)).unwrap();
    let fresh = Snapshot::new(&nodes, &[]);
    let mut s = Snapshot::new(&nodes, &[]);
    let cfg = Config::default();
    let plan = schedule(&mut s, std::slice::from_ref(&x), &cfg);
    assert_eq!(outcome(&plan.decisions[0]), "a");
    let plan = schedule(&mut s, std::slice::from_ref(&y), &cfg);
    assert_eq!(
        outcome(&plan.decisions[0]),
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    );
    // Room, the port and the anti-affinity domain must all come back for y to fit.
    s.forget(0, &x);
    assert_eq!(s.allocated(), fresh.allocated());
    assert_eq!(s.nodes_used(), 0);
    let plan = schedule(&mut s, std::slice::from_ref(&y), &cfg);
    assert_eq!(outcome(&plan.decisions[0]), "a");
}

#[test]
fn placed_pods_preferences_score_the_pods_they_select() {
    // Two otherwise equal nodes; a placed web pod's terms about caches decide where a cache
    // goes, though the cache itself has no inter-pod terms.
    let nodes = [host("n1", "east"), host("n2", "east")];
    let web = |terms: Value| {
        bound_to(
            pod(
                "web",
                "100m",
                "1Mi",
                json!({"metadata": {"labels": {"app": "web"}}, "spec": {"affinity": terms}}),
            ),
            "n1",
        )
    };
    let about_caches = |weight: i32| {
        json!([{"weight": weight, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": {"app": "cache"}}}}])
    };
    let cache = |name: &str, app: &str| {
        pod(
            name,
            "100m",
            "1Mi",
            json!({"metadata": {"labels": {"app": app}}}),
        )
    };
    let cases = [
        (
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": about_caches(100)}}),
            "cache",
            "n1",
        ),
        (
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": about_caches(100)}}),
            "cache",
            "n2",
        ),
        (
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname",
                 "labelSelector": {"matchLabels": {"app": "cache"}}}]}}),
            "cache",
            "n1",
        ),
        // A pod the term does not select is not moved by it (least-allocated: away from web).
        (
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": about_caches(100)}}),
            "other",
            "n2",
        ),
    ];
    for (terms, app, want) in cases {
        let (plan, mut s) = run(
            &nodes,
            &[web(terms.clone())],
            &[cache("c", app)],
            Strategy::LeastAllocated,
        );
        assert_eq!(outcome(&plan.decisions[0]), want, "{terms} for {app}");
        // Once the web pod is gone, so are its terms.
        let web_demand = Demand::of(&web(terms.clone())).unwrap();
        s.forget(s.node("n1").unwrap(), &web_demand);
        assert!(s.scored_terms.is_empty(), "{terms}");
    }
}

#[test]
fn a_node_with_a_volume_limit_takes_no_more_claims_than_it_allows() {
    let limited = node(
        "limited",
        "8",
        "16Gi",
        json!({"status": {"allocatable": {api::kinds::storage::VOLUMES_RESOURCE: "2"}}}),
    );
    let with_claims = |name: &str, n: usize| {
        let volumes: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": format!("{name}-{i}")}}))
            .collect();
        pod(name, "100m", "64Mi", json!({"spec": {"volumes": volumes}}))
    };
    let (plan, _) = run(
        std::slice::from_ref(&limited),
        &[bound_to(with_claims("old", 1), "limited")],
        &[
            with_claims("two", 2),
            with_claims("one", 1),
            pod("none", "100m", "64Mi", json!({})),
        ],
        Strategy::LeastAllocated,
    );
    let got: Vec<String> = plan.decisions.iter().map(outcome).collect();
    assert_eq!(
        got,
        [
            "0/1 nodes are available: 1 node(s) exceed max volume count.",
            "limited",
            "limited"
        ]
    );
    // A node that declares no limit has none.
    let free = node("free", "8", "16Gi", json!({}));
    let (plan, _) = run(
        &[free],
        &[],
        &[with_claims("many", 40)],
        Strategy::LeastAllocated,
    );
    assert_eq!(outcome(&plan.decisions[0]), "free");
}

#[test]
fn a_pods_volumes_keep_it_where_they_can_be_used() {
    let nodes = [host("n1", "a"), host("n2", "b")];
    let term = |host: &str| {
        serde_json::from_value::<api::k8s_openapi::api::core::v1::NodeSelectorTerm>(json!(
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}))
        .unwrap()
    };
    let place = |volumes: Vec<crate::VolumeNodes>| {
        let mut s = Snapshot::new(&nodes, &[]);
        let d = Demand::of(&pod("p", "100m", "64Mi", json!({})))
            .unwrap()
            .with_volumes(volumes);
        outcome(&schedule(&mut s, &[d], &Config::default()).decisions[0])
    };
    // A bound volume on n2: the pod goes there; on no node at all: Kubernetes' reason.
    assert_eq!(
        place(vec![crate::VolumeNodes {
            terms: vec![term("n2")],
            bound: true
        }]),
        "n2"
    );
    assert_eq!(
        place(vec![crate::VolumeNodes {
            terms: vec![term("n9")],
            bound: true
        }]),
        "0/2 nodes are available: 2 node(s) had volume node affinity conflict."
    );
    // Volumes a claim could still bind to: any of them will do; none: no node will.
    assert_eq!(
        place(vec![crate::VolumeNodes {
            terms: vec![term("n9"), term("n1")],
            bound: false
        }]),
        "n1"
    );
    assert_eq!(
        place(vec![crate::VolumeNodes {
            terms: vec![],
            bound: false
        }]),
        "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."
    );
}
