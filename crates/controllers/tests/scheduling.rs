//! The scheduler loop in an in-process cluster (the API server on the in-memory store, nodes
//! that exist only as objects): spreading, affinity and taints, reasons for pods that fit
//! nowhere, and a second chance when the cluster changes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::core::v1::{Node, Pod};
use apiserver::ApiServer;
use client::{Client, ListParams};
use controllers::scheduling::SchedulerLoop;
use serde_json::{Value, json};
use store::MemStore;

async fn cluster(strategy: scheduler::Strategy) -> Client {
    let api = ApiServer::start(Arc::new(MemStore::new()), apiserver::Config::default())
        .await
        .unwrap();
    let c = common::client(&api, "test");
    common::namespace(&c, "default").await;
    let cfg = scheduler::Config {
        strategy,
        ..Default::default()
    };
    tokio::spawn(Arc::new(SchedulerLoop::new(c.clone(), cfg)).run());
    c
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

async fn add_node(c: &Client, name: &str, zone: &str, extra: Value) {
    let mut v = json!({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    });
    merge(&mut v, extra);
    let n: Node = serde_json::from_value(v).unwrap();
    c.create(None, &n).await.unwrap();
}

async fn add_pod(c: &Client, name: &str, cpu: &str, extra: Value) {
    let mut spec = json!({"containers": [{"name": "c", "image": "i",
        "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]});
    merge(&mut spec, extra);
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    c.create(Some("default"), &p).await.unwrap();
}

async fn pod(c: &Client, name: &str) -> Pod {
    c.get::<Pod>(Some("default"), name).await.unwrap().unwrap()
}

async fn pods(c: &Client) -> Vec<Pod> {
    c.list::<Pod>(Some("default"), &ListParams::default())
        .await
        .unwrap()
        .0
}

/// Wait for `f` to hold, or fail saying `what`.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn waiting_message(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_spread_respect_affinity_and_taints_and_say_why_they_wait() {
    let c = cluster(scheduler::Strategy::LeastAllocated).await;
    add_node(&c, "a", "east", json!({})).await;
    add_node(&c, "b", "west", json!({})).await;
    add_node(
        &c,
        "gpu",
        "west",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
    )
    .await;
    for i in 0..4 {
        add_pod(&c, &format!("web-{i}"), "500m", json!({})).await;
    }
    add_pod(
        &c,
        "westerner",
        "100m",
        json!({"nodeSelector": {"topology.kubernetes.io/zone": "west"}}),
    )
    .await;
    add_pod(
        &c,
        "trainer",
        "1",
        json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}],
               "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                   {"nodeSelectorTerms": [{"matchFields": [
                       {"key": "metadata.name", "operator": "In", "values": ["gpu"]}]}]}}}}),
    )
    .await;
    add_pod(&c, "huge", "6", json!({})).await;

    eventually("the placeable pods are bound", || async {
        pods(&c)
            .await
            .iter()
            .filter(|p| node_of(p).is_some())
            .count()
            == 6
    })
    .await;
    // Least-allocated spreads the four web pods over the two untainted nodes; the pod that
    // must go west and the one that must go to the GPU node went there.
    let mut web = Vec::new();
    for i in 0..4 {
        web.push(node_of(&pod(&c, &format!("web-{i}")).await).unwrap());
    }
    assert!(web.iter().all(|n| n == "a" || n == "b"), "{web:?}");
    assert!(
        web.iter().any(|n| n == "a") && web.iter().any(|n| n == "b"),
        "{web:?}"
    );
    assert_eq!(node_of(&pod(&c, "westerner").await).as_deref(), Some("b"));
    assert_eq!(node_of(&pod(&c, "trainer").await).as_deref(), Some("gpu"));

    // Six CPUs fit on no node; the pod says so, in the scheduler's words.
    eventually("huge is marked unschedulable", || async {
        waiting_message(&pod(&c, "huge").await).is_some()
    })
    .await;
    assert_eq!(
        waiting_message(&pod(&c, "huge").await).unwrap(),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 Insufficient cpu."
    );
    assert_eq!(node_of(&pod(&c, "huge").await), None);

    // A node with room appears: the waiting pod goes there without waiting out its back-off.
    add_node(
        &c,
        "big",
        "east",
        json!({"status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "10"}}}),
    )
    .await;
    eventually("huge is bound to the new node", || async {
        node_of(&pod(&c, "huge").await).as_deref() == Some("big")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_allocated_packs_and_a_batch_never_overbooks() {
    let c = cluster(scheduler::Strategy::MostAllocated).await;
    for n in ["a", "b", "c"] {
        add_node(&c, n, "east", json!({})).await;
    }
    // Ten pods of 1 CPU on three 4-CPU nodes: all fit (4 + 4 + 2) and none is overbooked.
    for i in 0..10 {
        add_pod(&c, &format!("job-{i}"), "1", json!({})).await;
    }
    eventually("all ten are bound", || async {
        pods(&c)
            .await
            .iter()
            .filter(|p| node_of(p).is_some())
            .count()
            == 10
    })
    .await;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for p in pods(&c).await {
        *per_node.entry(node_of(&p).unwrap()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_node.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [2, 4, 4], "{per_node:?}");
    add_pod(&c, "one-more", "3", json!({})).await;
    eventually("one-more is marked unschedulable", || async {
        waiting_message(&pod(&c, "one-more").await).is_some()
    })
    .await;
    assert_eq!(
        waiting_message(&pod(&c, "one-more").await).unwrap(),
        "0/3 nodes are available: 3 Insufficient cpu."
    );
}
