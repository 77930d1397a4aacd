"""Identities and RBAC as a user of kubectl and the Python client meets them: users made with
`berth user add`, refusals in Kubernetes' words, `auth can-i` and `whoami`, the bootstrap
roles (edit, view, admin) working through bindings, escalation refused, impersonation, and
the anonymous caller limited to what Kubernetes lets it see."""

import json
import os
import socket
import subprocess
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


def test_a_user_can_get_a_namespace_of_its_own_within_a_quota(cluster, request, version):
    """Per-user namespaces on a shared machine: the user is admin of its own namespace (the
    kubeconfig's default), within the quota it was given, and nothing more."""
    user = f"share-{version.replace('.', '-')}"
    request.addfinalizer(lambda: cluster.kubectl("delete", "namespace", user, "--wait=false",
                                                 check=False))
    for _ in range(2):  # a second run updates what the first made
        r = cluster.berth("user", "add", user, "--namespace-quota", "pods=2,cpu=1,memory=1Gi")
        assert f'it is admin of namespace "{user}"' in r.stdout
    kc = str(cluster.data / "users" / f"{user}.kubeconfig")
    r = as_user(cluster, kc, "get", "pods", version=version, check=True)
    assert f"No resources found in {user} namespace." in r.stderr
    for pod in ("a", "b"):
        as_user(cluster, kc, "run", pod, "--image=busybox:test", version=version, check=True)
    # Pods that name no requests get the defaults, so they count against the quota.
    requests = cluster.json("get", "pod", "a", "-n", user)["spec"]["containers"][0]["resources"]
    assert requests["requests"] == {"cpu": "100m", "memory": "128Mi"}
    r = as_user(cluster, kc, "run", "c", "--image=busybox:test", version=version)
    assert r.returncode != 0
    assert ('pods "c" is forbidden: exceeded quota: user-quota, requested: pods=1, used: pods=2, '
            'limited: pods=2') in r.stderr
    # The user is admin there (it may share its namespace) and nothing elsewhere.
    as_user(cluster, kc, "create", "rolebinding", "guest", "--clusterrole=view", "--user=guest",
            version=version, check=True)
    r = as_user(cluster, kc, "get", "pods", "-n", "default", version=version)
    assert FORBIDDEN_PODS.format(user=user, ns="default") in r.stderr
    r = as_user(cluster, kc, "delete", "resourcequota", "user-quota", version=version)
    assert r.returncode != 0 and "forbidden" in r.stderr
    r = cluster.berth("user", "add", "Not_A_Label", "--namespace", check=False)
    assert r.returncode != 0 and "cannot name a namespace" in r.stderr


def node_kubeconfig(cluster, tmp_path, node):
    """A real node credential: a client certificate for system:node:<node> in system:nodes,
    signed with the cluster CA by openssl, in a kubeconfig of its own."""
    tls = cluster.data / "tls"
    key, csr, crt = (tmp_path / f"{node}.{ext}" for ext in ("key", "csr", "crt"))
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(csr),
                    "-subj", f"/O=system:nodes/CN=system:node:{node}"], check=True, capture_output=True)
    ext = tmp_path / f"{node}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(tls / "ca.crt"),
                    "-CAkey", str(tls / "ca.key"), "-CAcreateserial", "-days", "1",
                    "-extfile", str(ext), "-out", str(crt)], check=True, capture_output=True)
    server, _, _ = helpers.credentials(cluster.kubeconfig)
    kc = tmp_path / f"{node}.kubeconfig"
    for args in (["set-cluster", "c", f"--server={server}", f"--certificate-authority={tls / 'ca.crt'}"],
                 ["set-credentials", "n", f"--client-certificate={crt}", f"--client-key={key}"],
                 ["set-context", "c", "--cluster=c", "--user=n"], ["use-context", "c"]):
        cluster.kubectl("--kubeconfig", str(kc), "config", *args)
    return str(kc)


