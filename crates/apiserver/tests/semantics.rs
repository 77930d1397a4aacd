//! API semantics through `ApiServer::handle`, on the in-memory store: what clients rely on
//! beyond what kubectl shows.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, Config, Identity};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use store::MemStore;

struct Api(Arc<ApiServer>);

async fn start() -> Api {
    start_with(Config::default()).await
}

async fn start_with(config: Config) -> Api {
    let api = ApiServer::start(Arc::new(MemStore::new()), config)
        .await
        .unwrap();
    let a = Api(api);
    for ns in ["default", "other"] {
        a.call(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": ns}})),
        )
        .await;
        // What the namespace controller would make: the account pods run as.
        a.call(
            Method::POST,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            Some(json!({"metadata": {"name": "default"}})),
        )
        .await;
    }
    a
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        ct: &str,
        body: Option<Value>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.0.handle(req, Identity::system("test")).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, v)
    }

    /// The reply's text, as a client reads it.
    async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map(|b| Bytes::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.0.handle(req, Identity::system("test")).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await;
        (parts.status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, _, v) = self.send(method, path, "application/json", body).await;
        (s, v)
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method.clone(), path, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    /// Read a watch until `n` events arrived (bookmarks left out).
    async fn watch(&self, path: &str, n: usize) -> Vec<(String, Value)> {
        self.watch_all(path, n)
            .await
            .into_iter()
            .filter(|(t, _)| t != "BOOKMARK")
            .collect()
    }

    /// Read a watch until `n` non-bookmark events arrived, keeping everything seen.
    async fn watch_all(&self, path: &str, n: usize) -> Vec<(String, Value)> {
        let req = Request::builder().uri(path).body(Bytes::new()).unwrap();
        let resp = self.0.handle(req, Identity::system("test")).await;
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            let frame = tokio::time::timeout(
                Duration::from_secs(5),
                http_body_util::BodyExt::frame(&mut body),
            )
            .await
            .expect("watch event in time")
            .expect("watch open")
            .unwrap();
            buf.extend_from_slice(&frame.into_data().unwrap());
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&line).unwrap();
                let ty = v["type"].as_str().unwrap().to_string();
                if ty != "BOOKMARK" {
                    seen += 1;
                }
                out.push((ty, v["object"].clone()));
            }
        }
        out
    }
}

fn cm(name: &str, labels: Value) -> Option<Value> {
    Some(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}))
}

#[tokio::test]
async fn reads_see_acknowledged_writes() {
    let a = start().await;
    for i in 0..50 {
        let created = a
            .ok(
                Method::POST,
                "/api/v1/namespaces/default/configmaps",
                cm(&format!("c{i}"), json!({})),
            )
            .await;
        let rv: u64 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let got = a
            .ok(
                Method::GET,
                &format!("/api/v1/namespaces/default/configmaps/c{i}"),
                None,
            )
            .await;
        assert_eq!(got["metadata"]["uid"], created["metadata"]["uid"]);
        let list = a
            .ok(Method::GET, "/api/v1/namespaces/default/configmaps", None)
            .await;
        let list_rv: u64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(list_rv >= rv);
        assert_eq!(list["items"].as_array().unwrap().len(), i + 1);
    }
}

#[tokio::test]
async fn pagination_is_consistent_at_the_first_page() {
    let a = start().await;
    for i in 0..5 {
        a.ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            cm(&format!("p{i}"), json!({})),
        )
        .await;
    }
    let first = a
        .ok(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=2",
            None,
        )
        .await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    // Changes after the first page do not show up in later pages.
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        cm("p9", json!({})),
    )
    .await;
    a.ok(
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/p4",
        None,
    )
    .await;
    let mut names: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut next = Some(token);
    while let Some(t) = next {
        let page = a
            .ok(
                Method::GET,
                &format!("/api/v1/namespaces/default/configmaps?limit=2&continue={t}"),
                None,
            )
            .await;
        assert_eq!(
            page["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        next = page["metadata"]["continue"].as_str().map(str::to_string);
    }
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    let (s, v) = a
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=2&continue=bogus",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn filtered_watches_see_objects_move_in_and_out() {
    let a = start().await;
    let list = a
        .ok(Method::GET, "/api/v1/namespaces/default/configmaps", None)
        .await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        cm("w", json!({"team": "a"})),
    )
    .await;
    a.ok(
        Method::POST,
        "/api/v1/namespaces/other/configmaps",
        cm("elsewhere", json!({"team": "a"})),
    )
    .await;
    let patch = |team: &str| json!({"metadata": {"labels": {"team": team}}});
    for team in ["b", "a"] {
        let (s, _, v) = a
            .send(
                Method::PATCH,
                "/api/v1/namespaces/default/configmaps/w",
                "application/merge-patch+json",
                Some(patch(team)),
            )
            .await;
        assert!(s.is_success(), "{v}");
    }
    a.ok(
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/w",
        None,
    )
    .await;
    let events = a
        .watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&labelSelector=team%3Da&resourceVersion={rv}"), 4)
        .await;
    let kinds: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        kinds,
        ["ADDED", "DELETED", "ADDED", "DELETED"],
        "leaving the selector reads as a deletion"
    );
    assert!(
        events
            .iter()
            .all(|(_, o)| o["metadata"]["namespace"] == "default")
    );
}

