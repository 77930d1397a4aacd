//! The controller runtime against a real API server (in-process, on the in-memory store, with
//! tokio's clock paused so that minutes pass at once): watches that the server ends are
//! resumed without listing again, and Lease-based leader election.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use api::k8s_openapi::api::coordination::v1::Lease;
use api::k8s_openapi::api::core::v1::ConfigMap;
use apiserver::{ApiServer, Identity};
use bytes::Bytes;
use client::{Client, ListParams, Watcher, watcher};
use controllers::leader::{self, Elector};
use serde_json::json;
use store::MemStore;
use tokio::sync::mpsc;

async fn server() -> (Arc<ApiServer>, Client) {
    let api = ApiServer::start(Arc::new(MemStore::new()), apiserver::Config::default())
        .await
        .unwrap();
    let c = common::client(&api, "test");
    for ns in ["default", "kube-system"] {
        common::namespace(&c, ns).await;
    }
    (api, c)
}

/// `apiserver_request_total` for configmaps with `verb`, summed over codes.
async fn requests(api: &ApiServer, verb: &str) -> u64 {
    let req = http::Request::get("/metrics").body(Bytes::new()).unwrap();
    let resp = api.handle(req, Identity::system("test")).await;
    let text = String::from_utf8(resp.into_body().collect().await.to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            l.contains("resource=\"configmaps\"") && l.contains(&format!("verb=\"{verb}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

#[tokio::test(start_paused = true)]
async fn watches_the_server_ends_are_resumed_without_listing_again() {
    let (api, c) = server().await;
    c.create(Some("default"), &configmap("before"))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut w = Watcher::<ConfigMap>::new(c.clone(), None, ListParams::default());
    tokio::spawn(async move {
        loop {
            let ev = w.next().await;
            if tx.send((ev, w.stats())).is_err() {
                return;
            }
        }
    });
    let (first, _) = rx.recv().await.unwrap();
    assert!(matches!(first, watcher::Event::Restarted(items) if items.len() == 1));

    // Half an hour: the server ends each watch after its timeout (5 to 10 minutes).
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    c.create(Some("default"), &configmap("after"))
        .await
        .unwrap();
    let (ev, stats) = rx.recv().await.unwrap();
    match ev {
        watcher::Event::Applied(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("after")),
        other => panic!("{other:?}"),
    }
    assert_eq!(stats.lists, 1, "{stats:?}");
    assert!(stats.watches >= 3, "{stats:?}");
    // The API server counts the same.
    assert_eq!(requests(&api, "LIST").await, 1);
    assert!(requests(&api, "WATCH").await >= 3);
}

fn config(identity: &str) -> leader::Config {
    leader::Config::new("kube-controller-manager", identity)
}

async fn lease(c: &Client) -> Lease {
    c.get::<Lease>(Some("kube-system"), "kube-controller-manager")
        .await
        .unwrap()
        .unwrap()
}

fn holder(l: &Lease) -> (String, i32) {
    let spec = l.spec.as_ref().unwrap();
    (
        spec.holder_identity.clone().unwrap_or_default(),
        spec.lease_transitions.unwrap_or_default(),
    )
}

#[tokio::test(start_paused = true)]
async fn one_candidate_leads_and_another_takes_over_when_it_stops_renewing() {
    let (api, c) = server().await;
    let a = Arc::new(Elector::new(common::client(&api, "a"), config("server-a")));
    let b = Arc::new(Elector::new(common::client(&api, "b"), config("server-b")));
    let (mut led_a, mut led_b) = (a.leadership(), b.leadership());
    let run_a = tokio::spawn({
        let a = a.clone();
        async move { a.run().await }
    });
    led_a.acquired().await;
    tokio::spawn({
        let b = b.clone();
        async move { b.run().await }
    });
    // Long past the lease duration, the leader renewing all along: b never leads.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(led_a.is_leading() && !led_b.is_leading());
    assert_eq!(holder(&lease(&c).await), ("server-a".into(), 0));

    // a stops (its process died): b takes over once the Lease has gone unrenewed for its
    // duration (15 s from the last renewal b saw, a retry period or two before a stopped),
    // and the Lease counts the transition.
    run_a.abort();
    let stopped = tokio::time::Instant::now();
    led_b.acquired().await;
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited <= Duration::from_secs(25),
        "{waited:?}"
    );
    assert_eq!(holder(&lease(&c).await), ("server-b".into(), 1));

    // A restart under b's identity takes the Lease back at once.
    let b2 = Arc::new(Elector::new(common::client(&api, "b"), config("server-b")));
    let mut led_b2 = b2.leadership();
    tokio::spawn(async move { b2.run().await });
    tokio::time::timeout(Duration::from_secs(1), led_b2.acquired())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_steps_down_and_a_released_lease_is_free_at_once() {
    let (api, c) = server().await;
    let a = Arc::new(Elector::new(common::client(&api, "a"), config("server-a")));
    let mut led = a.leadership();
    let run_a = tokio::spawn({
        let a = a.clone();
        async move { a.run().await }
    });
    led.acquired().await;
    // Someone else writes the Lease as theirs (an operator, a partitioned peer): a sees it
    // held by another at its next renewal and stops leading.
    let mut l = lease(&c).await;
    l.spec.as_mut().unwrap().holder_identity = Some("server-z".into());
    c.replace(Some("kube-system"), "kube-controller-manager", &l)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), led.lost())
        .await
        .unwrap();
    // While z's Lease stands (z never renews it), a does not lead ...
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!led.is_leading());
    // ... and takes it once it has gone stale.
    tokio::time::timeout(Duration::from_secs(30), led.acquired())
        .await
        .unwrap();
    assert_eq!(holder(&lease(&c).await), ("server-a".into(), 1));

    // Released on a clean stop: the next candidate need not wait out the duration.
    run_a.abort();
    a.release().await.unwrap();
    let b = Arc::new(Elector::new(common::client(&api, "b"), config("server-b")));
    let mut led_b = b.leadership();
    tokio::spawn(async move { b.run().await });
    tokio::time::timeout(Duration::from_secs(5), led_b.acquired())
        .await
        .unwrap();
}
