"""Persistent storage on `berth up`, driven by the real kubectl: the default `local-path`
class and its provisioner (a directory on the node, made when the first pod is placed), claims
bound to volumes made by hand, the protection finalizers, generic ephemeral volumes, and the
validation Kubernetes gives claims. Pods run as real containers. Needs root."""

import json
import os
import time

import pytest

from conftest import own_namespace, wait_until


@pytest.fixture
def sns(node, request):
    with own_namespace(node, "s", request) as name:
        yield name


def claim(name, size="1Gi", cls=None, modes=("ReadWriteOnce",)):
    spec = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if cls is not None:
        spec["storageClassName"] = cls
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}


def pod_with(name, volumes, command, mounts=None):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "volumes": volumes,
                     "containers": [{"name": "c", "image": "busybox:test", "command": ["sh", "-c", command],
                                     "volumeMounts": mounts or [{"name": v["name"], "mountPath": f"/{v['name']}"}
                                                                 for v in volumes]}]}}


def apply(node, ns, obj, version="1.33"):
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj), version=version)


def phase(node, kind, name, ns=None):
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    r = node.kubectl(*args, check=False)
    return json.loads(r.stdout).get("status", {}).get("phase") if r.returncode == 0 else None


def events(node, ns, name):
    return [(e["reason"], e["message"]) for e in node.json("get", "events", "-n", ns)["items"]
            if e["involvedObject"]["name"] == name]