def test_a_node_reads_only_what_its_own_pods_use(cluster, ns, tmp_path, version):
    """The Node authorizer and NodeRestriction: a node's credential reads the Secrets and
    ConfigMaps of pods bound to it and not another node's, sees only its own pods' status, and
    cannot touch another node."""
    for node in ("n1", "n2"):
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": f"{node}-{version}"}}))
        cluster.kubectl("create", "secret", "generic", f"{node}-secret", "--from-literal=k=v", "-n", ns)
        cluster.kubectl("create", "configmap", f"{node}-config", "--from-literal=k=v", "-n", ns)
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{node}-pod"},
            "spec": {"nodeName": f"{node}-{version}", "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "busybox:test",
                                     "envFrom": [{"configMapRef": {"name": f"{node}-config"}}]}],
                     "volumes": [{"name": "s", "secret": {"secretName": f"{node}-secret"}}]}}))
    n1 = node_kubeconfig(cluster, tmp_path, f"n1-{version}")
    wait_until(lambda: as_user(cluster, n1, "get", "secret", "n1-secret", "-n", ns).returncode == 0,
               what="the node to read its pod's secret")
    assert as_user(cluster, n1, "get", "configmap", "n1-config", "-n", ns, version=version).returncode == 0
    r = as_user(cluster, n1, "get", "secret", "n2-secret", "-n", ns, version=version)
    assert (f'secrets "n2-secret" is forbidden: User "system:node:n1-{version}" cannot get resource '
            f'"secrets" in API group "" in the namespace "{ns}": no relationship found between node '
            f"'n1-{version}' and this object") in r.stderr
    r = as_user(cluster, n1, "get", "secrets", "-n", ns, version=version)
    assert r.returncode != 0 and "forbidden" in r.stderr
    # Its own pods, by the node selector, and their status; not another node's.
    r = as_user(cluster, n1, "get", "pods", "-A", f"--field-selector=spec.nodeName=n1-{version}",
                "-o", "name", version=version, check=True)
    assert r.stdout.split() == ["pod/n1-pod"]
    r = as_user(cluster, n1, "get", "pods", "-A", version=version)
    assert "can only list/watch pods with spec.nodeName field selector" in r.stderr
    r = as_user(cluster, n1, "delete", "pod", "n2-pod", "-n", ns, "--wait=false", version=version)
    assert (f'node "n1-{version}" can only delete pods with spec.nodeName set to itself') in r.stderr
    r = as_user(cluster, n1, "label", "node", f"n2-{version}", "x=y", version=version)
    assert f'node "n1-{version}" is not allowed to modify node "n2-{version}"' in r.stderr
    as_user(cluster, n1, "label", "node", f"n1-{version}", "x=y", version=version, check=True)
    # It does not give itself a role, or a label meant to mark trusted nodes, or lose a taint.
    r = as_user(cluster, n1, "label", "node", f"n1-{version}", "node-role.kubernetes.io/control-plane=",
                version=version)
    assert (f'nodes "n1-{version}" is forbidden: is not allowed to modify labels: '
            "node-role.kubernetes.io/control-plane") in r.stderr
    # Nor delete a volume (a berth node removes only the released local-path volumes it made).
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"precious-{version}"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                   "hostPath": {"path": "/srv/precious"}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))
    r = as_user(cluster, n1, "delete", "pv", f"precious-{version}", "--wait=false", version=version)
    assert (f'node "n1-{version}" can only delete released local-path volumes it provisioned'
            in r.stderr), r.stderr
    cluster.kubectl("delete", "pv", f"precious-{version}")
    cluster.kubectl("taint", "node", f"n1-{version}", "dedicated=db:NoSchedule")
    r = as_user(cluster, n1, "taint", "node", f"n1-{version}", "dedicated-", version=version)
    assert f'node "n1-{version}" is not allowed to modify taints' in r.stderr
    r = as_user(cluster, n1, "run", "sneaky", "--image=busybox:test", "-n", ns, version=version)
    assert 'node "n1-' in r.stderr and "can only create mirror pods" in r.stderr
    # Nor a mirror pod that names another pod's secret, to be given it.
    mirror = {"apiVersion": "v1", "kind": "Pod",
              "metadata": {"name": "mirror", "annotations": {"kubernetes.io/config.mirror": "x"}},
              "spec": {"nodeName": f"n1-{version}", "containers": [{"name": "c", "image": "i"}],
                       "volumes": [{"name": "s", "secret": {"secretName": "n2-secret"}}]}}
    r = cluster.kubectl("--kubeconfig", n1, "create", "-n", ns, "-f", "-", input=json.dumps(mirror),
                        version=version, check=False)
    assert f'node "n1-{version}" can not create pods that reference secrets' in r.stderr
    # An escaped comma does not make a selector name the node.
    r = as_user(cluster, n1, "get", "pods", "-A",
                f"--field-selector=spec.nodeName!=x\\,spec.nodeName=n1-{version}", version=version)
    assert r.returncode != 0 and "field selector" in r.stderr


def certificate_request(tmp_path, name, subject):
    """A key and a PEM certificate request for `subject`, made by openssl."""
    key, csr = tmp_path / f"{name}.key", tmp_path / f"{name}.csr"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", subject],
                   check=True, capture_output=True)
    return key, csr.read_bytes()


def csr_object(name, request, signer="kubernetes.io/kube-apiserver-client", usages=("client auth",)):
    import base64
    return json.dumps({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                       "metadata": {"name": name},
                       "spec": {"request": base64.b64encode(request).decode(), "signerName": signer,
                                "expirationSeconds": 86400, "usages": list(usages)}})


