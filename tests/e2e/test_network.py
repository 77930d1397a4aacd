"""The pod network, end to end: every pod gets an address from its node's range, pods talk by
address, a hostPort reaches its pod from outside the node, traffic leaving the cluster is
masqueraded, and deleting pods leaves no address, veth or rule behind, also across an agent
`kill -9`.

Safety: the node runs in a network namespace of its own (conftest), and the "outside world"
here is one more namespace the test makes, linked to the node's by a veth pair. No packet in
these tests is sent from, or can reach, the machine's own network namespace."""

import ipaddress
import json
import os
import subprocess
import tempfile
import time

import pytest

from conftest import Cluster, own_namespace, wait_until
from images import Image
from test_pods import apply, get_pod, pod_yaml, traces_of, wait_running

SERVER = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]


@pytest.fixture
def nns(node, request):
    with own_namespace(node, "n", request, privileged=True) as name:
        yield name


def http_get(node, ns, client, ip, port=8080):
    """GET / from inside the pod `client`, with busybox's nc (its wget needs NSS)."""
    r = node.kubectl("exec", "-n", ns, client, "--", "sh", "-c",
                     f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}", check=False)
    return r.stdout


def assert_reaches(node, ns, client, ip, port, pods):
    """Connections from `client` to ip:port reach every pod of `pods` (their `SERVER` pages),
    within twenty tries."""
    seen = set()
    for _ in range(20):
        out = http_get(node, ns, client, ip, port)
        assert "hello-from-" in out, out
        seen.add(out.strip().splitlines()[-1])
        if seen == pods:
            break
    assert seen == pods, seen


def links(node):
    out = node.in_netns("ip", "-o", "link", "show", capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def test_nodes_get_a_range_and_pods_an_address_in_it(node, nns, version):
    n = node.json("get", "nodes")["items"][0]
    assert n["spec"]["podCIDR"] == "10.42.0.0/24"
    assert n["spec"]["podCIDRs"] == ["10.42.0.0/24"]
    apply(node, nns, pod_yaml("web", SERVER), version=version)
    apply(node, nns, pod_yaml("client", ["sleep", "3600"]), version=version)
    wait_running(node, nns, "web")
    wait_running(node, nns, "client")
    web, client = get_pod(node, nns, "web"), get_pod(node, nns, "client")
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in (web, client)}
    for name, ip in ips.items():
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.42.0.0/24"), (name, ip)
        assert ip != "10.42.0.1", "the gateway was given to a pod"
    assert ips["web"] != ips["client"]
    assert web["status"]["podIPs"] == [{"ip": ips["web"]}]
    # `kubectl get -o wide` shows it.
    wide = node.kubectl("get", "pod", "web", "-n", nns, "-o", "wide", version=version).stdout
    assert ips["web"] in wide
    # The pod's own name resolves to its address, and eth0 carries it.
    hosts = node.kubectl("exec", "-n", nns, "web", "--", "cat", "/etc/hosts").stdout
    assert f"{ips['web']}\tweb" in hosts
    addr = node.kubectl("exec", "-n", nns, "web", "--", "ip", "addr", "show", "eth0").stdout
    assert f"inet {ips['web']}/24" in addr
    # Pod to pod, by address.
    assert "hello-from-web" in http_get(node, nns, "client", ips["web"])
    # The downward API sees the same address.
    apply(node, nns, pod_yaml("env", ["sh", "-c", "echo $MY_IP; sleep 3600"], extra="""    env:
    - name: MY_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
"""), version=version)
    wait_running(node, nns, "env")
    env_ip = get_pod(node, nns, "env")["status"]["podIP"]
    wait_until(lambda: node.kubectl("logs", "-n", nns, "env").stdout.strip() == env_ip, what="podIP in env")


def test_host_network_pods_keep_the_nodes_address(node, nns):
    apply(node, nns, pod_yaml("hostnet", ["sleep", "3600"], extra="  hostNetwork: true\n"))
    wait_running(node, nns, "hostnet")
    p = get_pod(node, nns, "hostnet")
    assert p["status"]["podIP"] == p["status"]["hostIP"]
    # It sees the node's interfaces (the pods' bridge among them), not an eth0 of its own.
    assert "berth0" in links(node)
    seen = node.kubectl("exec", "-n", nns, "hostnet", "--", "ip", "link", "show").stdout
    assert "berth0" in seen