def test_the_default_class_provisions_a_volume_where_the_pod_runs(node, sns, version):
    out = node.kubectl("get", "storageclass", version=version).stdout
    assert "local-path (default)" in out and "berth.dev/local-path" in out and "WaitForFirstConsumer" in out, out
    apply(node, sns, claim("data"), version)
    pvc = node.json("get", "pvc", "data", "-n", sns)
    assert pvc["spec"]["storageClassName"] == "local-path"
    assert "kubernetes.io/pvc-protection" in pvc["metadata"]["finalizers"]
    # WaitForFirstConsumer: nothing is made before a pod uses the claim.
    wait_until(lambda: ("WaitForFirstConsumer", "waiting for first consumer to be created before binding")
               in events(node, sns, "data"), what="the WaitForFirstConsumer event")
    assert phase(node, "pvc", "data", sns) == "Pending"
    apply(node, sns, pod_with("writer", [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                              "echo kept > /d/file; sleep 3600"), version)
    node.kubectl("wait", "--for=condition=Ready", "pod/writer", "-n", sns, "--timeout=60s", timeout=70)
    pvc = node.json("get", "pvc", "data", "-n", sns)
    assert pvc["status"]["phase"] == "Bound" and pvc["status"]["capacity"]["storage"] == "1Gi"
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
    pv_name = pvc["spec"]["volumeName"]
    pv = node.json("get", "pv", pv_name)
    assert pv["status"]["phase"] == "Bound" and pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert pv["spec"]["claimRef"]["name"] == "data"
    [term] = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"][0]["key"] == "kubernetes.io/hostname"
    directory = pv["spec"]["hostPath"]["path"]
    assert directory.startswith(str(node.data / "storage") + "/"), directory
    wait_until(lambda: os.path.exists(f"{directory}/file"), what="the file on the node")
    assert open(f"{directory}/file").read() == "kept\n"
    # The node's summary reports the volume and what it holds, by claim.
    [node_name] = [n["metadata"]["name"] for n in node.json("get", "nodes")["items"]]

    def volume_stats():
        r = node.kubectl("get", "--raw", f"/api/v1/nodes/{node_name}/proxy/stats/summary", check=False)
        if r.returncode != 0:  # the first samples are a few seconds away
            return []
        for p in json.loads(r.stdout)["pods"]:
            if p["name"] == "writer":
                return [v for v in p.get("volume", []) if v.get("pvcRef") == {"name": "data", "namespace": sns}]
        return []
    [stats] = wait_until(lambda: [v for v in volume_stats() if v["usedBytes"] > 0], timeout=30,
                         what="the volume in the node's summary")
    assert stats["name"] == "d" and stats["capacityBytes"] >= stats["availableBytes"] > 0 and stats["inodesUsed"] >= 2
    line = [ln for ln in node.kubectl("get", "pvc", "-n", sns, version=version).stdout.splitlines() if ln.startswith("data")]
    assert line and "Bound" in line[0] and "RWO" in line[0] and "local-path" in line[0], line
    # A claim in use stays (Terminating) until its pod is gone; then its volume goes too.
    node.kubectl("delete", "pvc", "data", "-n", sns, "--wait=false", version=version)
    time.sleep(1)
    still = node.json("get", "pvc", "data", "-n", sns)
    assert still["metadata"].get("deletionTimestamp")
    assert "Terminating" in node.kubectl("get", "pvc", "data", "-n", sns, version=version).stdout
    node.kubectl("delete", "pod", "writer", "-n", sns, version=version)
    wait_until(lambda: node.kubectl("get", "pvc", "data", "-n", sns, check=False).returncode != 0,
               timeout=30, what="the claim to go with its pod")
    wait_until(lambda: node.kubectl("get", "pv", pv_name, check=False).returncode != 0 and not os.path.exists(directory),
               timeout=30, what="the volume and its directory to be removed")


def test_a_claim_is_given_to_the_pods_fs_group(node, sns):
    apply(node, sns, claim("shared"))
    p = pod_with("grouped", [{"name": "d", "persistentVolumeClaim": {"claimName": "shared"}}],
                 "mkdir -p /d/sub && echo x > /d/sub/f && stat -c '%g %a' /d /d/sub/f; id -u; sleep 3600")
    p["spec"]["securityContext"] = {"runAsUser": 1000, "fsGroup": 2000}
    apply(node, sns, p)
    node.kubectl("wait", "--for=condition=Ready", "pod/grouped", "-n", sns, "--timeout=60s", timeout=70)
    # The volume is the group's (setgid, so what the pod writes is too).
    wait_until(lambda: node.kubectl("logs", "grouped", "-n", sns).stdout.split("\n")[:3] == ["2000 2777", "2000 644", "1000"]
               or print(node.kubectl("logs", "grouped", "-n", sns).stdout), what="the pod to write as its fsGroup")


def test_a_claim_of_a_missing_class_waits_with_kubernetes_event(node, sns):
    apply(node, sns, claim("golden", cls="gold"))
    wait_until(lambda: ("ProvisioningFailed", 'storageclass.storage.k8s.io "gold" not found') in events(node, sns, "golden"),
               what="the ProvisioningFailed event")
    assert phase(node, "pvc", "golden", sns) == "Pending"
    # A pod that uses it is not placed, and says why.
    apply(node, sns, pod_with("waiting", [{"name": "d", "persistentVolumeClaim": {"claimName": "golden"}}], "true"))
    wait_until(lambda: any(c.get("reason") == "Unschedulable" and "unbound immediate PersistentVolumeClaims" in c.get("message", "")
                           for c in node.json("get", "pod", "waiting", "-n", sns)["status"].get("conditions", [])),
               what="the pod to be unschedulable")


def test_a_volume_made_by_hand_binds_and_is_retained(node, sns, tmp_path):
    pv_name = f"hand-{sns}"[:60]
    directory = tmp_path / "hand"
    directory.mkdir()
    (directory / "seed").write_text("from the host\n")
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name, "labels": {"disk": sns}},
          "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                   "hostPath": {"path": str(directory)}}}
    node.kubectl("apply", "-f", "-", input=json.dumps(pv))
    wait_until(lambda: phase(node, "pv", pv_name) == "Available", what="the volume to be Available")
    c = claim("hand", cls="")
    c["spec"]["selector"] = {"matchLabels": {"disk": sns}}
    apply(node, sns, c)
    wait_until(lambda: phase(node, "pvc", "hand", sns) == "Bound", what="the claim to bind")
    assert node.json("get", "pvc", "hand", "-n", sns)["spec"]["volumeName"] == pv_name
    apply(node, sns, pod_with("reader", [{"name": "d", "persistentVolumeClaim": {"claimName": "hand", "readOnly": True}}],
                              "cat /d/seed; touch /d/x 2>/dev/null && echo wrote || echo read-only; sleep 3600"))
    node.kubectl("wait", "--for=condition=Ready", "pod/reader", "-n", sns, "--timeout=60s", timeout=70)
    wait_until(lambda: node.kubectl("logs", "reader", "-n", sns).stdout == "from the host\nread-only\n",
               what="the pod to read the volume, read-only")
    node.kubectl("delete", "pod", "reader", "-n", sns)
    node.kubectl("delete", "pvc", "hand", "-n", sns, "--timeout=30s", timeout=40)
    # Retain: the volume is Released, its data stays.
    wait_until(lambda: phase(node, "pv", pv_name) == "Released", what="the volume to be Released")
    assert (directory / "seed").exists()
    node.kubectl("delete", "pv", pv_name, "--timeout=30s", timeout=40)


