"""Service accounts as a user and a pod meet them: `kubectl create token` and the token working
(and ending with what it was bound to), TokenReview, the OIDC documents verifying a token's
signature, and pods whose in-cluster credentials (`kube-api-access-*`) let kubectl inside
them do what their account is bound to, across token rotation."""

import base64
import json
import os
import shutil
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

import helpers
from conftest import running_node, wait_until
from images import Image, busybox_layer

MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def b64(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def claims(token):
    return json.loads(b64(token.split(".")[1]))


def create_token(cluster, ns, account, *extra, version="1.33"):
    return cluster.kubectl("create", "token", account, "-n", ns, *extra, version=version).stdout.strip()


def test_a_created_token_is_the_account_until_what_it_is_bound_to_goes(cluster, ns, version):
    cluster.kubectl("create", "serviceaccount", "builder", "-n", ns)
    token = create_token(cluster, ns, "builder", "--duration", "20m", version=version)
    c = claims(token)
    assert c["sub"] == f"system:serviceaccount:{ns}:builder"
    assert c["iss"] == ISSUER and c["aud"] == [ISSUER]
    assert c["exp"] - c["iat"] == 1200
    sa_uid = cluster.json("get", "sa", "builder", "-n", ns)["metadata"]["uid"]
    assert c["kubernetes.io"]["serviceaccount"] == {"name": "builder", "uid": sa_uid}

    # Without bindings the account may do nothing, in Kubernetes' words.
    r = cluster.with_token(token, "get", "pods", "-n", ns, version=version, check=False)
    assert (f'pods is forbidden: User "system:serviceaccount:{ns}:builder" cannot list resource '
            f'"pods" in API group "" in the namespace "{ns}"') in r.stderr
    cluster.kubectl("create", "rolebinding", "builder-edit", "--clusterrole=edit",
                    f"--serviceaccount={ns}:builder", "-n", ns)
    wait_until(lambda: cluster.with_token(token, "get", "pods", "-n", ns, version=version,
                                       check=False).returncode == 0, what="the binding to apply")
    assert cluster.with_token(token, "get", "pods", "-n", "default", version=version,
                           check=False).returncode != 0

    # Bound to a pod: valid while the pod stands, refused once it is gone.
    cluster.kubectl("run", "holder", "--image=busybox:test", "-n", ns,
                    "--overrides", '{"spec": {"serviceAccountName": "builder"}}')
    bound = create_token(cluster, ns, "builder", "--bound-object-kind", "Pod",
                         "--bound-object-name", "holder", version=version)
    pod_uid = cluster.json("get", "pod", "holder", "-n", ns)["metadata"]["uid"]
    assert claims(bound)["kubernetes.io"]["pod"] == {"name": "holder", "uid": pod_uid}
    assert cluster.with_token(bound, "get", "pods", "-n", ns, check=False).returncode == 0
    cluster.kubectl("delete", "pod", "holder", "-n", ns, "--grace-period=0", "--force")
    r = cluster.with_token(bound, "get", "pods", "-n", ns, check=False)
    assert r.returncode != 0 and "Unauthorized" in r.stderr
    # An account deleted and made again is another account: the old token is over.
    assert cluster.with_token(token, "get", "pods", "-n", ns, check=False).returncode == 0
    cluster.kubectl("delete", "sa", "builder", "-n", ns)
    cluster.kubectl("create", "sa", "builder", "-n", ns)
    r = cluster.with_token(token, "get", "pods", "-n", ns, check=False)
    assert r.returncode != 0 and "Unauthorized" in r.stderr


def test_a_token_secret_holds_a_long_lived_token_for_its_account(cluster, ns):
    """The documentation's "manually create a long-lived API token for a ServiceAccount": a
    Secret of type kubernetes.io/service-account-token gets a token, the CA and the namespace;
    the token is the account until the Secret goes; a Secret for a missing account is removed."""
    cluster.kubectl("create", "sa", "ci", "-n", ns)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
              "metadata": {"name": "ci-token", "annotations": {"kubernetes.io/service-account.name": "ci"}}}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(secret))
    got = wait_until(lambda: cluster.json("get", "secret", "ci-token", "-n", ns).get("data", {}).get("token")
                     and cluster.json("get", "secret", "ci-token", "-n", ns), what="the token")
    token = base64.b64decode(got["data"]["token"]).decode()
    assert base64.b64decode(got["data"]["namespace"]).decode() == ns
    assert base64.b64decode(got["data"]["ca.crt"]) == (cluster.data / "tls" / "ca.crt").read_bytes()
    sa_uid = cluster.json("get", "sa", "ci", "-n", ns)["metadata"]["uid"]
    assert got["metadata"]["annotations"]["kubernetes.io/service-account.uid"] == sa_uid
    c = claims(token)
    assert c["iss"] == "kubernetes/serviceaccount" and "exp" not in c
    assert c["sub"] == f"system:serviceaccount:{ns}:ci"
    who = json.loads(cluster.with_token(token, "auth", "whoami", "-o", "json", check=True).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:ci"
    assert cluster.kubectl("describe", "secret", "ci-token", "-n", ns).stdout.count(token) == 1
    # Its token is over once the Secret is deleted.
    cluster.kubectl("delete", "secret", "ci-token", "-n", ns)
    r = cluster.with_token(token, "auth", "whoami")
    assert r.returncode != 0 and "Unauthorized" in r.stderr
    # A token Secret for an account that does not exist is removed.
    orphan = dict(secret, metadata={"name": "orphan", "annotations": {"kubernetes.io/service-account.name": "ghost"}})
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(orphan))
    wait_until(lambda: cluster.kubectl("get", "secret", "orphan", "-n", ns, check=False).returncode != 0,
               what="the orphan token Secret to go")