def test_certificate_requests_are_approved_signed_and_work(cluster, tmp_path, version, request):
    """Kubernetes' way to give a user a certificate: a CertificateSigningRequest, approved with
    `kubectl certificate approve`, signed by the cluster; the certificate then authenticates
    its user. Denied requests get nothing, and a request breaking its signer's rules fails."""
    import base64
    name = f"jane-{version}"
    for n in (name, f"{name}-denied", f"{name}-node"):
        request.addfinalizer(lambda n=n: cluster.kubectl("delete", "csr", n, check=False))
    key, req = certificate_request(tmp_path, name, f"/CN={name}/O=devs")
    cluster.kubectl("apply", "-f", "-", input=csr_object(name, req), version=version)
    row = cluster.kubectl("get", "csr", name, version=version).stdout.splitlines()
    assert row[0].split() == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]
    assert row[1].split()[2:] == ["kubernetes.io/kube-apiserver-client", "admin", "24h", "Pending"]
    obj = cluster.json("get", "csr", name)
    assert obj["spec"]["username"] == "admin" and "system:masters" in obj["spec"]["groups"]
    out = cluster.kubectl("certificate", "approve", name, version=version).stdout
    assert out.strip() == f"certificatesigningrequest.certificates.k8s.io/{name} approved"
    wait_until(lambda: cluster.json("get", "csr", name)["status"].get("certificate"),
               what="the certificate to be issued")
    obj = cluster.json("get", "csr", name)
    approved = obj["status"]["conditions"][0]
    assert (approved["type"], approved["reason"]) == ("Approved", "KubectlApprove")
    assert "Approved,Issued" in cluster.kubectl("get", "csr", name).stdout
    crt = tmp_path / f"{name}.crt"
    crt.write_bytes(base64.b64decode(obj["status"]["certificate"]))
    server, _, _ = helpers.credentials(cluster.kubeconfig)
    kc = tmp_path / f"{name}.kubeconfig"
    for args in (["set-cluster", "c", f"--server={server}",
                  f"--certificate-authority={cluster.data / 'tls' / 'ca.crt'}"],
                 ["set-credentials", "u", f"--client-certificate={crt}", f"--client-key={key}"],
                 ["set-context", "c", "--cluster=c", "--user=u"], ["use-context", "c"]):
        cluster.kubectl("--kubeconfig", str(kc), "config", *args)
    who = json.loads(cluster.kubectl("--kubeconfig", str(kc), "auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"] == {"username": name, "groups": ["devs", "system:authenticated"]}

    # Denied: no certificate comes.
    _, req = certificate_request(tmp_path, "denied", f"/CN={name}-denied")
    cluster.kubectl("apply", "-f", "-", input=csr_object(f"{name}-denied", req))
    out = cluster.kubectl("certificate", "deny", f"{name}-denied", version=version).stdout
    assert f"{name}-denied denied" in out
    r = cluster.kubectl("certificate", "approve", f"{name}-denied", version=version, check=False)
    assert f'certificate signing request "{name}-denied" is already Denied' in r.stderr
    time.sleep(1)
    assert "certificate" not in cluster.json("get", "csr", f"{name}-denied")["status"]
    # The client signer never makes system:masters certificates.
    _, req = certificate_request(tmp_path, "root", f"/CN={name}-root/O=system:masters")
    r = cluster.kubectl("apply", "-f", "-", input=csr_object(f"{name}-root", req), check=False)
    assert ("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not "
            "allowed") in r.stderr
    # A node client request whose subject is not a node's: approved, but the signer fails it.
    _, req = certificate_request(tmp_path, "node", f"/CN={name}-node/O=devs")
    cluster.kubectl("apply", "-f", "-", input=csr_object(
        f"{name}-node", req, signer="kubernetes.io/kube-apiserver-client-kubelet",
        usages=("digital signature", "client auth")))
    cluster.kubectl("certificate", "approve", f"{name}-node", version=version)
    wait_until(lambda: any(c["type"] == "Failed" for c in cluster.json(
        "get", "csr", f"{name}-node")["status"].get("conditions", [])), what="the signer to refuse")
    failed = [c for c in cluster.json("get", "csr", f"{name}-node")["status"]["conditions"]
              if c["type"] == "Failed"][0]
    assert failed["reason"] == "SignerValidationFailure"
    assert failed["message"] == "subject organization is not system:nodes"


def test_a_bootstrap_token_gets_a_joining_node_its_own_certificate(cluster, tmp_path):
    """The kubelet's TLS bootstrap against berth: `berth token create` makes a token that
    authenticates as a bootstrapper and may do nothing but ask for a node's client
    certificate; the request is approved by rule and signed, and the certificate is the node.
    Deleting the token's Secret ends it."""
    import base64
    import re
    token = cluster.berth("token", "create", "--ttl", "1h").stdout.strip()
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token), token
    token_id = token.split(".")[0]
    who = json.loads(cluster.with_token(token, "auth", "whoami", "-o", "json", check=True).stdout)
    assert who["status"]["userInfo"] == {
        "username": f"system:bootstrap:{token_id}",
        "groups": ["system:bootstrappers", "system:bootstrappers:berth:default-node-token",
                   "system:authenticated"]}
    r = cluster.with_token(token, "get", "pods", "-A")
    assert "forbidden" in r.stderr
    key, req = certificate_request(tmp_path, "joiner", "/O=system:nodes/CN=system:node:joiner")
    name = f"node-csr-{token_id}"
    try:
        cluster.with_token(token, "create", "-f", "-", input=csr_object(
            name, req, signer="kubernetes.io/kube-apiserver-client-kubelet",
            usages=("digital signature", "client auth")), check=True)
        wait_until(lambda: cluster.json("get", "csr", name)["status"].get("certificate"),
                   what="the node's certificate")
        approved = cluster.json("get", "csr", name)["status"]["conditions"][0]
        assert (approved["type"], approved["reason"]) == ("Approved", "AutoApproved")
        assert cluster.json("get", "csr", name)["spec"]["username"] == f"system:bootstrap:{token_id}"
        crt = tmp_path / "joiner.crt"
        crt.write_bytes(base64.b64decode(cluster.json("get", "csr", name)["status"]["certificate"]))
        server, _, _ = helpers.credentials(cluster.kubeconfig)
        kc = tmp_path / "joiner.kubeconfig"
        for args in (["set-cluster", "c", f"--server={server}",
                      f"--certificate-authority={cluster.data / 'tls' / 'ca.crt'}"],
                     ["set-credentials", "u", f"--client-certificate={crt}", f"--client-key={key}"],
                     ["set-context", "c", "--cluster=c", "--user=u"], ["use-context", "c"]):
            cluster.kubectl("--kubeconfig", str(kc), "config", *args)
        out = cluster.kubectl("--kubeconfig", str(kc), "auth", "whoami", "-o", "json").stdout
        assert json.loads(out)["status"]["userInfo"] == {
            "username": "system:node:joiner", "groups": ["system:nodes", "system:authenticated"]}
        # A request for something else than a node's client certificate waits for a person.
        _, other = certificate_request(tmp_path, "other", "/CN=someone-else")
        cluster.with_token(token, "create", "-f", "-", input=csr_object(f"{name}-x", other), check=True)
        time.sleep(1)
        assert cluster.json("get", "csr", f"{name}-x")["status"].get("conditions") is None
    finally:
        cluster.kubectl("delete", "csr", name, f"{name}-x", check=False)
    cluster.kubectl("delete", "secret", "-n", "kube-system", f"bootstrap-token-{token_id}")
    r = cluster.with_token(token, "auth", "whoami")
    assert r.returncode != 0 and "Unauthorized" in r.stderr


