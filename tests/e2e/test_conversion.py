"""Webhook conversion of custom objects: a definition whose two versions spell a field
differently (v1 `host` + `port`, v2 `address`) stores in v1 and asks a conversion webhook (an
HTTPS server of the test's own, on loopback, trusted through its caBundle) for everything
shown or written in v2: gets, lists, tables with v2's columns, watches and patches. A webhook
that is down or answers wrongly makes v2 fail with Kubernetes' message while v1 still serves."""

import base64
import http.server
import json
import ssl
import threading

import pytest
import yaml

from test_webhooks import _certificates


class Converter:
    """Converts Backends between v1 and v2. `mode` "wrong" answers in the wrong version. It
    tries to rename what it converts and labels it, to show what the server keeps."""

    def __init__(self, tmp):
        self.ca = _certificates(tmp)
        self.mode = "right"
        self.reviews = []
        conv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                conv.reviews.append(review)
                req = review["request"]
                want = req["desiredAPIVersion"]
                out = []
                for o in req["objects"]:
                    o = json.loads(json.dumps(o))
                    spec = o.get("spec", {})
                    if want.endswith("/v2") and "host" in spec:
                        o["spec"] = {"address": f"{spec['host']}:{spec['port']}"}
                    elif want.endswith("/v1") and "address" in spec:
                        host, port = spec["address"].rsplit(":", 1)
                        o["spec"] = {"host": host, "port": int(port)}
                    o["apiVersion"] = want if conv.mode == "right" else "nowhere.example.com/v9"
                    o["metadata"]["name"] = "renamed-by-the-webhook"
                    o["metadata"].setdefault("labels", {})["converted"] = "yes"
                    out.append(o)
                body = json.dumps({
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
                    "response": {"uid": req["uid"], "result": {"status": "Success"},
                                 "convertedObjects": out}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tmp / "tls.crt"), str(tmp / "tls.key"))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/convert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def converter(tmp_path_factory):
    c = Converter(tmp_path_factory.mktemp("converter"))
    yield c
    c.server.shutdown()


def definition(group, url, ca):
    def version(name, props, columns, storage):
        return {"name": name, "served": True, "storage": storage,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": props}}}},
                "additionalPrinterColumns": columns}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"backends.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "backends", "singular": "backend", "kind": "Backend"},
            "versions": [
                version("v1", {"host": {"type": "string"}, "port": {"type": "integer"}},
                        [{"name": "Host", "type": "string", "jsonPath": ".spec.host"},
                         {"name": "Port", "type": "integer", "jsonPath": ".spec.port"}], True),
                version("v2", {"address": {"type": "string"}},
                        [{"name": "Address", "type": "string", "jsonPath": ".spec.address"}],
                        False),
            ],
            "conversion": {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": url, "caBundle": base64.b64encode(ca).decode()},
                "conversionReviewVersions": ["v1"]}},
        },
    }


def apply(cluster, obj, *args, version="1.33", check=True):
    return cluster.kubectl("apply", "-f", "-", *args, input=yaml.safe_dump(obj), version=version,
                           check=check)


