"""CustomResourceDefinitions as operators and charts use them: a definition applied with
kubectl is served at once (discovery, tables, short names, categories, explain), its objects
are validated, pruned and defaulted by its schema and CEL rules, have status and scale
subresources, watch, selectors, pagination and every patch kubectl sends, several versions,
and go away with their definition or namespace."""

import json
import subprocess

import pytest
import yaml

from conftest import wait_until


def definition(group, plural="widgets", kind="Widget", short="wd", versions=("v1",), storage="v1",
               extra_schema=None):
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                    "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                    "replicas": {"type": "integer", "default": 1},
                    "selector": {"type": "string"},
                    "image": {"type": "string"},
                },
                "x-kubernetes-validations": [
                    {"rule": "self.size <= 5 || self.color == 'blue'",
                     "message": "only blue widgets are bigger than 5"},
                ],
            },
            "status": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer"},
                    "selector": {"type": "string"},
                    "phase": {"type": "string"},
                },
            },
        },
    }
    if extra_schema:
        schema["properties"]["spec"]["properties"].update(extra_schema)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                      "shortNames": [short], "categories": ["all"]},
            "versions": [{
                "name": v, "served": True, "storage": v == storage,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}, "scale": {
                    "specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas",
                    "labelSelectorPath": ".status.selector"}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            } for v in versions],
        },
    }


def group_for(ns):
    """A group of its own per test (definitions are cluster-wide)."""
    return f"{ns[-20:].strip('-')}.example.com"


def widget(group, name, version="v1", **spec):
    return {"apiVersion": f"{group}/{version}", "kind": "Widget", "metadata": {"name": name},
            "spec": {"size": 1, **spec}}


def apply(cluster, obj, *args, version="1.33", check=True):
    return cluster.kubectl("apply", "-f", "-", *args, input=yaml.safe_dump(obj), version=version,
                           check=check)


@pytest.fixture
def widgets(cluster, ns):
    """A Widget definition of its own group, deleted after the test."""
    group = group_for(ns)
    crd = definition(group)
    apply(cluster, crd)
    yield group
    cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--wait=false", check=False)


def test_a_definition_is_served_as_soon_as_its_create_returns(cluster, ns, version):
    group = group_for(ns)
    crd = definition(group)
    # One kubectl call creates the definition, the next uses it: no wait in between.
    apply(cluster, crd, version=version)
    got = cluster.json("get", "crd", crd["metadata"]["name"], version=version)
    conditions = {c["type"]: c for c in got["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["reason"] == "NoConflicts"
    assert got["status"]["acceptedNames"]["kind"] == "Widget"
    assert got["status"]["storedVersions"] == ["v1"]
    try:
        apply(cluster, widget(group, "w1", size=3), "-n", ns, version=version)
        table = cluster.kubectl("get", "wd", "-n", ns, version=version).stdout.splitlines()
        assert table[0].split() == ["NAME", "SIZE", "COLOR", "AGE"]
        assert table[1].split()[:3] == ["w1", "3", "red"]
        resources = cluster.kubectl("api-resources", f"--api-group={group}", version=version).stdout
        assert "wd" in resources and "Widget" in resources and "true" in resources
        # `get all` includes kinds in the `all` category.
        everything = cluster.kubectl("get", "all", "-n", ns, version=version).stdout
        assert f"widget.{group}/w1" in everything
        explained = cluster.kubectl("explain", f"widgets.{group}.spec", version=version).stdout
        assert "size" in explained and "color" in explained
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], check=False)


def test_objects_are_validated_by_schema_and_rules(cluster, ns, widgets, version):
    group = widgets
    bad = widget(group, "bad", size="three")
    r = apply(cluster, bad, "-n", ns, version=version, check=False)
    assert r.returncode != 0
    assert ('spec.size: Invalid value: "string": spec.size in body must be of type integer: "string"'
            in r.stderr), r.stderr
    r = apply(cluster, widget(group, "big", size=11), "-n", ns, version=version, check=False)
    assert "spec.size in body should be less than or equal to 10" in r.stderr, r.stderr
    r = apply(cluster, widget(group, "pink", color="pink"), "-n", ns, version=version, check=False)
    assert 'spec.color: Unsupported value: "pink": supported values: "red", "blue"' in r.stderr, r.stderr
    missing = widget(group, "nosize")
    del missing["spec"]["size"]
    r = apply(cluster, missing, "-n", ns, version=version, check=False)
    assert "spec.size: Required value" in r.stderr, r.stderr
    # The CEL rule's message.
    r = apply(cluster, widget(group, "red7", size=7), "-n", ns, version=version, check=False)
    assert "only blue widgets are bigger than 5" in r.stderr, r.stderr
    apply(cluster, widget(group, "blue7", size=7, color="blue"), "-n", ns, version=version)
    assert cluster.json("get", f"widgets.{group}", "blue7", "-n", ns)["spec"]["size"] == 7