@pytest.fixture
def outside(node):
    """A namespace beyond the node ("the internet"): 192.0.2.2, linked to the node's namespace
    (192.0.2.1) by a veth pair, with no route back to the pods."""
    name = f"berth-outside-{node.port}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "link", "add", "up0", "netns", node.netns, "type", "veth",
                        "peer", "name", "up1", "netns", name], check=True)
        node.in_netns("ip", "addr", "add", "192.0.2.1/24", "dev", "up0", check=True)
        node.in_netns("ip", "link", "set", "up0", "up", check=True)
        ns = ["nsenter", f"--net=/run/netns/{name}"]
        subprocess.run(ns + ["ip", "addr", "add", "192.0.2.2/24", "dev", "up1"], check=True)
        subprocess.run(ns + ["ip", "link", "set", "up1", "up"], check=True)
        subprocess.run(ns + ["ip", "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        node.in_netns("ip", "link", "del", "up0", capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


PEER_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.0.2.2", 9000))
s.listen()
print("listening", flush=True)
c, a = s.accept()
c.sendall(a[0].encode())
c.close()
"""

FETCH = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
out = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    out += d
print(out.decode())
"""


def test_egress_is_masqueraded_and_host_ports_reach_their_pod(node, nns, outside):
    # Out: the far side sees the node's address, not the pod's (it has no route to pods).
    server = subprocess.Popen(outside + ["python3", "-c", PEER_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        apply(node, nns, pod_yaml("egress", ["sleep", "3600"]))
        wait_running(node, nns, "egress")
        seen = node.kubectl("exec", "-n", nns, "egress", "--", "sh", "-c", "nc -w 3 192.0.2.2 9000").stdout
        assert seen == "192.0.2.1"
    finally:
        server.kill()
        server.wait()
    # In: a hostPort on the node's address leads to the pod.
    apply(node, nns, pod_yaml("hp", SERVER, extra="""    ports:
    - containerPort: 8080
      hostPort: 18080
"""))
    wait_running(node, nns, "hp")
    out = subprocess.run(outside + ["python3", "-c", FETCH, "192.0.2.1", "18080"],
                         capture_output=True, text=True, timeout=20)
    assert "hello-from-hp" in out.stdout, out.stderr
    node.kubectl("delete", "pod", "hp", "-n", nns)
    out = subprocess.run(outside + ["python3", "-c", FETCH, "192.0.2.1", "18080"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0, "the host port still leads somewhere after its pod went"


def node_leftovers(c):
    """Veths, address records and nsfs mounts of pods on the node."""
    veths = [l for l in links(c) if l.startswith("veth")]
    records = os.listdir(os.path.join(c.run_dir, "net")) if os.path.isdir(os.path.join(c.run_dir, "net")) else []
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if f"{c.run_dir}/ns/" in line]
    return veths, records, mounts


def proxy_tables(c):
    out = c.in_netns("nft", "list", "tables", capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[2] for line in out.splitlines() if "berth-proxy" in line)


def test_churn_with_an_agent_kill_leaves_no_address_veth_or_namespace():
    with tempfile.TemporaryDirectory(prefix="berth-net-churn-") as d:
        c = Cluster(d, role="up").start()
        try:
            c.import_image(Image(cmd=("sh",)), "busybox:test")
            deploy = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: churn
spec:
  replicas: 10
  selector: {matchLabels: {app: churn}}
  template:
    metadata: {labels: {app: churn}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: main
        image: busybox:test
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "trap 'sleep 1; exit 0' TERM; while true; do sleep 1; done"]
"""
            c.kubectl("apply", "-f", "-", input=deploy)

            def running():
                pods = c.json("get", "pods", "-l", "app=churn")["items"]
                return len(pods) == 10 and all(p["status"].get("podIP") for p in pods)
            wait_until(running, timeout=60, what="10 pods with addresses")
            ips = [p["status"]["podIP"] for p in c.json("get", "pods", "-l", "app=churn")["items"]]
            assert len(set(ips)) == 10
            wait_until(lambda: len(proxy_tables(c)) == 1, timeout=30, what="the Service proxy's table")
            before = proxy_tables(c)
            # Replace them all, and kill the agent while they are terminating.
            c.kubectl("delete", "pods", "-l", "app=churn", "--wait=false")
            time.sleep(0.5)
            c.kill9()
            c.start()
            wait_until(running, timeout=90, what="10 new pods with addresses")
            # The restarted proxy loaded a table of its own beside the one left running, then
            # dropped that one.
            wait_until(lambda: len(proxy_tables(c)) == 1 and proxy_tables(c) != before, timeout=30,
                       what=f"one new proxy table in place of {before}: {proxy_tables(c)}")
            c.kubectl("delete", "deployment", "churn")
            wait_until(lambda: not c.json("get", "pods")["items"], timeout=90, what="every pod gone")
            wait_until(lambda: node_leftovers(c) == ([], [], []), timeout=30,
                       what=f"no leftovers (veths, records, mounts): {node_leftovers(c)}")
        finally:
            c.teardown()


def slices_of(node, ns, svc):
    items = node.json("get", "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={svc}")["items"]
    return items


def ready_addresses(node, ns, svc):
    return sorted(a for s in slices_of(node, ns, svc) for e in s.get("endpoints") or []
                  if e["conditions"].get("ready") for a in e["addresses"])


def test_services_get_endpoint_slices_and_endpoints_of_their_ready_pods(node, nns, version):
    ready_file = "/tmp/ready"
    deploy = f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:test
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "touch {ready_file}; exec sleep 3600"]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe:
          exec: {{command: ["cat", "{ready_file}"]}}
          periodSeconds: 1
"""
    node.kubectl("apply", "-n", nns, "-f", "-", input=deploy, version=version)
    node.kubectl("expose", "deployment", "web", "--port=80", "--target-port=http", "-n", nns, version=version)
    wait_until(lambda: len(ready_addresses(node, nns, "web")) == 2, timeout=60, what="two ready endpoints")
    pods = node.json("get", "pods", "-n", nns, "-l", "app=web")["items"]
    assert ready_addresses(node, nns, "web") == sorted(p["status"]["podIP"] for p in pods)
    [s] = slices_of(node, nns, "web")
    assert s["addressType"] == "IPv4"
    assert s["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    assert s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert s["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert {e["targetRef"]["name"] for e in s["endpoints"]} == {p["metadata"]["name"] for p in pods}
    # kubectl's tables.
    table = node.kubectl("get", "endpointslices", "-n", nns, version=version).stdout.splitlines()
    assert table[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert table[1].split()[1:3] == ["IPv4", "8080"]
    eps = node.kubectl("get", "endpoints", "web", "-n", nns, version=version).stdout
    for p in pods:
        assert f"{p['status']['podIP']}:8080" in eps

    # A pod that fails its readiness probe leaves the ready set within its probe period, and
    # is listed as not ready.
    victim = pods[0]
    node.kubectl("exec", "-n", nns, victim["metadata"]["name"], "--", "rm", ready_file)
    started = time.time()
    wait_until(lambda: ready_addresses(node, nns, "web") == [pods[1]["status"]["podIP"]], timeout=20,
               what="the unready pod out of the ready endpoints")
    assert time.time() - started < 10
    e = node.json("get", "endpoints", "web", "-n", nns)
    assert [a["ip"] for a in e["subsets"][0]["notReadyAddresses"]] == [victim["status"]["podIP"]]
    # Scaling to zero empties the slices, but they stay.
    node.kubectl("scale", "deployment", "web", "--replicas=0", "-n", nns, version=version)
    wait_until(lambda: all(not s.get("endpoints") for s in slices_of(node, nns, "web")), timeout=30,
               what="no endpoints")
    # Deleting the Service takes its slices and Endpoints with it.
    node.kubectl("delete", "service", "web", "-n", nns, version=version)
    wait_until(lambda: not slices_of(node, nns, "web"), timeout=30, what="slices gone")
    wait_until(lambda: node.kubectl("get", "endpoints", "web", "-n", nns, check=False).returncode != 0,
               timeout=30, what="endpoints gone")


def test_endpoints_of_selectorless_services_are_mirrored(node, nns):
    manifest = """apiVersion: v1
kind: Service
metadata:
  name: external-db
spec:
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: external-db
subsets:
- addresses: [{ip: 192.0.2.10}, {ip: 192.0.2.11}]
  ports: [{port: 5432}]
"""
    node.kubectl("apply", "-n", nns, "-f", "-", input=manifest)
    wait_until(lambda: ready_addresses(node, nns, "external-db") == ["192.0.2.10", "192.0.2.11"], timeout=20,
               what="mirrored slice")
    [s] = slices_of(node, nns, "external-db")
    assert s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == \
        "endpointslicemirroring-controller.k8s.io"
    # The API server's own Service has one too.
    assert ready_addresses(node, "default", "kubernetes")


def test_cluster_ips_route_to_ready_pods_and_refuse_without_any(node, nns, version):
    for name in ("web-1", "web-2"):
        apply(node, nns, pod_yaml(name, SERVER, extra="""    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: web}\n", 1), version=version)
    apply(node, nns, pod_yaml("client", ["sleep", "3600"]), version=version)
    node.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", nns, version=version)
    node.kubectl("create", "service", "clusterip", "nobody", "--tcp=80:8080", "-n", nns, version=version)
    wait_running(node, nns, "client")
    wait_until(lambda: len(ready_addresses(node, nns, "web")) == 2, timeout=60, what="two endpoints")
    vip = node.json("get", "service", "web", "-n", nns)["spec"]["clusterIP"]
    assert_reaches(node, nns, "client", vip, 80, {"hello-from-web-1", "hello-from-web-2"})
    # A pod reaches itself through its own Service (hairpin).
    assert "hello-from-web-" in http_get(node, nns, "web-1", vip, 80)
    # No endpoints: refused at once.
    empty = node.json("get", "service", "nobody", "-n", nns)["spec"]["clusterIP"]
    started = time.time()
    r = node.kubectl("exec", "-n", nns, "client", "--", "sh", "-c", f"nc -w 5 {empty} 80 </dev/null; echo rc=$?",
                     check=False)
    assert "rc=1" in r.stdout, r.stdout + r.stderr
    assert time.time() - started < 4
    # A Service whose pods leave it refuses too, as soon as its slices say so.
    node.kubectl("label", "pod", "web-1", "app-", "-n", nns)
    node.kubectl("label", "pod", "web-2", "app-", "-n", nns)
    wait_until(lambda: ready_addresses(node, nns, "web") == [], timeout=20, what="no ready endpoints")
    out = node.kubectl("exec", "-n", nns, "client", "--", "sh", "-c", f"nc -w 5 {vip} 80 </dev/null; echo rc=$?",
                       check=False).stdout
    assert "rc=1" in out


def test_containers_get_service_environment_variables(node, nns):
    node.kubectl("create", "service", "clusterip", "db-main", "--tcp=5432:5432", "-n", nns)
    svc_ip = node.json("get", "service", "db-main", "-n", nns)["spec"]["clusterIP"]
    api_ip = node.json("get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    apply(node, nns, pod_yaml("linked", ["sleep", "3600"]))
    apply(node, nns, pod_yaml("unlinked", ["sleep", "3600"], extra="  enableServiceLinks: false\n"))
    wait_running(node, nns, "linked")
    wait_running(node, nns, "unlinked")
    env = dict(line.split("=", 1) for line in
               node.kubectl("exec", "-n", nns, "linked", "--", "env").stdout.splitlines() if "=" in line)
    assert env["DB_MAIN_SERVICE_HOST"] == svc_ip
    assert env["DB_MAIN_SERVICE_PORT"] == "5432"
    assert env["DB_MAIN_PORT"] == f"tcp://{svc_ip}:5432"
    assert env["DB_MAIN_PORT_5432_TCP_ADDR"] == svc_ip
    assert env["KUBERNETES_SERVICE_HOST"] == api_ip
    assert env["KUBERNETES_SERVICE_PORT"] == "443"
    env = node.kubectl("exec", "-n", nns, "unlinked", "--", "env").stdout
    assert "DB_MAIN_SERVICE_HOST" not in env
    assert f"KUBERNETES_SERVICE_HOST={api_ip}" in env


def test_node_ports_answer_on_the_node_address(node, nns, outside, version):
    apply(node, nns, pod_yaml("np", SERVER, extra="""    ports: [{containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: np}\n", 1), version=version)
    node.kubectl("expose", "pod", "np", "--type=NodePort", "--port=80", "--target-port=8080", "-n", nns,
                 version=version)
    port = node.json("get", "service", "np", "-n", nns)["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    wait_until(lambda: len(ready_addresses(node, nns, "np")) == 1, timeout=60, what="an endpoint")

    def fetch():
        return subprocess.run(outside + ["python3", "-c", FETCH, "192.0.2.1", str(port)],
                              capture_output=True, text=True, timeout=20)
    wait_until(lambda: "hello-from-np" in fetch().stdout, timeout=10, what="the node port answering")
    # Without endpoints it refuses at once.
    node.kubectl("label", "pod", "np", "app-", "-n", nns)
    wait_until(lambda: ready_addresses(node, nns, "np") == [], timeout=20, what="no endpoints")
    started = time.time()
    wait_until(lambda: "ConnectionRefused" in fetch().stderr, timeout=10, what="refused")
    assert time.time() - started < 5


def test_load_balancers_are_served_on_the_nodes(node, nns, outside, version):
    apply(node, nns, pod_yaml("lb", SERVER, extra="""    ports: [{containerPort: 8080}]
""").replace("metadata:\n", "metadata:\n  labels: {app: lb}\n", 1), version=version)
    node.kubectl("expose", "pod", "lb", "--name=front", "--type=LoadBalancer", "--port=8081",
                 "--target-port=8080", "-n", nns, version=version)
    node.kubectl("expose", "pod", "lb", "--name=second", "--type=LoadBalancer", "--port=8081",
                 "--target-port=8080", "-n", nns, version=version)
    node_ip = [a["address"] for a in node.json("get", "nodes")["items"][0]["status"]["addresses"]
               if a["type"] == "InternalIP"][0]
    wait_until(lambda: node.json("get", "service", "front", "-n", nns)["status"]["loadBalancer"]
               .get("ingress") == [{"ip": node_ip, "ipMode": "VIP"}], timeout=20, what="the ingress filled")
    table = node.kubectl("get", "service", "front", "second", "-n", nns, version=version).stdout.splitlines()
    assert table[1].split()[3] == node_ip, table
    # The second on the same port waits.
    assert table[2].split()[3] == "<pending>", table
    wait_until(lambda: len(ready_addresses(node, nns, "front")) == 1, timeout=60, what="an endpoint")

    def fetch():
        return subprocess.run(outside + ["python3", "-c", FETCH, "192.0.2.1", "8081"],
                              capture_output=True, text=True, timeout=20)
    wait_until(lambda: "hello-from-lb" in fetch().stdout, timeout=10, what="the load balancer answering")
    # When the first goes, the second gets the port.
    node.kubectl("delete", "service", "front", "-n", nns, version=version)
    wait_until(lambda: node.json("get", "service", "second", "-n", nns)["status"]["loadBalancer"].get("ingress"),
               timeout=20, what="the second given the port")
    wait_until(lambda: "hello-from-lb" in fetch().stdout, timeout=10, what="the second answering")


def test_expose_port_forward_and_proxy_reach_a_service(node, nns, version):
    import urllib.request
    from conftest import free_port, kubectl_binary
    apply(node, nns, pod_yaml("web", SERVER, extra="""    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: web}\n", 1), version=version)
    wait_running(node, nns, "web")
    # `kubectl expose` makes a Service from the pod's labels and ports.
    node.kubectl("expose", "pod", "web", "-n", nns, "--name", "web", "--port", "80", "--target-port", "http",
                 version=version)
    wait_until(lambda: ready_addresses(node, nns, "web"), timeout=30, what="web ready")

    def fetch(url):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None

    procs = []
    try:
        # port-forward to a Service goes to one of its pods.
        pf = free_port()
        procs.append(subprocess.Popen([kubectl_binary(version), "--kubeconfig", node.kubeconfig, "port-forward",
                                       "-n", nns, "svc/web", f"{pf}:80"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
        assert wait_until(lambda: fetch(f"http://127.0.0.1:{pf}/"), timeout=20,
                          what="port-forward svc/web") == "hello-from-web\n"
        # kubectl proxy, then the API server's Service, pod and node proxies.
        kp = free_port()
        procs.append(subprocess.Popen([kubectl_binary(version), "--kubeconfig", node.kubeconfig, "proxy",
                                       f"--port={kp}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        base = f"http://127.0.0.1:{kp}/api/v1/namespaces/{nns}"
        for path in ("services/web:80/proxy/", "services/web/proxy/index.html", "services/http:web:80/proxy/",
                     "pods/web:8080/proxy/", "pods/web:http/proxy/index.html"):
            assert wait_until(lambda: fetch(f"{base}/{path}"), timeout=20, what=path) == "hello-from-web\n", path
        node_name = node.json("get", "nodes")["items"][0]["metadata"]["name"]
        # The node's own endpoints (its usage summary, once it has measured some).
        summary = wait_until(lambda: fetch(f"http://127.0.0.1:{kp}/api/v1/nodes/{node_name}/proxy/stats/summary"),
                             timeout=40, what="the node's stats summary")
        assert '"pods"' in summary, summary
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    # Without a ready endpoint the proxy says so, in a Status.
    node.kubectl("create", "service", "clusterip", "nobody", "--tcp=80:8080", "-n", nns, version=version)
    r = node.kubectl("get", "--raw", f"/api/v1/namespaces/{nns}/services/nobody:80/proxy/", check=False)
    assert r.returncode != 0 and "no endpoints available for service" in r.stderr, r.stderr


def test_client_ip_affinity_sticks_to_one_pod(node, nns, version):
    for name in ("web-1", "web-2"):
        apply(node, nns, pod_yaml(name, SERVER, extra="""    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: web}\n", 1), version=version)
    apply(node, nns, pod_yaml("client", ["sleep", "3600"]), version=version)
    apply(node, nns, """apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{port: 80, targetPort: 8080}]
""", version=version)
    wait_running(node, nns, "client")
    wait_until(lambda: len(ready_addresses(node, nns, "sticky")) == 2, timeout=60, what="two endpoints")
    vip = node.json("get", "service", "sticky", "-n", nns)["spec"]["clusterIP"]
    seen = [http_get(node, nns, "client", vip, 80).strip().splitlines()[-1:] for _ in range(8)]
    assert len({tuple(s) for s in seen}) == 1 and "hello-from-web-" in seen[0][0], seen
    # Without affinity the same client is spread over both.
    node.kubectl("patch", "service", "sticky", "-n", nns, "-p", '{"spec": {"sessionAffinity": "None"}}',
                 version=version)
    spread = set()
    for _ in range(30):
        spread.add(http_get(node, nns, "client", vip, 80).strip().splitlines()[-1])
        if len(spread) == 2:
            break
    assert spread == {"hello-from-web-1", "hello-from-web-2"}, spread


def test_a_pod_failing_readiness_leaves_its_service_within_its_probe_period(node, nns):
    apply(node, nns, pod_yaml("web", ["sh", "-c", "touch /tmp/ready; " + SERVER[2]], extra="""    readinessProbe:
      exec: {command: [test, -f, /tmp/ready]}
      periodSeconds: 1
      failureThreshold: 1
""").replace("metadata:\n", "metadata:\n  labels: {app: web}\n", 1))
    node.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", nns)
    wait_until(lambda: ready_addresses(node, nns, "web"), timeout=30, what="web ready")
    node.kubectl("exec", "-n", nns, "web", "--", "rm", "/tmp/ready")
    started = time.time()
    wait_until(lambda: not ready_addresses(node, nns, "web"), timeout=10, what="web out of its Service")
    # One failed probe (period 1 s, threshold 1), then the status and the slice follow.
    assert time.time() - started < 3, time.time() - started
    node.kubectl("exec", "-n", nns, "web", "--", "touch", "/tmp/ready")
    wait_until(lambda: ready_addresses(node, nns, "web"), timeout=10, what="web back in its Service")


def test_python_client_reads_endpoint_slices_and_proxies_to_a_service(node, nns):
    from kubernetes import client, config
    api = config.new_client_from_config(config_file=node.kubeconfig)
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod(nns, {
        "metadata": {"name": "py", "labels": {"app": "py"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": "busybox:test", "imagePullPolicy": "IfNotPresent", "command": SERVER,
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}})
    v1.create_namespaced_service(nns, {"metadata": {"name": "py"}, "spec": {
        "selector": {"app": "py"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    disc = client.DiscoveryV1Api(api)

    def ready():
        slices = disc.list_namespaced_endpoint_slice(nns, label_selector="kubernetes.io/service-name=py").items
        return [(e.addresses, s.ports[0].port) for s in slices for e in (s.endpoints or []) if e.conditions.ready]
    got = wait_until(ready, timeout=60, what="a ready endpoint in the slice")
    pod_ip = v1.read_namespaced_pod("py", nns).status.pod_ip
    assert got == [([pod_ip], 8080)], got
    # The API server's Service proxy, as the client's connect_* calls use it.
    body = v1.connect_get_namespaced_service_proxy_with_path("py:http", nns, "index.html")
    assert body == "hello-from-py\n", body
