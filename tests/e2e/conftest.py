"""Fixtures for end-to-end tests: the real berth binary, the real kubectl (several versions)
and the Python kubernetes client, against a cluster started on a free port."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BERTH = os.environ.get("BERTH_BIN") or shutil.which("berth")
# The versions the suite drives; the oldest and newest we support at least.
KUBECTL_VERSIONS = ["1.27", "1.33"]


def kubectl_binary(version):
    """The kubectl of a minor version: `kubectl.1.27` next to the kubectl on PATH."""
    default = shutil.which("kubectl")
    if default is None:
        raise RuntimeError("kubectl is not on PATH")
    real = Path(os.path.realpath(default))
    candidate = real.parent / f"kubectl.{version}"
    if candidate.exists():
        return str(candidate)
    out = subprocess.run([default, "version", "--client", "-o", "json"], capture_output=True, text=True)
    minor = json.loads(out.stdout)["clientVersion"]["minor"].rstrip("+")
    if f"1.{minor}" == version:
        return default
    raise RuntimeError(f"kubectl {version} not found (looked for {candidate})")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One `berth server` (or `berth up`, with a node) process with its own data dir."""

    def __init__(self, workdir, role="server", extra=()):
        self.role = role
        self.extra = list(extra)
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.port = free_port()
        self.proc = None
        self.log = self.workdir / "berth.log"
        self.cache = self.workdir / "kubectl-cache"
        # The node's runtime state: short (socket paths), on the host's tmpfs, removed by
        # `teardown`.
        self.run_dir = f"/run/berth-e2e-{self.port}"
        # A node runs in a network namespace of its own with only loopback in it, so that
        # nothing its pods send can leave the machine; `relay.py` carries the API (and any
        # host port the tests expose) between the two loopbacks.
        self.netns = f"berth-e2e-{self.port}" if role in ("up", "agent") else None
        self.relay = None
        self.reached = set()

    @property
    def kubeconfig(self):
        return str(self.data / "kubeconfig")

    def start(self):
        if not BERTH:
            raise RuntimeError("set BERTH_BIN to the berth binary")
        log = open(self.log, "a")
        args = [BERTH, self.role, "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data)]
        if self.role in ("up", "agent"):
            args += ["--run-dir", self.run_dir]
        args += self.extra
        if self.netns:
            self.enter_netns()
            args = ["nsenter", f"--net={self.netns_path}", *args]
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"berth exited early:\n{self.log.read_text()}")
            if Path(self.kubeconfig).exists():
                r = self.kubectl("get", "ns", "default", check=False)
                if r.returncode == 0 and (self.role != "up" or self.node_ready()):
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"berth did not become ready:\n{self.log.read_text()}")

    @property
    def netns_path(self):
        return f"/run/netns/{self.netns}"

    def enter_netns(self):
        """Make the node's namespace (loopback only) and the relay for its API port."""
        if not os.path.exists(self.netns_path):
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        if self.relay is None:
            relay = Path(__file__).with_name("relay.py")
            self.relay = subprocess.Popen([sys.executable, str(relay), self.netns_path], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, start_new_session=True)
            self.relay_api()

    def relay_api(self):
        """kubectl on the machine reaches the API server in the namespace."""
        self.relay_command("in", self.port)

    def relay_command(self, direction, port):
        self.relay.stdin.write(f"{direction} {port}\n")
        self.relay.stdin.flush()
        answer = self.relay.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"relay {direction} {port}: {answer or 'relay exited'}")

    def reach_host(self, port):
        """Let the node reach a service on the machine's loopback (a test registry) at the
        same 127.0.0.1 port."""
        if port not in self.reached:
            self.relay_command("out", port)
            self.reached.add(port)

    def give_address(self, ip):
        """Give the node an address besides loopback, on a veth pair inside its namespace as
        a real machine has one, and make it the node's: pods reach the API server there
        through the kubernetes Service."""
        self.extra += ["--node-ip", ip]
        self.enter_netns()
        self.in_netns("ip", "link", "add", "node0", "type", "veth", "peer", "name", "node1", check=True)
        self.in_netns("ip", "addr", "add", f"{ip}/24", "dev", "node0", check=True)
        self.in_netns("ip", "link", "set", "node0", "up", check=True)
        self.in_netns("ip", "link", "set", "node1", "up", check=True)

    def in_netns(self, *cmd, **kw):
        """Run a command inside the node's network namespace."""
        return subprocess.run(["nsenter", f"--net={self.netns_path}", *cmd], **kw)

    REFUSED = "a berth component was refused by the authorizer"

    def check_components_authorized(self):
        """berth's controllers, scheduler and node act as their own accounts under RBAC; any
        refusal in the log means a role lacks what the component needs."""
        if not self.log.exists():
            return
        refused = [line for line in self.log.read_text(errors="replace").splitlines() if self.REFUSED in line]
        assert not refused, "berth's own components were refused:\n" + "\n".join(refused[:20])

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def teardown(self):
        """Stop the cluster and leave nothing on the host: pods are deleted while the agent
        runs (containers outlive the agent by design), then its runtime state goes."""
        if self.role == "up" and self.proc and self.proc.poll() is None:
            self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1",
                         "--timeout=60s", check=False, timeout=90)
        self.stop()
        # What pods still held when the agent stopped (a pod whose object is gone may still be
        # releasing its volumes): its runtime state, and its volumes under the data dir.
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
        for m in sorted((m for m in mounts if m.startswith((self.run_dir + "/", f"{self.workdir}/"))),
                        reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.relay is not None:
            self.relay.kill()
            self.relay.wait()
            self.relay = None
            self.reached.clear()
        if self.netns and os.path.exists(self.netns_path):
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)

    def kill9(self):
        self.stop(signal.SIGKILL)

    def node_ready(self):
        r = self.kubectl("get", "nodes", "-o", "json", check=False)
        if r.returncode != 0:
            return False
        for n in json.loads(r.stdout)["items"]:
            for c in n["status"].get("conditions", []):
                if c["type"] == "Ready" and c["status"] == "True":
                    return True
        return False

    def berth(self, *args, check=True, timeout=120):
        """A `berth` client verb on this cluster's data dir, e.g. `image import`."""
        r = subprocess.run([BERTH, *args[:2], "--data-dir", str(self.data), *args[2:]],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def import_image(self, image, name):
        path = self.workdir / (name.replace("/", "_").replace(":", "_") + ".tar")
        path.write_bytes(image.oci_layout(name))
        self.berth("image", "import", str(path))

    def kubectl(self, *args, version="1.33", input=None, check=True, timeout=60, env=None):
        cmd = [kubectl_binary(version), "--kubeconfig", self.kubeconfig,
               "--cache-dir", str(self.cache / version), *args]
        full_env = dict(os.environ, **(env or {}))
        r = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=full_env)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def with_token(self, token, *args, version="1.33", check=False, input=None):
        """kubectl with nothing but `token` for credentials (the admin's kubeconfig also holds
        a client certificate, which would win)."""
        import hashlib
        import yaml
        cfg = yaml.safe_load(open(self.kubeconfig))["clusters"][0]["cluster"]
        path = self.workdir / f"token-{hashlib.sha256(token.encode()).hexdigest()[:16]}.kubeconfig"
        if not path.exists():
            path.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [{"name": "c", "cluster": {
                    "server": cfg["server"],
                    "certificate-authority-data": cfg["certificate-authority-data"]}}],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
        return self.kubectl("--kubeconfig", str(path), *args, version=version, check=check,
                            input=input)

    def json(self, *args, version="1.33"):
        return json.loads(self.kubectl(*args, "-o", "json", version=version).stdout)

    def diagnostics(self, namespace=None):
        """What a person would look at after a failure: is the process alive, the node's
        conditions and taints, the pods, recent events and the warnings in the log."""
        parts = []
        alive = self.proc is not None and self.proc.poll() is None
        parts.append(f"berth process: {'running' if alive else 'exited'}")
        if alive:
            for args in (["get", "nodes", "-o", "wide"],
                         ["get", "nodes", "-o", "jsonpath={.items[*].spec.taints}"],
                         ["get", "pods", "-o", "wide"] + (["-n", namespace] if namespace else ["-A"]),
                         ["get", "events", "--sort-by=.lastTimestamp"] + (["-n", namespace] if namespace else ["-A"])):
                r = self.kubectl(*args, check=False, timeout=20)
                parts.append(f"$ kubectl {' '.join(args)}\n{(r.stdout + r.stderr)[-3000:]}")
        log = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        notable = [line for line in log if " WARN " in line or " ERROR " in line or "panicked" in line]
        parts.append("berth log, warnings and errors (last 30):\n" + "\n".join(notable[-30:]))
        parts.append("berth log, last 15 lines:\n" + "\n".join(log[-15:]))
        return "\n\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the cluster's state to the first failing test of each cluster, so that a failure
    seen only in CI can be understood from its output."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    c = funcargs.get("node") or funcargs.get("cluster")
    if c is None or getattr(c, "diagnosed", False):
        return
    c.diagnosed = True
    try:
        text = c.diagnostics(funcargs.get("wns") or funcargs.get("ns"))
    except Exception as e:  # diagnostics must never hide the failure itself
        text = f"could not collect diagnostics: {e}"
    report.sections.append(("berth state at the first failure", text))


