"""Dual-stack: with an IPv4 and an IPv6 range for pods and for Services, every pod gets an
address of each family, Services get the families their ipFamilyPolicy asks for, and pods reach
each other, Services and names over IPv6 as over IPv4.

Safety: as everywhere, the node runs in a network namespace of its own (conftest); nothing here
sends a packet from the machine's own namespace."""

import ipaddress

import pytest

from conftest import own_namespace, running_node, wait_until
from test_dns import in_pod, lookup_image
from test_network import assert_reaches, http_get
from test_pods import apply, pod_yaml, wait_running

SERVER = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
POD_RANGES = "10.42.0.0/16,fd42::/56"
SERVICE_RANGES = "10.43.0.0/16,fd43::/112"


@pytest.fixture(scope="module")
def node():
    """`berth up` with both families for pods and Services, and the `lookup` client."""
    def prepare(c):
        c.extra += ["--cluster-cidr", POD_RANGES, "--service-cidr", SERVICE_RANGES]

    with running_node(lookup_image(), prefix="berth-dual-", prepare=prepare) as c:
        yield c


@pytest.fixture
def ns(node, request):
    with own_namespace(node, "v", request) as name:
        yield name


def resolved(node, ns, name, check=True):
    """The addresses `lookup NAME` prints (it also prints the canonical name)."""
    out = in_pod(node, ns, "client", f"lookup {name}", check=check).stdout.split()
    found = []
    for word in out:
        try:
            found.append(str(ipaddress.ip_address(word)))
        except ValueError:
            pass
    return sorted(found)


def families(ips):
    return [ipaddress.ip_address(ip).version for ip in ips]


