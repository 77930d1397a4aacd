//! The node agent's pod workers, driven end to end without containers: a whole agent on the
//! in-process API server (in-memory store), with `FakeRuntime` in place of the OCI runtime
//! and an image imported into a scratch image store. What a user sees through the API: pods
//! start and report Running and Ready, ended containers report their exit, pods that fail to
//! start say why, deletion stops containers and frees the sandbox, and a pod deleted while the
//! agent is away is cleaned up when it comes back.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, AgentConfig, Dirs, NetworkSetup, NodeInfo};
use api::k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use apiserver::auth::{Authenticator, ServiceAccountTokens};
use apiserver::{ApiServer, Identity};
use async_trait::async_trait;
use bytes::Bytes;
use client::{Client, ClientError, ResponseBody, Transport};
use http_body_util::BodyExt;
use net::{FakeNetwork, PodNetwork};
use runtime::containers::{ContainerRuntime, FakeBehavior, FakeRuntime};
use runtime::images::ImageStore;
use serde_json::{Value, json};
use store::MemStore;

const NODE: &str = "worker-test";
const IMAGE: &str = "test.local/app:1";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct InProcess(Arc<ApiServer>, &'static str);

#[async_trait]
impl Transport for InProcess {
    async fn send(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<ResponseBody>, ClientError> {
        let resp = self.0.handle(req, Identity::system(self.1)).await;
        Ok(resp.map(|b| b.map_err(|never| match never {}).boxed_unsync()))
    }
}

/// A one-layer image in `docker save` form, as `berth image import` reads it.
fn image_archive() -> Vec<u8> {
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut layer = tar::Builder::new(Vec::new());
    file(&mut layer, "app", b"#!/bin/sh\n");
    let layer = layer.into_inner().unwrap();
    let diff_id = runtime::images::Digest::of(&layer).as_str().to_string();
    let config = json!({
        "architecture": runtime::images::host_arch(), "os": "linux",
        "config": {"Entrypoint": ["/app"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let manifest = json!([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}]);
    let mut archive = tar::Builder::new(Vec::new());
    file(&mut archive, "layer.tar", &layer);
    file(&mut archive, "config.json", config.to_string().as_bytes());
    file(
        &mut archive,
        "manifest.json",
        manifest.to_string().as_bytes(),
    );
    archive.into_inner().unwrap()
}

struct Node {
    client: Client,
    api: Arc<ApiServer>,
    runtime: FakeRuntime,
    network: Arc<FakeNetwork>,
    dir: tempfile::TempDir,
    agent: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    async fn start() -> Node {
        let api = ApiServer::start(Arc::new(MemStore::new()), apiserver::Config::default())
            .await
            .unwrap();
        // Service account tokens, as a cluster signs them for pods.
        let tokens = ServiceAccountTokens::with_new_key(ISSUER).unwrap();
        api.set_authenticator(Arc::new(
            Authenticator::new([])
                .with_service_accounts(api.service_account_auth(Arc::new(tokens))),
        ));
        let client = Client::new(Arc::new(InProcess(api.clone(), "test")));
        for ns in ["default", "kube-node-lease"] {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            client.create(None, &ns).await.unwrap();
        }
        // What the namespace controller makes: the account pods run as, and the cluster CA.
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        client.create(Some("default"), &sa).await.unwrap();
        let ca: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "CA"}}),
        )
        .unwrap();
        client.create(Some("default"), &ca).await.unwrap();
        let mut node = Node {
            client,
            api,
            runtime: FakeRuntime::new(),
            network: Arc::new(FakeNetwork::new(&["10.42.0.0/24".parse().unwrap()])),
            dir: tempfile::tempdir().unwrap(),
            agent: None,
        };
        let store = ImageStore::open(&node.dir.path().join("images")).unwrap();
        runtime::images::import(&store, &image_archive()[..], &runtime::images::Quiet).unwrap();
        node.start_agent();
        node
    }

    /// Start (or restart) the agent on the same runtime and directories.
    fn start_agent(&mut self) {
        let data = self.dir.path();
        let images = Arc::new(ImageStore::open(&data.join("images")).unwrap());
        let cfg = AgentConfig {
            node: NodeInfo {
                name: NODE.into(),
                ip: "127.0.0.1".parse().unwrap(),
                max_pods: 110,
                data_dir: data.to_path_buf(),
                storage_dir: data.join("storage"),
                max_volumes: None,
                runtime_version: "fake://1".into(),
                endpoint_port: 10250,
            },
            network: NetworkSetup::Ready(self.network.clone()),
            service_proxy: None,
            ingress: None,
            node_routes: None,
            dirs: Dirs::under(data),
            insecure_registries: Vec::new(),
            registries_file: data.join("registries.yaml"),
            image_gc: agent::gc::Thresholds {
                high: 100,
                low: 99,
                min_age: Duration::from_secs(3600),
            },
            dns: Default::default(),
            pod_pids_limit: None,
            network_policy: None,
        };
        let client = Client::new(Arc::new(InProcess(self.api.clone(), "system:node")));
        let runtime = Arc::new(self.runtime.clone()) as Arc<dyn ContainerRuntime>;
        let agent = Agent::new(client, runtime, images, cfg);
        self.agent = Some(tokio::spawn(agent.run()));
    }

    /// Stop the agent as a crash would, and wait until it has really stopped: `abort` only asks,
    /// and a task running on the other worker thread finishes its current step first.
    async fn stop_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            a.abort();
            let _ = a.await;
            // The agent's pod workers were asked to stop as it went; let any one caught mid-step
            // reach its next await, where it ends.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create(&self, name: &str, spec: Value) {
        let mut spec = spec;
        spec["nodeName"] = json!(NODE);
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        self.client.create(Some("default"), &pod).await.unwrap();
    }

    async fn pod(&self, name: &str) -> Option<Value> {
        self.client
            .get::<Pod>(Some("default"), name)
            .await
            .unwrap()
            .map(|p| serde_json::to_value(p).unwrap())
    }

    /// Wait (at most 20 s) until the pod satisfies `ok`.
    async fn until(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(p) = self.pod(name).await
                && ok(&p)
            {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} never {what}: {:#}",
                self.pod(name).await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn until_gone(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.pod(name).await.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "pod {name} never went away"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The runtime's containers and sandboxes of the pod with `uid`.
    /// What the pod holds on the node: containers, a sandbox, addresses.
    fn held_by(&self, uid: &str) -> (usize, bool, bool) {
        let containers = self
            .runtime
            .list()
            .iter()
            .filter(|c| c.starts_with(uid))
            .count();
        (
            containers,
            self.runtime.sandboxes().iter().any(|s| s == uid),
            self.network.addresses(uid).is_some(),
        )
    }
}

fn container(name: &str) -> Value {
    json!({"name": name, "image": IMAGE})
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_reports_ready_and_deletion_stops_it_and_frees_its_sandbox() {
    let node = Node::start().await;
    node.create("web", json!({"containers": [container("app")]}))
        .await;
    let p = node
        .until("web", "became Running and Ready", |p| {
            p["status"]["phase"] == "Running" && ready(p)
        })
        .await;
    let status = &p["status"]["containerStatuses"][0];
    assert_eq!(status["name"], "app");
    assert_eq!(status["ready"], true);
    assert_eq!(status["restartCount"], 0);
    assert!(
        status["state"]["running"]["startedAt"].is_string(),
        "{status}"
    );
    assert_eq!(status["image"], IMAGE);
    assert!(
        status["imageID"].as_str().unwrap().contains("sha256:"),
        "{status}"
    );
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(node.held_by(&uid), (1, true, true));
    // Its API credentials are in its projected volume: a token bound to it, the CA, the
    // namespace.
    let volume = p["spec"]["volumes"][0]["name"].as_str().unwrap();
    let dir = node
        .dir
        .path()
        .join(format!("pods/{uid}/volumes/projected/{volume}"));
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], uid.as_str());
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), "CA");
    assert_eq!(
        std::fs::read_to_string(dir.join("namespace")).unwrap(),
        "default"
    );
    // The pod's address, from the node's range, is in its status.
    let ip = node.network.addresses(&uid).unwrap()[0].to_string();
    assert!(ip.starts_with("10.42.0."), "{ip}");
    assert_eq!(p["status"]["podIP"], ip.as_str());
    assert_eq!(p["status"]["podIPs"][0]["ip"], ip.as_str());

    // A graceful delete: the agent stops the container, frees the sandbox, then lets the
    // pod go.
    node.client
        .delete::<Pod>(Some("default"), "web")
        .await
        .unwrap();
    node.until_gone("web").await;
    assert_eq!(node.held_by(&uid), (0, false, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_containers_report_their_exit_and_failures_to_start_say_why() {
    let node = Node::start().await;
    node.runtime.behave("done", FakeBehavior::Exit(0));
    node.runtime.behave("crash", FakeBehavior::Exit(3));
    node.runtime.behave(
        "broken",
        FakeBehavior::FailToStart("exec: /app: no such file".into()),
    );

    node.create(
        "ok",
        json!({"restartPolicy": "Never", "containers": [container("done")]}),
    )
    .await;
    node.create(
        "bad",
        json!({"restartPolicy": "Never", "containers": [container("crash")]}),
    )
    .await;
    node.create("nostart", json!({"containers": [container("broken")]}))
        .await;

    let p = node
        .until("ok", "succeeded", |p| p["status"]["phase"] == "Succeeded")
        .await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 0);
    assert_eq!(t["reason"], "Completed");

    let p = node
        .until("bad", "failed", |p| p["status"]["phase"] == "Failed")
        .await;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "Error");

    // As the kubelet reports it: the start error as the last state, and a back-off before the
    // next try.
    let p = node
        .until("nostart", "said why it cannot start", |p| {
            let s = &p["status"]["containerStatuses"][0];
            s["lastState"]["terminated"]["reason"] == "StartError"
                && s["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    let status = &p["status"]["containerStatuses"][0];
    let message = status["lastState"]["terminated"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("exec: /app: no such file"), "{message}");
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 128);
    assert!(status["restartCount"].as_i64().unwrap() >= 1, "{status}");
    assert!(!ready(&p));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_the_agent_was_away_is_cleaned_up_when_it_returns() {
    let mut node = Node::start().await;
    node.create("left", json!({"containers": [container("app")]}))
        .await;
    let p = node.until("left", "became Ready", ready).await;
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(node.held_by(&uid), (1, true, true));

    node.stop_agent().await;
    // Gone from the API at once (as a force delete does) while nobody minds the node.
    let opts = json!({"gracePeriodSeconds": 0});
    node.client
        .delete_with("/api/v1/namespaces/default/pods/left", &opts)
        .await
        .unwrap();
    node.until_gone("left").await;
    assert_eq!(
        node.held_by(&uid),
        (1, true, true),
        "nobody has cleaned up yet"
    );

    node.start_agent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.held_by(&uid) != (0, false, false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            node.held_by(&uid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