def test_unknown_fields_are_pruned_or_refused_and_defaults_filled(cluster, ns, widgets, version):
    group = widgets
    extra = widget(group, "extra", surprise="yes")
    extra["topLevel"] = 1
    r = apply(cluster, extra, "-n", ns, "--validate=strict", version=version, check=False)
    assert r.returncode != 0
    assert 'unknown field "spec.surprise"' in r.stderr, r.stderr
    apply(cluster, extra, "-n", ns, "--validate=false", version=version)
    got = cluster.json("get", f"widgets.{group}", "extra", "-n", ns)
    assert "surprise" not in got["spec"] and "topLevel" not in got
    # Defaults: color and replicas were not given.
    assert got["spec"]["color"] == "red" and got["spec"]["replicas"] == 1


def test_status_and_scale_subresources(cluster, ns, widgets, version):
    group = widgets
    apply(cluster, widget(group, "s1", size=2), "-n", ns, version=version)
    # Status is not written through the main resource...
    obj = cluster.json("get", f"widgets.{group}", "s1", "-n", ns)
    obj["status"] = {"phase": "Ignored"}
    cluster.kubectl("replace", "-f", "-", input=json.dumps(obj), version=version)
    assert "status" not in cluster.json("get", f"widgets.{group}", "s1", "-n", ns)
    # ...but through its subresource, with the label selector the scale view shows.
    cluster.kubectl("patch", f"widgets.{group}", "s1", "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"replicas": 1, "selector": "app=s1", "phase": "Ready"}}),
                    version=version)
    got = cluster.json("get", f"widgets.{group}", "s1", "-n", ns)
    assert got["status"]["phase"] == "Ready"
    generation = got["metadata"]["generation"]
    cluster.kubectl("scale", f"widgets.{group}/s1", "-n", ns, "--replicas=4", version=version)
    got = cluster.json("get", f"widgets.{group}", "s1", "-n", ns)
    assert got["spec"]["replicas"] == 4
    assert got["metadata"]["generation"] == generation + 1
    scale = json.loads(cluster.kubectl("get", "--raw",
                                       f"/apis/{group}/v1/namespaces/{ns}/widgets/s1/scale").stdout)
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4
    assert scale["status"] == {"replicas": 1, "selector": "app=s1"}


def test_every_patch_kubectl_sends(cluster, ns, widgets, version):
    group = widgets
    apply(cluster, widget(group, "p1", size=2), "-n", ns, version=version)
    cluster.kubectl("label", f"widgets.{group}", "p1", "-n", ns, "tier=gold", version=version)
    cluster.kubectl("annotate", f"widgets.{group}", "p1", "-n", ns, "note=hi", version=version)
    cluster.kubectl("patch", f"widgets.{group}", "p1", "-n", ns, "--type=merge", "-p", '{"spec":{"size":3}}',
                    version=version)
    cluster.kubectl("patch", f"widgets.{group}", "p1", "-n", ns, "--type=json",
                    "-p", '[{"op":"replace","path":"/spec/color","value":"blue"}]', version=version)
    got = cluster.json("get", f"widgets.{group}", "p1", "-n", ns)
    assert got["metadata"]["labels"]["tier"] == "gold"
    assert got["metadata"]["annotations"]["note"] == "hi"
    assert (got["spec"]["size"], got["spec"]["color"]) == (3, "blue")
    # Strategic merge has no patch strategies to go by: 415, as Kubernetes answers.
    r = cluster.kubectl("patch", f"widgets.{group}", "p1", "-n", ns, "-p", '{"spec":{"size":4}}',
                        version=version, check=False)
    assert r.returncode != 0
    assert "the body of the request was in an unknown format" in r.stderr, r.stderr
    # A rule's violation through a patch is refused as on create.
    r = cluster.kubectl("patch", f"widgets.{group}", "p1", "-n", ns, "--type=merge",
                        "-p", '{"spec":{"size":9,"color":"red"}}', version=version, check=False)
    assert "only blue widgets are bigger than 5" in r.stderr, r.stderr
    # Server-side apply, with its managed fields and conflicts.
    ssa = widget(group, "p2", size=2)
    apply(cluster, ssa, "-n", ns, "--server-side", "--field-manager=alice", version=version)
    got = cluster.json("get", f"widgets.{group}", "p2", "-n", ns, "--show-managed-fields")
    assert any(m["manager"] == "alice" for m in got["metadata"]["managedFields"])
    ssa["spec"]["size"] = 4
    r = apply(cluster, ssa, "-n", ns, "--server-side", "--field-manager=bob", version=version,
              check=False)
    assert r.returncode != 0 and "conflict" in r.stderr.lower(), r.stderr
    apply(cluster, ssa, "-n", ns, "--server-side", "--field-manager=bob", "--force-conflicts",
          version=version)
    assert cluster.json("get", f"widgets.{group}", "p2", "-n", ns)["spec"]["size"] == 4
    # kubectl edit sends a merge patch.
    env_editor = {"KUBE_EDITOR": "sed -i s/size:.4/size:\\ 5/"}
    cluster.kubectl("edit", f"widgets.{group}", "p2", "-n", ns, version=version, env=env_editor)
    assert cluster.json("get", f"widgets.{group}", "p2", "-n", ns)["spec"]["size"] == 5


