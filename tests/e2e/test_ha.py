"""A highly available control plane: three `berth server`s sharing a real three-member etcd
(Debian's etcd-server, on loopback ports), one agent that knows all three. Every server serves
the API; one at a time runs the scheduler and the controllers, elected through Leases. Killing
the server that leads together with etcd's leader (a machine failure) loses no acknowledged
write, keeps the register history linearizable, and the survivors take over; killing an etcd
follower changes nothing a client sees."""

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import http.client

import pytest

from conftest import BERTH, Cluster, RemoteAgent, free_port, wait_until
from images import Image
from linearize import check

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


class Etcd:
    """etcd members on loopback ports with their own data dirs."""

    def __init__(self, workdir, n=3):
        assert os.path.exists(ETCD), "etcd is needed (Debian etcd-server; scripts/test.sh installs it)"
        self.workdir = workdir
        self.ports = [(free_port(), free_port()) for _ in range(n)]
        self.procs = [None] * n
        self.initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(self.ports))
        for i in range(n):
            self.start(i, "new")

    def start(self, i, state):
        client, peer = self.ports[i]
        log = open(self.workdir / f"etcd{i}.log", "a")
        self.procs[i] = subprocess.Popen([
            ETCD, "--name", f"m{i}", "--data-dir", str(self.workdir / f"etcd{i}"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", self.initial, "--initial-cluster-state", state,
            "--heartbeat-interval", "100", "--election-timeout", "1000"],
            stdout=log, stderr=log, start_new_session=True)

    def endpoints(self, alive_only=True):
        return [f"127.0.0.1:{c}" for i, (c, _) in enumerate(self.ports)
                if not alive_only or (self.procs[i] and self.procs[i].poll() is None)]

    @property
    def url(self):
        return "etcd://" + ",".join(f"127.0.0.1:{c}" for c, _ in self.ports)

    def ctl(self, *args, timeout=5, command_timeout="1s"):
        return subprocess.run([ETCDCTL, "--endpoints", ",".join(self.endpoints()),
                               f"--command-timeout={command_timeout}", *args],
                              capture_output=True, text=True, timeout=timeout, env=dict(os.environ, ETCDCTL_API="3"))

    def leader(self):
        """The index of the member that leads."""
        out = json.loads(self.ctl("endpoint", "status", "-w", "json").stdout)
        for s in out:
            if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
                return self.endpoints().index(s["Endpoint"].removeprefix("http://"))
        raise AssertionError(f"no etcd leader: {out}")

    def member_at(self, alive_index):
        """The member index of the `alive_index`-th living member."""
        living = [i for i in range(len(self.procs)) if self.procs[i] and self.procs[i].poll() is None]
        return living[alive_index]

    def kill(self, i):
        self.procs[i].kill()
        self.procs[i].wait()

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()


class Api:
    """The Kubernetes API over HTTPS as the admin, trying the servers in turn from `first`
    when one cannot be reached."""

    def __init__(self, servers, first=0):
        self.ports = [s.port for s in servers]
        self.first = first
        data = servers[0].data
        self.token = (data / "credentials" / "admin.token").read_text().strip()
        self.ctx = ssl.create_default_context(cafile=str(data / "tls" / "ca.crt"))

    def request(self, method, path, body=None):
        """(status, json) from the first server that answers; raises ConnectionError when the
        outcome is unknown (the connection broke after the request went out)."""
        last = None
        n = len(self.ports)
        for k in range(n):
            port = self.ports[(self.first + k) % n]
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.ctx, timeout=5)
            try:
                conn.connect()
            except OSError as e:
                last = e
                continue
            try:
                headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
                conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
                r = conn.getresponse()
                return r.status, json.loads(r.read() or b"{}")
            except (OSError, http.client.HTTPException) as e:
                raise ConnectionError(f"outcome unknown: {e}") from e
            finally:
                conn.close()
        raise ConnectionRefusedError(f"no server could be reached: {last}")


def copy_identity(src, dst):
    """What servers of one cluster share: its CA and keys, the service account and encryption
    keys, the admin's credentials."""
    dst.mkdir(parents=True, exist_ok=True)
    os.chmod(dst, 0o700)
    for d in ("tls", "credentials"):
        shutil.copytree(src / d, dst / d)