def test_approving_needs_the_signers_approve_verb(cluster, tmp_path):
    _, req = certificate_request(tmp_path, "x", "/CN=someone")
    cluster.kubectl("apply", "-f", "-", input=csr_object("needs-approver", req))
    try:
        r = cluster.kubectl("certificate", "approve", "needs-approver", "--as", "bob", check=False)
        assert ('certificatesigningrequests.certificates.k8s.io "needs-approver" is forbidden: User "bob" '
                'cannot get resource "certificatesigningrequests"') in r.stderr
        # May update approvals, but not for this signer.
        cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "csr-approver-bob"},
            "rules": [{"apiGroups": ["certificates.k8s.io"],
                       "resources": ["certificatesigningrequests", "certificatesigningrequests/approval"],
                       "verbs": ["get", "list", "update"]}]}))
        cluster.kubectl("create", "clusterrolebinding", "csr-approver-bob", "--clusterrole=csr-approver-bob",
                        "--user=bob")
        wait_until(lambda: "user not permitted to approve requests with signerName" in cluster.kubectl(
            "certificate", "approve", "needs-approver", "--as", "bob", check=False).stderr,
            what="the signer check")
        r = cluster.kubectl("certificate", "approve", "needs-approver", "--as", "bob", check=False)
        assert ('certificatesigningrequests.certificates.k8s.io "needs-approver" is forbidden: user not '
                'permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client"') in r.stderr
        # A request cannot be made approved from the start, nor through its main resource.
        obj = cluster.json("get", "csr", "needs-approver")
        obj["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "Sneaky"}]}
        cluster.kubectl("replace", "-f", "-", input=json.dumps(obj))
        assert cluster.json("get", "csr", "needs-approver")["status"].get("conditions") is None
    finally:
        for what in (["csr", "needs-approver"], ["clusterrole", "csr-approver-bob"],
                     ["clusterrolebinding", "csr-approver-bob"]):
            cluster.kubectl("delete", *what, check=False)


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


def _certificate(pem_path):
    """Subject and serial of the certificate in a PEM file."""
    r = subprocess.run(["openssl", "x509", "-noout", "-subject", "-serial", "-nameopt", "RFC2253"],
                       input=pem_path.read_bytes(), capture_output=True, check=True)
    lines = r.stdout.decode().splitlines()
    return lines[0].removeprefix("subject="), lines[1].removeprefix("serial=")


def test_a_remote_node_joins_with_a_bootstrap_token_and_renews_its_certificate(tmp_path):
    """`berth agent` given only a bootstrap token, in a file, gets its own certificate as
    system:node:<name> (the kubelet's TLS bootstrap), runs pods as that node, renews the
    certificate at 70-90% of its life without a restart, and restarted without the token is
    still the node."""
    from conftest import RemoteAgent
    from images import Image
    (tmp_path / "server").mkdir()
    (tmp_path / "agent").mkdir()
    server = Cluster(tmp_path / "server", extra=["--cluster-signing-duration", "40s"]).start()
    agent = None
    try:
        token = server.berth("token", "create", "--ttl", "10m").stdout.strip()
        token_id = token.split(".")[0]
        token_file = tmp_path / "join.token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        agent = RemoteAgent(tmp_path / "agent", server, "joiner", extra=["--token-file", str(token_file)])
        agent.data.mkdir()
        agent.import_image(Image(cmd=("sh",)), "busybox:test")
        agent.start()
        assert token.encode() not in open(f"/proc/{agent.proc.pid}/cmdline", "rb").read()
        # The node asked as the token's bootstrapper and was approved by rule.
        every = server.json("get", "csr")["items"]
        csrs = [c for c in every if c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"]
        assert [c["spec"]["username"] for c in csrs] == [f"system:bootstrap:{token_id}"]
        assert [(c["type"], c["reason"]) for c in csrs[0]["status"]["conditions"]] == \
            [("Approved", "AutoApproved")]
        # Then, as the node, for its endpoint's serving certificate: approved too, since it
        # names only the node's own name and address.
        def serving_issued():
            return [c for c in server.json("get", "csr")["items"]
                    if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving" and c["status"].get("certificate")]
        serving = wait_until(serving_issued, timeout=30, what="the node's serving certificate")
        assert serving[0]["spec"]["username"] == "system:node:joiner"
        credential = agent.data / "credentials" / "node-client.pem"
        assert credential.stat().st_mode & 0o777 == 0o600
        subject, first_serial = _certificate(credential)
        assert subject == "CN=system:node:joiner,O=system:nodes"
        # As that node it runs a pod (its own Node, its pods' status, the pod's token).
        ns = "joined"
        server.kubectl("create", "namespace", ns)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"nodeName": "joiner", "containers": [
                   {"name": "c", "image": "busybox:test", "command": ["sleep", "3600"]}]}}
        server.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
        server.kubectl("wait", "--for=condition=Ready", "pod/p", "-n", ns, "--timeout=60s")
        # Its 40 s certificate is renewed by the node itself (approved as selfnodeclient).
        def renewed():
            mine = [c for c in server.json("get", "csr")["items"]
                    if c["spec"]["username"] == "system:node:joiner" and c["status"].get("certificate")]
            return mine and _certificate(credential)[1] != first_serial and mine
        renewal = wait_until(renewed, timeout=60, interval=1, what="a renewed node certificate")
        assert renewal[0]["spec"]["groups"] == ["system:nodes", "system:authenticated"]
        assert _certificate(credential)[0] == subject
        # The first certificate has expired now or soon; the node goes on with the new one.
        time.sleep(15)
        lease = server.json("get", "lease", "joiner", "-n", "kube-node-lease")
        renewed_at = lease["spec"]["renewTime"]
        wait_until(lambda: server.json("get", "lease", "joiner", "-n", "kube-node-lease")
                   ["spec"]["renewTime"] != renewed_at, timeout=30, what="the node's heartbeat")
        assert server.json("get", "pod", "p", "-n", ns)["status"]["phase"] == "Running"
        # Restarted without the token (deleted too), it is still the node.
        agent.stop()
        token_file.unlink()
        server.kubectl("delete", "secret", "-n", "kube-system", f"bootstrap-token-{token_id}")
        agent.extra = []
        stopped_at = server.json("get", "lease", "joiner", "-n", "kube-node-lease")["spec"]["renewTime"]
        agent.start()
        wait_until(lambda: server.json("get", "lease", "joiner", "-n", "kube-node-lease")
                   ["spec"]["renewTime"] != stopped_at, timeout=30, what="the restarted node's heartbeat")
        assert "using this node's certificate" in agent.log.read_text()
    finally:
        if agent is not None:
            agent.teardown()
        server.stop()
    agent.check_components_authorized()
    server.check_components_authorized()


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


def test_the_control_planes_node_gets_its_role_from_the_server(node):
    """`berth up`'s node shows as control-plane in `kubectl get nodes`; the label is put there
    by the server, since NodeRestriction keeps nodes from giving themselves roles."""
    def labelled():
        n = node.json("get", "nodes", "--show-managed-fields")["items"][0]
        return "node-role.kubernetes.io/control-plane" in n["metadata"].get("labels", {}) and n
    n = wait_until(labelled, what="the control-plane label")
    managers = {f["manager"] for f in n["metadata"]["managedFields"]
                if "node-role.kubernetes.io/control-plane" in json.dumps(f.get("fieldsV1", {}))}
    assert managers and "kubelet" not in managers, managers
    assert node.kubectl("get", "nodes").stdout.split("\n")[1].split()[2] == "control-plane"


def _grep(paths, needle, as_nobody=False):
    """Files under `paths` holding `needle` (as root, or as an unprivileged user)."""
    cmd = ["grep", "-rlsa", "--", needle, *map(str, paths)]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if line]


