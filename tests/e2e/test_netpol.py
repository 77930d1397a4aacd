"""NetworkPolicy: the Kubernetes documentation's policies apply with both kubectl versions,
are defaulted and shown as kubectl shows them, and bad ones are refused with Kubernetes'
messages; and the node enforces them: the documentation's recipes hold between real pods, a
policy added while traffic flows cuts it and removing it restores it, and a new pod under a
deny policy is never reachable, not even by a prober aiming at its address before it exists.

Safety: the node runs in a network namespace of its own (conftest); every packet here goes
from pod to pod inside it."""

import ipaddress
import json
import time
from datetime import datetime

import pytest
import yaml

from conftest import own_namespace, running_node, wait_until
from test_dns import lookup_image

SERVER = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
          "exec httpd -f -p 8080 -h /www"]
SLEEP = ["sleep", "3600"]

RECIPES = [
    # Deny all ingress.
    {"metadata": {"name": "default-deny-ingress"},
     "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
    # The documentation's test-network-policy: ipBlock with except, namespaces, pods, ports.
    {"metadata": {"name": "test-network-policy"},
     "spec": {"podSelector": {"matchLabels": {"role": "db"}},
              "policyTypes": ["Ingress", "Egress"],
              "ingress": [{"from": [
                  {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                  {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                  {"podSelector": {"matchLabels": {"role": "frontend"}}}],
                  "ports": [{"protocol": "TCP", "port": 6379}]}],
              "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                          "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]}]}},
    # Deny all egress except DNS (no policyTypes: defaulted from the rules).
    {"metadata": {"name": "egress-dns-only"},
     "spec": {"podSelector": {"matchLabels": {"app": "locked"}},
              "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}},
]


def policy(body):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **body}


def test_network_policies_are_served_and_validated(node, ns, version):
    cluster = node
    for r in RECIPES:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(policy(r)),
                        version=version)
    got = cluster.json("get", "netpol", "egress-dns-only", "-n", ns, version=version)
    assert got["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert [p["protocol"] for p in got["spec"]["egress"][0]["ports"]] == ["UDP", "TCP"]
    table = cluster.kubectl("get", "networkpolicies", "-n", ns, version=version).stdout
    rows = [line.split() for line in table.strip().split("\n")]
    assert rows[0] == ["NAME", "POD-SELECTOR", "AGE"], table
    assert {r[0]: r[1] for r in rows[1:]} == {
        "default-deny-ingress": "<none>", "egress-dns-only": "app=locked",
        "test-network-policy": "role=db"}, table

    bad = policy({"metadata": {"name": "bad"},
                  "spec": {"podSelector": {}, "ingress": [{"from": [
                      {"ipBlock": {"cidr": "10.0.0.0/33"}},
                      {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}],
                      "ports": [{"port": 80, "endPort": 70}]}]}})
    r = cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(bad), check=False,
                        version=version)
    assert r.returncode != 0
    for want in [
        'spec.ingress[0].from[0].ipBlock.cidr: Invalid value: "10.0.0.0/33": must be a valid '
        'CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)',
        'spec.ingress[0].from[1].ipBlock.except[0]: Invalid value: "10.1.0.0/24": must be a '
        'strict subset of `cidr`',
        "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to "
        "`port`",
    ]:
        assert want in r.stderr, r.stderr


@pytest.fixture(scope="module")
def node():
    """`berth up` with `busybox:test` holding the `lookup` client (names resolved without NSS)."""
    with running_node(lookup_image(), prefix="berth-netpol-") as c:
        yield c


@pytest.fixture
def ns(node, request):
    with own_namespace(node, "np", request) as name:
        yield name


def run_pod(node, ns, name, labels, command):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
           "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox:test", "command": command}]}}
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))


def wait_ready(node, ns, *names):
    node.kubectl("wait", "--for=condition=Ready", *[f"pod/{n}" for n in names], "-n", ns,
                 "--timeout=90s", timeout=100)


def ip_of(node, ns, name):
    return node.json("get", "pod", name, "-n", ns)["status"]["podIP"]


def reaches(node, ns, pod, ip, port=8080):
    """Whether `pod` gets the web page at ip:port (busybox nc, one second to connect)."""
    r = node.kubectl("exec", "-n", ns, pod, "--", "sh", "-c",
                     f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {ip} {port}",
                     check=False, timeout=30)
    return "hello-from-" in r.stdout


