"""A server bad clients cannot sink: each exhaustion attack the security issue measured is run
against bounds on connections, memory and time, and the server keeps answering kubectl
throughout. Everything here talks to the API on loopback only."""

import json
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import helpers
from conftest import Cluster, wait_until


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid):
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


def tls_connect(cluster, source="127.0.0.1"):
    server, ca, token = helpers.credentials(cluster.kubeconfig)
    host, port = server.removeprefix("https://").rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    ctx = ssl.create_default_context(cadata=ca)
    return ctx.wrap_socket(raw, server_hostname=host), host, token


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server with small limits, so that each bound is reached quickly."""
    c = Cluster(tmp_path_factory.mktemp("limits"), extra=[
        "--request-body-timeout", "3s",
        "--max-connections-per-client", "64",
        "--max-requests-inflight", "2",
    ]).start()
    try:
        yield c
    finally:
        c.stop()


def still_answers(cluster):
    r = cluster.kubectl("get", "ns", "default", "-o", "name", check=False)
    return r.returncode == 0 and r.stdout.strip() == "namespace/default"


def test_unfinished_anonymous_bodies_hold_no_memory(limited):
    pid = limited.proc.pid
    before = rss_mib(pid)
    held = []
    # 300 connections (from several addresses, past the per-client bound) that each announce
    # a 3 MB body and send part of it.
    for i in range(300):
        source = f"127.0.1.{i // 60 + 1}"
        s, host, _ = tls_connect(limited, source)
        s.sendall((f"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: {host}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n").encode())
        try:
            s.sendall(b"x" * 100_000)
        except OSError:
            pass
        held.append(s)
    assert still_answers(limited)
    grown = rss_mib(pid) - before
    for s in held:
        s.close()
    # Each was refused before its body was read; the bad case held every body (+1 GiB).
    assert grown < 150, f"RSS grew {grown:.0f} MiB"


def test_a_body_sent_a_byte_at_a_time_is_cut_off(limited):
    s, host, token = tls_connect(limited)
    s.sendall((f"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
               "Content-Length: 200\r\n\r\n").encode())
    started = time.monotonic()
    reply = b""
    s.settimeout(1)
    while time.monotonic() - started < 30:
        try:
            s.sendall(b" ")
        except OSError:
            break
        try:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
            if b"\r\n\r\n" in reply:
                break
        except socket.timeout:
            pass
    s.close()
    # The body timeout (3 s here) ends it, with a Status saying why.
    assert reply.startswith(b"HTTP/1.1 504"), reply[:200]
    assert b"did not arrive within 3s" in reply
    assert time.monotonic() - started < 20
    assert still_answers(limited)


def test_idle_connections_from_one_address_are_bounded(limited):
    pid = limited.proc.pid
    fds_before = open_fds(pid)
    socks = []
    for _ in range(400):
        try:
            socks.append(socket.create_connection(
                ("127.0.0.1", limited.port), timeout=5, source_address=("127.0.2.1", 0)))
        except OSError:
            break
    time.sleep(0.5)
    # The server keeps 64 of them (the per-client bound) and closes the rest at once.
    held = open_fds(pid) - fds_before
    assert held <= 64 + 10, f"{held} descriptors held"
    assert still_answers(limited)
    for s in socks:
        s.close()


def test_requests_past_the_in_flight_bound_get_429(limited):
    limited.berth("user", "add", "reader")
    limited.kubectl("create", "clusterrolebinding", "reader", "--clusterrole=view", "--user=reader")
    reader = str(limited.data / "users" / "reader.kubeconfig")
    wait_until(lambda: limited.kubectl("--kubeconfig", reader, "get", "ns", check=False).returncode == 0,
               what="the binding takes effect")
    # A list at a revision the server has not reached waits for it (3 s) before failing:
    # two of them fill both read-only places for that long.
    waiting = [subprocess.Popen(
        [*_kubectl(limited, reader), "get", "--raw",
         "/api/v1/namespaces?resourceVersion=999999999&resourceVersionMatch=NotOlderThan"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    time.sleep(1)
    # (kubectl would wait and retry after a 429, as client-go does: ask directly.)
    server, ctx = _user_tls(limited, reader)
    status, headers, body = _get(server, ctx, "/api/v1/namespaces")
    for p in waiting:
        p.wait(timeout=30)
    assert status == 429, body
    assert headers.get("retry-after") == "1"
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Too many requests, please try again later."
    # The admin (system:masters) is never turned away, as in Kubernetes, and once the places
    # are free the user is served again.
    assert still_answers(limited)
    status, _, body = _get(server, ctx, "/api/v1/namespaces")
    assert status == 200 and body["kind"] == "NamespaceList"


def _user_tls(cluster, kubeconfig):
    """The server's address and a TLS context presenting the user's client certificate."""
    import base64
    import tempfile
    import yaml
    server, ca, _ = helpers.credentials(cluster.kubeconfig)
    user = yaml.safe_load(open(kubeconfig))["users"][0]["user"]
    with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as f:
        f.write(base64.b64decode(user["client-certificate-data"]))
        f.write(base64.b64decode(user["client-key-data"]))
    ctx = ssl.create_default_context(cadata=ca)
    ctx.load_cert_chain(f.name)
    return server, ctx


def _get(server, ctx, path):
    req = urllib.request.Request(server + path)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def _kubectl(cluster, kubeconfig):
    from conftest import kubectl_binary
    return [kubectl_binary("1.33"), "--kubeconfig", kubeconfig]


def test_a_watcher_that_never_reads_is_let_go_with_410(limited):
    pid = limited.proc.pid
    limited.kubectl("create", "namespace", "flood")
    s, host, token = tls_connect(limited)
    s.sendall((f"GET /api/v1/namespaces/flood/configmaps?watch=1 HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode())
    time.sleep(0.5)
    from kubernetes import client, config
    api = client.CoreV1Api(config.new_client_from_config(config_file=limited.kubeconfig))
    api.create_namespaced_config_map("flood", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="big"), data={"d": "0"}))
    before = rss_mib(pid)
    # 100 versions of a 500 KB object: 50 MB of events for a client that reads none of them.
    for i in range(100):
        api.replace_namespaced_config_map("big", "flood", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="big"), data={"d": str(i % 10) * 500_000}))
    grown = rss_mib(pid) - before
    assert still_answers(limited)
    # What is held is bounded (the history's 50 MB, the watcher's 16 + 4 MiB at most).
    assert grown < 150, f"RSS grew {grown:.0f} MiB"
    # When the client reads at last, its stream ends with a 410 telling it to list again.
    s.settimeout(30)
    data = b""
    while True:
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        if b'"code":410' in data[-4096:]:
            break
    s.close()
    assert b'"type":"ERROR"' in data and b'"code":410' in data, data[-500:]