def test_list_watch_selectors_and_pages_with_the_python_client(cluster, ns, widgets):
    from kubernetes import client, config, watch
    group = widgets
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=cluster.kubeconfig))
    w = watch.Watch()
    events = []
    start_rv = api.list_namespaced_custom_object(group, "v1", ns, "widgets")["metadata"]["resourceVersion"]
    for i in range(5):
        body = widget(group, f"w{i}", size=i + 1)
        body["metadata"]["labels"] = {"parity": "even" if i % 2 == 0 else "odd"}
        api.create_namespaced_custom_object(group, "v1", ns, "widgets", body)
    api.patch_namespaced_custom_object(group, "v1", ns, "widgets", "w0", {"spec": {"size": 2}})
    api.delete_namespaced_custom_object(group, "v1", ns, "widgets", "w4")
    for ev in w.stream(api.list_namespaced_custom_object, group, "v1", ns, "widgets",
                       resource_version=start_rv, timeout_seconds=5):
        events.append((ev["type"], ev["object"]["metadata"]["name"]))
        if len(events) == 7:
            w.stop()
    assert events[:5] == [("ADDED", f"w{i}") for i in range(5)]
    assert events[5:] == [("MODIFIED", "w0"), ("DELETED", "w4")]
    even = api.list_namespaced_custom_object(group, "v1", ns, "widgets", label_selector="parity=even")
    assert sorted(o["metadata"]["name"] for o in even["items"]) == ["w0", "w2"]
    first = api.list_namespaced_custom_object(group, "v1", ns, "widgets", limit=2)
    assert len(first["items"]) == 2 and first["metadata"]["continue"]
    rest = api.list_namespaced_custom_object(group, "v1", ns, "widgets", limit=10,
                                             _continue=first["metadata"]["continue"])
    names = [o["metadata"]["name"] for o in first["items"] + rest["items"]]
    assert names == ["w0", "w1", "w2", "w3"]
    # Deleting a custom object answers with a Status, as Kubernetes does.
    gone = api.delete_namespaced_custom_object(group, "v1", ns, "widgets", "w3")
    assert gone["kind"] == "Status" and gone["status"] == "Success"


