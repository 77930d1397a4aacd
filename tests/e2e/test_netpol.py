"""NetworkPolicy as an API object: the Kubernetes documentation's policies apply with both
kubectl versions, are defaulted and shown as kubectl shows them, and bad ones are refused with
Kubernetes' messages. (Enforcement in the nodes' nftables is not built yet.)"""

import yaml

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


def test_network_policies_are_served_and_validated(cluster, ns, version):
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