def _on_disk(path, needle):
    """Files on the disk under `path` (not in the tmpfs mounts below it, where secret
    volumes live, as the kubelet keeps them) holding `needle`."""
    files = subprocess.run(["find", str(path), "-xdev", "-type", "f", "-print0"],
                           capture_output=True).stdout.split(b"\0")
    return [f.decode() for f in files if f and needle.encode() in open(f, "rb").read()]


def test_secrets_are_sealed_at_rest_and_out_of_other_users_reach(node, request):
    import secrets as pysecrets
    value = f"s3cr3t-{pysecrets.token_hex(8)}"
    ns = "sealed"
    node.kubectl("create", "namespace", ns)
    request.addfinalizer(lambda: node.kubectl("delete", "namespace", ns, "--wait=false", check=False))
    node.kubectl("create", "secret", "generic", "creds", f"--from-literal=password={value}", "-n", ns)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
           "spec": {"containers": [{
               "name": "c", "image": "busybox:test", "command": ["sh", "-c", "sleep 3600"],
               "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
               "volumeMounts": [{"name": "s", "mountPath": "/etc/creds"}]}],
               "volumes": [{"name": "s", "secret": {"secretName": "creds"}}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
    node.kubectl("wait", "--for=condition=Ready", "pod/user", "-n", ns, "--timeout=60s")
    # The pod sees its secret...
    r = node.kubectl("exec", "-n", ns, "user", "--", "sh", "-c", "cat /etc/creds/password; echo; echo $PASSWORD")
    assert r.stdout.split() == [value, value]
    # ...the store holds it sealed: no file on the data directory's disk has the value...
    assert _on_disk(node.data, value) == []
    assert _on_disk(node.data / "db", "k8s:enc:aesgcm:v1:key1:") != []
    # ...and where it is in the clear on the host (the volume's tmpfs, the container's
    # config on the run directory's tmpfs), only root reaches it.
    assert _grep([node.data, node.run_dir], value) != []
    assert _grep([node.data, node.run_dir], value, as_nobody=True) == []
    # A snapshot copies it sealed.
    snap = node.workdir / "sealed.snap"
    node.berth("store", "snapshot", str(snap))
    assert value.encode() not in snap.read_bytes()
    # A new key seals it; the old one goes once nothing uses it.
    r = node.berth("store", "rotate-key")
    assert "Secrets are sealed with key2" in r.stdout and "keys removed: key1" in r.stdout
    keys = (node.data / "credentials" / "encryption.keys").read_text().split()
    assert keys[0] == "key2" and "key1" not in keys
    assert oct((node.data / "credentials" / "encryption.keys").stat().st_mode & 0o777) == "0o600"
    got = node.json("get", "secret", "creds", "-n", ns)["data"]["password"]
    import base64
    assert base64.b64decode(got).decode() == value
    assert _on_disk(node.data, value) == []
    for d in (node.data, node.run_dir):
        assert oct(os.stat(d).st_mode & 0o777) == "0o700", d


def _run_pod(node, ns, name, security_context=None, pod_security_context=None, cmd="sleep 3600"):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox:test", "command": ["sh", "-c", cmd],
                                    "securityContext": security_context or {}}],
                    "securityContext": pod_security_context or {}}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
    node.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", ns, "--timeout=60s")


