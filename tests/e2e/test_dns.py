"""Cluster DNS, end to end: pods find Services by short and full names, headless Services list
their ready pods (A and SRV), ExternalName and outside names resolve through the node's
upstream resolver, pods get resolv.conf per dnsPolicy, and malformed packets get an error
without hurting the server.

Safety: the node runs in a network namespace of its own (conftest); its upstream resolver is a
small server in one more namespace the test makes ("outside", 192.0.2.2). Queries go to
10.43.0.10 only from inside the node's namespace or its pods."""

import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import own_namespace, running_node, wait_until
from images import Image, busybox_layer
from test_network import outside  # noqa: F401  (a fixture)
from test_pods import apply, pod_yaml, wait_running

DNS = "10.43.0.10"
NODE_IP = "198.18.0.1"
SERVER = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]


def lookup_binary():
    """tools/lookup.c, linked statically with musl: a resolver that needs no NSS."""
    cc = shutil.which("musl-gcc")
    assert cc, "musl-gcc is needed (Debian musl-tools; scripts/test.sh installs it)"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "lookup"
        subprocess.run([cc, "-static", "-Os", "-o", str(out), str(Path(__file__).with_name("tools") / "lookup.c")],
                       check=True)
        return out.read_bytes()


def lookup_image():
    """The test busybox with the `lookup` client in it."""
    return Image(layers=[busybox_layer(extra={"bin/lookup": lookup_binary()})], cmd=("sh",))


@pytest.fixture(scope="module")
def node():
    """`berth up` whose node resolves outside names through 192.0.2.2 (the `upstream`
    fixture) and has an address besides loopback, with `busybox:test` holding the `lookup`
    client."""
    def prepare(c):
        resolv = c.workdir / "resolv.conf"
        resolv.write_text("nameserver 192.0.2.2\nsearch corp.test\n")
        c.extra += ["--resolv-conf", str(resolv)]
        c.give_address(NODE_IP)

    with running_node(lookup_image(), prefix="berth-dns-", prepare=prepare) as c:
        yield c


@pytest.fixture
def dns_ns(node, request):
    with own_namespace(node, "d", request) as name:
        yield name


# An upstream resolver for the outside world: www.outside.test is 192.0.2.2, every other name
# does not exist. It prints each name it is asked.
UPSTREAM = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.2", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    ident, flags, qd = struct.unpack(">HHH", q[:6])
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode())
        i += 1 + q[i]
    question = q[12:i + 5]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    name = ".".join(labels).lower()
    print(name, qtype, flush=True)
    if name == "www.outside.test":
        answers = b"" if qtype != 1 else b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 2])
        header = struct.pack(">HHHHHH", ident, 0x8180, 1, 1 if answers else 0, 0, 0)
    else:
        header = struct.pack(">HHHHHH", ident, 0x8183, 1, 0, 0, 0)
        answers = b""
    s.sendto(header + question + answers, peer)
"""


@pytest.fixture
def upstream(node, outside):  # noqa: F811
    p = subprocess.Popen(outside + [sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        yield p
    finally:
        p.kill()
        p.wait()


def in_pod(node, ns, pod, script, check=True):
    r = node.kubectl("exec", "-n", ns, pod, "--", "sh", "-c", script, check=False)
    if check:
        assert r.returncode == 0, f"{script}: {r.stdout}{r.stderr}"
    return r


def dig(node, *args):
    r = node.in_netns("dig", f"@{DNS}", "+time=2", "+tries=1", *args, capture_output=True, text=True)
    return r.stdout


def short(node, *args):
    return sorted(dig(node, "+short", *args).split())


def web_and_client(node, ns, version="1.33"):
    apply(node, ns, pod_yaml("web", SERVER, extra="""    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: web}\n", 1), version=version)
    apply(node, ns, pod_yaml("client", ["sleep", "3600"]), version=version)
    node.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns, version=version)
    node.kubectl("patch", "service", "web", "-n", ns, "--type=json",
                 "-p", '[{"op": "replace", "path": "/spec/ports/0/name", "value": "http"}]', version=version)
    wait_running(node, ns, "client")
    # Ready: listed under `addresses` (a pod not yet ready is under `notReadyAddresses`).
    def ready():
        subsets = node.json("get", "endpoints", "web", "-n", ns).get("subsets") or []
        return any(s.get("addresses") for s in subsets)
    wait_until(ready, timeout=60, what="web ready")