@pytest.fixture(scope="module")
def ha():
    assert os.geteuid() == 0, "the agent runs real containers: run the tests as root (scripts/test.sh does)"
    with tempfile.TemporaryDirectory(prefix="berth-ha-") as d:
        d = __import__("pathlib").Path(d)
        etcd = Etcd(d)
        servers, agent = [], None
        try:
            for i in range(3):
                (d / f"s{i}").mkdir()
                s = Cluster(d / f"s{i}", role="server", extra=["--store", etcd.url])
                if i > 0:
                    copy_identity(servers[0].data, s.data)
                servers.append(s.start())
            token = servers[0].berth("token", "create", "--ttl", "10m").stdout.strip()
            token_file = d / "join.token"
            token_file.write_text(token + "\n")
            os.chmod(token_file, 0o600)
            (d / "agent").mkdir()
            agent = RemoteAgent(d / "agent", servers[0], "ha-node", servers=servers,
                                extra=["--token-file", str(token_file)])
            agent.data.mkdir()
            agent.import_image(Image(cmd=("sh",)), "busybox:test")
            agent.start()
            yield etcd, servers, agent
        finally:
            if agent is not None:
                alive = [s for s in servers if s.proc and s.proc.poll() is None]
                if alive:
                    agent.server = alive[0]
                    # The workloads go first, or their controllers would replace the pods
                    # that teardown deletes.
                    alive[0].kubectl("delete", "namespace", "ha", "--ignore-not-found", "--timeout=120s",
                                     check=False, timeout=150)
                agent.teardown()
            for s in servers:
                s.stop()
            etcd.stop()
        for s in servers:
            s.check_components_authorized()


def holder(server, lease):
    return server.json("get", "lease", lease, "-n", "kube-system")["spec"].get("holderIdentity", "")


def leading_server(servers):
    """The server holding the controllers' and the scheduler's Leases (one may hold both)."""
    h = holder(servers[0], "kube-controller-manager")
    return next(s for s in servers if h.endswith(f":{s.port}"))


def test_every_server_serves_the_api_and_reads_are_consistent(ha):
    _, servers, _ = ha
    servers[0].kubectl("create", "namespace", "ha")
    for i, s in enumerate(servers):
        s.kubectl("create", "configmap", f"from-{i}", "-n", "ha", f"--from-literal=v={i}")
        # Written through one server, read at once through every other.
        for other in servers:
            assert other.json("get", "configmap", f"from-{i}", "-n", "ha")["data"]["v"] == str(i)


def test_one_server_runs_the_scheduler_and_controllers_for_all(ha):
    _, servers, _ = ha
    holders = {holder(servers[0], lease) for lease in ("kube-controller-manager", "kube-scheduler")}
    assert all(any(h.endswith(f":{s.port}") for s in servers) for h in holders), holders
    web = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "ha"},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "3600"]}]}}}}
    servers[1].kubectl("apply", "-f", "-", input=json.dumps(web))
    servers[2].kubectl("rollout", "status", "deployment/web", "-n", "ha", "--timeout=90s", timeout=120)


def register_client(api, stop, history, lock, rng_seed):
    """Reads and compare-and-sets of the ConfigMap `ha/register` until `stop`, recorded."""
    import random
    rng = random.Random(rng_seed)
    path = "/api/v1/namespaces/ha/configmaps/register"
    n = 0
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            status, obj = api.request("GET", path)
        except (ConnectionError, OSError):
            time.sleep(0.05)
            continue
        t1 = time.monotonic()
        if status != 200:
            time.sleep(0.05)
            continue
        value = obj["data"]["v"]
        with lock:
            history.append({"kind": "read", "call": t0, "ret_at": t1, "ret": value, "arg": None})
        if rng.random() < 0.5:
            continue
        n += 1
        new = f"{rng_seed}-{n}"
        obj["data"]["v"] = new
        t2 = time.monotonic()
        try:
            status, _ = api.request("PUT", path, obj)
        except ConnectionRefusedError:
            continue
        except ConnectionError:
            with lock:
                history.append({"kind": "cas", "call": t2, "ret_at": None, "arg": (value, new), "ret": None})
            continue
        if status == 200:
            with lock:
                history.append({"kind": "cas", "call": t2, "ret_at": time.monotonic(), "arg": (value, new),
                                "ret": None})


def test_an_etcd_member_dying_changes_nothing_a_client_sees(ha):
    etcd, servers, _ = ha
    api = Api(servers)
    failures = []
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"steady-{n}"}}
            try:
                status, obj = api.request("POST", "/api/v1/namespaces/ha/configmaps", body)
                if status != 201:
                    failures.append((status, obj.get("message")))
            except OSError as e:
                failures.append(str(e))
            time.sleep(0.02)
    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1)
    follower = next(i for i in range(3) if i != etcd.member_at(etcd.leader()))
    etcd.kill(follower)
    time.sleep(3)
    stop.set()
    t.join()
    etcd.start(follower, "existing")
    assert not failures, failures[:5]


