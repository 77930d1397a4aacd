"""Identities and RBAC as a user of kubectl and the Python client meets them: users made with
`berth user add`, refusals in Kubernetes' words, `auth can-i` and `whoami`, the bootstrap
roles (edit, view, admin) working through bindings, escalation refused, impersonation, and
the anonymous caller limited to what Kubernetes lets it see."""

import json
import socket
import ssl
import time

import pytest

import helpers
from conftest import Cluster, wait_until

FORBIDDEN_PODS = ('Error from server (Forbidden): pods is forbidden: User "{user}" cannot list '
                  'resource "pods" in API group "" in the namespace "{ns}"')


def add_user(cluster, name, *extra):
    r = cluster.berth("user", "add", name, *extra)
    assert "may do nothing until" in r.stdout
    return str(cluster.data / "users" / f"{name}.kubeconfig")


def as_user(cluster, kubeconfig, *args, version="1.33", check=False):
    """kubectl with another user's kubeconfig."""
    return cluster.kubectl("--kubeconfig", kubeconfig, *args, version=version, check=check)


@pytest.fixture(scope="module")
def alice(cluster):
    return add_user(cluster, "alice")


def test_a_user_without_bindings_is_refused_in_kubernetes_words(cluster, alice, ns, version):
    r = as_user(cluster, alice, "get", "pods", "-n", ns, version=version)
    assert r.returncode != 0
    assert FORBIDDEN_PODS.format(user="alice", ns=ns) in r.stderr
    r = as_user(cluster, alice, "get", "nodes", version=version)
    assert ('nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" '
            'at the cluster scope') in r.stderr
    r = as_user(cluster, alice, "get", "deployments", "-n", ns, "web", version=version)
    assert ('deployments.apps "web" is forbidden: User "alice" cannot get resource "deployments" '
            f'in API group "apps" in the namespace "{ns}"') in r.stderr
    # Every authenticated user may discover the API and ask what it may do.
    r = as_user(cluster, alice, "api-resources", version=version, check=True)
    assert "pods" in r.stdout
    r = as_user(cluster, alice, "auth", "can-i", "list", "pods", "-n", ns, version=version)
    assert r.returncode == 1 and r.stdout.strip() == "no"


def test_can_i_answers_for_self_and_for_others(cluster, alice, ns, version):
    r = cluster.kubectl("auth", "can-i", "create", "pods", "-n", ns, version=version)
    assert r.stdout.strip() == "yes"
    r = cluster.kubectl("auth", "can-i", "create", "pods", "-n", ns, "--as", "alice",
                        version=version, check=False)
    assert r.returncode == 1 and r.stdout.strip() == "no"
    r = cluster.kubectl("auth", "can-i", "get", "/healthz", "--as", "alice", version=version)
    assert r.stdout.strip() == "yes"
    r = cluster.kubectl("auth", "can-i", "get", "/metrics", "--as", "alice", version=version,
                        check=False)
    assert r.stdout.strip() == "no"
    # What an authenticated user without bindings holds on Kubernetes: the reviews about
    # itself, and reading discovery, health and version.
    listed = as_user(cluster, alice, "auth", "can-i", "--list", "-n", ns, version=version,
                     check=True).stdout
    rows = [" ".join(line.split()) for line in listed.splitlines()]
    assert rows[0] == "Resources Non-Resource URLs Resource Names Verbs"
    for row in ("selfsubjectreviews.authentication.k8s.io [] [] [create]",
                "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]",
                "selfsubjectrulesreviews.authorization.k8s.io [] [] [create]",
                "[/api/*] [] [get]", "[/apis] [] [get]", "[/healthz] [] [get]",
                "[/version] [] [get]", "[/openapi/*] [] [get]", "[/readyz] [] [get]"):
        assert row in rows, listed
    assert not any("pods" in r for r in rows), listed


def test_whoami_names_the_user_and_its_groups(cluster, tmp_path):
    kubeconfig = add_user(cluster, "carol", "--group", "qa", "--out", str(tmp_path / "carol.kc"))
    assert kubeconfig.endswith("carol.kubeconfig")
    out = cluster.kubectl("--kubeconfig", str(tmp_path / "carol.kc"), "auth", "whoami",
                          "-o", "json").stdout
    status = json.loads(out)["status"]["userInfo"]
    assert status["username"] == "carol"
    assert status["groups"] == ["qa", "system:authenticated"]
    out = cluster.kubectl("auth", "whoami", "--as", "dave", "--as-group", "ops", "-o", "json").stdout
    assert json.loads(out)["status"]["userInfo"] == {
        "username": "dave", "groups": ["ops", "system:authenticated"]}