def test_several_versions_convert_by_api_version(cluster, ns, version):
    group = group_for(ns)
    crd = definition(group, versions=("v1beta1", "v1"), storage="v1")
    apply(cluster, crd, version=version)
    try:
        apply(cluster, widget(group, "old", version="v1beta1", size=2), "-n", ns, version=version)
        apply(cluster, widget(group, "new", version="v1", size=3), "-n", ns, version=version)
        for name in ("old", "new"):
            v1 = cluster.json("get", f"widgets.v1.{group}", name, "-n", ns, version=version)
            assert v1["apiVersion"] == f"{group}/v1"
            beta = cluster.json("get", f"widgets.v1beta1.{group}", name, "-n", ns, version=version)
            assert beta["apiVersion"] == f"{group}/v1beta1"
        listed = json.loads(cluster.kubectl(
            "get", "--raw", f"/apis/{group}/v1beta1/namespaces/{ns}/widgets").stdout)
        assert {o["apiVersion"] for o in listed["items"]} == {f"{group}/v1beta1"}
        # A patch through the older version keeps working.
        cluster.kubectl("patch", f"widgets.v1beta1.{group}", "old", "-n", ns, "--type=merge",
                        "-p", '{"spec":{"size":4}}', version=version)
        assert cluster.json("get", f"widgets.v1.{group}", "old", "-n", ns)["spec"]["size"] == 4
        # Discovery prefers v1 over v1beta1.
        groups = json.loads(cluster.kubectl("get", "--raw", f"/apis/{group}").stdout)
        assert groups["preferredVersion"]["version"] == "v1"
        # Changing the storage version records both as stored.
        crd["spec"]["versions"][0]["storage"] = True
        crd["spec"]["versions"][1]["storage"] = False
        apply(cluster, crd, version=version)
        stored = cluster.json("get", "crd", crd["metadata"]["name"])["status"]["storedVersions"]
        assert stored == ["v1", "v1beta1"]
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], check=False)


def test_deleting_a_definition_deletes_its_objects(cluster, ns, version):
    group = group_for(ns)
    crd = definition(group)
    name = crd["metadata"]["name"]
    apply(cluster, crd, version=version)
    for i in range(3):
        apply(cluster, widget(group, f"d{i}"), "-n", ns, version=version)
    # One object holds a finalizer of its own: the definition waits for it.
    cluster.kubectl("patch", f"widgets.{group}", "d0", "-n", ns, "--type=merge",
                    "-p", '{"metadata":{"finalizers":["example.com/hold"]}}', version=version)
    cluster.kubectl("delete", "crd", name, "--wait=false", version=version)
    wait_until(lambda: any(c["type"] == "Terminating" and c["status"] == "True"
                           for c in cluster.json("get", "crd", name)["status"]["conditions"]),
               what="the definition to be terminating")
    # No new objects meanwhile.
    r = apply(cluster, widget(group, "late"), "-n", ns, version=version, check=False)
    assert "create not allowed while custom resource definition is terminating" in r.stderr, r.stderr
    cluster.kubectl("patch", f"widgets.{group}", "d0", "-n", ns, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', version=version)
    wait_until(lambda: cluster.kubectl("get", "crd", name, check=False).returncode != 0,
               what="the definition to go")
    # Made again, it starts empty.
    apply(cluster, crd, version=version)
    try:
        assert cluster.json("get", f"widgets.{group}", "-n", ns)["items"] == []
    finally:
        cluster.kubectl("delete", "crd", name, check=False)


def test_deleting_a_namespace_deletes_its_custom_objects(cluster, widgets, request):
    from conftest import own_namespace
    group = widgets
    with own_namespace(cluster, "gone", request) as other:
        apply(cluster, widget(group, "inside"), "-n", other)
        cluster.kubectl("delete", "namespace", other, "--timeout=60s")
        assert cluster.json("get", f"widgets.{group}", "-A")["items"] == [] or all(
            o["metadata"]["namespace"] != other
            for o in cluster.json("get", f"widgets.{group}", "-A")["items"])


def test_bad_definitions_are_refused_with_kubernetes_messages(cluster, ns, version):
    group = group_for(ns)
    crd = definition(group)
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].pop("type")
    r = apply(cluster, crd, version=version, check=False)
    assert r.returncode != 0
    assert ("spec.validation.openAPIV3Schema.properties[spec].type: Required value: "
            "must not be empty for specified object fields") in r.stderr, r.stderr
    crd = definition(group)
    crd["metadata"]["name"] = "wrong.example.com"
    r = apply(cluster, crd, version=version, check=False)
    assert 'must be spec.names.plural+"."+spec.group' in r.stderr, r.stderr
    crd = definition(group)
    crd["spec"]["versions"][0]["storage"] = False
    r = apply(cluster, crd, version=version, check=False)
    assert "must have exactly one version marked as storage version" in r.stderr, r.stderr
    # Names another definition of the group already uses are not accepted, and not served.
    first = definition(group)
    apply(cluster, first, version=version)
    try:
        second = definition(group, plural="gadgets", kind="Gadget", short="wd")
        apply(cluster, second, version=version)
        got = cluster.json("get", "crd", second["metadata"]["name"])
        conditions = {c["type"]: c for c in got["status"]["conditions"]}
        assert conditions["NamesAccepted"]["status"] == "False"
        assert '"wd" is already in use' in conditions["NamesAccepted"]["message"]
        assert conditions["Established"]["status"] == "False"
        r = cluster.kubectl("get", "--raw", f"/apis/{group}/v1/gadgets", check=False)
        assert r.returncode != 0
        cluster.kubectl("delete", "crd", second["metadata"]["name"])
    finally:
        cluster.kubectl("delete", "crd", first["metadata"]["name"], check=False)


