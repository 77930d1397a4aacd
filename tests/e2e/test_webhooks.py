"""Admission webhooks: validating and mutating webhooks at a URL (an HTTPS server of the test's
own, on loopback, trusted through its caBundle) refuse, warn and patch as Kubernetes' do;
rules, namespace and object selectors and CEL match conditions choose what they see; a
webhook that cannot be reached fails closed or open as its failurePolicy says."""

import base64
import datetime
import http.server
import json
import socket
import ssl
import threading

import pytest
import yaml

from conftest import wait_until


def _certificates(tmp, dns=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(dns)] if dns else [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp / "tls.crt").write_bytes(cert.public_bytes(pem))
    (tmp / "tls.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return ca.public_bytes(pem)


class Webhook:
    """An HTTPS webhook server: /validate refuses objects labelled deny=yes and warns on the
    rest; /mutate adds the label mutated=yes. It records the reviews it was sent."""

    def __init__(self, tmp):
        self.ca = _certificates(tmp)
        self.reviews = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.reviews.append((self.path, body))
                req = body["request"]
                obj = req.get("object") or req.get("oldObject") or {}
                labels = (obj.get("metadata") or {}).get("labels") or {}
                resp = {"uid": req["uid"], "allowed": True}
                if self.path == "/validate":
                    if labels.get("deny") == "yes":
                        resp = {"uid": req["uid"], "allowed": False,
                                "status": {"code": 403, "reason": "Forbidden",
                                           "message": "denied by the test webhook"}}
                    else:
                        resp["warnings"] = ["looked at by the test webhook"]
                elif self.path == "/mutate":
                    ops = []
                    if not labels:
                        ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
                    ops.append({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"})
                    resp["patchType"] = "JSONPatch"
                    resp["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
                out = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": resp}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp / "tls.crt"), str(tmp / "tls.key"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"https://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    w = Webhook(tmp_path_factory.mktemp("webhook"))
    yield w
    w.stop()


def configuration(kind, name, hook_name, url, ca, ns, failure="Fail", extra=None):
    hook = {
        "name": hook_name,
        "clientConfig": {"url": url, "caBundle": base64.b64encode(ca).decode()},
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                   "resources": ["configmaps"]}],
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "failurePolicy": failure,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }
    hook.update(extra or {})
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
            "metadata": {"name": name}, "webhooks": [hook]}


def configmap(name, labels=None):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels or {}}, "data": {"a": "b"}}


def apply(cluster, obj, *args, version="1.33", check=True):
    return cluster.kubectl("apply", "-f", "-", *args, input=yaml.safe_dump(obj), version=version,
                           check=check)


@pytest.fixture
def configured(cluster):
    """Webhook configurations made in a test, deleted after it."""
    made = []
    yield made
    for kind, name in made:
        cluster.kubectl("delete", kind, name, check=False)


