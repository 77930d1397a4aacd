"""Bad input gets a clear Kubernetes Status and changes nothing."""

import json

import pytest

import helpers


def test_malformed_yaml_is_refused_by_kubectl(cluster, ns, tmp_path, version):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: broken\n data: [\n")
    r = cluster.kubectl("apply", "-n", ns, "-f", str(f), version=version, check=False)
    assert r.returncode != 0 and "error parsing" in r.stderr
    assert cluster.kubectl("get", "cm", "broken", "-n", ns, check=False).returncode != 0


def test_malformed_json_is_400(cluster, ns):
    status, body = helpers.request(cluster.kubeconfig, "POST", f"/api/v1/namespaces/{ns}/configmaps", b'{"metadata": {"name": "x"')
    assert status == 400 and body["kind"] == "Status" and body["reason"] == "BadRequest"
    status, body = helpers.request(cluster.kubeconfig, "POST", f"/api/v1/namespaces/{ns}/configmaps", b"[1, 2]")
    assert status == 400


def test_unknown_kind(cluster, ns, tmp_path):
    f = tmp_path / "widget.yaml"
    f.write_text("apiVersion: v1\nkind: Widget\nmetadata:\n  name: w\n")
    r = cluster.kubectl("apply", "-n", ns, "-f", str(f), "--validate=false", check=False)
    assert r.returncode != 0 and 'no matches for kind "Widget"' in r.stderr
    status, body = helpers.request(cluster.kubeconfig, "GET", f"/api/v1/namespaces/{ns}/widgets")
    assert status == 404 and body["reason"] == "NotFound"


def test_invalid_names(cluster, ns, tmp_path, version):
    f = tmp_path / "n.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n")
    r = cluster.kubectl("apply", "-n", ns, "-f", str(f), version=version, check=False)
    assert r.returncode != 0
    assert 'The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in r.stderr
    status, body = helpers.request(cluster.kubeconfig, "POST", f"/api/v1/namespaces/{ns}/services",
                                   {"metadata": {"name": "1svc"}, "spec": {"ports": [{"port": 80}]}})
    assert status == 422 and body["details"]["causes"][0]["field"] == "metadata.name"


def test_ten_megabyte_body_is_413(cluster, ns):
    big = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"},
                      "data": {"k": "x" * (10 * 1024 * 1024)}}).encode()
    status, body = helpers.request(cluster.kubeconfig, "POST", f"/api/v1/namespaces/{ns}/configmaps", big)
    assert status == 413 and body["reason"] == "RequestEntityTooLarge"
    assert cluster.kubectl("get", "cm", "huge", "-n", ns, check=False).returncode != 0


def test_stale_resource_version_is_409(cluster, ns):
    cluster.kubectl("create", "cm", "cas", "-n", ns, "--from-literal=v=1")
    stale = cluster.json("get", "cm", "cas", "-n", ns)
    cluster.kubectl("patch", "cm", "cas", "-n", ns, "--type=merge", "-p", '{"data":{"v":"2"}}')
    stale["data"]["v"] = "stale"
    status, body = helpers.request(cluster.kubeconfig, "PUT", f"/api/v1/namespaces/{ns}/configmaps/cas", stale)
    assert status == 409 and body["reason"] == "Conflict"
    assert cluster.json("get", "cm", "cas", "-n", ns)["data"] == {"v": "2"}


def test_unknown_fields(cluster, ns, tmp_path, version):
    f = tmp_path / "u.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: unk\nfoo: bar\n")
    strict = cluster.kubectl("apply", "-n", ns, "-f", str(f), version=version, check=False)
    assert strict.returncode != 0 and 'unknown field "foo"' in strict.stderr
    assert cluster.kubectl("get", "cm", "unk", "-n", ns, check=False).returncode != 0
    cluster.kubectl("apply", "-n", ns, "-f", str(f), "--validate=false", version=version)
    assert "foo" not in cluster.json("get", "cm", "unk", "-n", ns)


def test_invalid_objects_name_their_fields(cluster, ns, tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("""apiVersion: apps/v1
kind: Deployment
metadata: {name: mismatch}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec:
      containers: [{name: c, image: busybox, ports: [{containerPort: 70000}]}]
""")
    r = cluster.kubectl("apply", "-n", ns, "-f", str(f), check=False)
    assert r.returncode != 0
    assert "spec.template.metadata.labels: Invalid value" in r.stderr
    assert "`selector` does not match template `labels`" in r.stderr
    assert "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000" in r.stderr


def test_credentials_are_required(cluster):
    # Without credentials a caller is anonymous, which RBAC lets read only public information.
    status, body = helpers.request(cluster.kubeconfig, "GET", "/api/v1/namespaces", token=False)
    assert status == 403 and body["reason"] == "Forbidden"
    status, body = helpers.request(cluster.kubeconfig, "GET", "/api/v1/namespaces", token="not-the-token")
    assert status == 401 and body["reason"] == "Unauthorized"
    status, body = helpers.request(cluster.kubeconfig, "GET", "/version", token=False)
    assert status == 200 and body["major"] == "1"


def test_wrong_namespace_in_body(cluster, ns):
    status, body = helpers.request(cluster.kubeconfig, "POST", f"/api/v1/namespaces/{ns}/configmaps",
                                   {"metadata": {"name": "x", "namespace": "elsewhere"}})
    assert status == 400 and "does not match the namespace" in body["message"]
    status, body = helpers.request(cluster.kubeconfig, "POST", "/api/v1/namespaces/missing-ns/configmaps",
                                   {"metadata": {"name": "x"}})
    assert status == 404 and body["message"] == 'namespaces "missing-ns" not found'


def test_service_ports_out_of_range_taken_or_clashing_are_refused(cluster, ns, tmp_path, version):
    def svc(name, ports):
        f = tmp_path / f"{name}.yaml"
        f.write_text(json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                                 "spec": {"type": "NodePort", "selector": {"app": name}, "ports": ports}}))
        return cluster.kubectl("apply", "-n", ns, "-f", str(f), version=version, check=False)

    r = svc("out-of-range", [{"port": 80, "nodePort": 40000}])
    assert r.returncode != 0
    assert "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range. " \
           "The range of valid ports is 30000-32767" in r.stderr, r.stderr
    assert svc("holder", [{"port": 80, "nodePort": 31234}]).returncode == 0
    r = svc("taker", [{"port": 80, "nodePort": 31234}])
    assert r.returncode != 0
    assert "spec.ports[0].nodePort: Invalid value: 31234: provided port is already allocated" in r.stderr, r.stderr
    r = svc("clash", [{"name": "a", "port": 80}, {"name": "b", "port": 80}])
    assert r.returncode != 0
    assert "spec.ports[1]: Duplicate value" in r.stderr, r.stderr
    # None of the refused ones exist, and the holder kept its port.
    names = [s["metadata"]["name"] for s in cluster.json("get", "services", "-n", ns)["items"]]
    assert names == ["holder"]
    assert cluster.json("get", "service", "holder", "-n", ns)["spec"]["ports"][0]["nodePort"] == 31234