def test_the_leading_server_and_etcds_leader_dying_lose_nothing(ha):
    etcd, servers, agent = ha
    leader = leading_server(servers)
    survivors = [s for s in servers if s is not leader]
    api_all = [Api(servers, first=i) for i in range(3)]
    assert api_all[0].request("POST", "/api/v1/namespaces/ha/configmaps",
                              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "register"},
                               "data": {"v": "init"}})[0] == 201
    history, lock, stop = [], threading.Lock(), threading.Event()
    clients = [threading.Thread(target=register_client, args=(api_all[i % 3], stop, history, lock, i))
               for i in range(4)]
    acknowledged, first_after = [], []
    kill_at = []

    def creator():
        api = Api(survivors)
        n = 0
        while not stop.is_set():
            n += 1
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"made-{n}"}}
            sent = time.monotonic()
            try:
                status, _ = api.request("POST", "/api/v1/namespaces/ha/configmaps", body)
            except OSError:
                continue
            if status == 201:
                acknowledged.append(body["metadata"]["name"])
                # The first write sent after the failure that was accepted.
                if kill_at and sent > kill_at[0] and not first_after:
                    first_after.append(time.monotonic())
            time.sleep(0.01)
    threads = clients + [threading.Thread(target=creator)]
    for t in threads:
        t.start()
    renewals = []

    def node_heartbeats():
        while not stop.is_set():
            try:
                lease = survivors[0].json("get", "lease", "ha-node", "-n", "kube-node-lease")
                renewals.append((time.monotonic(), lease["spec"]["renewTime"]))
            except AssertionError:
                pass
            time.sleep(0.2)
    watcher = threading.Thread(target=node_heartbeats)
    watcher.start()
    try:
        time.sleep(2)
        # A machine fails: its berth server and its etcd member, which leads, die together.
        member = etcd.member_at(etcd.leader())
        etcd.kill(member)
        leader.kill9()
        # Times count from when both are dead.
        kill_at.append(time.monotonic())
        # etcd's own recovery: the first write straight to it that succeeds.
        while etcd.ctl("put", "berth-ha-probe", "x", command_timeout="200ms").returncode != 0:
            time.sleep(0.02)
        etcd_back = time.monotonic()
        # The controllers' and scheduler's Leases move to a survivor.
        wait_until(lambda: all(any(holder(survivors[0], lease).endswith(f":{s.port}") for s in survivors)
                               for lease in ("kube-controller-manager", "kube-scheduler")),
                   timeout=30, interval=0.1, what="the Leases taken over by a surviving server")
        leases_moved = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for t in threads + [watcher]:
            t.join()
    berth_back = first_after[0] if first_after else None
    print(f"etcd accepted writes again {etcd_back - kill_at[0]:.2f} s after its leader died; berth "
          f"{(berth_back - kill_at[0]) if berth_back else float('nan'):.2f} s "
          f"({(berth_back - etcd_back) if berth_back else float('nan'):+.2f} s after etcd); leases moved after "
          f"{leases_moved - kill_at[0]:.2f} s")
    assert berth_back is not None, "no write was accepted through the surviving servers"
    # Node heartbeats went on through a surviving server.
    seen = sorted({(t, r) for t, r in renewals if t > kill_at[0]}, key=lambda x: x[0])
    changes = [t for (t, r), (_, prev) in zip(seen[1:], seen) if r != prev]
    assert changes, "the node's heartbeat stopped"
    print(f"the agent renewed through a survivor {changes[0] - kill_at[0]:.2f} s after the kill "
          f"({changes[0] - etcd_back:+.2f} s after etcd's recovery)")
    # Nothing acknowledged was lost.
    names = {c["metadata"]["name"] for c in survivors[0].json("get", "configmaps", "-n", "ha")["items"]}
    lost = [n for n in acknowledged if n not in names]
    assert not lost, f"{len(lost)} acknowledged creates were lost: {lost[:5]}"
    # The register's history, as the clients saw it, is linearizable.
    ok, order = check(history, "init")
    assert ok, f"not linearizable; the longest order found stops after {len(order)} of {len(history)} operations"
    assert len([h for h in history if h["kind"] == "cas"]) > 10
    # The survivors' controllers and scheduler work: a scaled Deployment gets its pods.
    survivors[0].kubectl("scale", "deployment/web", "-n", "ha", "--replicas=3")
    survivors[1].kubectl("rollout", "status", "deployment/web", "-n", "ha", "--timeout=90s", timeout=120)


def test_an_unreachable_etcd_is_one_clear_line(tmp_path):
    r = subprocess.run([BERTH, "server", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d"),
                        "--store", f"etcd://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach etcd at http://127.0.0.1:" in lines[0], r.stderr