#[tokio::test]
async fn watch_from_a_forgotten_revision_is_410() {
    let store = Arc::new(MemStore::new());
    let first = Api(ApiServer::start(store.clone(), Config::default())
        .await
        .unwrap());
    first
        .ok(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "default"}})),
        )
        .await;
    let early = first
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            cm("old", json!({})),
        )
        .await;
    let early_rv = early["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    first
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            cm("new", json!({})),
        )
        .await;
    store::Store::compact(&*store, store::Store::revision(&*store).await.unwrap())
        .await
        .unwrap();
    // A server started after the compaction cannot replay from before it.
    let second = Api(ApiServer::start(store, Config::default()).await.unwrap());
    let events = second
        .watch(
            &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={early_rv}"),
            1,
        )
        .await;
    assert_eq!(events[0].0, "ERROR");
    assert_eq!(events[0].1["code"], 410);
    assert_eq!(events[0].1["reason"], "Expired");
}

#[tokio::test]
async fn a_revision_from_the_future_times_out() {
    let a = start().await;
    let req = Request::builder()
        .uri("/api/v1/namespaces/default/configmaps?resourceVersion=999999")
        .body(Bytes::new())
        .unwrap();
    let started = std::time::Instant::now();
    let resp = a.0.handle(req, Identity::system("t")).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn generation_follows_spec_and_status_is_separate() {
    let a = start().await;
    let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let created = a
        .ok(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            Some(d),
        )
        .await;
    assert_eq!(created["metadata"]["generation"], 1);
    let path = "/apis/apps/v1/namespaces/default/deployments/d";
    // A status write through the main resource is ignored; a label change is not a spec change.
    let (_, _, v) = a
        .send(
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(json!({"metadata": {"labels": {"x": "y"}}, "status": {"replicas": 9}})),
        )
        .await;
    assert_eq!(v["metadata"]["generation"], 1);
    assert!(v["status"].get("replicas").is_none());
    let (_, _, v) = a
        .send(Method::PATCH, &format!("{path}/status"), "application/merge-patch+json", Some(json!({"status": {"replicas": 3, "observedGeneration": 1}, "spec": {"replicas": 50}})))
        .await;
    assert_eq!(v["status"]["replicas"], 3);
    assert_eq!(
        v["spec"]["replicas"], 1,
        "the status subresource cannot change the spec"
    );
    let (_, _, v) = a
        .send(
            Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 2}})),
        )
        .await;
    assert_eq!(v["metadata"]["generation"], 2);
    assert_eq!(v["status"]["replicas"], 3, "a spec write keeps the status");
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let a = start().await;
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"metadata": {"name": "f", "finalizers": ["example.com/keep"]}})),
    )
    .await;
    let (s, v) = a
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/f",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["metadata"]["deletionTimestamp"].is_string());
    let still = a
        .ok(Method::GET, "/api/v1/namespaces/default/configmaps/f", None)
        .await;
    assert!(still["metadata"]["deletionTimestamp"].is_string());
    // Edits are still allowed; removing the last finalizer completes the deletion.
    let (s, _, _) = a
        .send(
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/f",
            "application/merge-patch+json",
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    assert!(s.is_success());
    let (s, _) = a
        .call(Method::GET, "/api/v1/namespaces/default/configmaps/f", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully() {
    let a = start().await;
    let pod = |name: &str, node: Option<&str>| {
        let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}], "terminationGracePeriodSeconds": 20}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        Some(p)
    };
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        pod("unbound", None),
    )
    .await;
    let (s, _) = a
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/unbound",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "an unscheduled pod goes at once");
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        pod("bound", Some("node-1")),
    )
    .await;
    let (s, v) = a
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/bound",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 20);
    let (s, _) = a
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/bound",
            Some(json!({"gracePeriodSeconds": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the node's agent finishes with grace 0");
    let (s, _) = a
        .call(Method::GET, "/api/v1/namespaces/default/pods/bound", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn service_addresses_are_unique_and_released() {
    let a = Arc::new(start().await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let svc = json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
            a.ok(Method::POST, "/api/v1/namespaces/default/services", Some(svc)).await
        }));
    }
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for t in tasks {
        let s = t.await.unwrap();
        assert!(ips.insert(s["spec"]["clusterIP"].as_str().unwrap().to_string()));
        assert!(ports.insert(s["spec"]["ports"][0]["nodePort"].as_i64().unwrap()));
    }
    // A requested address that is taken is refused; freed, it can be taken again.
    let taken = a
        .ok(Method::GET, "/api/v1/namespaces/default/services/s0", None)
        .await["spec"]["clusterIP"]
        .clone();
    let want = json!({"metadata": {"name": "mine"}, "spec": {"clusterIP": taken, "ports": [{"port": 80}]}});
    let (s, v) = a
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(want.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["message"].as_str().unwrap().contains("already allocated"));
    a.ok(
        Method::DELETE,
        "/api/v1/namespaces/default/services/s0",
        None,
    )
    .await;
    let mine = a
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(want),
        )
        .await;
    assert_eq!(mine["spec"]["clusterIP"], taken);
}