def test_pods_find_services_by_name(node, dns_ns, version):
    ns = dns_ns
    web_and_client(node, ns, version)
    vip = node.json("get", "service", "web", "-n", ns)["spec"]["clusterIP"]
    conf = in_pod(node, ns, "client", "cat /etc/resolv.conf").stdout
    assert f"search {ns}.svc.cluster.local svc.cluster.local cluster.local corp.test" in conf, conf
    assert f"nameserver {DNS}" in conf and "options ndots:5" in conf, conf
    # Short, namespace-qualified and full names, through the ClusterIP to the pod.
    for name in ("web", f"web.{ns}", f"web.{ns}.svc", f"web.{ns}.svc.cluster.local"):
        out = in_pod(node, ns, "client", f"lookup {name} 80").stdout
        assert vip in out.splitlines(), out
        assert "hello-from-web" in out, out
    assert in_pod(node, ns, "client", "lookup kubernetes.default").stdout.splitlines()[0] == "10.43.0.1"
    # From the node: A over UDP and TCP, SRV per named port, PTR of the cluster IP.
    assert short(node, f"web.{ns}.svc.cluster.local") == [vip]
    assert short(node, "+tcp", f"WEB.{ns.upper()}.svc.cluster.local") == [vip]
    assert short(node, "SRV", f"_http._tcp.web.{ns}.svc.cluster.local") == \
        sorted(["0", "100", "80", f"web.{ns}.svc.cluster.local."])
    assert short(node, "-x", vip) == [f"web.{ns}.svc.cluster.local."]
    assert short(node, "TXT", "dns-version.cluster.local") == ['"1.0.1"']
    # Names that do not exist are NXDOMAIN; names that exist without the type, empty.
    assert "status: NXDOMAIN" in dig(node, f"nope.{ns}.svc.cluster.local")
    no_data = dig(node, "AAAA", f"web.{ns}.svc.cluster.local")
    assert "status: NOERROR" in no_data and "ANSWER: 0" in no_data, no_data
    # A pod's own record, by its address.
    ip = node.json("get", "pod", "client", "-n", ns)["status"]["podIP"]
    assert short(node, f"{ip.replace('.', '-')}.{ns}.pod.cluster.local") == [ip]
    # A Service that goes away leaves DNS within moments.
    node.kubectl("delete", "service", "web", "-n", ns)
    wait_until(lambda: "NXDOMAIN" in dig(node, f"web.{ns}.svc.cluster.local"), timeout=5, what="web gone from DNS")
    r = in_pod(node, ns, "client", "lookup web", check=False)
    assert r.returncode != 0 and "lookup web:" in r.stderr, r.stdout + r.stderr


def test_headless_services_list_their_ready_pods(node, dns_ns):
    ns = dns_ns
    for name, ready in (("db-0", True), ("db-1", True), ("db-2", False)):
        probe = "true" if ready else "false"
        apply(node, ns, pod_yaml(name, SERVER, extra=f"""    ports: [{{name: pg, containerPort: 8080}}]
    readinessProbe:
      exec: {{command: ["{probe}"]}}
      periodSeconds: 1
  hostname: {name}
  subdomain: db
""").replace("metadata:\n", "metadata:\n  labels: {app: db}\n", 1))
    apply(node, ns, pod_yaml("client", ["sleep", "3600"]))
    apply(node, ns, """apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: pg}]
""")
    wait_running(node, ns, "client")
    ips = {}
    for name in ("db-0", "db-1", "db-2"):
        wait_running(node, ns, name)
        ips[name] = node.json("get", "pod", name, "-n", ns)["status"]["podIP"]
    want = sorted([ips["db-0"], ips["db-1"]])
    wait_until(lambda: short(node, f"db.{ns}.svc.cluster.local") == want, timeout=30, what="two ready pods in DNS")
    assert short(node, f"db-0.db.{ns}.svc.cluster.local") == [ips["db-0"]]
    # The pod knows its own fully qualified name, as the kubelet writes it.
    hosts = in_pod(node, ns, "db-0", "cat /etc/hosts").stdout
    assert f"{ips['db-0']}\tdb-0.db.{ns}.svc.cluster.local\tdb-0\n" in hosts, hosts
    assert "NXDOMAIN" in dig(node, f"db-2.db.{ns}.svc.cluster.local")
    srv = dig(node, "+short", "SRV", f"_pg._tcp.db.{ns}.svc.cluster.local").splitlines()
    assert sorted(line.split()[2:] for line in srv) == [
        ["8080", f"db-0.db.{ns}.svc.cluster.local."], ["8080", f"db-1.db.{ns}.svc.cluster.local."]], srv
    # The pods' own names resolve from the client through its search path, and reach them.
    out = in_pod(node, ns, "client", f"lookup db-1.db 8080").stdout
    assert ips["db-1"] in out.splitlines() and "hello-from-db-1" in out, out
    # The not-ready pod becomes ready: it joins.
    node.kubectl("delete", "pod", "db-0", "-n", ns, "--wait=false")
    wait_until(lambda: short(node, f"db.{ns}.svc.cluster.local") == [ips["db-1"]], timeout=30,
               what="db-0 out of DNS")