def test_rules_are_held_to_kubernetes_cost_limits(cluster, ns, version):
    """A rule that could cost too much on the largest object its schema allows is refused when
    the definition is written, with Kubernetes' advice; bounds in the schema let it in. A rule
    within its estimate may still cost too much on one object, and is then not run."""
    group = group_for(ns)
    names_rule = {"rule": "!has(self.names) || self.names.all(n, n.matches('^[a-z]+$'))",
                  "message": "names are lowercase letters"}
    crd = definition(group, extra_schema={"names": {"type": "array", "items": {"type": "string"}}})
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"].append(names_rule)
    r = apply(cluster, crd, version=version, check=False)
    assert r.returncode != 0
    assert ("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[1].rule: "
            "Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try "
            "simplifying the rule, or adding maxItems, maxProperties, and maxLength where "
            "arrays, maps, and strings are declared)") in r.stderr, r.stderr
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["names"] = {"type": "array", "maxItems": 16,
                                   "items": {"type": "string", "maxLength": 64}}
    # contains() costs a tenth of each string's length, multiplied: 5M at these bounds, under
    # the 10M a rule may be estimated at, but over the 1M one call may spend.
    spec["properties"]["text"] = {"type": "string", "maxLength": 100000}
    spec["properties"]["needle"] = {"type": "string", "maxLength": 5000}
    spec["x-kubernetes-validations"].append(
        {"rule": "!has(self.text) || !has(self.needle) || !self.text.contains(self.needle)",
         "message": "the needle is in the text"})
    # Kubernetes' CEL library is there; a function no library has is refused up front.
    spec["x-kubernetes-validations"].append(
        {"rule": "!has(self.selector) || self.selector.split(',').size() <= 2",
         "message": "at most two selector terms"})
    wrong = json.loads(json.dumps(crd))
    wrong["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"].append({"rule": "self.selector.bogus()"})
    r = apply(cluster, wrong, version=version, check=False)
    assert r.returncode != 0
    assert "undeclared reference to 'bogus'" in r.stderr, r.stderr
    apply(cluster, crd, version=version)
    try:
        apply(cluster, widget(group, "ok", names=["a", "b"]), "-n", ns, version=version)
        r = apply(cluster, widget(group, "bad", names=["Bad"]), "-n", ns, version=version,
                  check=False)
        assert "names are lowercase letters" in r.stderr, r.stderr
        apply(cluster, widget(group, "two", selector="a=1,b=2"), "-n", ns, version=version)
        r = apply(cluster, widget(group, "three", selector="a=1,b=2,c=3"), "-n", ns,
                  version=version, check=False)
        assert "at most two selector terms" in r.stderr, r.stderr
        r = apply(cluster, widget(group, "small", text="abc", needle="b"), "-n", ns,
                  version=version, check=False)
        assert "the needle is in the text" in r.stderr, r.stderr
        r = apply(cluster, widget(group, "huge", text="a" * 100000, needle="b" * 5000), "-n", ns,
                  version=version, check=False)
        assert r.returncode != 0
        assert "call cost exceeds limit for rule: !has(self.text)" in r.stderr, r.stderr
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], check=False)


def test_a_large_definition_applies_server_side(cluster, ns, version):
    group = group_for(ns)
    # Hundreds of KB of schema, as operators' definitions have.
    fields = {f"field{i:04d}": {"type": "string", "description": "A documented setting. " * 8}
              for i in range(1500)}
    crd = definition(group, extra_schema=fields)
    text = yaml.safe_dump(crd)
    assert len(text) > 300_000
    cluster.kubectl("apply", "--server-side", "-f", "-", input=text, version=version)
    try:
        apply(cluster, widget(group, "big", field0042="x"), "-n", ns, version=version)
        assert cluster.json("get", f"widgets.{group}", "big", "-n", ns)["spec"]["field0042"] == "x"
        # Applied again unchanged, it stays as it is.
        cluster.kubectl("apply", "--server-side", "-f", "-", input=text, version=version)
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], check=False)