def test_token_requests_are_checked_as_kubernetes_checks_them(cluster, ns):
    cluster.kubectl("create", "sa", "short", "-n", ns)
    r = cluster.kubectl("create", "token", "short", "-n", ns, "--duration", "5m", check=False)
    assert r.returncode != 0
    assert ('spec.expirationSeconds: Invalid value: 300: may not specify a duration less than '
            '10 minutes') in r.stderr
    r = cluster.kubectl("create", "token", "nobody", "-n", ns, check=False)
    assert 'serviceaccounts "nobody" not found' in r.stderr
    r = cluster.kubectl("create", "token", "short", "-n", ns, "--bound-object-kind", "Pod",
                        "--bound-object-name", "absent", check=False)
    assert 'pods "absent" not found' in r.stderr
    # Someone who may not create tokens for the account cannot get one.
    r = cluster.kubectl("create", "token", "short", "-n", ns, "--as", "mallory", check=False)
    assert ('serviceaccounts "short" is forbidden: User "mallory" cannot create resource '
            '"serviceaccounts/token" in API group "" in the namespace') in r.stderr


def test_token_review_and_the_oidc_documents_vouch_for_a_token(cluster, ns):
    cluster.kubectl("create", "sa", "reviewed", "-n", ns)
    token = create_token(cluster, ns, "reviewed", "--audience", "vault", "--audience", ISSUER)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
              "spec": {"token": token, "audiences": ["vault"]}}
    out = json.loads(cluster.kubectl("create", "-f", "-", "-o", "json",
                                     input=json.dumps(review)).stdout)["status"]
    assert out["authenticated"] is True
    assert out["audiences"] == ["vault"]
    assert out["user"]["username"] == f"system:serviceaccount:{ns}:reviewed"
    assert out["user"]["groups"] == ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                     "system:authenticated"]
    assert out["user"]["extra"]["authentication.kubernetes.io/credential-id"] == \
        [f"JTI={claims(token)['jti']}"]
    # A token for someone else's audience only is refused by the API server itself.
    vault_only = create_token(cluster, ns, "reviewed", "--audience", "vault")
    r = cluster.with_token(vault_only, "get", "pods", "-n", ns, check=False)
    assert "Unauthorized" in r.stderr
    review["spec"] = {"token": token[:-4] + "AAAA"}
    out = json.loads(cluster.kubectl("create", "-f", "-", "-o", "json",
                                     input=json.dumps(review)).stdout)["status"]
    assert not out.get("authenticated") and out["error"]

    # What an OIDC consumer does: find the keys from the issuer's discovery document, then
    # check the signature with the key the token's header names.
    discovery = json.loads(cluster.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
    assert discovery["issuer"] == ISSUER
    assert discovery["jwks_uri"] == ISSUER + "/openid/v1/jwks"
    assert discovery["id_token_signing_alg_values_supported"] == ["ES256"]
    jwks = json.loads(cluster.kubectl("get", "--raw", "/openid/v1/jwks").stdout)
    header = json.loads(b64(token.split(".")[0]))
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert (key["kty"], key["crv"], key["alg"]) == ("EC", "P-256", header["alg"])
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(b64(key["x"]), "big"),
                                           int.from_bytes(b64(key["y"]), "big"),
                                           ec.SECP256R1()).public_key()
    signed, sig = token.rsplit(".", 1)
    raw = b64(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, signed.encode(), ec.ECDSA(hashes.SHA256()))
    # Service accounts may read the documents (system:service-account-issuer-discovery).
    status, _ = helpers.request(cluster.kubeconfig, "GET", "/openid/v1/jwks", token=token)
    assert status == 200