def test_an_ephemeral_volume_lives_and_dies_with_its_pod(node, sns):
    template = {"volumeClaimTemplate": {"metadata": {"labels": {"kind": "scratch"}},
                                        "spec": {"accessModes": ["ReadWriteOnce"],
                                                 "resources": {"requests": {"storage": "64Mi"}}}}}
    apply(node, sns, pod_with("eph", [{"name": "scratch", "ephemeral": template}], "echo hi > /scratch/f; sleep 3600"))
    node.kubectl("wait", "--for=condition=Ready", "pod/eph", "-n", sns, "--timeout=60s", timeout=70)
    pvc = node.json("get", "pvc", "eph-scratch", "-n", sns)
    assert pvc["status"]["phase"] == "Bound" and pvc["metadata"]["labels"] == {"kind": "scratch"}
    [owner] = pvc["metadata"]["ownerReferences"]
    assert owner["kind"] == "Pod" and owner["name"] == "eph" and owner["controller"] is True
    directory = node.json("get", "pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"]
    wait_until(lambda: os.path.exists(f"{directory}/f"), what="the file in the volume")
    node.kubectl("delete", "pod", "eph", "-n", sns)
    wait_until(lambda: node.kubectl("get", "pvc", "eph-scratch", "-n", sns, check=False).returncode != 0
               and not os.path.exists(directory), timeout=30, what="the claim and its directory to go")


def test_bad_claims_get_kubernetes_errors(node, sns, version):
    for bad, want in [
        (claim("neg", size="-1Gi"), 'spec.resources[storage]: Invalid value: "-1Gi": must be greater than zero'),
        (claim("modes", modes=("ReadWriteSometimes",)), 'spec.accessModes: Unsupported value: "ReadWriteSometimes"'),
        (claim("none", modes=()), "spec.accessModes: Required value: at least 1 access mode is required"),
    ]:
        r = node.kubectl("apply", "-n", sns, "-f", "-", input=json.dumps(bad), check=False, version=version)
        assert r.returncode != 0 and want in r.stderr, r.stderr
    # A bound claim grows (its class allows) but never shrinks.
    apply(node, sns, claim("grow", size="1Gi"), version)
    apply(node, sns, pod_with("user", [{"name": "d", "persistentVolumeClaim": {"claimName": "grow"}}], "sleep 3600"), version)
    wait_until(lambda: phase(node, "pvc", "grow", sns) == "Bound", timeout=60, what="the claim to bind")
    r = node.kubectl("patch", "pvc", "grow", "-n", sns, "-p", '{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}',
                     check=False, version=version)
    assert r.returncode != 0 and "field can not be less than previous value" in r.stderr, r.stderr
    node.kubectl("patch", "pvc", "grow", "-n", sns, "-p", '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}',
                 version=version)
    wait_until(lambda: node.json("get", "pvc", "grow", "-n", sns)["status"]["capacity"]["storage"] == "2Gi",
               what="the claim to grow")
    # Only a bound claim grows (validation says so first, as Kubernetes' does).
    apply(node, sns, claim("idle", size="1Gi"), version)
    r = node.kubectl("patch", "pvc", "idle", "-n", sns, "-p", '{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}',
                     check=False, version=version)
    assert r.returncode != 0 and "spec is immutable after creation except resources.requests" in r.stderr, r.stderr