def test_definitions_and_objects_survive_a_restart(fresh_cluster, tmp_path):
    c = fresh_cluster.start()
    crd = definition("restart.example.com")
    apply(c, crd)
    apply(c, widget("restart.example.com", "kept", size=2), "-n", "default")
    c.stop()
    c.start()
    got = c.json("get", "widgets.restart.example.com", "kept", "-n", "default")
    assert got["spec"]["size"] == 2 and got["spec"]["color"] == "red"
    # Still validated after the restart.
    r = apply(c, widget("restart.example.com", "bad", size=99), "-n", "default", check=False)
    assert "should be less than or equal to 10" in r.stderr, r.stderr


def test_owner_references_to_and_from_custom_objects_are_collected(cluster, ns, widgets, version):
    group = widgets
    apply(cluster, widget(group, "owner"), "-n", ns, version=version)
    owner = cluster.json("get", f"widgets.{group}", "owner", "-n", ns)
    ref = {"apiVersion": f"{group}/v1", "kind": "Widget", "name": "owner",
           "uid": owner["metadata"]["uid"]}
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "owned", "ownerReferences": [ref]}, "data": {"a": "b"}}
    apply(cluster, cm, "-n", ns, version=version)
    # A custom object owned by a built-in one.
    cm_owner = cluster.json("get", "configmap", "owned", "-n", ns)
    child = widget(group, "child")
    child["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owned",
                                             "uid": cm_owner["metadata"]["uid"]}]
    apply(cluster, child, "-n", ns, version=version)
    cluster.kubectl("delete", f"widgets.{group}", "owner", "-n", ns, version=version)
    # The ConfigMap goes with its owner, and the Widget with the ConfigMap.
    wait_until(lambda: cluster.kubectl("get", "configmap", "owned", "-n", ns, check=False).returncode != 0,
               timeout=30, what="the owned ConfigMap to be collected")
    wait_until(lambda: cluster.kubectl("get", f"widgets.{group}", "child", "-n", ns,
                                       check=False).returncode != 0,
               timeout=30, what="the owned Widget to be collected")