def apply_policy(node, ns, name, spec, version="1.33"):
    node.kubectl("apply", "-n", ns, "-f", "-", version=version, input=yaml.safe_dump(
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": name}, "spec": spec}))


@pytest.fixture(scope="module")
def pods(node, request):
    """`web` (app=web, serving), `client` (role=client) and `other` (role=other) in one
    namespace, `friend` in a namespace labelled team=friends."""
    with own_namespace(node, "np", request) as ns, own_namespace(node, "fr", request) as friends:
        node.kubectl("label", "namespace", friends, "team=friends")
        run_pod(node, ns, "web", {"app": "web"}, SERVER)
        run_pod(node, ns, "client", {"role": "client"}, SLEEP)
        run_pod(node, ns, "other", {"role": "other"}, SLEEP)
        run_pod(node, friends, "friend", {"role": "friend"}, SLEEP)
        wait_ready(node, ns, "web", "client", "other")
        wait_ready(node, friends, "friend")
        yield {"ns": ns, "friends": friends, "web": ip_of(node, ns, "web"),
               "other": ip_of(node, ns, "other")}


def test_documentation_recipes_hold_between_pods(node, pods, version):
    ns, friends, web = pods["ns"], pods["friends"], pods["web"]
    try:
        assert reaches(node, ns, "client", web) and reaches(node, friends, "friend", web)
        # Deny all ingress.
        apply_policy(node, ns, "default-deny-ingress",
                     {"podSelector": {}, "policyTypes": ["Ingress"]}, version)
        assert not reaches(node, ns, "client", web)
        assert not reaches(node, friends, "friend", web)
        # Allow from pods with a label, on the served port.
        apply_policy(node, ns, "allow-client", {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                         "ports": [{"protocol": "TCP", "port": 8080}]}]}, version)
        assert reaches(node, ns, "client", web)
        assert not reaches(node, ns, "other", web)
        # Allow from a namespace.
        apply_policy(node, ns, "allow-friends", {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "friends"}}}]}]},
            version)
        assert reaches(node, friends, "friend", web)
        assert not reaches(node, ns, "other", web)
        # An ipBlock with an exception: the pods' range, less `other`'s address.
        node.kubectl("delete", "netpol", "allow-client", "allow-friends", "-n", ns)
        block = str(ipaddress.ip_network(f"{web}/16", strict=False))
        apply_policy(node, ns, "allow-block", {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": block,
                                               "except": [f"{pods['other']}/32"]}}]}]}, version)
        assert reaches(node, ns, "client", web)
        assert not reaches(node, ns, "other", web)
        node.kubectl("delete", "netpol", "--all", "-n", ns)
        assert reaches(node, ns, "other", web)
        # Deny all egress except DNS: the client still resolves names, and reaches nothing.
        apply_policy(node, ns, "egress-dns-only", {
            "podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"protocol": "UDP", "port": 53},
                                  {"protocol": "TCP", "port": 53}]}]}, version)
        assert not reaches(node, ns, "client", web)
        r = node.kubectl("exec", "-n", ns, "client", "--", "lookup", "kubernetes.default",
                         check=False, timeout=30)
        assert r.stdout.splitlines()[:1] == ["10.43.0.1"], r.stdout + r.stderr
        assert reaches(node, ns, "other", web), "other pods are not limited"
        node.kubectl("delete", "netpol", "egress-dns-only", "-n", ns)
        assert reaches(node, ns, "client", web)
    finally:
        node.kubectl("delete", "netpol", "--all", "-n", ns, check=False)


def stamped(node, ns, pod):
    """The pod's `ok` and `fail` lines with the runtime's timestamps."""
    return [(w, t) for w, t in stamped_any(node, ns, pod) if t in ("ok", "fail")]


def test_a_policy_cuts_flowing_traffic_and_removing_it_restores_it(node, pods):
    ns, web = pods["ns"], pods["web"]
    loop = (f"while true; do if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {web} 8080 "
            "2>/dev/null | grep -q hello; then echo ok; else echo fail; fi; usleep 10000; done")
    run_pod(node, ns, "flow", {"role": "flow"}, ["sh", "-c", loop])
    try:
        wait_ready(node, ns, "flow")
        wait_until(lambda: sum(t == "ok" for _, t in stamped(node, ns, "flow")) >= 20,
                   what="traffic flowing")
        added = time.time()
        apply_policy(node, ns, "deny-web", {"podSelector": {"matchLabels": {"app": "web"}},
                                            "policyTypes": ["Ingress"]})
        wait_until(lambda: sum(t == "fail" for w, t in stamped(node, ns, "flow") if w > added) >= 3,
                   what="traffic cut")
        after = [(w, t) for w, t in stamped(node, ns, "flow") if w > added]
        first_fail = next(i for i, (_, t) in enumerate(after) if t == "fail")
        pattern = "".join("x" if t == "fail" else "." for _, t in after)
        assert all(t == "fail" for _, t in after[first_fail:]), \
            f"{pattern} ({[round(w - added, 3) for w, t in after if t == 'fail']})"
        last_ok = max([w for w, t in after if t == "ok"], default=added)
        removed = time.time()
        node.kubectl("delete", "netpol", "deny-web", "-n", ns)
        wait_until(lambda: any(t == "ok" for w, t in stamped(node, ns, "flow") if w > removed),
                   what="traffic restored")
        back = min(w for w, t in stamped(node, ns, "flow") if w > removed and t == "ok")
        print(f"last success {1e3 * (last_ok - added):.0f} ms after the policy was sent; "
              f"first success {1e3 * (back - removed):.0f} ms after its deletion was sent")
    finally:
        node.kubectl("delete", "netpol", "--all", "-n", ns, check=False)
        node.kubectl("delete", "pod", "flow", "-n", ns, "--wait=false", check=False)


