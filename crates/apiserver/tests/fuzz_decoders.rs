//! A bounded fuzz run of what the API server decodes from clients before anything else looks
//! at it: JSON, YAML (apply), Kubernetes protobuf, and the three patch formats, then admission
//! (decode into the kind's type, default, validate) of whatever decoded. Inputs are valid
//! objects and patches cut, flipped, spliced and grown at random, and plain random bytes. No
//! input may panic. `BERTH_FUZZ_SECS` sets how long it runs (default 20 s); the seed is
//! printed, and `BERTH_FUZZ_SEED` replays one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use api::kinds::{Admission, Operation};
use api::patch::fields::{Scope, Writer};
use api::patch::{json_patch, merge_patch, schema, strategic};
use serde_json::{Value, json};

fn seeds() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "a",
            "labels": {"app": "web"}, "annotations": {"x": "y"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "sleep 1"],
                "ports": [{"containerPort": 80, "hostPort": 8080}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}},
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"}, "runAsUser": 1000},
                "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 3},
                "volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": "x"}]}],
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}},
                            {"name": "p", "projected": {"sources": [{"configMap": {"name": "c"}}]}}],
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]}]}}}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "d"}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {"metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
            "data": {"a": "b"}, "binaryData": {"c": "AAEC"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "rb", "namespace": "a"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "bob"}, {"kind": "ServiceAccount", "name": "x"}]}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"type": "NodePort", "selector": {"a": "b"},
                "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}}),
    ]
}

fn patches() -> Vec<Value> {
    vec![
        json!({"metadata": {"labels": {"x": null, "y": "z"}}, "spec": {"replicas": 5}}),
        json!([{"op": "add", "path": "/metadata/labels/a", "value": "b"},
               {"op": "remove", "path": "/spec/template"},
               {"op": "replace", "path": "/spec/containers/0/image", "value": "x"},
               {"op": "move", "from": "/a", "path": "/b"}, {"op": "test", "path": "/c", "value": 1}]),
        json!({"spec": {"containers": [{"name": "c", "image": "new", "$patch": "replace"}],
               "$setElementOrder/containers": [{"name": "c"}]},
               "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
    ]
}

/// A random change to `b`: flip, cut, repeat, insert, splice with `other`.
fn mutate(rng: &mut fastrand::Rng, b: &mut Vec<u8>, other: &[u8]) {
    let interesting: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"-1",
        b"1e999",
        b"\\u0000",
        b"\xff",
        b"\x00",
        b"\n",
        b"- ",
        b"&a",
        b"*a",
        b"!!binary",
        b"$patch",
        b"~",
    ];
    for _ in 0..rng.usize(1..8) {
        let len = b.len();
        match rng.u8(0..7) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                b[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => b.truncate(rng.usize(0..len)),
            2 if len > 0 => {
                let (i, j) = (rng.usize(0..len), rng.usize(0..len));
                let (lo, hi) = (i.min(j), i.max(j));
                let piece = b[lo..hi].to_vec();
                b.splice(lo..lo, piece);
            }
            3 => {
                let at = rng.usize(0..=len);
                let what = interesting[rng.usize(0..interesting.len())];
                b.splice(at..at, what.iter().copied());
            }
            4 if !other.is_empty() => {
                let at = rng.usize(0..=len);
                let from = rng.usize(0..other.len());
                let to = rng.usize(from..=other.len());
                b.splice(at..at, other[from..to].iter().copied());
            }
            5 if len > 0 => {
                let (i, j) = (rng.usize(0..len), rng.usize(0..len));
                b.drain(i.min(j)..i.max(j));
            }
            _ => {
                let at = rng.usize(0..=len);
                b.insert(at, rng.u8(..));
            }
        }
    }
    b.truncate(1 << 16);
}

/// Everything the server does with client bytes before it looks at them as an object.
fn exercise(bytes: &[u8], targets: &[Value]) {
    if let Ok(v) = api::proto::decode_object(bytes) {
        admit(&v);
    }
    let parsed = serde_json::from_slice::<Value>(bytes)
        .ok()
        .or_else(|| serde_saphyr::from_slice::<Value>(bytes).ok());
    let Some(v) = parsed else { return };
    admit(&v);
    let _ = api::proto::encode_object(&v);
    for t in targets {
        let _ = merge_patch(t, &v);
        let _ = json_patch(t, &v);
        let kind = t["kind"].as_str().unwrap_or("");
        let _ = strategic::apply(t, &v, schema::for_kind(kind));
        let w = Writer {
            manager: "fuzz",
            api_version: "v1",
            time: "2026-01-01T00:00:00Z",
            scope: Scope::Main,
        };
        let _ = api::patch::fields::apply(Some(t), &v, schema::for_kind(kind), &w, false);
    }
}

fn admit(v: &Value) {
    let kind = v["kind"].as_str().unwrap_or("Pod");
    for r in api::resources::all().iter().filter(|r| r.kind == kind) {
        for op in [Operation::Create, Operation::Update] {
            let _ = r.ops.admit(Admission {
                object: v,
                old: (op == Operation::Update).then_some(v),
                operation: op,
                resource: r,
                find_unknown_fields: true,
            });
        }
    }
}

#[test]
fn client_bytes_never_panic_the_decoders() {
    let secs: u64 = std::env::var("BERTH_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("fuzz seed {seed} (BERTH_FUZZ_SEED replays it), {secs} s");
    let mut rng = fastrand::Rng::with_seed(seed);
    let objects = seeds();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for o in objects.iter().chain(patches().iter()) {
        corpus.push(serde_json::to_vec(o).expect("json"));
        corpus.push(serde_json::to_vec_pretty(o).expect("json"));
        if let Ok(p) = api::proto::encode_object(o) {
            corpus.push(p);
        }
    }
    corpus.push(
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  a: &x b\n  c: *x\n"
            .to_vec(),
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut input = if rng.u8(0..10) == 0 {
            (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect()
        } else {
            corpus[rng.usize(0..corpus.len())].clone()
        };
        let other = corpus[rng.usize(0..corpus.len())].clone();
        mutate(&mut rng, &mut input, &other);
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&input, &objects)));
        if outcome.is_err() {
            panic!(
                "input panicked (seed {seed}, run {runs}): {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        runs += 1;
    }
    println!("{runs} inputs, no panic");
    assert!(runs > 0);
}