def test_a_kube_rs_program_uses_its_derived_kind(cluster):
    """tests/kube-rs: the `CustomResource` derive example (apply the definition, wait for it
    to be established, create, watch, patch, status, scale, replace, delete)."""
    import os
    program = os.environ.get("KUBE_RS_CHECK")
    assert program, "set KUBE_RS_CHECK to the built tests/kube-rs program (scripts/test.sh does)"
    r = subprocess.run([program], env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kube-rs-check: ok" in r.stdout


def test_kpt_applies_a_package_with_a_definition_and_reports_status(cluster, tmp_path):
    """`kpt live init` + `kpt live apply` (kpt installs its ResourceGroup definition, applies
    a definition before its objects, and waits on their status), then `status` and `destroy`."""
    import shutil
    kpt = shutil.which("kpt")
    assert kpt, "kpt must be on PATH"
    group = "kpt.berth.example.com"
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "crd.yaml").write_text(yaml.safe_dump(definition(group)))
    (pkg / "widget.yaml").write_text(yaml.safe_dump(
        {**widget(group, "from-kpt", size=2), "metadata": {"name": "from-kpt", "namespace": "default"}}))
    (pkg / "cm.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-kpt", "namespace": "default"},
         "data": {"a": "b"}}))
    env = {"KUBECONFIG": cluster.kubeconfig, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*args):
        r = subprocess.run([kpt, "live", *args], cwd=pkg, env=env, capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    run("init")
    out = run("apply", "--reconcile-timeout=60s")
    assert "apply result: 3 attempted, 3 successful" in out, out
    assert "reconcile result: 3 attempted, 3 successful" in out, out
    assert cluster.json("get", f"widgets.{group}", "from-kpt", "-n", "default")["spec"]["size"] == 2
    status = run("status")
    assert f"customresourcedefinition.apiextensions.k8s.io//widgets.{group} is Current" in status, status
    assert "is Current" in status.split(f"widget.{group}/default/from-kpt")[1].splitlines()[0], status
    out = run("destroy")
    assert "delete result: 3 attempted, 3 successful" in out, out
    wait_until(lambda: cluster.kubectl("get", "crd", f"widgets.{group}", check=False).returncode != 0,
               what="the package's definition to go")


def test_autoscalers_and_disruption_budgets_reach_custom_kinds_through_scale(cluster, ns, widgets):
    group = widgets
    apply(cluster, widget(group, "app", size=2, replicas=4), "-n", ns)
    owner = cluster.json("get", f"widgets.{group}", "app", "-n", ns)
    ref = {"apiVersion": f"{group}/v1", "kind": "Widget", "name": "app",
           "uid": owner["metadata"]["uid"], "controller": True}
    for i in range(2):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"app-{i}", "labels": {"app": "widget"}, "ownerReferences": [ref]},
               "spec": {"containers": [{"name": "c", "image": "busybox:test"}]}}
        apply(cluster, pod, "-n", ns)
    # The budget counts what the Widget wants (its scale says 4), not the two pods there are.
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "app"},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "widget"}}}}
    apply(cluster, pdb, "-n", ns)
    wait_until(lambda: cluster.json("get", "pdb", "app", "-n", ns).get("status", {}).get("expectedPods") == 4,
               what="the budget to expect the Widget's 4 replicas")
    # The autoscaler reads the Widget's scale.
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "app"},
           "spec": {"scaleTargetRef": {"apiVersion": f"{group}/v1", "kind": "Widget", "name": "app"},
                    "minReplicas": 1, "maxReplicas": 5,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                 "target": {"type": "Utilization", "averageUtilization": 50}}}]}}
    apply(cluster, hpa, "-n", ns)

    # (Its pods run nowhere, so it has no metrics; what matters is that it read the scale.)
    status = wait_until(lambda: cluster.json("get", "hpa", "app", "-n", ns).get("status", {}).get(
        "currentReplicas") == 4 and cluster.json("get", "hpa", "app", "-n", ns)["status"],
        what="the autoscaler to read the Widget's 4 replicas")
    assert not any(c.get("reason") == "FailedGetScale" for c in status.get("conditions", [])), status


def test_list_maps_merge_by_key_selectable_fields_and_late_defaults(cluster, ns, version):
    group = group_for(ns)
    crd = definition(group, extra_schema={
        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                  "x-kubernetes-list-map-keys": ["name"],
                  "items": {"type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
    })
    crd["spec"]["versions"][0]["selectableFields"] = [{"jsonPath": ".spec.color"}]
    apply(cluster, crd, version=version)
    res = f"widgets.{group}"
    try:
        # Two managers apply an item each of a list keyed by name: both stay, each owned by
        # its manager.
        a = widget(group, "lm", size=2, ports=[{"name": "http", "port": 80}], tags=["a"])
        b = widget(group, "lm", size=2, ports=[{"name": "https", "port": 443}], tags=["b"])
        apply(cluster, a, "-n", ns, "--server-side", "--field-manager=alice", version=version)
        apply(cluster, b, "-n", ns, "--server-side", "--field-manager=bob", version=version)
        got = cluster.json("get", res, "lm", "-n", ns)
        assert sorted(p["name"] for p in got["spec"]["ports"]) == ["http", "https"], got["spec"]
        assert sorted(got["spec"]["tags"]) == ["a", "b"], got["spec"]
        # A duplicate key is refused.
        dup = widget(group, "dup", size=1, ports=[{"name": "x", "port": 1}, {"name": "x", "port": 2}])
        r = apply(cluster, dup, "-n", ns, version=version, check=False)
        assert "spec.ports[1]: Duplicate value" in r.stderr, r.stderr
        # selectableFields: a field selector on a custom field.
        apply(cluster, widget(group, "blue", size=1, color="blue"), "-n", ns, version=version)
        names = cluster.kubectl("get", res, "-n", ns, "--field-selector=spec.color=blue", "-o", "name",
                                version=version).stdout.split()
        assert names == [f"widget.{group}/blue"], names
        # A default added to the schema later shows on objects stored before it.
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
            "image"]["default"] = "busybox:latest"
        apply(cluster, crd, version=version)
        assert cluster.json("get", res, "blue", "-n", ns)["spec"]["image"] == "busybox:latest"
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], check=False)