def test_a_conversion_webhook_serves_a_second_version(cluster, ns, converter, version):
    group = f"conv{ns[-12:].strip('-')}.example.com"
    crd = definition(group, converter.url, converter.ca)
    apply(cluster, crd, version=version)
    try:
        apply(cluster, {"apiVersion": f"{group}/v2", "kind": "Backend",
                        "metadata": {"name": "db"}, "spec": {"address": "db.local:5432"}},
              "-n", ns, version=version)
        # Stored in v1: the webhook turned the address into host and port.
        v1 = cluster.json("get", f"backends.v1.{group}", "db", "-n", ns, version=version)
        assert v1["apiVersion"] == f"{group}/v1"
        assert v1["spec"] == {"host": "db.local", "port": 5432}
        # The server keeps the object's identity; labels the webhook adds are taken over.
        assert v1["metadata"]["name"] == "db"
        assert v1["metadata"]["labels"]["converted"] == "yes"
        v2 = cluster.json("get", f"backends.v2.{group}", "db", "-n", ns, version=version)
        assert v2["apiVersion"] == f"{group}/v2"
        assert v2["spec"] == {"address": "db.local:5432"}

        # Tables use each version's own columns over objects in that version.
        table = cluster.kubectl("get", f"backends.v2.{group}", "-n", ns, version=version).stdout
        assert table.split("\n")[0].split() == ["NAME", "ADDRESS"], table
        assert table.split("\n")[1].split() == ["db", "db.local:5432"], table
        table = cluster.kubectl("get", f"backends.v1.{group}", "-n", ns, version=version).stdout
        assert table.split("\n")[1].split() == ["db", "db.local", "5432"], table

        # A patch through v2 is applied to the object as v2 shows it, then stored in v1.
        cluster.kubectl("patch", f"backends.v2.{group}", "db", "-n", ns, "--type=merge",
                        "-p", '{"spec":{"address":"db.local:6000"}}', version=version)
        v1 = cluster.json("get", f"backends.v1.{group}", "db", "-n", ns)
        assert v1["spec"] == {"host": "db.local", "port": 6000}

        # Lists and watches through v2 carry converted objects.
        listed = json.loads(cluster.kubectl(
            "get", "--raw", f"/apis/{group}/v2/namespaces/{ns}/backends").stdout)
        assert listed["apiVersion"] == f"{group}/v2"
        assert [o["spec"] for o in listed["items"]] == [{"address": "db.local:6000"}]
        watched = cluster.kubectl(
            "get", "--raw",
            f"/apis/{group}/v2/namespaces/{ns}/backends?watch=1&timeoutSeconds=1").stdout
        events = [json.loads(line) for line in watched.splitlines() if line.strip()]
        assert [(e["type"], e["object"]["spec"]) for e in events] == \
            [("ADDED", {"address": "db.local:6000"})]

        # A webhook that answers in the wrong version is an error for v2; v1 still serves.
        converter.mode = "wrong"
        try:
            r = cluster.kubectl("get", f"backends.v2.{group}", "db", "-n", ns, check=False,
                                version=version)
            assert r.returncode != 0
            assert (f"conversion webhook for {group}/v1, Kind=Backend returned invalid "
                    "converted object at index 0: invalid apiVersion") in r.stderr, r.stderr
            assert cluster.json("get", f"backends.v1.{group}", "db", "-n", ns)["spec"]["port"] \
                == 6000
        finally:
            converter.mode = "right"

        # A webhook that cannot be reached fails the same way, with the call's error.
        down = json.loads(json.dumps(crd))
        down["spec"]["conversion"]["webhook"]["clientConfig"]["url"] = "https://127.0.0.1:9/convert"
        apply(cluster, down, version=version)
        r = cluster.kubectl("get", f"backends.v2.{group}", "-n", ns, check=False, version=version)
        assert r.returncode != 0
        assert f"conversion webhook for {group}/v1, Kind=Backend failed:" in r.stderr, r.stderr
        assert "connection refused" in r.stderr.lower(), r.stderr
        r = cluster.kubectl("create", "-n", ns, "-f", "-", check=False, version=version,
                            input=yaml.safe_dump({
                                "apiVersion": f"{group}/v2", "kind": "Backend",
                                "metadata": {"name": "lost"}, "spec": {"address": "x:1"}}))
        assert r.returncode != 0 and "conversion webhook" in r.stderr, r.stderr
        assert cluster.kubectl("get", f"backends.v1.{group}", "lost", "-n", ns,
                               check=False).returncode != 0
    finally:
        cluster.kubectl("delete", "crd", crd["metadata"]["name"], check=False)


def test_bad_conversion_settings_are_refused(cluster, converter):
    group = "badconv.example.com"
    cases = [
        ({"strategy": "Webhook"},
         "spec.conversion.webhookClientConfig: Required value: required when strategy is set "
         "to Webhook"),
        ({"strategy": "Webhook", "webhook": {"clientConfig": {"url": converter.url},
                                             "conversionReviewVersions": ["v9"]}},
         "spec.conversion.conversionReviewVersions: Invalid value: "
         "[]string{\"v9\"}: must include at least one of v1, v1beta1"),
        ({"strategy": "Webhook", "webhook": {"clientConfig": {"url": "http://127.0.0.1/x"},
                                             "conversionReviewVersions": ["v1"]}},
         "spec.conversion.webhookClientConfig.url: Invalid value: \"http://127.0.0.1/x\": "
         "'https' is the only allowed URL scheme"),
        ({"strategy": "None", "webhook": {"clientConfig": {"url": converter.url},
                                          "conversionReviewVersions": ["v1"]}},
         "spec.conversion.webhookClientConfig: Forbidden: should not be set when strategy is "
         "not set to Webhook"),
    ]
    for conversion, message in cases:
        crd = definition(group, converter.url, converter.ca)
        crd["spec"]["conversion"] = conversion
        r = apply(cluster, crd, check=False)
        assert r.returncode != 0, conversion
        assert message in r.stderr, r.stderr