def test_an_edit_binding_works_in_its_namespace_and_nowhere_else(cluster, alice, ns, version, request):
    other = f"{ns[:55]}-o"
    cluster.kubectl("create", "namespace", other)
    request.addfinalizer(lambda: cluster.kubectl("delete", "namespace", other, "--wait=false",
                                                 check=False))
    cluster.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice",
                    "-n", ns, version=version)
    wait_until(lambda: as_user(cluster, alice, "get", "pods", "-n", ns).returncode == 0,
               what="the binding takes effect")
    as_user(cluster, alice, "create", "configmap", "cfg", "--from-literal=a=b", "-n", ns,
            version=version, check=True)
    as_user(cluster, alice, "create", "secret", "generic", "s", "--from-literal=a=b", "-n", ns,
            version=version, check=True)
    assert as_user(cluster, alice, "get", "secret", "s", "-n", ns, version=version).returncode == 0
    r = as_user(cluster, alice, "create", "configmap", "cfg", "-n", other, version=version)
    assert r.returncode != 0
    assert (f'configmaps is forbidden: User "alice" cannot create resource "configmaps" in API '
            f'group "" in the namespace "{other}"') in r.stderr
    # edit does not reach RBAC or the namespace's quota.
    r = as_user(cluster, alice, "create", "rolebinding", "x", "--clusterrole=view", "--user=bob",
                "-n", ns, version=version)
    assert r.returncode != 0 and "forbidden" in r.stderr
    r = as_user(cluster, alice, "auth", "can-i", "create", "deployments", "-n", ns,
                version=version, check=True)
    assert r.stdout.strip() == "yes"


def test_view_reads_but_not_secrets(cluster, ns, version):
    kc = add_user(cluster, f"viewer-{version}")
    cluster.kubectl("create", "rolebinding", "v", "--clusterrole=view", f"--user=viewer-{version}",
                    "-n", ns)
    cluster.kubectl("create", "secret", "generic", "hidden", "--from-literal=k=v", "-n", ns)
    cluster.kubectl("create", "configmap", "shown", "--from-literal=k=v", "-n", ns)
    wait_until(lambda: as_user(cluster, kc, "get", "configmap", "shown", "-n", ns).returncode == 0,
               what="the binding takes effect")
    r = as_user(cluster, kc, "get", "secret", "hidden", "-n", ns, version=version)
    assert r.returncode != 0
    assert (f'secrets "hidden" is forbidden: User "viewer-{version}" cannot get resource "secrets" '
            f'in API group "" in the namespace "{ns}"') in r.stderr
    r = as_user(cluster, kc, "delete", "configmap", "shown", "-n", ns, version=version)
    assert r.returncode != 0 and "forbidden" in r.stderr


def test_roles_and_bindings_cannot_grant_more_than_their_writer_holds(cluster, ns, version):
    kc = add_user(cluster, f"owner-{version}")
    user = f"owner-{version}"
    cluster.kubectl("create", "rolebinding", "owner", "--clusterrole=admin", f"--user={user}",
                    "-n", ns)
    wait_until(lambda: as_user(cluster, kc, "get", "rolebindings", "-n", ns).returncode == 0,
               what="the binding takes effect")
    # An admin of the namespace may hand out what it holds there...
    as_user(cluster, kc, "create", "rolebinding", "helper", "--clusterrole=edit", "--user=helper",
            "-n", ns, version=version, check=True)
    as_user(cluster, kc, "create", "role", "reader", "--verb=get,list", "--resource=pods",
            "-n", ns, version=version, check=True)
    # ...but not what it does not.
    r = as_user(cluster, kc, "create", "rolebinding", "boss", "--clusterrole=cluster-admin",
                "--user=helper", "-n", ns, version=version)
    assert r.returncode != 0
    assert (f'rolebindings.rbac.authorization.k8s.io "boss" is forbidden: user "{user}" '
            f'(groups=["system:authenticated"]) is attempting to grant RBAC permissions not '
            'currently held:') in r.stderr
    r = as_user(cluster, kc, "create", "role", "nodes", "--verb=get", "--resource=nodes",
                "-n", ns, version=version)
    assert r.returncode != 0
    assert 'Resources:["nodes"], Verbs:["get"]' in r.stderr
    r = as_user(cluster, kc, "create", "clusterrolebinding", "mine", "--clusterrole=view",
                f"--user={user}", version=version)
    assert r.returncode != 0 and "forbidden" in r.stderr


def test_impersonation_needs_the_impersonate_verb(cluster, alice, ns, version):
    r = as_user(cluster, alice, "get", "pods", "-n", ns, "--as", "admin", version=version)
    assert r.returncode != 0
    assert ('users "admin" is forbidden: User "alice" cannot impersonate resource "users" in API '
            'group "" at the cluster scope') in r.stderr
    # The admin may act as anyone, and is then judged as them.
    r = cluster.kubectl("get", "pods", "-n", ns, "--as", "alice", "--as-group", "nobody",
                        version=version, check=False)
    assert FORBIDDEN_PODS.format(user="alice", ns=ns) in r.stderr


