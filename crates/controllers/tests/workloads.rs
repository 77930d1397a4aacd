//! The workload controllers, the scheduler loop and node lifecycle in an in-process cluster:
//! the API server on the in-memory store and nodes played by small fake agents that renew
//! their Lease, report bound pods running and ready, and finish deletions. A node "fails" when
//! its fake agent stops.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use api::k8s_openapi::api::coordination::v1::Lease;
use api::k8s_openapi::api::core::v1::{Node, Pod};
use apiserver::ApiServer;
use client::{Client, ClientError, ListParams};
use controllers::scheduling::SchedulerLoop;
use serde_json::json;
use store::MemStore;

async fn cluster() -> Client {
    let cfg = apiserver::Config {
        default_toleration_seconds: 1,
        ..Default::default()
    };
    let api = ApiServer::start(Arc::new(MemStore::new()), cfg)
        .await
        .unwrap();
    let c = common::client(&api, "test");
    for ns in ["default", "kube-node-lease"] {
        common::namespace(&c, ns).await;
    }
    tokio::spawn(Arc::new(SchedulerLoop::new(c.clone(), scheduler::Config::default())).run());
    controllers::start_controllers(
        &c,
        &|_| c.clone(),
        controllers::nodelifecycle::Config {
            grace: Duration::from_secs(1),
        },
        controllers::nodeipam::Config {
            cluster_cidrs: vec!["10.42.0.0/16".parse().unwrap()],
            node_mask_v4: 24,
            node_mask_v6: 64,
        },
        String::new(),
        controllers::leader::Leadership::Always,
    );
    c
}

/// A node played by a loop: it lives while `alive` is set.
async fn add_node(c: &Client, name: &str, taints: serde_json::Value) -> Arc<AtomicBool> {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "20"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap();
    c.create(None, &n).await.unwrap();
    let alive = Arc::new(AtomicBool::new(true));
    tokio::spawn(fake_agent(c.clone(), name.to_string(), alive.clone()));
    alive
}

async fn fake_agent(c: Client, node: String, alive: Arc<AtomicBool>) {
    while alive.load(Ordering::Relaxed) {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": node},
            "spec": {"holderIdentity": node, "renewTime": now, "leaseDurationSeconds": 40}}))
        .unwrap();
        match c
            .get::<Lease>(Some("kube-node-lease"), &node)
            .await
            .unwrap()
        {
            Some(mut old) => {
                old.spec = lease.spec;
                let _ = c.replace(Some("kube-node-lease"), &node, &old).await;
            }
            None => {
                let _ = c.create(Some("kube-node-lease"), &lease).await;
            }
        }
        let params = ListParams {
            field_selector: Some(format!("spec.nodeName={node}")),
            ..Default::default()
        };
        let (pods, _) = c.list::<Pod>(None, &params).await.unwrap();
        for p in pods {
            let ns = p.metadata.namespace.clone().unwrap();
            let name = p.metadata.name.clone().unwrap();
            if p.metadata.deletion_timestamp.is_some() {
                let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
                let _ = c
                    .delete_with(&path, &json!({"gracePeriodSeconds": 0}))
                    .await;
                continue;
            }
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                let now = jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let status = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                let _ = c.patch_status::<Pod>(Some(&ns), &name, &status).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn live_pods(c: &Client, selector: &str) -> Vec<Pod> {
    let params = ListParams {
        label_selector: Some(selector.into()),
        ..Default::default()
    };
    let (pods, _) = c.list::<Pod>(Some("default"), &params).await.unwrap();
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn per_node(pods: &[Pod]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods {
        let n = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

async fn deploy(c: &Client, name: &str, replicas: i32) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "i",
                                  "resources": {"requests": {"cpu": "100m"}}}]}}}}))
    .unwrap();
    c.create(Some("default"), &d).await.unwrap();
}

