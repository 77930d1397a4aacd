"""Several nodes on one machine with `berth up --nodes 3`: the extra nodes are `berth agent`s
that join with bootstrap tokens from network namespaces of their own, the API server reaches
their pods' logs, exec, attach and port-forward over each agent's HTTPS endpoint, pods reach
pods of other nodes by address and through Services by name, a node whose agent dies is
noticed and its pods are replaced elsewhere, and stopping the cluster leaves nothing of the
extra nodes behind.

Safety: the whole cluster runs inside a network namespace the test makes (conftest); the nodes'
bridge, namespaces and pod networks are all inside it."""

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import Cluster, free_port, kubectl_binary, wait_until
from test_dns import lookup_image

NODES = 3
REPLICAS = 30
SERVER = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
          "echo serving on $(hostname) && exec httpd -f -p 8080 -h /www"]
TICKER = ["sh", "-c", "while true; do echo tick-$(hostname); sleep 0.2; done"]


def node_names(c):
    return [n["metadata"]["name"] for n in c.json("get", "nodes")["items"]]


def ready(node):
    return any(x["type"] == "Ready" and x["status"] == "True" for x in node["status"].get("conditions", []))


@pytest.fixture(scope="module")
def fleet():
    assert os.geteuid() == 0, "pods run real containers: run the tests as root (scripts/test.sh does)"
    with tempfile.TemporaryDirectory(prefix="berth-multi-") as d:
        c = Cluster(d, role="up", extra=["--nodes", str(NODES)])
        try:
            c.start()
            wait_until(lambda: sum(ready(n) for n in c.json("get", "nodes")["items"]) == NODES,
                       timeout=60, what=f"{NODES} nodes Ready")
            path = c.workdir / "busybox.tar"
            path.write_bytes(lookup_image().oci_layout("busybox:test"))
            out = c.berth("image", "import", str(path)).stdout
            # The image is loaded into every node, as `kind load` does.
            assert out.count("imported into node") == NODES - 1, out
            c.kubectl("create", "namespace", "multi")
            yield c
        finally:
            died = c.proc is not None and c.proc.poll() is not None
            if c.proc is not None and not died:
                # The workloads go first, or their controllers would replace the pods that
                # teardown deletes.
                c.kubectl("delete", "namespace", "multi", "--ignore-not-found", "--timeout=120s",
                          check=False, timeout=150)
            c.teardown()
            if died:
                print(f"berth exited during the tests; its log:\n{c.log.read_text()[-5000:]}")
        c.check_components_authorized()


def apply(c, obj):
    c.kubectl("apply", "-f", "-", input=json.dumps(obj))


def workload(kind, name, command, replicas=None):
    spec = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox:test", "command": command, "stdin": True}]}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "multi"}, "spec": spec}


def running_pods(c, app):
    """Running, not terminating pods of `app`, by node."""
    out = {}
    for p in c.json("get", "pods", "-n", "multi", "-l", f"app={app}")["items"]:
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
            out.setdefault(p["spec"]["nodeName"], []).append(p)
    return out