def _exec(node, ns, pod, script):
    return node.kubectl("exec", "-n", ns, pod, "--", "sh", "-c", script, check=False)


PROBE = ("grep '^Seccomp:' /proc/self/status > /tmp/mode; "
         "unshare -U true 2>/tmp/unshare; echo $? > /tmp/unshare.rc; "
         "mkdir /tmp/made 2>/tmp/mkdir; echo $? > /tmp/mkdir.rc; sleep 3600")


def _probe(node, ns, pod):
    """What the pod's own process met (its filter mode, and whether a user namespace and a
    directory could be made), as it wrote it down."""
    out = _exec(node, ns, pod, "cat /tmp/mode /tmp/unshare.rc /tmp/mkdir.rc").stdout.split()
    return {"mode": out[1], "unshare": out[2] == "0", "mkdir": out[3] == "0"}


def check_seccomp(node, request, ns):
    node.kubectl("create", "namespace", ns)
    node.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")
    request.addfinalizer(lambda: node.kubectl("delete", "namespace", ns, "--wait=false", check=False))
    # A profile of the node's own that refuses mkdir, named as Localhost.
    profiles = node.data / "seccomp"
    profiles.mkdir(exist_ok=True)
    (profiles / "no-mkdir.json").write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    _run_pod(node, ns, "default", cmd=PROBE)
    _run_pod(node, ns, "unconfined", cmd=PROBE,
             pod_security_context={"seccompProfile": {"type": "Unconfined"}})
    _run_pod(node, ns, "local", cmd=PROBE, security_context={
        "seccompProfile": {"type": "Localhost", "localhostProfile": "no-mkdir.json"}})
    # The default profile refuses what containerd's does, a user namespace without
    # CAP_SYS_ADMIN among them; a node's profile is applied as written.
    assert _probe(node, ns, "default") == {"mode": "2", "unshare": False, "mkdir": True}
    assert _probe(node, ns, "unconfined") == {"mode": "0", "unshare": True, "mkdir": True}
    assert _probe(node, ns, "local") == {"mode": "2", "unshare": True, "mkdir": False}
    # What `kubectl exec` runs is under the container's profile too.
    exec_probe = "grep '^Seccomp:' /proc/self/status; unshare -U true 2>/dev/null; echo $?"
    for pod, mode, unshare_ok in (("default", "2", False), ("unconfined", "0", True)):
        out = _exec(node, ns, pod, exec_probe).stdout.split()
        assert (out[1], out[2] == "0") == (mode, unshare_ok), (pod, out)
    out = _exec(node, ns, "local", "mkdir /tmp/by-exec 2>/dev/null; echo $?").stdout.split()
    assert out != ["0"], out
    # A profile that is not there keeps the container from starting, saying why.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "missing"},
           "spec": {"containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "3600"],
                                    "securityContext": {"seccompProfile": {
                                        "type": "Localhost", "localhostProfile": "nope.json"}}}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
    wait_until(lambda: any("nope.json" in (e.get("message") or "")
                           for e in node.json("get", "events", "-n", ns)["items"]),
               what="an event naming the missing profile")