class RemoteAgent(Cluster):
    """`berth agent` joining `server` (a `berth server` on the machine's loopback) from a
    network namespace of its own, reaching the server through the relay; `kubectl` goes to the
    server."""

    def __init__(self, workdir, server, node, extra=(), servers=()):
        super().__init__(workdir, role="agent", extra=extra)
        self.server, self.node = server, node
        self.port = server.port
        # Every server the agent may use (it fails over between them); `server` alone by default.
        self.servers = list(servers) or [server]
        self.run_dir = f"/run/berth-e2e-{server.port}-{node}"
        self.netns = f"berth-e2e-{server.port}-{node}"

    @property
    def kubeconfig(self):
        return self.server.kubeconfig

    def relay_api(self):
        """The agent reaches the servers on the machine's loopback."""
        for srv in self.servers:
            self.relay_command("out", srv.port)

    def start(self, env=None):
        self.enter_netns()
        log = open(self.log, "a")
        args = ["nsenter", f"--net={self.netns_path}", BERTH, "agent",
                "--server", ",".join(f"https://127.0.0.1:{srv.port}" for srv in self.servers),
                "--ca-cert", str(self.server.data / "tls" / "ca.crt"),
                "--data-dir", str(self.data), "--run-dir", self.run_dir,
                "--node-name", self.node, *self.extra]
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True,
                                     env=dict(os.environ, **(env or {})))

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"berth agent exited early:\n{self.log.read_text()}")
            r = self.kubectl("get", "node", self.node, "-o", "json", check=False)
            return r.returncode == 0 and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in json.loads(r.stdout)["status"].get("conditions", []))
        try:
            wait_until(ready, timeout=60, what=f"node {self.node} Ready")
        except AssertionError as e:
            raise AssertionError(f"{e}; the agent's log:\n{self.log.read_text()[-5000:]}") from None
        return self

    def teardown(self):
        if self.proc and self.proc.poll() is None:
            # (kubectl refuses --all with a selector.)
            self.kubectl("delete", "pods", "--all-namespaces", "--grace-period=1",
                         f"--field-selector=spec.nodeName={self.node}",
                         "--timeout=60s", check=False, timeout=90)
        super().teardown()