#[tokio::test]
async fn dual_stack_services_get_an_address_per_family_and_give_it_back() {
    let a = start_with(Config {
        service_cidrs: vec![
            "10.43.0.0/16".parse().unwrap(),
            "fd43::/112".parse().unwrap(),
        ],
        ..Config::default()
    })
    .await;
    let svcs = "/api/v1/namespaces/default/services";
    let spec = |extra: Value| {
        let mut spec = json!({"selector": {"app": "web"}, "ports": [{"port": 80}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    // Default: one address, of the primary family.
    let one = a
        .ok(
            Method::POST,
            svcs,
            Some(json!({"metadata": {"name": "one"}, "spec": spec(json!({}))})),
        )
        .await;
    assert_eq!(one["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(one["spec"]["ipFamilyPolicy"], "SingleStack");
    // PreferDualStack: both, primary first.
    let both = a
        .ok(
            Method::POST,
            svcs,
            Some(json!({"metadata": {"name": "both"}, "spec": spec(json!({"ipFamilyPolicy": "PreferDualStack"}))})),
        )
        .await;
    assert_eq!(both["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let ips = both["spec"]["clusterIPs"].as_array().unwrap().clone();
    assert_eq!(ips.len(), 2, "{both}");
    assert_eq!(both["spec"]["clusterIP"], ips[0]);
    let v6: std::net::Ipv6Addr = ips[1].as_str().unwrap().parse().unwrap();
    assert_eq!(v6.segments()[..7], [0xfd43, 0, 0, 0, 0, 0, 0]);
    // IPv6 only, by family.
    let six = a
        .ok(
            Method::POST,
            svcs,
            Some(
                json!({"metadata": {"name": "six"}, "spec": spec(json!({"ipFamilies": ["IPv6"]}))}),
            ),
        )
        .await;
    assert!(
        six["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("fd43::"),
        "{six}"
    );
    // Its address cannot be asked for twice.
    let (s, v) = a
        .call(
            Method::POST,
            svcs,
            Some(
                json!({"metadata": {"name": "again"}, "spec": spec(json!({"clusterIP": ips[1]}))}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Bad combinations are refused with the field named.
    for (extra, field) in [
        (
            json!({"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "RequireDualStack"}),
            "spec.ipFamilies[1]",
        ),
        (
            json!({"ipFamilyPolicy": "Sometimes"}),
            "spec.ipFamilyPolicy",
        ),
        (
            json!({"clusterIPs": ["10.43.9.9", "10.43.9.10"], "ipFamilyPolicy": "RequireDualStack"}),
            "spec.clusterIPs[1]",
        ),
        (
            json!({"ipFamilies": ["IPv4", "IPv6"]}),
            "spec.ipFamilyPolicy",
        ),
    ] {
        let (s, v) = a
            .call(
                Method::POST,
                svcs,
                Some(json!({"metadata": {"name": "bad"}, "spec": spec(extra.clone())})),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{extra}: {v}");
        let causes = v["details"]["causes"].to_string();
        assert!(causes.contains(field), "{extra}: {v}");
    }
    // Downgrade: SingleStack gives the IPv6 address back, and another Service can take it.
    let path = format!("{svcs}/both");
    let set_policy = |policy: &'static str| {
        a.send(
            Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(json!({"spec": {"ipFamilyPolicy": policy}})),
        )
    };
    let down = set_policy("SingleStack").await.2;
    assert_eq!(down["spec"]["clusterIPs"], json!([ips[0]]), "{down}");
    assert_eq!(down["spec"]["ipFamilies"], json!(["IPv4"]));
    let taker = a
        .ok(
            Method::POST,
            svcs,
            Some(json!({"metadata": {"name": "taker"}, "spec": spec(json!({"ipFamilies": ["IPv6"], "clusterIP": ips[1]}))})),
        )
        .await;
    assert_eq!(taker["spec"]["clusterIP"], ips[1]);
    // Upgrade: PreferDualStack gains a new IPv6 address and keeps its IPv4 one.
    let up = set_policy("PreferDualStack").await.2;
    let now = up["spec"]["clusterIPs"].as_array().unwrap();
    assert_eq!(now.len(), 2, "{up}");
    assert_eq!(now[0], ips[0]);
    assert_ne!(now[1], ips[1]);
    // On a cluster with one family, RequireDualStack cannot be met.
    let single = start().await;
    let (s, v) = single
        .call(
            Method::POST,
            svcs,
            Some(json!({"metadata": {"name": "x"}, "spec": spec(json!({"ipFamilyPolicy": "RequireDualStack"}))})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not configured for dual-stack"),
        "{v}"
    );
}

#[tokio::test]
async fn server_side_apply_creates_and_reports_conflicts() {
    let a = start().await;
    let path = "/api/v1/namespaces/default/configmaps/ssa?fieldManager=tool-a";
    let config = |v: &str| {
        Some(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": v}}),
        )
    };
    let (s, _, v) = a
        .send(
            Method::PATCH,
            path,
            "application/apply-patch+yaml",
            config("1"),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let other = "/api/v1/namespaces/default/configmaps/ssa?fieldManager=tool-b";
    let (s, _, v) = a
        .send(
            Method::PATCH,
            other,
            "application/apply-patch+yaml",
            config("2"),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["details"]["causes"][0]["field"], ".data.k");
    let (s, _, v) = a
        .send(
            Method::PATCH,
            &format!("{other}&force=true"),
            "application/apply-patch+yaml",
            config("2"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"]["k"], "2");
    // YAML bodies are accepted for apply.
    let yaml =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  k: \"2\"\n  y: yaml\n";
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(other)
        .header("content-type", "application/apply-patch+yaml")
        .body(Bytes::from(yaml))
        .unwrap();
    let resp = a.0.handle(req, Identity::system("t")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_fields_warn_or_fail() {
    let a = start().await;
    let body = Some(json!({"metadata": {"name": "u"}, "data": {}, "extra": 1}));
    let (s, headers, _) = a
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            body.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let warning = headers.get("warning").unwrap().to_str().unwrap();
    assert!(warning.contains("unknown field"), "{warning}");
    let (s, _, v) = a
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            "application/json",
            Some(json!({"metadata": {"name": "u2"}, "extra": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"extra\"")
    );
}

#[tokio::test]
async fn delete_collection_by_label() {
    let a = start().await;
    for (n, team) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        a.ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            cm(n, json!({"team": team})),
        )
        .await;
    }
    let deleted = a
        .ok(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps?labelSelector=team%3Da",
            None,
        )
        .await;
    assert_eq!(deleted["items"].as_array().unwrap().len(), 2);
    let left = a
        .ok(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?labelSelector=team",
            None,
        )
        .await;
    let names: Vec<&str> = left["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b1"]);
}

#[tokio::test]
async fn bookmarks_and_initial_events() {
    let config = Config {
        bookmark_every: Duration::from_millis(200),
        ..Config::default()
    };
    let a = Api(ApiServer::start(Arc::new(MemStore::new()), config)
        .await
        .unwrap());
    a.ok(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "default"}})),
    )
    .await;
    let made = a
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            cm("b", json!({})),
        )
        .await;
    // sendInitialEvents: the current objects, then a bookmark marking their end.
    let events = a
        .watch_all("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan", 1)
        .await;
    assert_eq!(events[0].0, "ADDED");
    // Read on until the end-of-initial-events bookmark and one periodic bookmark arrive.
    let req = Request::builder()
        .uri("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true")
        .body(Bytes::new())
        .unwrap();
    let mut body = a.0.handle(req, Identity::system("t")).await.into_body();
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    while lines.len() < 3 {
        let frame = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::frame(&mut body),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        buf.extend_from_slice(&frame.into_data().unwrap());
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            lines.push(serde_json::from_slice::<Value>(&line).unwrap());
        }
    }
    assert_eq!(lines[0]["type"], "ADDED");
    assert_eq!(lines[1]["type"], "BOOKMARK");
    assert_eq!(
        lines[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(lines[2]["type"], "BOOKMARK");
    let rv: u64 = lines[2]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let made_rv: u64 = made["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv >= made_rv, "a bookmark never goes back");
    assert_eq!(lines[2]["object"]["kind"], "ConfigMap");
}

#[tokio::test]
async fn autoscalers_are_served_in_v1_and_v2_alike() {
    let a = start().await;
    let v1 = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers";
    let v2 = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";
    let empty = a.ok(Method::GET, v1, None).await;
    let rv = empty["metadata"]["resourceVersion"].as_str().unwrap();
    let watch_path = format!("{v1}?watch=true&resourceVersion={rv}");
    let watch = a.watch(&watch_path, 2);
    let created = async {
        // What kubectl 1.27's `autoscale` sends.
        let made = a
            .ok(
                Method::POST,
                v1,
                Some(json!({
                    "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "web"},
                    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                             "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60}
                })),
            )
            .await;
        assert_eq!(made["apiVersion"], "autoscaling/v1");
        assert_eq!(made["spec"]["targetCPUUtilizationPercentage"], 60);
        // The same object, stored and read as v2.
        let stored = a.ok(Method::GET, &format!("{v2}/web"), None).await;
        assert_eq!(stored["apiVersion"], "autoscaling/v2");
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            60
        );
        // v2 adds a memory metric; a v1 merge patch changes only the CPU target.
        let mut both = stored.clone();
        both["spec"]["metrics"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Resource", "resource": {"name": "memory",
                         "target": {"type": "AverageValue", "averageValue": "512Mi"}}}));
        a.ok(Method::PUT, &format!("{v2}/web"), Some(both)).await;
        let (s, _, patched) = a
            .send(
                Method::PATCH,
                &format!("{v1}/web"),
                "application/merge-patch+json",
                Some(json!({"spec": {"targetCPUUtilizationPercentage": 75}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{patched}");
        assert_eq!(patched["spec"]["targetCPUUtilizationPercentage"], 75);
        let stored = a.ok(Method::GET, &format!("{v2}/web"), None).await;
        let metrics = stored["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2, "{stored}");
        assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 75);
        assert_eq!(metrics[1]["resource"]["name"], "memory");
        assert!(stored["metadata"]["annotations"].is_null(), "{stored}");
    };
    let (events, ()) = tokio::join!(watch, created);
    assert_eq!(events[0].0, "ADDED");
    for (_, obj) in &events {
        assert_eq!(obj["apiVersion"], "autoscaling/v1", "{obj}");
    }

    let list = a.ok(Method::GET, v1, None).await;
    assert_eq!(list["kind"], "HorizontalPodAutoscalerList");
    assert_eq!(list["apiVersion"], "autoscaling/v1");
    assert_eq!(list["items"][0]["apiVersion"], "autoscaling/v1");
    assert_eq!(
        list["items"][0]["spec"]["targetCPUUtilizationPercentage"],
        75
    );

    // Unknown fields are judged against v1, and server-side apply is a v2 matter.
    let (s, _, v) = a
        .send(
            Method::POST,
            &format!("{v1}?fieldValidation=Strict"),
            "application/json",
            Some(
                json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                        "metadata": {"name": "x"},
                        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"},
                                 "maxReplicas": 2, "metrics": []}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.metrics\""),
        "{v}"
    );
    let (s, _, v) = a
        .send(
            Method::PATCH,
            &format!("{v1}/web?fieldManager=t"),
            "application/apply-patch+yaml",
            Some(
                json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                        "metadata": {"name": "web"}, "spec": {"maxReplicas": 3}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");

    // Discovery offers both, v2 preferred.
    let group = a.ok(Method::GET, "/apis/autoscaling", None).await;
    assert_eq!(group["preferredVersion"]["version"], "v2");
    let versions: Vec<&str> = group["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v2", "v1"]);
    let res = a.ok(Method::GET, "/apis/autoscaling/v1", None).await;
    assert_eq!(res["resources"][0]["name"], "horizontalpodautoscalers");
    a.ok(Method::DELETE, &format!("{v1}/web"), None).await;
    let (s, _) = a.call(Method::GET, &format!("{v2}/web"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// What clients compare byte for byte: objects in Kubernetes' field order with a final
/// newline, the delete replies Kubernetes gives per kind, dry-run creates without a
/// resourceVersion, and the Status of a path nothing serves.
#[tokio::test]
async fn replies_read_as_kubernetes_writes_them() {
    let a = start().await;
    let (s, text) = a
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"data": {"k": "v"}, "metadata": {"name": "c", "labels": {"b": "1", "a": "2"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(
        text.starts_with(r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c","namespace":"default","uid":""#),
        "{text}"
    );
    assert!(text.ends_with("}\n"), "{text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    let (_, got) = a
        .raw(Method::GET, "/api/v1/namespaces/default/configmaps/c", None)
        .await;
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap();
    assert!(
        got.contains(&format!(
            r#""uid":"{uid}","resourceVersion":"{rv}","creationTimestamp""#
        )),
        "{got}"
    );
    assert!(got.contains(r#""labels":{"a":"2","b":"1"}"#), "{got}");
    assert!(got.ends_with("\"data\":{\"k\":\"v\"}}\n"), "{got}");

    // A dry-run create was not stored, and says no resourceVersion.
    let (s, dry) = a
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            Some(json!({"metadata": {"name": "d"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(dry["metadata"].get("resourceVersion").is_none(), "{dry}");
    assert!(dry["metadata"]["uid"].is_string());

    // ConfigMaps answer a delete with a Status (no code, no group for the core group).
    let (s, text) = a
        .raw(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/c",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        text,
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Success","details":{{"name":"c","kind":"configmaps","uid":"{uid}"}}}}"#
        ) + "\n"
    );
    // Services and service accounts answer with the object.
    for (path, body) in [
        (
            "/api/v1/namespaces/default/services",
            json!({"metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}]}}),
        ),
        (
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"metadata": {"name": "sa"}}),
        ),
    ] {
        let made = a.ok(Method::POST, path, Some(body)).await;
        let name = made["metadata"]["name"].as_str().unwrap();
        let (s, gone) = a
            .call(Method::DELETE, &format!("{path}/{name}"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(gone["metadata"]["uid"], made["metadata"]["uid"], "{gone}");
        assert_ne!(gone["kind"], "Status");
    }
    // Deployments: a Status naming the group.
    a.ok(
        Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        Some(json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}}}})),
    )
    .await;
    let (_, gone) = a
        .call(
            Method::DELETE,
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some(json!({"propagationPolicy": "Orphan"})),
        )
        .await;
    assert_eq!(
        gone["kind"], "Deployment",
        "held by the orphan finalizer: {gone}"
    );

    // An eviction answers 201 with a Status that says so.
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(json!({"metadata": {"name": "ev"},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}})),
    )
    .await;
    let (s, text) = a
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/pods/ev/eviction",
            Some(json!({"apiVersion": "policy/v1", "kind": "Eviction",
                        "metadata": {"name": "ev", "namespace": "default"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        text,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Success\",\"code\":201}\n"
    );

    // A path nothing serves: Kubernetes' text, details and all.
    let (s, text) = a
        .raw(Method::GET, "/api/v1/namespaces/default/widgets", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        text,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"the server could not find the requested resource\",\"reason\":\"NotFound\",\"details\":{},\"code\":404}\n"
    );
}

/// client-go's metadata informers and kube-rs' metadata calls: only the metadata, whole.
#[tokio::test]
async fn partial_object_metadata_is_served() {
    let a = start().await;
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps?fieldManager=me",
        Some(json!({"metadata": {"name": "m", "labels": {"app": "x"}}, "data": {"big": "..."}})),
    )
    .await;
    let get = |path: &str, accept: &str| {
        let req = Request::builder()
            .uri(path)
            .header("accept", accept)
            .body(Bytes::new())
            .unwrap();
        let api = a.0.clone();
        async move {
            let resp = api.handle(req, Identity::system("test")).await;
            let (parts, body) = resp.into_parts();
            let text = String::from_utf8(body.collect().await.to_vec()).unwrap();
            (parts.status, text)
        }
    };
    let one = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
    let many = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    let (s, text) = get("/api/v1/namespaces/default/configmaps/m", one).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        text.starts_with(r#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"m","#),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["metadata"]["labels"]["app"], "x");
    assert_eq!(v["metadata"]["managedFields"][0]["manager"], "me");
    assert!(v.get("data").is_none());
    let (s, text) = get("/api/v1/namespaces/default/configmaps", many).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "PartialObjectMetadataList");
    assert!(v["metadata"]["resourceVersion"].is_string());
    assert_eq!(v["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(v["items"][0]["metadata"]["name"], "m");
    // The single form of a list, and the list form of one object: 406, as Kubernetes says.
    let (s, text) = get("/api/v1/namespaces/default/configmaps", one).await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE, "{text}");
    assert!(
        text.contains("but the requested object is a list"),
        "{text}"
    );
    let (s, _) = get("/api/v1/namespaces/default/configmaps/m", many).await;
    assert_eq!(s, StatusCode::NOT_ACCEPTABLE);
}

/// `kubectl debug POD`: ephemeral containers are added through their own subresource, and
/// only added; subresources a kind lacks are 404s.
#[tokio::test]
async fn ephemeral_containers_are_added_through_their_subresource() {
    let a = start().await;
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(json!({"metadata": {"name": "app"},
                    "spec": {"containers": [{"name": "main", "image": "i"}]}})),
    )
    .await;
    // Not on create: only added to a running pod.
    let (s, v) = a
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "early"},
                        "spec": {"containers": [{"name": "main", "image": "i"}],
                                 "ephemeralContainers": [{"name": "d", "image": "i"}]}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let path = "/api/v1/namespaces/default/pods/app/ephemeralcontainers";
    let debugger = json!({"name": "debugger", "image": "busybox", "targetContainerName": "main",
                          "stdin": true, "tty": true});
    let (s, _, v) = a
        .send(
            Method::PATCH,
            path,
            "application/strategic-merge-patch+json",
            Some(json!({"spec": {"ephemeralContainers": [debugger]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["ephemeralContainers"][0]["name"], "debugger");
    let got = a.ok(Method::GET, path, None).await;
    assert_eq!(got["kind"], "Pod");
    // The main resource cannot change them.
    let (s, _, v) = a
        .send(
            Method::PATCH,
            "/api/v1/namespaces/default/pods/app",
            "application/merge-patch+json",
            Some(json!({"spec": {"ephemeralContainers": null}})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    assert_eq!(v["spec"]["ephemeralContainers"][0]["name"], "debugger");
    // Nor may the subresource remove or change one, or add one with ports.
    let mut pod = a.ok(Method::GET, path, None).await;
    pod["spec"]["ephemeralContainers"] = json!([]);
    let (s, v) = a.call(Method::PUT, path, Some(pod.clone())).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    pod["spec"]["ephemeralContainers"] = json!([debugger,
        {"name": "web", "image": "busybox", "ports": [{"containerPort": 80}]}]);
    let (s, v) = a.call(Method::PUT, path, Some(pod)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cannot be set for an Ephemeral Container"),
        "{v}"
    );
    // `kubectl scale -f configmap.yaml`: not found, as Kubernetes says.
    a.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"metadata": {"name": "cm"}})),
    )
    .await;
    let (s, _) = a
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/cm/scale",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = a
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/cm/status",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
