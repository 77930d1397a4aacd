"""The Python kubernetes client: typed CRUD, selectors, watch, patches, errors."""

import pytest
from kubernetes import client, config, watch


@pytest.fixture
def api(cluster):
    return config.new_client_from_config(config_file=cluster.kubeconfig)


def test_crud_and_selectors(api, ns):
    v1 = client.CoreV1Api(api)
    created = v1.create_namespaced_config_map(ns, {"metadata": {"name": "py", "labels": {"src": "py"}}, "data": {"a": "1"}})
    assert created.metadata.uid and int(created.metadata.resource_version) > 0
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "other"}})
    listed = v1.list_namespaced_config_map(ns, label_selector="src=py")
    assert [c.metadata.name for c in listed.items] == ["py"]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)
    by_name = v1.list_namespaced_config_map(ns, field_selector="metadata.name=other")
    assert [c.metadata.name for c in by_name.items] == ["other"]
    patched = v1.patch_namespaced_config_map("py", ns, {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    got = v1.read_namespaced_config_map("py", ns)
    got.data["c"] = "3"
    replaced = v1.replace_namespaced_config_map("py", ns, got)
    assert replaced.data == {"a": "1", "b": "2", "c": "3"}
    assert int(replaced.metadata.resource_version) > int(patched.metadata.resource_version)
    v1.delete_namespaced_config_map("py", ns)
    with pytest.raises(client.exceptions.ApiException) as e:
        v1.read_namespaced_config_map("py", ns)
    assert e.value.status == 404


def test_stale_replace_conflicts(api, ns):
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "race"}, "data": {"v": "1"}})
    mine = v1.read_namespaced_config_map("race", ns)
    v1.patch_namespaced_config_map("race", ns, {"data": {"v": "2"}})
    mine.data["v"] = "mine"
    with pytest.raises(client.exceptions.ApiException) as e:
        v1.replace_namespaced_config_map("race", ns, mine)
    assert e.value.status == 409 and "the object has been modified" in e.value.body
    assert v1.read_namespaced_config_map("race", ns).data == {"v": "2"}


def test_watch_sees_changes_in_order(api, ns):
    v1 = client.CoreV1Api(api)
    rv = v1.list_namespaced_config_map(ns).metadata.resource_version
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "w1"}})
    v1.patch_namespaced_config_map("w1", ns, {"data": {"k": "v"}})
    v1.delete_namespaced_config_map("w1", ns)
    seen = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=3):
        if ev["object"].metadata.name == "w1":
            seen.append((ev["type"], ev["object"].data))
    assert seen == [("ADDED", None), ("MODIFIED", {"k": "v"}), ("DELETED", {"k": "v"})]


def test_strategic_patch_and_scale(api, ns):
    apps = client.AppsV1Api(api)
    body = {"metadata": {"name": "app"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [
                {"name": "one", "image": "busybox"}, {"name": "two", "image": "busybox"}]}}}}
    apps.create_namespaced_deployment(ns, body)
    d = apps.patch_namespaced_deployment("app", ns, {"spec": {"template": {"spec": {"containers": [{"name": "two", "image": "alpine"}]}}}})
    assert [(c.name, c.image) for c in d.spec.template.spec.containers] == [("one", "busybox"), ("two", "alpine")]
    s = apps.patch_namespaced_deployment_scale("app", ns, {"spec": {"replicas": 4}})
    assert s.spec.replicas == 4 and s.status.selector == "app=a"
    assert apps.read_namespaced_deployment_scale("app", ns).spec.replicas == 4


def test_invalid_object_is_422_with_causes(api, ns):
    v1 = client.CoreV1Api(api)
    pod = {"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}}
    with pytest.raises(client.exceptions.ApiException) as e:
        v1.create_namespaced_pod(ns, pod)
    assert e.value.status == 422
    import json
    status = json.loads(e.value.body)
    assert status["reason"] == "Invalid"
    assert {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"} in status["details"]["causes"]