async fn available(c: &Client, name: &str) -> i32 {
    c.get::<Deployment>(Some("default"), name)
        .await
        .unwrap()
        .and_then(|d| d.status?.available_replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_spreads_and_comes_back_after_a_node_fails() {
    let c = cluster().await;
    let _a = add_node(&c, "node-a", json!([])).await;
    let b = add_node(&c, "node-b", json!([])).await;
    let _c = add_node(&c, "node-c", json!([])).await;
    deploy(&c, "web", 6).await;
    eventually("6 available", async || {
        (available(&c, "web").await == 6).then_some(())
    })
    .await;
    let spread = per_node(&live_pods(&c, "app=web").await);
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{spread:?}"
    );

    // node-b stops renewing its Lease.
    b.store(false, Ordering::Relaxed);
    let node = eventually("node-b unreachable", async || {
        let n = c.get::<Node>(None, "node-b").await.unwrap()?;
        let tainted = n
            .spec
            .as_ref()?
            .taints
            .as_ref()?
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
        tainted.then_some(n)
    })
    .await;
    let ready = node
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));

    // Its pods tolerate that for 1 s (this cluster's default), then are evicted and replaced
    // on the nodes that still work.
    eventually("pods replaced away from node-b", async || {
        let pods = live_pods(&c, "app=web").await;
        let spread = per_node(&pods);
        (pods.len() == 6 && !spread.contains_key("node-b") && available(&c, "web").await == 6)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_skip_tainted_nodes_and_deleting_the_set_removes_them() {
    let c = cluster().await;
    add_node(&c, "node-a", json!([])).await;
    add_node(&c, "node-b", json!([])).await;
    add_node(
        &c,
        "gpu",
        json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    )
    .await;
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "logs"},
        "spec": {"selector": {"matchLabels": {"app": "logs"}},
                 "template": {"metadata": {"labels": {"app": "logs"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}}}))
    .unwrap();
    c.create(Some("default"), &ds).await.unwrap();
    let pods = eventually("a daemon on each untainted node", async || {
        let pods = live_pods(&c, "app=logs").await;
        let on: Vec<String> = per_node(&pods).into_keys().collect();
        (on == ["node-a", "node-b"]).then_some(pods)
    })
    .await;
    assert_eq!(pods.len(), 2);
    let st = eventually("status", async || {
        let ds = c.get::<DaemonSet>(Some("default"), "logs").await.unwrap()?;
        let st = ds.status?;
        (st.number_ready == 2).then_some(st)
    })
    .await;
    assert_eq!(st.desired_number_scheduled, 2);
    // A node joining gets its daemon.
    add_node(&c, "node-d", json!([])).await;
    eventually("a daemon on node-d", async || {
        per_node(&live_pods(&c, "app=logs").await)
            .contains_key("node-d")
            .then_some(())
    })
    .await;
    // Background deletion: the garbage collector removes the daemons after the set.
    c.delete::<DaemonSet>(Some("default"), "logs")
        .await
        .unwrap();
    eventually("daemons gone", async || {
        live_pods(&c, "app=logs").await.is_empty().then_some(())
    })
    .await;
}

