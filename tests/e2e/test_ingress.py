"""The built-in Ingress controller: Ingresses of the default class `berth` (made by
`kubectl create ingress` and from YAML) route by host and path to two Services' pods through
the node's port 80, and over TLS on port 443 with the certificate of the Secret the Ingress
names, chosen by server name and replaced live. Requests are sent inside the node's own
network namespace, to its loopback address."""

import pytest
import yaml

from conftest import own_namespace, wait_until
from test_webhooks import _certificates

# busybox httpd answering "hello-from-<pod>" at every path the tests ask for.
SERVER = ["sh", "-c", "mkdir -p /www/api /www/a && for f in index.html x api/v1 a/deeper b; "
          "do echo hello-from-$(hostname) > /www/$f; done && exec httpd -f -p 8080 -h /www"]

REQUEST = """
import socket, ssl, sys
host, port, name, path, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = socket.create_connection((host, port), timeout=5)
if ca != "-":
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(s, server_hostname=name)
s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: {name}\\r\\nConnection: close\\r\\n\\r\\n".encode())
out = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    out += d
print(out.decode(errors="replace"))
"""


def fetch(node, name, path, port=80, ca=None, to="127.0.0.1"):
    """A GET to the node's Ingress port with Host `name` (and TLS server name, with `ca`)."""
    r = node.in_netns("python3", "-c", REQUEST, to, str(port), name, path,
                      str(ca) if ca else "-", capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


def curl(node, *args):
    """curl inside the node's namespace; prints the body, then the HTTP version used."""
    r = node.in_netns("curl", "-sS", "--max-time", "10", "-w", "\n%{http_version}\n", *args,
                      capture_output=True, text=True, timeout=20)
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def ing_ns(node, request):
    with own_namespace(node, "ing", request) as ns:
        for app in ("alpha", "beta"):
            deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
                      "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                               "template": {"metadata": {"labels": {"app": app}},
                                            "spec": {"containers": [{
                                                "name": "web", "image": "busybox:test",
                                                "command": SERVER,
                                                "ports": [{"containerPort": 8080}],
                                                "readinessProbe": {"tcpSocket": {"port": 8080},
                                                                   "periodSeconds": 1}}]}}}}
            svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": app},
                   "spec": {"selector": {"app": app},
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
            for obj in (deploy, svc):
                node.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
        for app in ("alpha", "beta"):
            node.kubectl("rollout", "status", f"deployment/{app}", "-n", ns, "--timeout=120s",
                         timeout=150)
        yield ns


def test_ingresses_route_hosts_and_paths_to_services(node, ing_ns, version):
    ns = ing_ns
    name = f"cli-{version.replace('.', '')}"
    node.kubectl("create", "ingress", name, "-n", ns,
                 f"--rule=alpha-{name}.example.com/*=alpha:80",
                 f"--rule=beta-{name}.example.com/api*=beta:http", version=version)
    # Made without a class, it has the default one.
    got = node.json("get", "ingress", name, "-n", ns, version=version)
    assert got["spec"]["ingressClassName"] == "berth"
    wait_until(lambda: "hello-from-alpha" in fetch(node, f"alpha-{name}.example.com", "/x"),
               timeout=30, what="the created ingress to route")
    assert "hello-from-beta" in fetch(node, f"beta-{name}.example.com", "/api/v1")
    # Over IPv6 as well (the node's loopback), with the client's address forwarded as such.
    assert "hello-from-beta" in fetch(node, f"beta-{name}.example.com", "/api/v1", to="::1")
    # A path no rule of a known host covers, and an unknown host, find nothing.
    assert "404" in fetch(node, f"beta-{name}.example.com", "/other").split("\n")[0]
    assert "404" in fetch(node, "nowhere.example.com", "/").split("\n")[0]

    two_paths = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                 "metadata": {"name": f"yaml-{name}"},
                 "spec": {"rules": [{"host": f"both-{name}.example.com", "http": {"paths": [
                     {"path": "/a", "pathType": "Prefix",
                      "backend": {"service": {"name": "alpha", "port": {"number": 80}}}},
                     {"path": "/b", "pathType": "Exact",
                      "backend": {"service": {"name": "beta", "port": {"name": "http"}}}}]}}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(two_paths), version=version)
    host = f"both-{name}.example.com"
    wait_until(lambda: "hello-from-alpha" in fetch(node, host, "/a/deeper"),
               timeout=30, what="the YAML ingress to route")
    assert "hello-from-beta" in fetch(node, host, "/b")
    assert "404" in fetch(node, host, "/b/c").split("\n")[0]
    # Its status lists the node's address, as kubectl shows it.
    node_ip = node.json("get", "nodes")["items"][0]["status"]["addresses"][0]["address"]

    def addressed():
        table = node.kubectl("get", "ingress", f"yaml-{name}", "-n", ns, version=version).stdout
        return table.split("\n")[1].split()[1:4] == ["berth", host, node_ip]
    wait_until(addressed, timeout=30, what="the ingress's status to list the node")


def test_tls_is_served_with_the_secrets_certificate_and_replaced_live(node, ing_ns, tmp_path):
    ns = ing_ns
    host = "secure.example.com"
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    (first / "ca.crt").write_bytes(_certificates(first, dns=host))
    (second / "ca.crt").write_bytes(_certificates(second, dns=host))
    node.kubectl("create", "secret", "tls", "secure", "-n", ns,
                 f"--cert={first / 'tls.crt'}", f"--key={first / 'tls.key'}")
    ing = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "secure"},
           "spec": {"tls": [{"hosts": [host], "secretName": "secure"}],
                    "rules": [{"host": host, "http": {"paths": [
                        {"path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "beta", "port": {"number": 80}}}}]}}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(ing))
    # Trusted through the first CA only.
    wait_until(lambda: "hello-from-beta" in fetch(node, host, "/", port=443, ca=first / "ca.crt"),
               timeout=30, what="TLS through the ingress")
    assert "CERTIFICATE_VERIFY_FAILED" in fetch(node, host, "/", port=443, ca=second / "ca.crt")
    # A new certificate in the Secret is served without a restart.
    replaced = node.kubectl("create", "secret", "tls", "secure", "-n", ns, "--dry-run=client",
                            "-o", "yaml", f"--cert={second / 'tls.crt'}",
                            f"--key={second / 'tls.key'}").stdout
    node.kubectl("apply", "-n", ns, "-f", "-", input=replaced)
    wait_until(lambda: "hello-from-beta" in fetch(node, host, "/", port=443,
                                                  ca=second / "ca.crt"),
               timeout=30, what="the replaced certificate to be served")
    # HTTP/2 is offered over TLS (ALPN) and spoken in the clear by clients that start with it.
    out = curl(node, "--http2", "--cacert", str(second / "ca.crt"),
               "--resolve", f"{host}:443:127.0.0.1", f"https://{host}/")
    assert "hello-from-beta" in out and out.split()[-1] == "2", out
    out = curl(node, "--http2-prior-knowledge", "-H", f"Host: {host}", "http://127.0.0.1/")
    assert "hello-from-beta" in out and out.split()[-1] == "2", out


# A backend that answers any request with 101 Switching Protocols and then echoes what it
# is sent: enough to see an upgraded connection pass through the proxy both ways.
UPGRADER = ["sh", "-c", r"""cat > /up.sh <<'X'
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
exec cat
X
exec nc -ll -p 8080 -e /bin/sh /up.sh"""]

UPGRADE = """
import socket, sys
s = socket.create_connection(("127.0.0.1", 80), timeout=5)
s.sendall(b"GET /ws HTTP/1.1\\r\\nHost: ws.example.com\\r\\nConnection: Upgrade\\r\\n"
          b"Upgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    d = s.recv(1)
    if not d:
        break
    head += d
print(head.decode().split("\\r\\n")[0])
s.sendall(b"ping-through-the-ingress\\n")
back = b""
while not back.endswith(b"\\n"):
    d = s.recv(64)
    if not d:
        break
    back += d
print(back.decode().strip())
"""


def test_an_upgraded_connection_passes_both_ways(node, ing_ns):
    ns = ing_ns
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ws", "labels": {"app": "ws"}},
           "spec": {"containers": [{"name": "ws", "image": "busybox:test", "command": UPGRADER,
                                    "readinessProbe": {"tcpSocket": {"port": 8080},
                                                       "periodSeconds": 1}}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ws"},
           "spec": {"selector": {"app": "ws"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    ing = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ws"},
           "spec": {"rules": [{"host": "ws.example.com", "http": {"paths": [
               {"path": "/ws", "pathType": "Exact",
                "backend": {"service": {"name": "ws", "port": {"number": 80}}}}]}}]}}
    for obj in (pod, svc, ing):
        node.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(obj))
    node.kubectl("wait", "pod/ws", "-n", ns, "--for=condition=Ready", "--timeout=60s", timeout=90)

    def upgraded():
        r = node.in_netns("python3", "-c", UPGRADE, capture_output=True, text=True, timeout=20)
        return r.stdout.split("\n")[:2] == ["HTTP/1.1 101 Switching Protocols",
                                             "ping-through-the-ingress"] and r.stdout
    wait_until(upgraded, timeout=30, what="an upgraded connection through the ingress")


def test_a_missing_service_or_secret_is_told_and_answered_503(node, ing_ns):
    ns = ing_ns
    ing = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "ghost"},
           "spec": {"tls": [{"hosts": ["ghost.example.com"], "secretName": "ghost-tls"}],
                    "rules": [{"host": "ghost.example.com", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "ghost", "port": {"number": 80}}}}]}}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(ing))

    def told(reason):
        events = node.json("get", "events", "-n", ns,
                           "--field-selector", "involvedObject.name=ghost")["items"]
        return [e for e in events if e["reason"] == reason and e["type"] == "Warning"]
    event = wait_until(lambda: told("ServiceNotFound"), timeout=30, what="a ServiceNotFound event")[0]
    assert event["message"].startswith('service "ghost" not found'), event
    event = wait_until(lambda: told("SecretNotFound"), timeout=30, what="a SecretNotFound event")[0]
    assert event["message"].startswith('secret "ghost-tls" not found'), event
    wait_until(lambda: " 503 " in fetch(node, "ghost.example.com", "/").split("\n")[0],
               timeout=30, what="a 503 for the missing Service")


KEEP_ASKING = """
import socket, sys, time
end = time.time() + float(sys.argv[2])
statuses = []
while time.time() < end:
    try:
        s = socket.create_connection(("127.0.0.1", 80), timeout=10)
        s.sendall(("GET / HTTP/1.1\\r\\nHost: " + sys.argv[1] + "\\r\\nConnection: close\\r\\n\\r\\n").encode())
        out = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            out += d
        statuses.append(out.split(b"\\r\\n")[0].decode())
    except Exception as e:
        statuses.append("error " + str(e))
    time.sleep(0.02)
print("\\n".join(statuses))
"""


def test_a_backend_killed_mid_traffic_costs_no_request(node, ing_ns):
    """Requests keep flowing while one of two endpoints is deleted: a connect that fails is
    tried on the other endpoint, and the routes drop the gone one."""
    import subprocess
    ns = ing_ns
    node.kubectl("scale", "deployment/alpha", "-n", ns, "--replicas=2")
    node.kubectl("rollout", "status", "deployment/alpha", "-n", ns, "--timeout=120s", timeout=150)
    ing = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "steady"},
           "spec": {"rules": [{"host": "steady.example.com", "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "alpha", "port": {"number": 80}}}}]}}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(ing))
    wait_until(lambda: "hello-from-alpha" in fetch(node, "steady.example.com", "/"),
               timeout=30, what="the steady ingress to route")
    asking = subprocess.Popen(["nsenter", f"--net={node.netns_path}", "python3", "-c", KEEP_ASKING,
                               "steady.example.com", "8"], stdout=subprocess.PIPE, text=True)
    pods = node.json("get", "pods", "-n", ns, "-l", "app=alpha")["items"]
    import time
    time.sleep(1.5)
    node.kubectl("delete", "pod", pods[0]["metadata"]["name"], "-n", ns, "--wait=false")
    out, _ = asking.communicate(timeout=60)
    statuses = out.strip().split("\n")
    assert len(statuses) > 20, out
    assert all(s == "HTTP/1.1 200 OK" for s in statuses), out