@pytest.fixture(scope="module")
def cluster():
    with tempfile.TemporaryDirectory(prefix="berth-e2e-") as d:
        c = Cluster(d).start()
        try:
            yield c
        finally:
            died = c.proc is not None and c.proc.poll() is not None
            c.stop()
            if died:
                print(f"berth exited during the tests; its log:\n{c.log.read_text()[-5000:]}")
        c.check_components_authorized()


@pytest.fixture
def fresh_cluster():
    with tempfile.TemporaryDirectory(prefix="berth-e2e-") as d:
        c = Cluster(d)
        try:
            yield c
        finally:
            c.stop()
        c.check_components_authorized()


@contextlib.contextmanager
def running_node(image, prefix="berth-node-", prepare=None):
    """`berth up` with `image` imported as `busybox:test`; `prepare(cluster)` runs first (its
    namespace or flags), and everything goes at the end, also when the start fails."""
    assert os.geteuid() == 0, "pods run real containers: run the tests as root (scripts/test.sh does)"
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        c = Cluster(d, role="up")
        try:
            if prepare:
                prepare(c)
            c.start()
            c.import_image(image, "busybox:test")
            yield c
        finally:
            died = c.proc is not None and c.proc.poll() is not None
            c.teardown()
            if died:
                print(f"berth exited during the tests; its log:\n{c.log.read_text()[-5000:]}")
        c.check_components_authorized()


@pytest.fixture(scope="module")
def node():
    """`berth up`: a one-node cluster that runs pods, with the test busybox image imported as
    `busybox:test`."""
    from images import Image
    with running_node(Image(cmd=("sh",))) as c:
        yield c


@pytest.fixture(scope="module")
def registry():
    """Debian's docker-registry on loopback, empty at first."""
    from images import Registry
    with tempfile.TemporaryDirectory(prefix="berth-registry-") as d:
        r = Registry(d)
        try:
            yield r
        finally:
            r.stop()


@pytest.fixture(params=KUBECTL_VERSIONS)
def version(request):
    return request.param


@contextlib.contextmanager
def own_namespace(c, prefix, request, privileged=False):
    """A namespace of its own for one test on cluster `c`, deleted (without waiting) after.
    `privileged` lets its pods use the host (host namespaces, ports and paths, privileged
    containers), which the cluster's default Pod Security level (baseline) refuses."""
    name = namespace_for(prefix, request.node.name)
    c.kubectl("create", "namespace", name)
    if privileged:
        c.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=privileged")
    try:
        yield name
    finally:
        c.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def ns(cluster, request):
    """A namespace of its own for one test."""
    with own_namespace(cluster, "t", request) as name:
        yield name


def namespace_for(prefix, test_name):
    """A namespace name of its own for a test: readable, short enough, and distinct even
    where two long names (or parameters) share their first fifty characters."""
    import hashlib
    readable = test_name.lower().replace("[", "-").replace("]", "").replace("_", "-").replace(".", "-")
    tag = hashlib.sha1(test_name.encode()).hexdigest()[:6]
    return f"{prefix}-{readable[:44].rstrip('-')}-{tag}"


def wait_until(predicate, timeout=20, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