def test_a_validating_webhook_refuses_and_warns(cluster, ns, webhook, configured, version):
    cfg = configuration("ValidatingWebhookConfiguration", f"v-{ns}"[:60], "deny.berth.example.com",
                        webhook.url("/validate"), webhook.ca, ns)
    apply(cluster, cfg, version=version)
    configured.append(("validatingwebhookconfiguration", cfg["metadata"]["name"]))
    r = apply(cluster, configmap("bad", {"deny": "yes"}), "-n", ns, version=version, check=False)
    assert r.returncode != 0
    assert 'admission webhook "deny.berth.example.com" denied the request: denied by the test webhook' \
        in r.stderr, r.stderr
    r = apply(cluster, configmap("good"), "-n", ns, version=version)
    assert "looked at by the test webhook" in r.stderr, r.stderr
    # The review said who asked, about what, and carried the object.
    path, review = next((p, b) for p, b in reversed(webhook.reviews)
                        if b["request"]["name"] == "good" and b["request"]["namespace"] == ns)
    req = review["request"]
    assert path == "/validate"
    assert req["operation"] == "CREATE"
    assert req["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert req["resource"] == {"group": "", "version": "v1", "resource": "configmaps"}
    assert req["object"]["data"] == {"a": "b"}
    assert req["userInfo"]["username"]
    # An update is sent with the old object.
    r = apply(cluster, configmap("good", {"deny": "yes"}), "-n", ns, version=version, check=False)
    assert "denied by the test webhook" in r.stderr, r.stderr
    upd = [b["request"] for p, b in webhook.reviews
           if b["request"]["operation"] == "UPDATE" and b["request"]["namespace"] == ns]
    assert upd and upd[-1]["oldObject"]["metadata"]["name"] == "good"
    # Deletes are sent to webhooks that ask for them, with the object as oldObject.
    cfg["webhooks"][0]["rules"][0]["operations"] = ["DELETE"]
    apply(cluster, cfg, version=version)
    cluster.kubectl("label", "configmap", "good", "-n", ns, "deny=yes", "--overwrite", version=version)
    r = cluster.kubectl("delete", "configmap", "good", "-n", ns, version=version, check=False)
    assert "denied by the test webhook" in r.stderr, r.stderr
    deletes = [b["request"] for p, b in webhook.reviews
               if b["request"]["operation"] == "DELETE" and b["request"]["namespace"] == ns]
    assert deletes[-1]["oldObject"]["metadata"]["name"] == "good" and deletes[-1]["object"] is None
    cluster.kubectl("label", "configmap", "good", "-n", ns, "deny-", version=version)
    cluster.kubectl("delete", "configmap", "good", "-n", ns, version=version)
    # Other namespaces are not sent to it.
    before = len(webhook.reviews)
    cluster.kubectl("create", "configmap", f"elsewhere-{ns}"[:60], "-n", "default", version=version)
    assert len(webhook.reviews) == before
    cluster.kubectl("delete", "configmap", f"elsewhere-{ns}"[:60], "-n", "default")


def test_a_mutating_webhook_adds_a_label(cluster, ns, webhook, configured, version):
    cfg = configuration("MutatingWebhookConfiguration", f"m-{ns}"[:60], "label.berth.example.com",
                        webhook.url("/mutate"), webhook.ca, ns)
    apply(cluster, cfg, version=version)
    configured.append(("mutatingwebhookconfiguration", cfg["metadata"]["name"]))
    cluster.kubectl("create", "configmap", "plain", "-n", ns, "--from-literal=x=y", version=version)
    got = cluster.json("get", "configmap", "plain", "-n", ns)
    assert got["metadata"]["labels"] == {"mutated": "yes"}
    # The mutated object is validated like any: a patch that breaks it is refused.
    table = cluster.kubectl("get", "mutatingwebhookconfigurations", cfg["metadata"]["name"],
                            version=version).stdout.splitlines()
    assert table[0].split() == ["NAME", "WEBHOOKS", "AGE"]
    assert table[1].split()[1] == "1"


def test_selectors_and_match_conditions_choose_what_a_webhook_sees(cluster, ns, webhook, configured):
    cfg = configuration("ValidatingWebhookConfiguration", f"s-{ns}"[:60], "deny.berth.example.com",
                        webhook.url("/validate"), webhook.ca, ns, extra={
                            "objectSelector": {"matchExpressions": [
                                {"key": "checked", "operator": "In", "values": ["yes"]}]},
                            "matchConditions": [{"name": "not-skipped",
                                                 "expression": "object.metadata.name != 'skip-me'"}]})
    apply(cluster, cfg)
    configured.append(("validatingwebhookconfiguration", cfg["metadata"]["name"]))
    # Not selected by its labels: not sent, so not refused.
    apply(cluster, configmap("unchecked", {"deny": "yes"}), "-n", ns)
    # Selected, but the match condition leaves it out.
    apply(cluster, configmap("skip-me", {"deny": "yes", "checked": "yes"}), "-n", ns)
    r = apply(cluster, configmap("caught", {"deny": "yes", "checked": "yes"}), "-n", ns, check=False)
    assert "denied by the test webhook" in r.stderr, r.stderr


def test_an_unreachable_webhook_fails_closed_or_open(cluster, ns, webhook, configured):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    closed = configuration("ValidatingWebhookConfiguration", f"c-{ns}"[:60], "closed.berth.example.com",
                           f"https://127.0.0.1:{dead}/validate", webhook.ca, ns, failure="Fail")
    apply(cluster, closed)
    configured.append(("validatingwebhookconfiguration", closed["metadata"]["name"]))
    r = apply(cluster, configmap("blocked"), "-n", ns, check=False)
    assert r.returncode != 0
    assert 'failed calling webhook "closed.berth.example.com"' in r.stderr, r.stderr
    # A broken webhook's configuration can always be fixed: it is never sent to webhooks.
    closed["webhooks"][0]["failurePolicy"] = "Ignore"
    apply(cluster, closed)
    apply(cluster, configmap("through"), "-n", ns)
    assert cluster.json("get", "configmap", "through", "-n", ns)["data"] == {"a": "b"}


def test_bad_webhook_configurations_are_refused(cluster, webhook):
    cfg = configuration("ValidatingWebhookConfiguration", "bad-config", "short",
                        "http://127.0.0.1/validate", webhook.ca, "default")
    del cfg["webhooks"][0]["sideEffects"]
    r = apply(cluster, cfg, check=False)
    assert r.returncode != 0
    for msg in ["webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots",
                "webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1/validate\": 'https' is the only allowed URL scheme",
                "webhooks[0].sideEffects: Required value: must specify one of None, NoneOnDryRun"]:
        assert msg in r.stderr, r.stderr


def webhook_image():
    """The kube-rs webhook server (tests/kube-rs/src/bin/webhook.rs) over busybox, with the C
    libraries it links."""
    import io
    import os
    import subprocess
    import tarfile
    from images import Image, _add, busybox_layer
    program = os.environ.get("KUBE_RS_WEBHOOK")
    assert program, "set KUBE_RS_WEBHOOK to the built webhook server (scripts/test.sh does)"
    libs = []
    for line in subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = sorted({os.path.dirname(l).lstrip("/") for l in libs} | {"usr/local", "usr/local/bin"})
        made = set()
        for d in dirs:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in made and sub not in ("usr",):
                    _add(t, sub, mode=0o755, kind=tarfile.DIRTYPE)
                    made.add(sub)
        for lib in libs:
            _add(t, lib.lstrip("/"), open(os.path.realpath(lib), "rb").read(), mode=0o755)
        _add(t, "usr/local/bin/kube-rs-webhook", open(program, "rb").read(), mode=0o755)
    return Image(layers=[busybox_layer(), buf.getvalue()], cmd=("/usr/local/bin/kube-rs-webhook",))


def test_a_webhook_served_by_a_pod_refuses_and_mutates(node, tmp_path, request):
    """Webhooks reached through a Service, served by a kube-rs program in a pod, over the
    cluster network, with a certificate for the Service's name."""
    from conftest import own_namespace
    node.import_image(webhook_image(), "webhook:test")
    with own_namespace(node, "hook", request) as ns:
        ca = _certificates(tmp_path, dns=f"hook.{ns}.svc")
        node.kubectl("create", "secret", "tls", "hook-tls", "-n", ns,
                     f"--cert={tmp_path / 'tls.crt'}", f"--key={tmp_path / 'tls.key'}")
        # Aggregated servers learn the front proxy's CA from kube-system (readable by the
        # role Kubernetes grants for it); the test hands it to the pod.
        def auth_config():
            r = node.kubectl("get", "configmap", "-n", "kube-system",
                             "extension-apiserver-authentication", "-o", "json", check=False)
            return json.loads(r.stdout).get("data") if r.returncode == 0 else None
        auth = wait_until(auth_config, what="the extension-apiserver-authentication ConfigMap")
        assert auth["requestheader-allowed-names"] == '["front-proxy-client"]'
        assert auth["requestheader-username-headers"] == '["X-Remote-User"]'
        assert "BEGIN CERTIFICATE" in auth["client-ca-file"]
        (tmp_path / "front-proxy-ca.crt").write_text(auth["requestheader-client-ca-file"])
        node.kubectl("create", "configmap", "front-proxy", "-n", ns,
                     f"--from-file=ca.crt={tmp_path / 'front-proxy-ca.crt'}")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hook", "labels": {"app": "hook"}},
               "spec": {"containers": [{"name": "hook", "image": "webhook:test",
                                        "ports": [{"containerPort": 8443}],
                                        "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1},
                                        "volumeMounts": [{"name": "tls", "mountPath": "/tls"},
                                                         {"name": "fp", "mountPath": "/front-proxy"}]}],
                        "volumes": [{"name": "tls", "secret": {"secretName": "hook-tls"}},
                                    {"name": "fp", "configMap": {"name": "front-proxy"}}]}}
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hook"},
               "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": 8443}]}}
        apply(node, pod, "-n", ns)
        apply(node, svc, "-n", ns)
        node.kubectl("wait", "pod/hook", "-n", ns, "--for=condition=Ready", "--timeout=120s", timeout=150)
        wait_until(lambda: node.json("get", "endpoints", "hook", "-n", ns).get("subsets"),
                   what="the webhook's endpoints")
        made = []
        try:
            for kind, path, hook in [("ValidatingWebhookConfiguration", "/validate", "deny.pod.example.com"),
                                     ("MutatingWebhookConfiguration", "/mutate", "label.pod.example.com")]:
                cfg = configuration(kind, f"{kind[:1].lower()}-{ns}"[:60], hook, None, ca, ns)
                del cfg["webhooks"][0]["clientConfig"]["url"]
                cfg["webhooks"][0]["clientConfig"]["service"] = {"namespace": ns, "name": "hook",
                                                                  "path": path, "port": 443}
                apply(node, cfg)
                made.append((kind.lower(), cfg["metadata"]["name"]))
            r = apply(node, configmap("bad", {"deny": "yes"}), "-n", ns, check=False)
            assert 'admission webhook "deny.pod.example.com" denied the request: refused by the in-cluster webhook' \
                in r.stderr, r.stderr
            node.kubectl("create", "configmap", "plain", "-n", ns, "--from-literal=x=y")
            assert node.json("get", "configmap", "plain", "-n", ns)["metadata"]["labels"] == {"mutated": "yes"}
            # The same server serves an aggregated API: an APIService sends its group there.
            apisvc = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                      "metadata": {"name": "v1.demo.berth.example.com"},
                      "spec": {"group": "demo.berth.example.com", "version": "v1",
                               "groupPriorityMinimum": 1000, "versionPriority": 15,
                               "caBundle": base64.b64encode(ca).decode(),
                               "service": {"namespace": ns, "name": "hook", "port": 443}}}
            apply(node, apisvc)
            made.append(("apiservice", "v1.demo.berth.example.com"))

            def available():
                conds = node.json("get", "apiservice", "v1.demo.berth.example.com").get(
                    "status", {}).get("conditions", [])
                return any(c["type"] == "Available" and c["status"] == "True" for c in conds)
            wait_until(available, timeout=30, what="the APIService to be available")
            for version in ("1.27", "1.33"):
                table = node.kubectl("get", "greetings", "-n", ns, version=version).stdout
                assert "hello" in table, table
            got = node.json("get", "greeting", "hi", "-n", ns)
            # The aggregated server was told who asked, by a client certificate it could
            # check against the front proxy CA.
            assert got["spec"]["user"] == "admin", got
            table = node.kubectl("get", "apiservice", "v1.demo.berth.example.com").stdout.splitlines()
            assert table[1].split()[1:3] == [f"{ns}/hook", "True"], table
            # With its server gone the APIService turns unavailable, and requests for its
            # group are answered 503.
            node.kubectl("delete", "pod", "hook", "-n", ns, "--grace-period=0", timeout=90)

            def unavailable():
                conds = node.json("get", "apiservice", "v1.demo.berth.example.com").get(
                    "status", {}).get("conditions", [])
                return any(c["type"] == "Available" and c["status"] == "False" for c in conds)
            wait_until(unavailable, timeout=30, what="the APIService to be unavailable")
            r = node.kubectl("get", "--raw",
                             f"/apis/demo.berth.example.com/v1/namespaces/{ns}/greetings",
                             check=False)
            assert r.returncode != 0 and "ServiceUnavailable" in r.stderr, r.stderr
        finally:
            for kind, name in made:
                node.kubectl("delete", kind, name, check=False)