def test_a_new_pod_under_a_deny_policy_is_never_reachable(node, pods):
    ns = pods["ns"]
    apply_policy(node, ns, "deny-fresh", {"podSelector": {"matchLabels": {"app": "fresh"}},
                                          "policyTypes": ["Ingress"]})
    try:
        # Addresses go round the node's range: after `marker`'s, the next pod takes the next.
        run_pod(node, ns, "marker", {"role": "marker"}, SLEEP)
        wait_ready(node, ns, "marker")
        marker = ipaddress.ip_address(ip_of(node, ns, "marker"))
        targets = [str(marker + i) for i in (2, 3, 4)]
        probe = ("while true; do for ip in " + " ".join(targets) + "; do "
                 "(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $ip 8080 | grep -q hello "
                 "&& echo reached $ip) & done; usleep 20000; done")
        # The prober takes the address after the marker's; the fresh pod the one after.
        run_pod(node, ns, "prober", {"role": "prober"}, ["sh", "-c", probe])
        wait_ready(node, ns, "prober")
        assert ip_of(node, ns, "prober") == str(marker + 1)
        run_pod(node, ns, "fresh", {"app": "fresh"}, SERVER)
        wait_ready(node, ns, "fresh")
        fresh = ip_of(node, ns, "fresh")
        assert fresh in targets, (fresh, targets)
        time.sleep(3)
        reached = node.kubectl("logs", "-n", ns, "prober").stdout
        assert f"reached {fresh}" not in reached, reached
        # The prober would have seen it: without the policy, it does.
        node.kubectl("delete", "netpol", "deny-fresh", "-n", ns)
        wait_until(lambda: f"reached {fresh}" in node.kubectl("logs", "-n", ns, "prober").stdout,
                   what="the prober reaching the pod once the policy is gone")
    finally:
        node.kubectl("delete", "netpol", "--all", "-n", ns, check=False)
        node.kubectl("delete", "pod", "marker", "prober", "fresh", "-n", ns, "--wait=false",
                     check=False)


def test_a_policy_cuts_an_established_connection_and_removing_it_lets_it_go_on(node, pods):
    """The node's rules pass established packets without looking; a policy that refuses a
    connection already open deletes its tracking, so its next packet is judged again."""
    ns = pods["ns"]
    run_pod(node, ns, "sink", {"app": "sink"}, ["sh", "-c", "while true; do nc -l -p 9000; done"])
    wait_ready(node, ns, "sink")
    sink = ip_of(node, ns, "sink")
    # One connection, a line every 50 ms (connecting again only if the sink is not up yet).
    run_pod(node, ns, "ticker", {"role": "ticker"},
            ["sh", "-c", "while true; do i=0; while true; do i=$((i+1)); echo tick-$i; "
                         f"usleep 50000; done | nc {sink} 9000; usleep 200000; done"])
    try:
        wait_ready(node, ns, "ticker")

        def ticks():
            return [t for _, t in stamped_any(node, ns, "sink") if t.startswith("tick-")]
        wait_until(lambda: len(ticks()) >= 10, what="ticks arriving")
        applied = time.time()
        apply_policy(node, ns, "deny-sink", {"podSelector": {"matchLabels": {"app": "sink"}},
                                             "policyTypes": ["Ingress"]})
        time.sleep(2)
        seen = len(ticks())
        time.sleep(1.5)
        assert len(ticks()) == seen, "ticks still arrive over the connection opened before"
        last = max(w for w, t in stamped_any(node, ns, "sink") if t.startswith("tick-"))
        print(f"the last tick arrived {1e3 * (last - applied):.0f} ms after the policy was sent")
        # The same connection goes on once the policy is gone (its packets are judged anew).
        node.kubectl("delete", "netpol", "deny-sink", "-n", ns)
        wait_until(lambda: len(ticks()) > seen, timeout=30, what="the connection to go on")
    finally:
        node.kubectl("delete", "netpol", "--all", "-n", ns, check=False)
        node.kubectl("delete", "pod", "sink", "ticker", "-n", ns, "--wait=false", check=False)


def stamped_any(node, ns, pod):
    """Every log line with its runtime timestamp."""
    out = node.kubectl("logs", "--timestamps", "-n", ns, pod).stdout
    lines = []
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00")[:26] + "+00:00")
        lines.append((when.timestamp(), text))
    return lines