def web_pods(node, ns, names, version):
    for name in names:
        apply(node, ns, pod_yaml(name, SERVER, extra="""    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: web}\n", 1), version=version)
    apply(node, ns, pod_yaml("client", ["sleep", "3600"]), version=version)
    wait_running(node, ns, "client")


def slice_addresses(node, ns, svc):
    """The ready addresses of the Service's EndpointSlices, by address type."""
    out = {}
    items = node.json("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc}")["items"]
    for s in items:
        ready = [a for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
                 for a in e["addresses"]]
        out.setdefault(s["addressType"], []).extend(ready)
    return {k: sorted(v) for k, v in out.items()}


def test_pods_get_both_families_and_talk_over_ipv6(node, ns, version):
    web_pods(node, ns, ["web"], version)
    wait_running(node, ns, "web")
    pod = node.json("get", "pod", "web", "-n", ns)
    ips = [p["ip"] for p in pod["status"]["podIPs"]]
    assert families(ips) == [4, 6], ips
    assert pod["status"]["podIP"] == ips[0]
    assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network("10.42.0.0/16")
    assert ipaddress.ip_address(ips[1]) in ipaddress.ip_network("fd42::/56")
    # The node's ranges, one per family.
    cidrs = node.json("get", "nodes")["items"][0]["spec"]["podCIDRs"]
    assert families([c.split("/")[0] for c in cidrs]) == [4, 6], cidrs
    wait_until(lambda: "hello-from-web" in http_get(node, ns, "client", ips[1], 8080), timeout=30,
               what="the pod over IPv6")
    # The pod's own view: its IPv6 address is on its interface.
    assert ips[1] in in_pod(node, ns, "web", "ip -6 addr show dev eth0").stdout


def test_services_get_the_families_they_ask_for(node, ns, version):
    web_pods(node, ns, ["web-1", "web-2"], version)
    # Single stack by default, of the primary family.
    node.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns, version=version)
    svc = node.json("get", "service", "web", "-n", ns)
    assert svc["spec"]["ipFamilies"] == ["IPv4"] and svc["spec"]["ipFamilyPolicy"] == "SingleStack", svc["spec"]
    # Upgraded by asking for PreferDualStack: an IPv6 address joins, the IPv4 one stays.
    node.kubectl("patch", "service", "web", "-n", ns, "-p", '{"spec": {"ipFamilyPolicy": "PreferDualStack"}}',
                 version=version)
    dual = node.json("get", "service", "web", "-n", ns)["spec"]
    assert dual["ipFamilies"] == ["IPv4", "IPv6"] and dual["clusterIPs"][0] == svc["spec"]["clusterIP"], dual
    v6 = dual["clusterIPs"][1]
    assert ipaddress.ip_address(v6) in ipaddress.ip_network("fd43::/112")
    # One EndpointSlice per family, each with both pods' addresses of that family.
    wait_until(lambda: [len(v) for v in slice_addresses(node, ns, "web").values()] == [2, 2], timeout=60,
               what="both pods ready in both slices")
    by_type = slice_addresses(node, ns, "web")
    assert sorted(by_type) == ["IPv4", "IPv6"], by_type
    assert families(by_type["IPv6"]) == [6, 6]
    # The IPv6 ClusterIP reaches both pods.
    assert_reaches(node, ns, "client", v6, 80, {"hello-from-web-1", "hello-from-web-2"})
    # The name resolves to both addresses (A and AAAA).
    assert resolved(node, ns, "web") == sorted(dual["clusterIPs"])
    # An IPv6-only Service: AAAA only, and reachable.
    node.kubectl("create", "-n", ns, "-f", "-", version=version, input=f"""
apiVersion: v1
kind: Service
metadata: {{name: six}}
spec:
  ipFamilies: [IPv6]
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
""")
    six = node.json("get", "service", "six", "-n", ns)["spec"]
    assert families(six["clusterIPs"]) == [6], six
    assert resolved(node, ns, "six") == six["clusterIPs"]
    wait_until(lambda: "hello-from-web-" in http_get(node, ns, "client", six["clusterIP"], 80), timeout=30,
               what="the IPv6-only Service")
    # kubectl shows the primary address, as for Kubernetes' dual-stack Services.
    row = node.kubectl("get", "service", "web", "-n", ns, version=version).stdout.splitlines()[1].split()
    assert row[2] == dual["clusterIPs"][0], row
    # Downgraded by asking for SingleStack: the IPv6 address goes, and with it the route.
    node.kubectl("patch", "service", "web", "-n", ns, "-p", '{"spec": {"ipFamilyPolicy": "SingleStack"}}',
                 version=version)
    single = node.json("get", "service", "web", "-n", ns)["spec"]
    assert single["clusterIPs"] == [dual["clusterIPs"][0]] and single["ipFamilies"] == ["IPv4"], single
    wait_until(lambda: "hello-from" not in http_get(node, ns, "client", v6, 80), timeout=30,
               what="the released IPv6 address to stop answering")


def test_headless_services_list_both_families(node, ns):
    web_pods(node, ns, ["db-1"], "1.33")
    node.kubectl("create", "-n", ns, "-f", "-", input="""
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{port: 8080}]
""")
    wait_running(node, ns, "db-1")
    pod = node.json("get", "pod", "db-1", "-n", ns)
    want = sorted(p["ip"] for p in pod["status"]["podIPs"])
    wait_until(lambda: resolved(node, ns, "db", check=False) == want,
               timeout=60, what="both of the pod's addresses under the headless name")


def test_a_family_the_cluster_lacks_is_refused(node, ns):
    r = node.kubectl("create", "-n", ns, "-f", "-", check=False, input="""
apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  clusterIPs: ["10.43.7.7", "10.43.7.8"]
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]
""")
    assert r.returncode != 0 and "spec.clusterIPs[1]" in r.stderr, r.stderr
    r = node.kubectl("create", "-n", ns, "-f", "-", check=False, input="""
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  clusterIP: "fd44::1"
  ports: [{port: 80}]
""")
    assert r.returncode != 0 and "fd43::/112" in r.stderr, r.stderr