@pytest.fixture(scope="module")
def spread(fleet):
    """A Deployment of 30 web servers, a Service in front of them, and a ticker on each node."""
    apply(fleet, workload("Deployment", "web", SERVER, replicas=REPLICAS))
    apply(fleet, workload("DaemonSet", "ticker", TICKER))
    # A StatefulSet with one member per node.
    db = workload("StatefulSet", "db", ["sleep", "3600"], replicas=NODES)
    db["spec"]["serviceName"] = "db"
    db["spec"]["template"]["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    apply(fleet, db)
    fleet.kubectl("expose", "-n", "multi", "deployment", "web", "--port", "80", "--target-port", "8080")
    wait_until(lambda: sum(len(v) for v in running_pods(fleet, "web").values()) == REPLICAS,
               timeout=120, what=f"{REPLICAS} web pods Running")
    wait_until(lambda: len(running_pods(fleet, "ticker")) == NODES, timeout=60, what="a ticker on every node")
    wait_until(lambda: len(running_pods(fleet, "db")) == NODES, timeout=90, what="a db member on every node")
    return fleet


def test_a_deployment_spreads_over_every_node(spread):
    by_node = running_pods(spread, "web")
    counts = {n: len(p) for n, p in by_node.items()}
    print(f"web pods per node: {counts}")
    assert sorted(by_node) == sorted(node_names(spread))
    # The scheduler spreads identical pods over equal nodes.
    assert min(counts.values()) >= REPLICAS // NODES - 2, counts


def test_logs_exec_attach_and_port_forward_on_every_node(spread, version):
    c = spread
    webs = running_pods(c, "web")
    tickers = running_pods(c, "ticker")
    for node in node_names(c):
        web = webs[node][0]["metadata"]["name"]
        logs = c.kubectl("logs", "-n", "multi", web, version=version).stdout
        assert f"serving on {web}" in logs, (node, logs)
        out = c.kubectl("exec", "-n", "multi", web, "--", "cat", "/www/index.html", version=version).stdout
        assert out == f"hello-from-{web}\n", (node, out)
        # attach: the running container's output from now on.
        ticker = tickers[node][0]["metadata"]["name"]
        proc = subprocess.Popen([kubectl_binary(version), "--kubeconfig", c.kubeconfig, "attach", "-n", "multi",
                                 ticker], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = wait_until(lambda: (proc.stdout.readline() or "").strip() or None, timeout=20,
                              what=f"attach to {ticker} on {node}")
            assert line == f"tick-{ticker}", (node, line)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        port = free_port()
        proc = subprocess.Popen([kubectl_binary(version), "--kubeconfig", c.kubeconfig, "port-forward", "-n", "multi",
                                 f"pod/{web}", f"{port}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            def fetch():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
                        return r.read().decode()
                except OSError:
                    return None
            assert wait_until(fetch, timeout=20, what=f"port-forward to {web} on {node}") == f"hello-from-{web}\n"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_pods_reach_pods_of_other_nodes_by_address_and_by_service_name(spread):
    c = spread
    names = node_names(c)
    webs = running_pods(c, "web")
    tickers = running_pods(c, "ticker")
    # From the first node's ticker to a web pod of the last node, by address.
    client = tickers[names[0]][0]["metadata"]["name"]
    target = webs[names[-1]][0]
    ip = target["status"]["podIP"]
    out = c.kubectl("exec", "-n", "multi", client, "--", "sh", "-c",
                    f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080").stdout
    assert f"hello-from-{target['metadata']['name']}" in out, out
    # From every node, through the Service by its DNS name: answers come from pods of
    # several nodes.
    where = {p["metadata"]["name"]: n for n, ps in webs.items() for p in ps}
    for node in names:
        client = tickers[node][0]["metadata"]["name"]
        served = set()
        for _ in range(12):
            body = c.kubectl("exec", "-n", "multi", client, "--", "lookup", "web.multi.svc.cluster.local", "80",
                             "/").stdout
            pod = body.strip().splitlines()[-1].removeprefix("hello-from-")
            assert pod in where, body
            served.add(where[pod])
        assert len(served) >= 2, (node, served)


def test_a_node_whose_agent_dies_goes_not_ready_and_its_pods_move(spread):
    c = spread
    victim = node_names(c)[-1]
    pid = int(subprocess.run(["pgrep", "-f", f"agent .*--node-name {victim} "], capture_output=True,
                             text=True).stdout.split()[0])
    os.kill(pid, signal.SIGKILL)
    killed = time.time()

    def not_ready():
        n = c.json("get", "node", victim)
        return not ready(n) or None
    wait_until(not_ready, timeout=30, interval=0.2, what=f"node {victim} NotReady")
    noticed = time.time() - killed
    # Its pods are replaced on the other nodes once their toleration (30 s by default) is over.
    wait_until(lambda: sum(len(v) for n, v in running_pods(c, "web").items() if n != victim) == REPLICAS,
               timeout=120, interval=0.5, what="every web pod Running on the other nodes")
    moved = time.time() - killed
    print(f"node NotReady {noticed:.1f} s after its agent was killed; pods Running elsewhere after {moved:.1f} s")
    taints = {t["key"] for t in c.json("get", "node", victim)["spec"].get("taints", [])}
    assert "node.kubernetes.io/unreachable" in taints
    # The StatefulSet's member there is evicted but not replaced: its old copy might still run,
    # so the pod stays, Terminating, on the lost node, and no second one takes its name.
    mine = [p for p in c.json("get", "pods", "-n", "multi", "-l", "app=db")["items"]
            if p["spec"]["nodeName"] == victim]
    assert len(mine) == 1 and mine[0]["metadata"].get("deletionTimestamp"), mine
    names = [p["metadata"]["name"] for p in c.json("get", "pods", "-n", "multi", "-l", "app=db")["items"]]
    assert len(names) == len(set(names)) == NODES, names


def test_a_partitioned_node_is_handled_alike_and_stops_its_replaced_pods_when_it_returns(spread):
    c = spread
    names = node_names(c)
    cut = names[1]
    before = {p["metadata"]["name"] for p in running_pods(c, "web").get(cut, [])}
    assert before
    # The node's only link to the others goes down: its agent runs on but reaches nobody.
    index = names.index(cut) + 1
    c.in_netns("ip", "link", "set", f"berthn{index}", "down", check=True)
    started = time.time()
    wait_until(lambda: not ready(c.json("get", "node", cut)) or None, timeout=30, interval=0.2,
               what=f"node {cut} NotReady")
    noticed = time.time() - started
    survivors = [n for n in names if n == names[0]]
    wait_until(lambda: sum(len(v) for n, v in running_pods(c, "web").items() if n in survivors) == REPLICAS,
               timeout=120, interval=0.5, what="every web pod Running on the remaining node")
    c.in_netns("ip", "link", "set", f"berthn{index}", "up", check=True)
    back = time.time()
    wait_until(lambda: ready(c.json("get", "node", cut)) or None, timeout=30, interval=0.2, what=f"node {cut} Ready")

    def replaced_gone():
        names_now = {p["metadata"]["name"] for p in c.json("get", "pods", "-n", "multi", "-l", "app=web")["items"]}
        return not (before & names_now) or None
    # The pods that were replaced while it was away are stopped and their objects go.
    wait_until(replaced_gone, timeout=60, interval=0.5, what="the replaced pods gone from the returning node")
    print(f"partitioned node NotReady after {noticed:.1f} s; its replaced pods gone {time.time() - back:.1f} s "
          f"after it came back")


def test_stopping_the_cluster_leaves_nothing_of_the_extra_nodes(spread):
    c = spread
    extra = node_names(c)[1:]
    # The dead node's pods can never be confirmed stopped: an operator deletes the Node, and
    # its pods' objects go with it.
    c.kubectl("delete", "node", extra[-1])
    c.kubectl("delete", "namespace", "multi", "--timeout=120s", timeout=150)
    c.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--timeout=90s", check=False,
              timeout=120)
    c.stop()
    links = c.in_netns("ip", "-o", "link", "show", capture_output=True, text=True).stdout
    assert "berth-nodes" not in links and "berthn" not in links, links
    routes = c.in_netns("ip", "route", "show", capture_output=True, text=True).stdout
    assert "10.41.0." not in routes, routes
    rules = c.in_netns("nft", "list", "tables", capture_output=True, text=True).stdout
    assert "berth-nodes" not in rules, rules
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    assert not [m for m in mounts if m.startswith(str(c.data / "nodes"))], "a node's namespace is still mounted"
    # The extra nodes' runtime directories (on /run) are gone with their mounts; only the first
    # node's, whose containers outlive `berth up` by design, may stay.
    left = [m for m in mounts if m.startswith("/run/berth-") and not m.startswith(c.run_dir)]
    assert not left, left
    procs = subprocess.run(["pgrep", "-af", str(c.data)], capture_output=True, text=True).stdout
    assert not procs.strip(), procs
    for name in extra:
        assert name in os.listdir(c.data / "nodes")


def test_nodes_that_share_no_subnet_reach_each_others_pods_through_vxlan():
    """`--node-network vxlan` tunnels pod traffic between nodes (as between machines on
    different subnets): a pod reaches a pod of the other node through the VXLAN device."""
    with tempfile.TemporaryDirectory(prefix="berth-vxlan-") as d:
        c = Cluster(d, role="up", extra=["--nodes", "2", "--node-network", "vxlan"])
        try:
            c.start()
            wait_until(lambda: sum(ready(n) for n in c.json("get", "nodes")["items"]) == 2, timeout=60,
                       what="2 nodes Ready")
            path = c.workdir / "busybox.tar"
            path.write_bytes(lookup_image().oci_layout("busybox:test"))
            c.berth("image", "import", str(path))
            c.kubectl("create", "namespace", "multi")
            apply(c, workload("DaemonSet", "web", SERVER))
            wait_until(lambda: len(running_pods(c, "web")) == 2, timeout=90, what="a web pod on each node")
            pods = running_pods(c, "web")
            first, second = (pods[n][0] for n in node_names(c))
            out = c.kubectl("exec", "-n", "multi", first["metadata"]["name"], "--", "sh", "-c",
                            f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {second['status']['podIP']} 8080").stdout
            assert f"hello-from-{second['metadata']['name']}" in out, out
            route = c.in_netns("ip", "route", "get", second["status"]["podIP"], capture_output=True, text=True).stdout
            assert "dev berth.vxlan" in route, route
            # Tunnelled pods get an MTU that leaves room for VXLAN's 50 bytes.
            mtu = c.kubectl("exec", "-n", "multi", first["metadata"]["name"], "--", "cat",
                            "/sys/class/net/eth0/mtu").stdout.strip()
            assert int(mtu) <= 1450, mtu
        finally:
            if c.proc is not None and c.proc.poll() is None:
                c.kubectl("delete", "namespace", "multi", "--ignore-not-found", "--timeout=120s", check=False,
                          timeout=150)
            c.teardown()