def test_pods_get_the_default_account_and_its_credentials_unless_they_opt_out(cluster, ns):
    cluster.kubectl("run", "plain", "--image=busybox:test", "-n", ns)
    spec = cluster.json("get", "pod", "plain", "-n", ns)["spec"]
    assert spec["serviceAccountName"] == "default"
    volume = next(v for v in spec["volumes"] if v["name"].startswith("kube-api-access-"))
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": volume["name"], "readOnly": True, "mountPath": MOUNT}]
    cluster.kubectl("run", "quiet", "--image=busybox:test", "-n", ns,
                    "--overrides", '{"spec": {"automountServiceAccountToken": false}}')
    spec = cluster.json("get", "pod", "quiet", "-n", ns)["spec"]
    assert "volumes" not in spec and "volumeMounts" not in spec["containers"][0]
    # An account that says no speaks for its pods, unless a pod says yes.
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"},
        "automountServiceAccountToken": False}))
    cluster.kubectl("run", "robot", "--image=busybox:test", "-n", ns,
                    "--overrides", '{"spec": {"serviceAccountName": "robot"}}')
    assert "volumes" not in cluster.json("get", "pod", "robot", "-n", ns)["spec"]
    r = cluster.kubectl("run", "ghost", "--image=busybox:test", "-n", ns,
                        "--overrides", '{"spec": {"serviceAccountName": "ghost"}}', check=False)
    assert (f'pods "ghost" is forbidden: error looking up service account {ns}/ghost: '
            'serviceaccount "ghost" not found') in r.stderr


def kubectl_image():
    """busybox with the real kubectl in /bin, so a pod can use its in-cluster config."""
    kubectl = os.path.realpath(shutil.which("kubectl.1.33") or shutil.which("kubectl"))
    return Image(layers=[busybox_layer({"bin/kubectl": open(kubectl, "rb").read()})], cmd=("sh",))


POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  containers:
  - name: c
    image: busybox:test
    command: ["sh", "-c", "{script}"]
"""

# Every two seconds, kubectl in the pod lists pods with the credentials the pod was given,
# and the token file's checksum is noted, so the log shows each call and each rotation.
# (kubectl takes the in-cluster config only when no flag changes its configuration, so
# busybox's `timeout` bounds each call rather than --request-timeout.)
LOOP = ("while true; do timeout 5 kubectl get pods -o name >/dev/null 2>/tmp/err && echo ok || "
        "{ echo fail; cat /tmp/err; }; md5sum " + MOUNT + "/token | cut -c1-8; sleep 2; done")


def test_in_cluster_kubectl_works_when_bound_and_across_token_rotation(request):
    """kubectl inside a pod finds the API through the `kubernetes` Service with the mounted
    token and CA; it is refused until its account is bound, then works; the server caps token
    life at 20 s here, so the agent must replace the token several times while the pod runs."""
    ns = "in-cluster"

    def prepare(c):
        c.extra += ["--service-account-max-token-expiration", "20s"]
        c.give_address("198.18.0.1")

    with running_node(kubectl_image(), prepare=prepare) as node:
        node.kubectl("create", "namespace", ns)
        node.kubectl("apply", "-n", ns, "-f", "-", input=POD.format(name="client", script=LOOP))
        wait_until(lambda: node.json("get", "pod", "client", "-n", ns)["status"].get("phase")
                   == "Running", timeout=60, what="the client pod to run")
        logs = lambda: node.kubectl("logs", "client", "-n", ns, check=False).stdout  # noqa: E731
        wait_until(lambda: "fail" in logs(), timeout=30, what="a first answer")
        assert (f'User "system:serviceaccount:{ns}:default" cannot list resource "pods"'
                in logs()), logs()
        files = node.kubectl("exec", "client", "-n", ns, "--", "ls", MOUNT).stdout.split()
        assert files == ["ca.crt", "namespace", "token"]
        assert node.kubectl("exec", "client", "-n", ns, "--", "cat",
                            f"{MOUNT}/namespace").stdout == ns

        node.kubectl("create", "rolebinding", "default-view", "--clusterrole=view",
                     f"--serviceaccount={ns}:default", "-n", ns)
        wait_until(lambda: logs().rstrip().split("\n")[-2:][0] == "ok", timeout=30,
                   what="the pod's calls to succeed")
        start = len(logs().splitlines())
        # Long enough for the 20 s token to be replaced at least twice.
        time.sleep(45)
        lines = logs().splitlines()[start:]
        calls = [l for l in lines if l in ("ok", "fail")]
        assert len(calls) >= 15 and set(calls) == {"ok"}, "\n".join(lines)
        tokens = {l for l in lines if l not in ("ok", "fail") and len(l) == 8}
        assert len(tokens) >= 3, "\n".join(lines)
