"""What real clients and tools reach for beyond everyday kubectl: ReplicationControllers,
events.k8s.io, client certificates, the `kubernetes` Service, health checks, metrics, apply
--prune's default kinds, and the Python client's own decoding of replies."""

import base64
import datetime
import os
import subprocess

import yaml

from conftest import wait_until

RC = """apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  selector: {app: legacy}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers:
      - {name: main, image: busybox:test}
"""


def test_replication_controllers_keep_their_pods(cluster, ns, version):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=RC, version=version)

    def pods():
        return [p for p in cluster.json("get", "pods", "-n", ns, "-l", "app=legacy")["items"]
                if not p["metadata"].get("deletionTimestamp")]
    wait_until(lambda: len(pods()) == 2, what="two pods")
    owner = pods()[0]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicationController" and owner["name"] == "legacy"
    wait_until(lambda: cluster.json("get", "rc", "legacy", "-n", ns).get("status", {}).get("replicas") == 2,
               what="status.replicas")
    cluster.kubectl("scale", "rc", "legacy", "-n", ns, "--replicas=1", version=version)
    wait_until(lambda: len(pods()) == 1, what="one pod")
    table = cluster.kubectl("get", "rc", "-n", ns, version=version).stdout
    assert table.split("\n")[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    # kubectl cluster-info dump reads them (it failed on the 404 before).
    out = cluster.kubectl("cluster-info", "dump", "--namespaces", ns, version=version, timeout=120).stdout
    assert '"kind": "ReplicationControllerList"' in out


def test_events_are_served_in_events_k8s_io_too(cluster, ns, version):
    from kubernetes import client, config
    api = client.EventsV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    ev = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="e1"),
        event_time=datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc),
        reporting_controller="example.com/tester", reporting_instance="tester-1",
        action="Testing", reason="Works", note="written through events.k8s.io", type="Normal",
        regarding=client.V1ObjectReference(kind="Pod", name="p", namespace=ns))
    api.create_namespaced_event(ns, ev)
    # The same event, through core/v1.
    core = cluster.json("get", "event", "e1", "-n", ns, version=version)
    assert core["message"] == "written through events.k8s.io"
    assert core["involvedObject"]["name"] == "p"
    got = api.read_namespaced_event("e1", ns)
    assert got.note == "written through events.k8s.io" and got.regarding.name == "p"
    names = cluster.kubectl("get", "events.events.k8s.io", "-n", ns, "-o", "name", version=version).stdout
    assert "event.events.k8s.io/e1" in names
    # Its own field names select, as Kubernetes maps them.
    picked = api.list_namespaced_event(ns, field_selector="regarding.name=p,reportingController=example.com/tester")
    assert [e.metadata.name for e in picked.items] == ["e1"]
    assert api.list_namespaced_event(ns, field_selector="regarding.name=q").items == []


def test_client_certificates_authenticate(cluster, tmp_path, version):
    kc = yaml.safe_load(open(cluster.kubeconfig))
    user = kc["users"][0]["user"]
    assert "client-certificate-data" in user and "client-key-data" in user
    # Without the token, the certificate alone lets kubectl in.
    del user["token"]
    only_cert = tmp_path / "cert-only.kubeconfig"
    only_cert.write_text(yaml.safe_dump(kc))
    out = cluster.kubectl("--kubeconfig", str(only_cert), "get", "ns", "default", "-o", "name", version=version)
    assert out.stdout.strip() == "namespace/default"
    # A certificate some other CA signed gets nowhere.
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", "/CN=admin/O=system:masters"],
                   check=True, capture_output=True)
    user["client-certificate-data"] = base64.b64encode(crt.read_bytes()).decode()
    user["client-key-data"] = base64.b64encode(key.read_bytes()).decode()
    forged = tmp_path / "forged.kubeconfig"
    forged.write_text(yaml.safe_dump(kc))
    r = cluster.kubectl("--kubeconfig", str(forged), "get", "ns", version=version, check=False)
    assert r.returncode != 0 and "namespace" not in r.stdout, r.stdout + r.stderr


def test_the_kubernetes_service_comes_back(cluster):
    before = cluster.json("get", "svc", "kubernetes", "-n", "default")
    cluster.kubectl("delete", "svc", "kubernetes", "-n", "default")
    wait_until(lambda: cluster.kubectl("get", "svc", "kubernetes", "-n", "default", "-o", "json",
                                       check=False).returncode == 0, timeout=5, what="the service back")
    after = cluster.json("get", "svc", "kubernetes", "-n", "default")
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]


def raw(cluster, path, version="1.33"):
    return cluster.kubectl("get", "--raw", path, version=version).stdout