def web_set(name, replicas, policy=None):
    spec = {"serviceName": name, "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"terminationGracePeriodSeconds": 1,
                                  "containers": [{"name": "web", "image": "busybox:test",
                                                  "command": ["sh", "-c", "[ -f /www/who ] || hostname > /www/who; "
                                                              "echo start >> /www/starts; sleep 3600"],
                                                  "volumeMounts": [{"name": "www", "mountPath": "/www"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www", "labels": {"tier": "web"}},
                                      "spec": {"accessModes": ["ReadWriteOnce"],
                                               "resources": {"requests": {"storage": "1Gi"}}}}]}
    if policy:
        spec["persistentVolumeClaimRetentionPolicy"] = policy
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec}


def claims_of(node, ns, name):
    return {c["metadata"]["name"]: c for c in node.json("get", "pvc", "-n", ns, "-l", f"app={name}")["items"]}


def test_a_statefulset_keeps_each_members_data(node, sns, version):
    apply(node, sns, web_set("web", 3), version)
    node.kubectl("rollout", "status", "sts/web", "-n", sns, "--timeout=90s", version=version, timeout=100)
    claims = claims_of(node, sns, "web")
    assert sorted(claims) == ["www-web-0", "www-web-1", "www-web-2"]
    assert all(c["status"]["phase"] == "Bound" and c["metadata"]["labels"]["tier"] == "web" for c in claims.values())
    volumes = {n: c["spec"]["volumeName"] for n, c in claims.items()}
    out = node.kubectl("get", "pvc", "-n", sns, version=version).stdout
    assert out.count("Bound") == 3 and "1Gi" in out, out
    # A member that is deleted comes back as itself, with its data.
    node.kubectl("delete", "pod", "web-1", "-n", sns, version=version)
    node.kubectl("rollout", "status", "sts/web", "-n", sns, "--timeout=90s", version=version, timeout=100)
    wait_until(lambda: node.kubectl("exec", "web-1", "-n", sns, "--", "cat", "/www/who", "/www/starts",
                                    check=False, version=version).stdout == "web-1\nstart\nstart\n",
               timeout=30, what="web-1 to find its data again")
    # Scaling down keeps the claims (Retain); scaling up uses them again.
    node.kubectl("scale", "sts", "web", "--replicas=1", "-n", sns, version=version)
    wait_until(lambda: [p["metadata"]["name"] for p in node.json("get", "pods", "-n", sns, "-l", "app=web")["items"]]
               == ["web-0"], timeout=60, what="scale down to web-0")
    assert sorted(claims_of(node, sns, "web")) == ["www-web-0", "www-web-1", "www-web-2"]
    node.kubectl("scale", "sts", "web", "--replicas=3", "-n", sns, version=version)
    node.kubectl("rollout", "status", "sts/web", "-n", sns, "--timeout=90s", version=version, timeout=100)
    assert {n: c["spec"]["volumeName"] for n, c in claims_of(node, sns, "web").items()} == volumes
    assert node.kubectl("exec", "web-2", "-n", sns, "--", "cat", "/www/who", version=version).stdout == "web-2\n"


def test_claims_go_with_the_set_when_its_policy_says_so(node, sns):
    apply(node, sns, web_set("gone", 2, {"whenDeleted": "Delete", "whenScaled": "Delete"}))
    node.kubectl("rollout", "status", "sts/gone", "-n", sns, "--timeout=90s", timeout=100)
    assert sorted(claims_of(node, sns, "gone")) == ["www-gone-0", "www-gone-1"]
    node.kubectl("scale", "sts", "gone", "--replicas=1", "-n", sns)
    wait_until(lambda: sorted(claims_of(node, sns, "gone")) == ["www-gone-0"], timeout=60,
               what="the scaled-away member's claim to go")
    node.kubectl("delete", "sts", "gone", "-n", sns)
    wait_until(lambda: not claims_of(node, sns, "gone"), timeout=60, what="the set's claims to go")


def test_volumes_survive_a_killed_agent_and_nothing_leaks():
    import tempfile
    from conftest import Cluster
    from images import Image
    with tempfile.TemporaryDirectory(prefix="berth-storage-restart-") as d:
        c = Cluster(d, role="up").start()
        try:
            c.import_image(Image(cmd=("sh",)), "busybox:test")
            apply(c, "default", claim("keep"))
            apply(c, "default", pod_with("holder", [{"name": "d", "persistentVolumeClaim": {"claimName": "keep"}}],
                                         "echo before > /d/f; sleep 3600"))
            c.kubectl("wait", "--for=condition=Ready", "pod/holder", "--timeout=60s", timeout=70)
            pv = c.json("get", "pvc", "keep")["spec"]["volumeName"]
            directory = c.json("get", "pv", pv)["spec"]["hostPath"]["path"]
            c.kill9()
            c.start()
            wait_until(lambda: c.node_ready(), what="node ready again")
            # The same volume, still mounted where the running container sees it.
            c.kubectl("exec", "holder", "--", "sh", "-c", "echo after >> /d/f")
            assert open(f"{directory}/f").read() == "before\nafter\n"
            assert c.json("get", "pvc", "keep")["spec"]["volumeName"] == pv
            assert [v["metadata"]["name"] for v in c.json("get", "pv")["items"]] == [pv]
            assert os.listdir(c.data / "storage") == [os.path.basename(directory)]
            c.kubectl("delete", "pod", "holder")
            c.kubectl("delete", "pvc", "keep", "--timeout=30s", timeout=40)
            wait_until(lambda: not c.json("get", "pv")["items"] and not os.listdir(c.data / "storage"),
                       timeout=30, what="the volume and its directory to go")
        finally:
            c.teardown()


def test_a_local_volume_waits_for_its_consumer_and_brings_the_pod_to_its_node(node, sns, tmp_path):
    """The classic local-volume set-up: a class without a provisioner, binding delayed until a
    pod is placed, and volumes made by hand with node affinity."""
    [node_name] = [n["metadata"]["name"] for n in node.json("get", "nodes")["items"]]
    cls = f"local-{sns}"[:60]
    node.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": cls},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}))
    directory = tmp_path / "disk"
    directory.mkdir()

    def local_pv(name, host):
        return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"],
                         "storageClassName": cls, "local": {"path": str(directory)},
                         "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                             {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}}}}
    # Only a volume on another node: the pod waits, and says why.
    elsewhere = f"far-{sns}"[:60]
    node.kubectl("apply", "-f", "-", input=json.dumps(local_pv(elsewhere, "another-node")))
    apply(node, sns, claim("local", cls=cls))
    apply(node, sns, pod_with("local-user", [{"name": "d", "persistentVolumeClaim": {"claimName": "local"}}],
                              "echo here > /d/f; sleep 3600"))
    wait_until(lambda: any("didn't find available persistent volumes to bind" in c.get("message", "")
                           for c in node.json("get", "pod", "local-user", "-n", sns)["status"].get("conditions", [])),
               what="the pod to wait for a volume on its node")
    assert phase(node, "pvc", "local", sns) == "Pending"
    # A volume on this node: the pod goes there and the claim binds to it.
    here = f"near-{sns}"[:60]
    node.kubectl("apply", "-f", "-", input=json.dumps(local_pv(here, node_name)))
    node.kubectl("wait", "--for=condition=Ready", "pod/local-user", "-n", sns, "--timeout=60s", timeout=70)
    assert node.json("get", "pvc", "local", "-n", sns)["spec"]["volumeName"] == here
    wait_until(lambda: (directory / "f").exists(), what="the file on the local volume")
    assert phase(node, "pv", elsewhere) == "Available"
    node.kubectl("delete", "pod", "local-user", "-n", sns)
    node.kubectl("delete", "pvc", "local", "-n", sns, "--timeout=30s", timeout=40)
    wait_until(lambda: phase(node, "pv", here) == "Released", what="the local volume to be released")
    node.kubectl("delete", "pv", here, elsewhere, "--timeout=30s", timeout=40)
    node.kubectl("delete", "storageclass", cls)


def test_a_node_takes_no_more_volumes_than_its_limit():
    from conftest import running_node
    from images import Image

    def limit(c):
        c.extra += ["--max-volumes", "1"]
    with running_node(Image(cmd=("sh",)), prefix="berth-volume-limit-", prepare=limit) as c:
        [n] = c.json("get", "nodes")["items"]
        assert n["status"]["allocatable"]["attachable-volumes-berth-local-path"] == "1"
        [driver] = c.json("get", "csinode", n["metadata"]["name"])["spec"]["drivers"]
        assert driver["name"] == "berth.dev/local-path" and driver["allocatable"]["count"] == 1
        # The free space for new local-path volumes, as capacity-aware tools read it.
        node_name = n["metadata"]["name"]
        cap = c.json("get", "csistoragecapacity", f"local-path-{node_name}", "-n", "kube-system")
        assert cap["storageClassName"] == "local-path" and cap["capacity"].endswith("Mi")
        assert cap["nodeTopology"]["matchLabels"] == {"kubernetes.io/hostname": node_name}
        header, row = c.kubectl("get", "csinodes").stdout.splitlines()
        assert header.split()[:2] == ["NAME", "DRIVERS"] and row.split()[1] == "1", row
        for name in ["first", "second"]:
            apply(c, "default", claim(name))
            apply(c, "default", pod_with(name, [{"name": "d", "persistentVolumeClaim": {"claimName": name}}], "sleep 3600"))
        c.kubectl("wait", "--for=condition=Ready", "pod/first", "--timeout=60s", timeout=70)
        wait_until(lambda: any("node(s) exceed max volume count" in k.get("message", "")
                               for k in c.json("get", "pod", "second")["status"].get("conditions", [])),
                   what="the second pod to wait for a volume slot")
        # Once the first pod is gone, the second gets its volume.
        c.kubectl("delete", "pod", "first")
        c.kubectl("wait", "--for=condition=Ready", "pod/second", "--timeout=60s", timeout=70)