async fn create_json<K>(
    c: &Client,
    ns: Option<&str>,
    v: serde_json::Value,
) -> Result<K, ClientError>
where
    K: api::k8s_openapi::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    let obj: K = serde_json::from_value(v).unwrap();
    c.create(ns, &obj).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_the_fewest_lower_ones() {
    let c = cluster().await;
    add_node(&c, "only", json!([])).await;
    priority_classes(&c, &[("low", 10), ("high", 1000)]).await;
    deploy_with_class(&c, "batch", 4, "low").await;
    eventually("the node full of batch pods", async || {
        let n = available(&c, "batch").await;
        (n == 4).then_some(())
    })
    .await;
    let urgent = create_json::<Pod>(&c, Some("default"), json!({
        "metadata": {"name": "urgent"},
        "spec": {"priorityClassName": "high",
                 "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}}))
    .await
    .unwrap();
    // Admission resolved the class.
    assert_eq!(urgent.spec.as_ref().unwrap().priority, Some(1000));
    let bound = eventually("the urgent pod to run", async || {
        let p = c.get::<Pod>(Some("default"), "urgent").await.unwrap()?;
        p.spec.as_ref()?.node_name.clone()
    })
    .await;
    assert_eq!(bound, "only");
    // Exactly two batch pods made room; their replacements wait, they do not take it back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch = live_pods(&c, "app=batch").await;
    let running: Vec<_> = batch
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .collect();
    assert_eq!(running.len(), 2, "{batch:?}");
    assert_eq!(batch.len(), 4);
    // A class that does not exist is refused.
    let err = create_json::<Pod>(
        &c,
        Some("default"),
        json!({
        "metadata": {"name": "nope"},
        "spec": {"priorityClassName": "missing", "containers": [{"name": "c", "image": "i"}]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(403));
    assert!(
        err.to_string()
            .contains("no PriorityClass with name missing was found"),
        "{err}"
    );
}

async fn pods_named(c: &Client) -> Vec<(String, Option<String>, bool)> {
    let (pods, _) = c
        .list::<Pod>(Some("default"), &ListParams::default())
        .await
        .unwrap();
    pods.into_iter()
        .map(|p| {
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.spec.and_then(|s| s.node_name),
                p.metadata.deletion_timestamp.is_some(),
            )
        })
        .collect()
}

/// PriorityClasses by (name, value).
async fn priority_classes(c: &Client, classes: &[(&str, i32)]) {
    use api::k8s_openapi::api::scheduling::v1::PriorityClass;
    for (name, value) in classes {
        create_json::<PriorityClass>(c, None, json!({"metadata": {"name": name}, "value": value}))
            .await
            .unwrap();
    }
}

/// A Deployment of `replicas` pods of one CPU each, of priority class `class`.
async fn deploy_with_class(c: &Client, name: &str, replicas: i32, class: &str) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"priorityClassName": class,
                                       "containers": [{"name": "c", "image": "i",
                                           "resources": {"requests": {"cpu": "1"}}}]}}}}))
    .unwrap();
    c.create(Some("default"), &d).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_spares_pods_a_disruption_budget_protects() {
    use api::k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let c = cluster().await;
    add_node(&c, "only", json!([])).await;
    priority_classes(&c, &[("low", 10), ("mid", 20), ("high", 1000)]).await;
    // The least important pods are the guarded ones: a budget allows none of them to go.
    // The spare ones are bare pods, so that no replacement of theirs preempts in turn.
    deploy_with_class(&c, "guarded", 2, "low").await;
    for i in 0..2 {
        create_json::<Pod>(&c, Some("default"), json!({
            "metadata": {"name": format!("spare-{i}"), "labels": {"app": "spare"}},
            "spec": {"priorityClassName": "mid",
                     "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]}}))
        .await
        .unwrap();
    }
    create_json::<PodDisruptionBudget>(
        &c,
        Some("default"),
        json!({"metadata": {"name": "guarded"},
               "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}}),
    )
    .await
    .unwrap();
    eventually(
        "the node full, the budget counting two healthy pods",
        async || {
            let spare = live_pods(&c, "app=spare").await;
            let placed = spare
                .iter()
                .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());
            let full = available(&c, "guarded").await == 2 && spare.len() == 2 && placed;
            let pdb = c
                .get::<PodDisruptionBudget>(Some("default"), "guarded")
                .await
                .unwrap()?;
            let st = pdb.status?;
            (full && st.current_healthy == 2 && st.disruptions_allowed == 0).then_some(())
        },
    )
    .await;
    create_json::<Pod>(&c, Some("default"), json!({
        "metadata": {"name": "urgent"},
        "spec": {"priorityClassName": "high",
                 "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}}))
    .await
    .unwrap();
    eventually("the urgent pod to run", async || {
        let p = c.get::<Pod>(Some("default"), "urgent").await.unwrap()?;
        p.spec.as_ref()?.node_name.clone()
    })
    .await;
    let bound = |pods: Vec<Pod>| {
        pods.iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count()
    };
    // The more important but unprotected pods made room; the guarded ones all still run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = pods_named(&c).await;
    assert_eq!(bound(live_pods(&c, "app=guarded").await), 2, "{all:?}");
    assert_eq!(live_pods(&c, "app=spare").await.len(), 0, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_what_exceeds_them_and_limit_ranges_fill_in_defaults() {
    use api::k8s_openapi::api::apps::v1::ReplicaSet;
    use api::k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
    let c = cluster().await;
    add_node(&c, "node-a", json!([])).await;
    create_json::<LimitRange>(
        &c,
        Some("default"),
        json!({
        "metadata": {"name": "defaults"},
        "spec": {"limits": [{"type": "Container", "defaultRequest": {"cpu": "250m"},
                             "default": {"cpu": "500m"}, "max": {"cpu": "1"}}]}}),
    )
    .await
    .unwrap();
    create_json::<ResourceQuota>(
        &c,
        Some("default"),
        json!({
        "metadata": {"name": "small"},
        "spec": {"hard": {"pods": "3", "requests.cpu": "1"}}}),
    )
    .await
    .unwrap();
    // Defaults from the LimitRange.
    let p = create_json::<Pod>(
        &c,
        Some("default"),
        json!({
        "metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .await
    .unwrap();
    let res = p.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(res.requests.unwrap()["cpu"].0, "250m");
    assert_eq!(res.limits.unwrap()["cpu"].0, "500m");
    // Above the LimitRange's max.
    let err = create_json::<Pod>(&c, Some("default"), json!({
        "metadata": {"name": "greedy"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "2"}}}]}}))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(403));
    assert!(
        err.to_string()
            .contains("maximum cpu usage per Container is 1, but limit is 2"),
        "{err}"
    );
    // A deployment asking more than the quota holds gets what fits, and says why not more.
    deploy(&c, "web", 4).await;
    let rs = eventually("the replica set to report the quota", async || {
        let (sets, _) = c
            .list::<ReplicaSet>(Some("default"), &ListParams::default())
            .await
            .unwrap();
        let rs = sets.into_iter().next()?;
        let cond = rs
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "ReplicaFailure")?
            .clone();
        Some((rs, cond))
    })
    .await;
    assert!(
        rs.1.message
            .as_deref()
            .unwrap_or("")
            .contains("exceeded quota: small"),
        "{:?}",
        rs.1
    );
    let web = live_pods(&c, "app=web").await;
    // 250m were taken by "plain"; three of web's 100m pods fit under 1 CPU, but pods: 3 allows two.
    assert_eq!(web.len(), 2);
    let used = eventually("quota usage", async || {
        let q = c
            .get::<ResourceQuota>(Some("default"), "small")
            .await
            .unwrap()?;
        let used = q.status?.used?;
        (used.get("pods").map(|q| q.0.as_str()) == Some("3")).then_some(used)
    })
    .await;
    assert_eq!(used["requests.cpu"].0, "450m");
}

/// Every node gets its own pod range from the cluster's; the API keeps it fixed; a deleted
/// node's range goes to the next node that needs one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_distinct_pod_ranges_that_do_not_change() {
    let c = cluster().await;
    let mut alive = Vec::new();
    for n in ["ipam-a", "ipam-b", "ipam-c"] {
        alive.push(add_node(&c, n, json!([])).await);
    }
    let range = |n: &'static str| {
        let c = c.clone();
        async move {
            let node = c.get::<Node>(None, n).await.unwrap()?;
            let spec = node.spec?;
            let list = spec.pod_cidrs?;
            assert_eq!(spec.pod_cidr.as_deref(), list.first().map(String::as_str));
            list.first().cloned()
        }
    };
    let mut got = Vec::new();
    for n in ["ipam-a", "ipam-b", "ipam-c"] {
        got.push(eventually(&format!("{n} has a range"), async || range(n).await).await);
    }
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]);

    // A range, once given, is not changed by a client.
    let err = c
        .merge_patch::<Node>(
            None,
            "ipam-a",
            &json!({"spec": {"podCIDR": "10.42.9.0/24", "podCIDRs": ["10.42.9.0/24"]}}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not change podCIDR"), "{err}");

    // The range of a node that goes is given again.
    let freed = got[1].clone();
    c.delete::<Node>(None, "ipam-b").await.unwrap();
    alive[1].store(false, Ordering::Relaxed);
    alive.push(add_node(&c, "ipam-d", json!([])).await);
    let d = eventually("ipam-d has a range", async || range("ipam-d").await).await;
    assert_eq!(d, freed);
}