def test_containers_run_under_the_runtime_default_seccomp_profile(node, request):
    check_seccomp(node, request, "seccomp")


def test_runc_applies_the_same_seccomp_profiles(request):
    from conftest import running_node
    from images import Image

    def with_runc(c):
        c.extra += ["--runtime", "runc"]
    with running_node(Image(cmd=("sh",)), prepare=with_runc) as node:
        check_seccomp(node, request, "seccomp-runc")


RESTRICTED_NGINX = (
    'pods "web" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false '
    '(container "web" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities '
    '(container "web" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or '
    'container "web" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "web" '
    'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')


def test_pod_security_enforces_its_levels_with_kubernetes_words(cluster, ns, version, tmp_path):
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    r = cluster.kubectl("run", "web", "--image=nginx", "-n", ns, version=version, check=False)
    assert r.returncode != 0
    assert RESTRICTED_NGINX in r.stderr, r.stderr
    compliant = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ok"},
                 "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                              "seccompProfile": {"type": "RuntimeDefault"}},
                          "containers": [{"name": "c", "image": "busybox", "securityContext": {
                              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(compliant), version=version)
    # A workload is admitted with a warning; its pods are what is refused.
    r = cluster.kubectl("create", "deployment", "d", "--image=nginx", "-n", ns, version=version)
    assert ('Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false '
            '(container "nginx" must set securityContext.allowPrivilegeEscalation=false)') in r.stderr

    def refused():
        return any(e.get("reason") == "FailedCreate" and "violates PodSecurity" in e.get("message", "")
                   for e in cluster.json("get", "events", "-n", ns)["items"])
    wait_until(refused, what="the ReplicaSet's pods refused")


def test_the_default_level_is_baseline(cluster, ns, version):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
           "spec": {"hostPID": True, "containers": [{"name": "c", "image": "busybox",
                                                     "securityContext": {"privileged": True}}],
                    "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}}
    r = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod), version=version, check=False)
    assert r.returncode != 0
    assert ('pods "root" is forbidden: violates PodSecurity "baseline:latest": host namespaces '
            '(hostPID=true), hostPath volumes (volume "host"), privileged (container "c" must not set '
            'securityContext.privileged=true)') in r.stderr, r.stderr
    # A namespace labelled privileged may have it.
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=privileged")
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod), version=version)