def test_aggregated_roles_take_in_new_rules(cluster, tmp_path):
    f = tmp_path / "agg.yaml"
    f.write_text("""apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-view
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- apiGroups: [example.com]
  resources: [widgets]
  verbs: [get, list, watch]
""")
    cluster.kubectl("apply", "-f", str(f))

    def view_has_widgets():
        rules = cluster.json("get", "clusterrole", "view")["rules"]
        return any("widgets" in r.get("resources", []) for r in rules)
    wait_until(view_has_widgets, what="view aggregates widgets")
    # edit and admin aggregate view's rules in turn.
    wait_until(lambda: any("widgets" in r.get("resources", [])
                           for r in cluster.json("get", "clusterrole", "admin")["rules"]),
               what="admin aggregates widgets through edit")
    cluster.kubectl("delete", "clusterrole", "widgets-view")
    wait_until(lambda: not view_has_widgets(), what="view lets go of widgets")


def test_the_python_client_is_judged_as_its_user(cluster, ns):
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    kc = add_user(cluster, "py-user")
    cluster.kubectl("create", "rolebinding", "py", "--clusterrole=view", "--user=py-user", "-n", ns)
    api = client.CoreV1Api(config.new_client_from_config(config_file=kc))
    wait_until(lambda: _lists(api, ns), what="the binding takes effect")
    with pytest.raises(ApiException) as e:
        api.list_namespaced_secret(ns)
    assert e.value.status == 403
    body = json.loads(e.value.body)
    assert body["reason"] == "Forbidden"
    assert body["details"] == {"kind": "secrets"}
    authz = client.AuthorizationV1Api(config.new_client_from_config(config_file=kc))
    review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
            namespace=ns, verb="list", resource="pods"))))
    assert review.status.allowed is True
    review = authz.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=client.V1ResourceAttributes(
            namespace=ns, verb="delete", resource="pods"))))
    assert review.status.allowed is False
    # The admin asks about another subject.
    admin = client.AuthorizationV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    sar = admin.create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(user="py-user", resource_attributes=client.V1ResourceAttributes(
            namespace=ns, verb="get", resource="pods"))))
    assert sar.status.allowed is True


def _lists(api, ns):
    try:
        api.list_namespaced_pod(ns)
        return True
    except Exception:
        return False


def test_anonymous_callers_see_only_public_information(cluster):
    status, body = helpers.request(cluster.kubeconfig, "GET", "/version", token=False)
    assert status == 200 and body["major"] == "1"
    status, body = helpers.request(cluster.kubeconfig, "GET", "/readyz", token=False)
    assert status == 200
    status, body = helpers.request(cluster.kubeconfig, "GET", "/api", token=False)
    assert status == 403
    assert body["message"] == 'forbidden: User "system:anonymous" cannot get path "/api"'
    status, body = helpers.request(cluster.kubeconfig, "GET", "/api/v1/namespaces", token=False)
    assert status == 403 and body["reason"] == "Forbidden"
    assert body["message"] == ('namespaces is forbidden: User "system:anonymous" cannot list '
                               'resource "namespaces" in API group "" at the cluster scope')
    # A token nobody owns is refused outright, not taken as anonymous.
    status, body = helpers.request(cluster.kubeconfig, "GET", "/version", token="not-a-token")
    assert status == 401 and body["reason"] == "Unauthorized"


def test_an_unauthorized_body_is_never_read(cluster):
    """A refused client cannot make the server read (or hold) its body: the answer comes
    before it is sent."""
    server, ca, _ = helpers.credentials(cluster.kubeconfig)
    host, port = server.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cadata=ca)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            size = 50 * 1024 * 1024
            s.sendall((f"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: {host}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode())
            s.sendall(b"{" * 1024)
            started = time.monotonic()
            reply = s.recv(4096).decode(errors="replace")
            assert time.monotonic() - started < 5
    assert reply.startswith("HTTP/1.1 403"), reply
    assert "system:anonymous" in reply


def test_bootstrap_roles_come_back_after_a_restart(tmp_path):
    c = Cluster(tmp_path).start()
    try:
        c.kubectl("delete", "clusterrolebinding", "system:basic-user")
        c.kubectl("annotate", "clusterrole", "system:discovery",
                  "rbac.authorization.kubernetes.io/autoupdate=false", "--overwrite")
        c.kubectl("patch", "clusterrole", "system:discovery", "--type=json",
                  "-p", '[{"op": "replace", "path": "/rules", "value": []}]')
        c.stop()
        c.start()
        assert c.json("get", "clusterrolebinding", "system:basic-user")["roleRef"]["name"] == \
            "system:basic-user"
        # An object an operator took over is left as they made it.
        assert c.json("get", "clusterrole", "system:discovery").get("rules", []) == []
    finally:
        c.stop()