def deployment(name, replicas):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox:test"}]}}}}


def test_validating_admission_policies_deny_and_warn_with_params(cluster, ns, configured, version):
    """The documentation's ValidatingAdmissionPolicy, bound to one namespace, then with a
    ConfigMap as its parameter and a binding that warns."""
    cluster.kubectl("label", "namespace", ns, "environment=test")
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": f"replicas-{ns}"[:60]},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{
                           "apiGroups": ["apps"], "apiVersions": ["v1"],
                           "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
                       "validations": [{"expression": "object.spec.replicas <= 5"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": f"replicas-{ns}"[:60]},
               "spec": {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"],
                        "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}}
    apply(cluster, policy, version=version)
    configured.append(("validatingadmissionpolicy", policy["metadata"]["name"]))
    apply(cluster, binding, version=version)
    configured.append(("validatingadmissionpolicybinding", binding["metadata"]["name"]))
    r = apply(cluster, deployment("big", 6), "-n", ns, version=version, check=False)
    assert r.returncode != 0
    assert (f"ValidatingAdmissionPolicy '{policy['metadata']['name']}' with binding "
            f"'{binding['metadata']['name']}' denied request: failed expression: object.spec.replicas <= 5") \
        in r.stderr, r.stderr
    apply(cluster, deployment("small", 3), "-n", ns, version=version)
    # Elsewhere the binding does not reach.
    elsewhere = f"big-{ns}"[:50].rstrip("-")
    other = apply(cluster, deployment(elsewhere, 6), "-n", "default", version=version)
    cluster.kubectl("delete", "deployment", elsewhere, "-n", "default")
    assert other.returncode == 0
    # With a parameter: the limit comes from a ConfigMap, and the binding warns instead.
    limits = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "limits"},
              "data": {"maxReplicas": "2"}}
    apply(cluster, limits, "-n", ns, version=version)
    policy["spec"]["paramKind"] = {"apiVersion": "v1", "kind": "ConfigMap"}
    policy["spec"]["validations"] = [{"expression": "object.spec.replicas <= int(params.data.maxReplicas)",
                                      "messageExpression": "'at most ' + params.data.maxReplicas + ' replicas'"}]
    apply(cluster, policy, version=version)
    binding["spec"]["paramRef"] = {"name": "limits", "namespace": ns, "parameterNotFoundAction": "Deny"}
    binding["spec"]["validationActions"] = ["Warn"]
    apply(cluster, binding, version=version)
    r = apply(cluster, deployment("three", 3), "-n", ns, version=version)
    assert "at most 2 replicas" in r.stderr, r.stderr
    assert cluster.json("get", "deployment", "three", "-n", ns)["spec"]["replicas"] == 3
    table = cluster.kubectl("get", "validatingadmissionpolicybinding", binding["metadata"]["name"],
                            version=version).stdout.splitlines()
    assert table[0].split() == ["NAME", "POLICYNAME", "PARAMREF", "AGE"]
    assert table[1].split()[2] == f"{ns}/limits"


def test_bad_policies_are_refused(cluster):
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": "broken.example.com"},
              "spec": {"matchConstraints": {"resourceRules": [{
                           "apiGroups": ["apps"], "apiVersions": ["v1"],
                           "operations": ["CREATE"], "resources": ["deployments"]}]},
                       "validations": [{"expression": "object.spec.replicas <="}]}}
    r = apply(cluster, policy, check=False)
    assert r.returncode != 0
    assert "spec.validations[0].expression: Invalid value" in r.stderr and "compilation failed" in r.stderr, r.stderr
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": "broken.example.com"},
               "spec": {"policyName": "broken.example.com", "validationActions": ["Deny", "Warn"]}}
    r = apply(cluster, binding, check=False)
    assert "spec.validationActions: Forbidden: must not contain both Deny and Warn" in r.stderr, r.stderr