def test_namespace_labels_are_checked_and_existing_pods_reported(cluster, ns):
    r = cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=strict",
                        check=False)
    assert r.returncode != 0
    assert ('metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: "strict": must be '
            'one of privileged, baseline, restricted') in r.stderr, r.stderr
    for name in ("a", "b"):
        cluster.kubectl("run", name, "--image=busybox", "-n", ns)
    r = cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    assert (f'Warning: existing pods in namespace "{ns}" violate the new PodSecurity enforce level '
            '"restricted:latest"') in r.stderr, r.stderr
    assert ("Warning: a (and 1 other pod): allowPrivilegeEscalation != false, unrestricted "
            "capabilities, runAsNonRoot != true, seccompProfile") in r.stderr, r.stderr


def test_a_pods_processes_are_capped(request):
    from conftest import running_node
    from images import Image

    def low_limit(c):
        c.extra += ["--pod-pids-limit", "20"]
    with running_node(Image(cmd=("sh",)), prepare=low_limit) as node:
        ns = "pids"
        node.kubectl("create", "namespace", ns)
        bomb = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bomb"},
                "spec": {"containers": [{"name": "c", "image": "busybox:test", "command": [
                    "sh", "-c", "while true; do sleep 300 & done"]}]}}
        node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bomb))
        # The fork bomb meets the pod's cap (and its shell gives up), not the node's.
        wait_until(lambda: "can't fork: Resource temporarily unavailable" in node.kubectl(
            "logs", "-n", ns, "bomb", check=False).stdout, what="the bomb to hit the cap")
        uid = node.json("get", "pod", "bomb", "-n", ns)["metadata"]["uid"]
        assert open(f"/sys/fs/cgroup/pids/berth/pod{uid}/pids.max").read().strip() == "20"
        assert node.node_ready()


def test_snapshots_are_for_masters_whatever_a_path_rule_grants(cluster, tmp_path):
    kc = add_user(cluster, "reader-of-paths", "--out", str(tmp_path / "paths.kc"))
    kc = str(tmp_path / "paths.kc")
    cluster.kubectl("create", "clusterrole", "all-paths", "--verb=get", "--non-resource-url=*")
    cluster.kubectl("create", "clusterrolebinding", "all-paths", "--clusterrole=all-paths",
                    "--user=reader-of-paths")
    wait_until(lambda: as_user(cluster, kc, "get", "--raw", "/metrics").returncode == 0,
               what="the binding takes effect")
    for path in ("/berth/v1/snapshot", "/%62erth/v1/snapshot"):
        r = as_user(cluster, kc, "get", "--raw", path)
        assert r.returncode != 0
        assert 'cannot take a snapshot: only system:masters may' in r.stderr, r.stderr


def test_a_pod_cannot_leave_restricted_by_calling_itself_windows(cluster, ns):
    cluster.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "win"},
           "spec": {"os": {"name": "windows"},
                    "securityContext": {"runAsNonRoot": True},
                    "containers": [{"name": "c", "image": "busybox", "securityContext": {
                        "capabilities": {"add": ["SYS_ADMIN"]},
                        "seccompProfile": {"type": "Unconfined"}}}]}}
    r = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod), check=False)
    assert r.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in r.stderr
    assert 'unrestricted capabilities' in r.stderr and 'seccompProfile' in r.stderr


def test_the_audit_log_says_who_did_what(tmp_path):
    log = tmp_path / "audit.log"
    c = Cluster(tmp_path, extra=["--audit-log-path", str(log), "--audit-level", "Request"]).start()
    try:
        c.kubectl("create", "configmap", "audited", "--from-literal=a=b")
        c.kubectl("get", "configmap", "audited", "--as", "mallory", check=False)
        helpers.request(c.kubeconfig, "GET", "/api/v1/namespaces", token="not-a-token")
    finally:
        c.stop()
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["kind"] == "Event" and e["apiVersion"] == "audit.k8s.io/v1" for e in events)
    created = [e for e in events if e["verb"] == "create"
               and e.get("objectRef", {}).get("resource") == "configmaps"]
    assert created, events[-5:]
    e = created[-1]
    assert e["user"]["username"] == "admin" and e["responseStatus"]["code"] == 201
    assert e["objectRef"] == {"resource": "configmaps", "apiGroup": "", "apiVersion": "v1",
                              "namespace": "default"}
    assert e["requestObject"]["data"] == {"a": "b"}
    assert e["annotations"]["authorization.k8s.io/decision"] == "allow"
    assert e["sourceIPs"] == ["127.0.0.1"] and e["userAgent"].startswith("kubectl")
    refused = [e for e in events if e["responseStatus"]["code"] == 403]
    assert refused and refused[-1]["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert refused[-1]["objectRef"]["name"] == "audited"
    assert any(e["responseStatus"]["code"] == 401 and e["user"] == {} for e in events)
