"""The real kubectl, oldest and newest supported versions, against the real binary."""

import json
import re
import os
import subprocess
import textwrap
import time

import pytest

from conftest import kubectl_binary, wait_until

DEPLOYMENT = textwrap.dedent("""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: web
      labels: {app: web}
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
          - name: web
            image: nginx:1.25
            ports: [{containerPort: 80}]
          - name: sidecar
            image: busybox:1.36
    """)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_version_and_discovery(cluster, version):
    v = json.loads(cluster.kubectl("version", "-o", "json", version=version).stdout)
    assert v["serverVersion"]["gitVersion"].startswith("v1.33.")
    resources = cluster.kubectl("api-resources", version=version).stdout
    lines = [l.split() for l in resources.splitlines()]
    assert ["pods", "po", "v1", "true", "Pod"] in lines
    assert ["deployments", "deploy", "apps/v1", "true", "Deployment"] in lines
    assert ["namespaces", "ns", "v1", "false", "Namespace"] in lines
    names = cluster.kubectl("get", "ns", "-o", "name", version=version).stdout.split()
    for ns in ["namespace/default", "namespace/kube-system", "namespace/kube-public"]:
        assert ns in names


def test_apply_twice_then_update(cluster, ns, version, tmp_path):
    f = write(tmp_path, "deploy.yaml", DEPLOYMENT)
    assert cluster.kubectl("apply", "-n", ns, "-f", f, version=version).stdout.strip() == "deployment.apps/web created"
    assert cluster.kubectl("apply", "-n", ns, "-f", f, version=version).stdout.strip() == "deployment.apps/web unchanged"
    d = cluster.json("get", "deploy", "web", "-n", ns)
    assert d["metadata"]["generation"] == 1
    changed = DEPLOYMENT.replace("nginx:1.25", "nginx:1.26").replace("replicas: 2", "replicas: 3")
    f2 = write(tmp_path, "deploy2.yaml", changed)
    assert cluster.kubectl("apply", "-n", ns, "-f", f2, version=version).stdout.strip() == "deployment.apps/web configured"
    d = cluster.json("get", "deploy", "web", "-n", ns)
    assert d["spec"]["replicas"] == 3
    containers = d["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["nginx:1.26", "busybox:1.36"]
    assert containers[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert d["metadata"]["generation"] == 2, "a spec change bumps the generation"
    # Defaults the server fills in, as Kubernetes does.
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert containers[0]["imagePullPolicy"] == "IfNotPresent"
    assert d["metadata"]["uid"] and d["metadata"]["creationTimestamp"]


def test_get_output_formats(cluster, ns, version, tmp_path):
    cluster.kubectl("apply", "-n", ns, "-f", write(tmp_path, "d.yaml", DEPLOYMENT), version=version)
    # This cluster has no nodes: the controller makes both pods, which stay Pending.
    wait_until(lambda: cluster.json("get", "deploy", "web", "-n", ns).get("status", {}).get("updatedReplicas") == 2,
               what="the deployment controller to make the pods")
    wide = cluster.kubectl("get", "deploy", "-n", ns, "-o", "wide", version=version).stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    row = wide[1].split()
    assert row[0:4] == ["web", "0/2", "2", "0"]
    assert row[5:] == ["web,sidecar", "nginx:1.25,busybox:1.36", "app=web"]
    assert cluster.kubectl("get", "deploy", "-n", ns, "-o", "name", version=version).stdout.split() == ["deployment.apps/web"]
    y = cluster.kubectl("get", "deploy", "web", "-n", ns, "-o", "yaml", version=version).stdout
    assert "kind: Deployment" in y and "name: web" in y and "replicas: 2" in y
    cluster.kubectl("create", "configmap", "settings", "-n", ns, "--from-literal=a=1", "--from-literal=b=2", version=version)
    cm = cluster.kubectl("get", "cm", "settings", "-n", ns, version=version).stdout.splitlines()
    assert cm[0].split() == ["NAME", "DATA", "AGE"]
    assert cm[1].split()[:2] == ["settings", "2"]
    every = cluster.kubectl("get", "all", "-n", ns, version=version).stdout
    assert "deployment.apps/web" in every


def test_get_all_namespaces_and_pods_columns(cluster, ns, version):
    cluster.kubectl("run", "sleeper", "-n", ns, "--image=busybox:1.36", "--labels=app=sleeper", "--", "sleep", "3600", version=version)
    pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", version=version).stdout.splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    assert pods[1].split()[:4] == ["sleeper", "0/1", "Pending", "0"]
    everywhere = cluster.kubectl("get", "pods", "-A", version=version).stdout
    assert ns in everywhere and "sleeper" in everywhere
    labeled = cluster.kubectl("get", "pods", "-n", ns, "-l", "app=sleeper", "-o", "name", version=version).stdout.split()
    assert labeled == ["pod/sleeper"]
    assert cluster.kubectl("get", "pods", "-n", ns, "-l", "app notin (sleeper)", "-o", "name", version=version).stdout.strip() == ""
    by_field = cluster.kubectl("get", "pods", "-n", ns, "--field-selector", "status.phase=Pending,metadata.name=sleeper", "-o", "name", version=version).stdout.split()
    assert by_field == ["pod/sleeper"]
    bad = cluster.kubectl("get", "pods", "-n", ns, "--field-selector", "spec.bogus=1", version=version, check=False)
    assert bad.returncode != 0 and "field label not supported" in bad.stderr


def test_watch_prints_changes(cluster, ns, version):
    cmd = [kubectl_binary(version), "--kubeconfig", cluster.kubeconfig, "get", "cm", "-n", ns, "-w", "--output-watch-events"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        cluster.kubectl("create", "cm", "watched", "-n", ns, "--from-literal=a=1")
        cluster.kubectl("label", "cm", "watched", "-n", ns, "seen=yes")
        cluster.kubectl("delete", "cm", "watched", "-n", ns)
        time.sleep(1.5)
    finally:
        proc.terminate()
    out, _ = proc.communicate(timeout=10)
    events = [l.split()[0] for l in out.splitlines() if "watched" in l]
    assert events == ["ADDED", "MODIFIED", "DELETED"], out


def test_describe(cluster, ns, version, tmp_path):
    cluster.kubectl("apply", "-n", ns, "-f", write(tmp_path, "d.yaml", DEPLOYMENT), version=version)
    out = cluster.kubectl("describe", "deployment", "web", "-n", ns, version=version).stdout
    assert "Name:                   web" in out
    assert "Selector:               app=web" in out
    assert "2 desired" in out
    assert "nginx:1.25" in out


def test_label_and_annotate(cluster, ns, version):
    cluster.kubectl("create", "cm", "c", "-n", ns, version=version)
    cluster.kubectl("label", "cm", "c", "-n", ns, "env=prod", "tier=db", version=version)
    cluster.kubectl("annotate", "cm", "c", "-n", ns, "owner=team-a", version=version)
    m = cluster.json("get", "cm", "c", "-n", ns)["metadata"]
    assert m["labels"] == {"env": "prod", "tier": "db"}
    assert m["annotations"]["owner"] == "team-a"
    refused = cluster.kubectl("label", "cm", "c", "-n", ns, "env=dev", version=version, check=False)
    assert refused.returncode != 0 and "already has a value" in refused.stderr
    cluster.kubectl("label", "cm", "c", "-n", ns, "env=dev", "--overwrite", "tier-", version=version)
    assert cluster.json("get", "cm", "c", "-n", ns)["metadata"]["labels"] == {"env": "dev"}
    shown = cluster.kubectl("get", "cm", "c", "-n", ns, "--show-labels", version=version).stdout
    assert "env=dev" in shown
    column = cluster.kubectl("get", "cm", "c", "-n", ns, "-L", "env", version=version).stdout.splitlines()
    assert column[0].split()[-1] == "ENV" and column[1].split()[-1] == "dev"


def test_three_patch_types(cluster, ns, version, tmp_path):
    cluster.kubectl("apply", "-n", ns, "-f", write(tmp_path, "d.yaml", DEPLOYMENT), version=version)
    cluster.kubectl("patch", "deploy", "web", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":4}}', version=version)
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 4
    cluster.kubectl("patch", "deploy", "web", "-n", ns, "--type=json",
                    "-p", '[{"op":"replace","path":"/spec/replicas","value":5},{"op":"add","path":"/metadata/labels/patched","value":"json"}]',
                    version=version)
    d = cluster.json("get", "deploy", "web", "-n", ns)
    assert d["spec"]["replicas"] == 5 and d["metadata"]["labels"]["patched"] == "json"
    # Strategic merge: a container is matched by name, the other stays.
    cluster.kubectl("patch", "deploy", "web", "-n", ns, "-p",
                    '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}', version=version)
    cs = cluster.json("get", "deploy", "web", "-n", ns)["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in cs] == [("web", "nginx:1.27"), ("sidecar", "busybox:1.36")]
    # A failing JSON patch test changes nothing.
    failed = cluster.kubectl("patch", "deploy", "web", "-n", ns, "--type=json",
                             "-p", '[{"op":"test","path":"/spec/replicas","value":99},{"op":"replace","path":"/spec/replicas","value":1}]',
                             version=version, check=False)
    assert failed.returncode != 0
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 5


def test_edit(cluster, ns, version, tmp_path):
    cluster.kubectl("apply", "-n", ns, "-f", write(tmp_path, "d.yaml", DEPLOYMENT), version=version)
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/replicas: 2/replicas: 6/' \"$1\"\n")
    editor.chmod(0o755)
    out = cluster.kubectl("edit", "deploy", "web", "-n", ns, version=version, env={"EDITOR": str(editor), "KUBE_EDITOR": str(editor)})
    assert "deployment.apps/web edited" in out.stdout
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 6
    untouched = tmp_path / "noop.sh"
    untouched.write_text("#!/bin/sh\ntrue\n")
    untouched.chmod(0o755)
    out = cluster.kubectl("edit", "deploy", "web", "-n", ns, version=version, env={"EDITOR": str(untouched), "KUBE_EDITOR": str(untouched)})
    assert "Edit cancelled, no changes made." in out.stdout + out.stderr


def test_scale(cluster, ns, version, tmp_path):
    cluster.kubectl("apply", "-n", ns, "-f", write(tmp_path, "d.yaml", DEPLOYMENT), version=version)
    assert "deployment.apps/web scaled" in cluster.kubectl("scale", "deploy", "web", "-n", ns, "--replicas=7", version=version).stdout
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 7
    wrong = cluster.kubectl("scale", "deploy", "web", "-n", ns, "--current-replicas=3", "--replicas=1", version=version, check=False)
    assert wrong.returncode != 0
    cluster.kubectl("scale", "deploy", "web", "-n", ns, "--current-replicas=7", "--replicas=1", version=version)
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 1


def test_server_side_apply(cluster, ns, version, tmp_path):
    f = write(tmp_path, "d.yaml", DEPLOYMENT)
    out = cluster.kubectl("apply", "--server-side", "-n", ns, "-f", f, version=version).stdout
    assert out.strip() == "deployment.apps/web serverside-applied"
    cluster.kubectl("apply", "--server-side", "-n", ns, "-f", f, version=version)
    shown = cluster.json("get", "deploy", "web", "-n", ns, "--show-managed-fields")
    managers = {m["manager"]: m["operation"] for m in shown["metadata"]["managedFields"]}
    # The deployment controller records its revision annotation and the status, as in Kubernetes.
    assert managers.pop("kubectl") == "Apply"
    assert set(managers) <= {"kube-controller-manager"}, managers
    cluster.kubectl("patch", "deploy", "web", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":9}}', "--field-manager=scaler", version=version)
    conflict = cluster.kubectl("apply", "--server-side", "-n", ns, "-f", write(tmp_path, "d3.yaml", DEPLOYMENT.replace("replicas: 2", "replicas: 3")), version=version, check=False)
    assert conflict.returncode != 0
    assert 'conflict with "scaler"' in conflict.stderr and ".spec.replicas" in conflict.stderr
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 9, "a conflict changes nothing"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-n", ns, "-f", str(tmp_path / "d3.yaml"), version=version)
    assert cluster.json("get", "deploy", "web", "-n", ns)["spec"]["replicas"] == 3
    # Fields the manager stops applying are removed.
    slim = DEPLOYMENT.replace("  labels: {app: web}\n", "")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-n", ns, "-f", write(tmp_path, "slim.yaml", slim), version=version)
    assert "labels" not in cluster.json("get", "deploy", "web", "-n", ns)["metadata"]


def test_client_side_apply_then_server_side_keeps_server_filled_fields(cluster, ns, version, tmp_path):
    svc = write(tmp_path, "svc.yaml", """apiVersion: v1
kind: Service
metadata: {name: front}
spec:
  selector: {app: front}
  ports: [{port: 80, targetPort: 8080}]
""")
    cluster.kubectl("apply", "-n", ns, "-f", svc, version=version)
    ip = cluster.json("get", "svc", "front", "-n", ns)["spec"]["clusterIP"]
    # The allocated address and IP families belong to no client.
    shown = cluster.json("get", "svc", "front", "-n", ns, "--show-managed-fields")
    owned = json.dumps([m["fieldsV1"] for m in shown["metadata"]["managedFields"]])
    for f in ("f:clusterIP", "f:clusterIPs", "f:ipFamilies", "f:ipFamilyPolicy"):
        assert f not in owned, (f, owned)
    # Moving to server-side apply, and applying again, keeps them.
    for _ in range(2):
        cluster.kubectl("apply", "--server-side", "-n", ns, "-f", svc, version=version)
    spec = cluster.json("get", "svc", "front", "-n", ns)["spec"]
    assert spec["clusterIP"] == ip and spec["clusterIPs"] == [ip]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    # The same for a pod's tolerations, which admission adds (and a pod may not lose).
    pod = write(tmp_path, "pod.yaml", """apiVersion: v1
kind: Pod
metadata: {name: tolerant}
spec:
  containers: [{name: main, image: busybox:1.36}]
""")
    cluster.kubectl("apply", "-n", ns, "-f", pod, version=version)
    for _ in range(2):
        cluster.kubectl("apply", "--server-side", "-n", ns, "-f", pod, version=version)
    keys = {t["key"] for t in cluster.json("get", "pod", "tolerant", "-n", ns)["spec"]["tolerations"]}
    assert keys == {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}


def test_delete_variants(cluster, ns, version, tmp_path):
    f = write(tmp_path, "cms.yaml", "\n---\n".join(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm{i}\n  labels: {{group: {'a' if i < 3 else 'b'}}}\n" for i in range(5)))
    cluster.kubectl("apply", "-n", ns, "-f", f, version=version)
    assert cluster.kubectl("delete", "cm", "cm0", "-n", ns, version=version).stdout.strip() == 'configmap "cm0" deleted'
    out = cluster.kubectl("delete", "cm", "-n", ns, "-l", "group=a", version=version).stdout
    assert 'configmap "cm1" deleted' in out and 'configmap "cm2" deleted' in out
    names = cluster.kubectl("get", "cm", "-n", ns, "-l", "group", "-o", "name", version=version).stdout.split()
    assert names == ["configmap/cm3", "configmap/cm4"]
    out = cluster.kubectl("delete", "-n", ns, "-f", f, "--ignore-not-found", version=version).stdout
    assert 'configmap "cm3" deleted' in out
    assert cluster.kubectl("get", "cm", "-n", ns, "-l", "group", "-o", "name", version=version).stdout.strip() == ""
    missing = cluster.kubectl("delete", "cm", "nope", "-n", ns, version=version, check=False)
    assert missing.returncode != 0 and 'configmaps "nope" not found' in missing.stderr


def test_generators_make_valid_objects(cluster, ns, version):
    """`kubectl create <kind>` (protobuf bodies since kubectl 1.32)."""
    k = lambda *a: cluster.kubectl("-n", ns, *a, version=version)
    k("create", "deployment", "gen", "--image=nginx:1.27", "--replicas=3", "--port=80")
    k("create", "secret", "generic", "creds", "--from-literal=password=s3cret")
    k("create", "serviceaccount", "robot")
    k("create", "job", "once", "--image=busybox:1.36", "--", "echo", "hi")
    k("create", "cronjob", "tick", "--image=busybox:1.36", "--schedule=*/5 * * * *", "--", "date")
    k("expose", "deployment", "gen", "--port=80", "--target-port=8080", "--type=NodePort")
    d = cluster.json("get", "deploy", "gen", "-n", ns)
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 80
    assert "generateName" not in d["metadata"]
    s = cluster.json("get", "secret", "creds", "-n", ns)
    assert s["type"] == "Opaque" and s["data"]["password"] == "czNjcmV0"
    job = cluster.json("get", "job", "once", "-n", ns)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    uid = job["metadata"]["uid"]
    assert job["spec"]["selector"]["matchLabels"] == {"batch.kubernetes.io/controller-uid": uid}
    assert cluster.json("get", "cronjob", "tick", "-n", ns)["spec"]["schedule"] == "*/5 * * * *"
    svc = cluster.json("get", "svc", "gen", "-n", ns)["spec"]
    assert svc["clusterIP"].startswith("10.43.")
    assert 30000 <= svc["ports"][0]["nodePort"] <= 32767
    assert svc["ports"][0]["targetPort"] == 8080
    assert svc["selector"] == {"app": "gen"}


def test_pagination(cluster, ns, version):
    for i in range(25):
        cluster.kubectl("create", "cm", f"page-{i:02d}", "-n", ns, version=version)
    out = cluster.kubectl("get", "cm", "-n", ns, "--chunk-size=7", "-o", "name", version=version).stdout.split()
    assert [n for n in out if n.startswith("configmap/page-")] == [f"configmap/page-{i:02d}" for i in range(25)]


def test_namespace_deletion(cluster, version):
    name = f"doomed-{version.replace('.', '')}"
    cluster.kubectl("create", "ns", name, version=version)
    cluster.kubectl("create", "cm", "inside", "-n", name, version=version)
    cluster.kubectl("create", "deployment", "d", "-n", name, "--image=nginx", version=version)
    wait_until(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
               what="the default service account")
    out = cluster.kubectl("delete", "ns", name, "--timeout=30s", version=version)
    assert f'namespace "{name}" deleted' in out.stdout
    gone = cluster.kubectl("get", "ns", name, version=version, check=False)
    assert gone.returncode != 0 and "not found" in gone.stderr
    # Its content went with it: a namespace of the same name starts empty.
    cluster.kubectl("create", "ns", name, version=version)
    left = cluster.kubectl("get", "cm,deploy", "-n", name, "-o", "name", version=version).stdout.split()
    assert "configmap/inside" not in left and "deployment.apps/d" not in left
    cluster.kubectl("delete", "ns", name, version=version)
    protected = cluster.kubectl("delete", "ns", "default", version=version, check=False)
    assert protected.returncode != 0 and "may not be deleted" in protected.stderr


def test_terminating_namespace_refuses_content(cluster):
    cluster.kubectl("create", "ns", "held")
    cluster.kubectl("create", "cm", "blocker", "-n", "held")
    cluster.kubectl("patch", "cm", "blocker", "-n", "held", "--type=merge", "-p", '{"metadata":{"finalizers":["example.com/hold"]}}')
    cluster.kubectl("delete", "ns", "held", "--wait=false")
    phase = wait_until(lambda: cluster.json("get", "ns", "held")["status"]["phase"] == "Terminating", what="Terminating")
    assert phase
    refused = cluster.kubectl("create", "cm", "late", "-n", "held", check=False)
    assert refused.returncode != 0 and "being terminated" in refused.stderr
    # The finalizer holds the object, and with it the namespace, until it is removed.
    assert cluster.json("get", "cm", "blocker", "-n", "held")["metadata"]["deletionTimestamp"]
    cluster.kubectl("patch", "cm", "blocker", "-n", "held", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_until(lambda: cluster.kubectl("get", "ns", "held", check=False).returncode != 0, what="namespace removal")


@pytest.mark.parametrize("minor", ["1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"])
def test_every_supported_kubectl(cluster, minor, tmp_path):
    """Each kubectl we support: discovery, a typed create (protobuf from 1.32), apply, a table."""
    ns = f"v{minor.replace('.', '')}"
    cluster.kubectl("create", "ns", ns, version=minor)
    cluster.kubectl("create", "cm", "made", "-n", ns, "--from-literal=by=kubectl", version=minor)
    assert cluster.json("get", "cm", "made", "-n", ns)["data"] == {"by": "kubectl"}
    out = cluster.kubectl("apply", "-n", ns, "-f", write(tmp_path, "d.yaml", DEPLOYMENT), version=minor).stdout
    assert out.strip() == "deployment.apps/web created"
    table = cluster.kubectl("get", "deploy,cm", "-n", ns, version=minor).stdout
    assert "deployment.apps/web" in table and "configmap/made" in table
    cluster.kubectl("delete", "ns", ns, version=minor)


def test_explain_reads_complete_openapi(cluster, version):
    out = cluster.kubectl("explain", "pod.spec.containers", version=version).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["KIND:", "Pod"] and lines[1].split() == ["VERSION:", "v1"], out
    assert "FIELD: containers <[]Container>" in out or "FIELD:    containers <[]Container>" in out, out
    assert "List of containers belonging to the pod." in out
    assert "A single application container that you want to run within a pod." in out
    assert re.search(r"^  image\t<string>$", out, re.M), out
    assert re.search(r"^  name\t<string> -required-$", out, re.M), out
    assert re.search(r"^  resources\t<ResourceRequirements>$", out, re.M), out
    deep = cluster.kubectl("explain", "deploy", "--recursive", version=version).stdout
    assert "GROUP:      apps" in deep and "KIND:       Deployment" in deep, deep[:400]
    assert re.search(r"^        containers\t<\[\]Container> -required-$", deep, re.M), deep[:3000]
    assert re.search(r"^    replicas\t<integer>$", deep, re.M)
    # A field that does not exist is refused as Kubernetes refuses it.
    bad = cluster.kubectl("explain", "pod.spec.nope", version=version, check=False)
    assert bad.returncode != 0 and 'field "nope" does not exist' in bad.stderr