def test_external_names_and_outside_names_go_upstream(node, dns_ns, upstream):
    ns = dns_ns
    apply(node, ns, pod_yaml("client", ["sleep", "3600"]))
    node.kubectl("create", "service", "externalname", "ext", "--external-name", "www.outside.test", "-n", ns)
    wait_running(node, ns, "client")
    # An ExternalName Service is an alias; the name behind it comes from upstream.
    cname = dig(node, f"ext.{ns}.svc.cluster.local")
    assert "CNAME\twww.outside.test." in cname and "192.0.2.2" in cname, cname
    out = in_pod(node, ns, "client", "lookup ext").stdout
    assert out.splitlines()[0] == "192.0.2.2", out
    # An outside name through the pod's search path: found, in one round trip for the pod.
    out = in_pod(node, ns, "client", "lookup www.outside.test").stdout
    assert out.splitlines()[0] == "192.0.2.2", out
    # A name nobody knows fails fast, whatever the search path.
    started = time.time()
    r = in_pod(node, ns, "client", "lookup nowhere.outside.test", check=False)
    assert r.returncode != 0, r.stdout
    assert time.time() - started < 5
    # Asked upstream: never a cluster name.
    upstream.kill()
    asked = upstream.stdout.read()
    assert "www.outside.test" in asked and "cluster.local" not in asked, asked


def test_pods_resolve_per_their_dns_policy(node, dns_ns):
    ns = dns_ns
    apply(node, ns, pod_yaml("none", ["sleep", "3600"], extra="""  dnsPolicy: None
  dnsConfig:
    nameservers: [192.0.2.77]
    searches: [example.test]
    options: [{name: ndots, value: "2"}, {name: edns0}]
"""))
    apply(node, ns, pod_yaml("default", ["sleep", "3600"], extra="  dnsPolicy: Default\n"))
    wait_running(node, ns, "none")
    wait_running(node, ns, "default")
    assert in_pod(node, ns, "none", "cat /etc/resolv.conf").stdout == \
        "search example.test\nnameserver 192.0.2.77\noptions ndots:2 edns0\n"
    conf = in_pod(node, ns, "default", "cat /etc/resolv.conf").stdout
    assert conf == "search corp.test\nnameserver 192.0.2.2\n", conf
    # The cluster DNS address is not a Service the proxy forwards: it is served on the node.
    svc = node.json("get", "service", "kube-dns", "-n", "kube-system")
    assert svc["spec"]["clusterIP"] == DNS
    assert sorted((p["port"], p["protocol"]) for p in svc["spec"]["ports"]) == [(53, "TCP"), (53, "UDP")]


def test_malformed_dns_packets_get_an_error_and_nothing_breaks(node):
    probe = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
def ask(data):
    s.sendto(data, ("10.43.0.10", 53))
    try:
        return s.recv(4096)
    except socket.timeout:
        return None
# garbage after a readable header: FORMERR with the same ID
r = ask(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\xff" * 20)
print("formerr", r is not None and r[:2] == b"\x12\x34" and r[3] & 15 == 1)
# too short for a header: no answer
print("short", ask(b"\x01\x02\x03") is None)
# a response: never answered
print("response", ask(b"\x00\x07\x81\x80" + b"\x00" * 8) is None)
# an unsupported opcode (NOTIFY): NOTIMP
q = b"\x00\x09\x20\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x00\x00\x01\x00\x01"
r = ask(q)
print("notimp", r is not None and r[3] & 15 == 4)
# a TCP client that sends half a message and leaves
t = socket.create_connection(("10.43.0.10", 53), timeout=2)
t.sendall(b"\x00\x40\x12")
t.close()
"""
    r = node.in_netns(sys.executable, "-c", probe, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["formerr", "True", "short", "True", "response", "True", "notimp", "True"], r.stdout
    # Still answering.
    assert short(node, "kubernetes.default.svc.cluster.local") == ["10.43.0.1"]
    assert node.proc.poll() is None


def test_pods_reach_the_api_server_through_the_kubernetes_service(node, dns_ns):
    ns = dns_ns
    # Served on the node's address as well as loopback, and advertised there.
    ep = node.json("get", "endpoints", "kubernetes", "-n", "default")
    assert ep["subsets"][0]["addresses"] == [{"ip": NODE_IP}], ep
    apply(node, ns, pod_yaml("client", ["sleep", "3600"]))
    wait_running(node, ns, "client")
    env = in_pod(node, ns, "client", "env").stdout
    assert "KUBERNETES_SERVICE_HOST=10.43.0.1" in env and "KUBERNETES_SERVICE_PORT=443" in env, env
    # A TLS ClientHello through the ClusterIP: the API server answers with a TLS record (a
    # handshake, 0x16, or an alert, 0x15, for this bare hello); unreachable, nothing comes.
    hello = ("\\x16\\x03\\x01\\x00\\x2d\\x01\\x00\\x00\\x29\\x03\\x03" + "\\x00" * 32 +
             "\\x00\\x00\\x02\\x13\\x01\\x01\\x00")
    out = in_pod(node, ns, "client", f"printf '{hello}' | nc -w 3 10.43.0.1 443 | od -An -tx1 | head -1").stdout
    assert out.split()[:1] in (["15"], ["16"]), out