def test_health_checks_list_their_parts(cluster):
    ready = raw(cluster, "/readyz?verbose")
    assert "[+]ping ok" in ready and "[+]etcd ok" in ready and "[+]informer-sync ok" in ready
    assert ready.rstrip().endswith("readyz check passed")
    live = raw(cluster, "/livez?verbose")
    assert "[+]etcd ok" in live and live.rstrip().endswith("livez check passed")
    assert raw(cluster, "/readyz/etcd") == "ok"
    excluded = raw(cluster, "/readyz?verbose&exclude=etcd")
    assert "[+]etcd excluded: ok" in excluded
    assert raw(cluster, "/readyz") == "ok"


def test_metrics_use_kubernetes_names(cluster, ns):
    cluster.kubectl("create", "configmap", "counted", "-n", ns)
    cluster.kubectl("get", "configmaps", "-n", ns)
    text = raw(cluster, "/metrics")
    lines = text.splitlines()

    def has(prefix, *parts):
        return any(l.startswith(prefix) and all(p in l for p in parts) for l in lines)
    assert has("apiserver_request_total{", 'verb="POST"', 'resource="configmaps"', 'code="201"')
    assert has("apiserver_request_total{", 'verb="LIST"', 'resource="configmaps"', 'scope="namespace"')
    assert has("apiserver_request_duration_seconds_bucket{", 'verb="LIST"', 'le="+Inf"')
    assert has("etcd_request_duration_seconds_count{", 'operation="create"', 'type="/registry/configmaps"')
    assert has("apiserver_storage_objects{", 'resource="configmaps"')
    assert has("process_resident_memory_bytes ")
    assert "# TYPE apiserver_request_total counter" in text


def test_apply_prune_with_the_default_kinds(cluster, ns, version, tmp_path):
    manifest = """apiVersion: v1
kind: ConfigMap
metadata: {name: keep, labels: {app: pruned}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: drop, labels: {app: pruned}}
"""
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest, version=version)
    keep_only = manifest.split("---")[0]
    r = cluster.kubectl("apply", "-n", ns, "--prune", "-l", "app=pruned", "-f", "-", input=keep_only,
                        version=version, check=False)
    assert r.returncode == 0, r.stderr
    assert "configmap/drop pruned" in r.stdout
    names = cluster.kubectl("get", "cm", "-n", ns, "-l", "app=pruned", "-o", "name").stdout.split()
    assert names == ["configmap/keep"]


def test_pv_pvc_and_ingress_are_served(cluster, ns, version):
    manifest = f"""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web}}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifest, version=version)
    pvc = cluster.json("get", "pvc", "data", "-n", ns)
    assert pvc["status"]["phase"] == "Pending" and pvc["spec"]["volumeMode"] == "Filesystem"
    header = cluster.kubectl("get", "pvc", "-n", ns, version=version).stdout.split("\n")[0].split()
    assert header[:6] == ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS", "MODES"]
    ing = cluster.kubectl("get", "ingress", "web", "-n", ns, version=version).stdout.split("\n")
    assert ing[0].split() == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    # Created without a class, it has the default one (berth's own).
    assert ing[1].split()[:3] == ["web", "berth", "web.example.com"]
    bad = cluster.kubectl("create", "-n", ns, "-f", "-", version=version, check=False, input="""apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bad}
spec:
  rules:
  - http:
      paths:
      - {path: nope, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
""")
    assert bad.returncode != 0 and "must be an absolute path" in bad.stderr


def test_python_client_decodes_deletes_and_evictions(cluster, ns):
    from kubernetes import client, config
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    api.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="svc"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))
    gone = api.delete_namespaced_service("svc", ns)
    # The deleted object comes back, as Kubernetes sends it, and decodes.
    assert gone.metadata.name == "svc" and gone.spec.ports[0].port == 80
    api.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="sa")))
    assert api.delete_namespaced_service_account("sa", ns).metadata.name == "sa"
    api.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm")))
    status = api.delete_namespaced_config_map("cm", ns)
    # (The client types this reply as a plain object.)
    assert status["status"] == "Success" and status["details"]["kind"] == "configmaps"
    # A dry-run create can be sent again as it came back.
    made = api.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dry")),
                                            dry_run="All")
    assert made.metadata.resource_version is None
    api.create_namespaced_config_map(ns, made)


def test_berth_up_without_root_says_so_and_creates_nothing():
    import shutil
    import tempfile
    from conftest import BERTH
    # A place an unprivileged user can reach (the build directory is root's).
    place = tempfile.mkdtemp(prefix="berth-nonroot-")
    try:
        os.chmod(place, 0o777)
        binary = os.path.join(place, "berth")
        shutil.copy(BERTH, binary)
        os.chmod(binary, 0o755)
        data = os.path.join(place, "never")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", binary, "up",
                            "--data-dir", data, "--listen", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        assert "needs root" in r.stderr, r.stderr
        assert not os.path.exists(data)
    finally:
        shutil.rmtree(place, ignore_errors=True)
