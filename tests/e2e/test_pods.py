"""Pods as real containers on `berth up`, driven by the real kubectl (1.27 and 1.33) and the
Python client: logs, exec, port-forward, restarts and back-off, OOM kills, probes, volumes,
clean deletion, agent restarts and image pulls. Needs root (scripts/test.sh runs it so)."""

import glob
import json
import os
import pty
import select
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import Cluster, free_port, kubectl_binary, own_namespace, wait_until
from images import Image, busybox_layer



@pytest.fixture
def pns(node, request):
    """A namespace of its own for one test, on the node cluster."""
    with own_namespace(node, "p", request, privileged=True) as name:
        yield name


def pod_yaml(name, command=None, image="busybox:test", restart="Always", extra=""):
    cmd = f"\n    command: {json.dumps(command)}" if command else ""
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: {restart}
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent{cmd}
{extra}"""


def get_pod(c, ns, name):
    return c.json("get", "pod", name, "-n", ns)


def status_of(c, ns, name, container="main"):
    p = get_pod(c, ns, name)
    for s in p["status"].get("containerStatuses", []):
        if s["name"] == container:
            return s
    return {}


def wait_running(c, ns, name, timeout=30):
    def running():
        p = get_pod(c, ns, name)
        cs = p["status"].get("containerStatuses", [])
        return p["status"].get("phase") == "Running" and cs and all("running" in s["state"] for s in cs)
    wait_until(running, timeout=timeout, what=f"pod {name} running")


def wait_phase(c, ns, name, phase, timeout=30):
    wait_until(lambda: get_pod(c, ns, name)["status"].get("phase") == phase, timeout=timeout,
               what=f"pod {name} {phase}")


def apply(c, ns, yaml, version="1.33"):
    c.kubectl("apply", "-n", ns, "-f", "-", input=yaml, version=version)


# ----- logs -------------------------------------------------------------------------------------

def test_logs(node, pns, version):
    apply(node, pns, pod_yaml("talk", ["sh", "-c", "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; sleep 1; echo four"],
                              restart="Never"), version=version)
    wait_phase(node, pns, "talk", "Succeeded")
    out = node.kubectl("logs", "-n", pns, "talk", version=version).stdout
    assert out.splitlines() == ["one", "two", "three", "four"]
    assert node.kubectl("logs", "-n", pns, "talk", "--tail=2", version=version).stdout == "three\nfour\n"
    assert node.kubectl("logs", "-n", pns, "talk", "--limit-bytes=5", version=version).stdout == "one\nt"
    stamped = node.kubectl("logs", "-n", pns, "talk", "--timestamps", "--tail=1", version=version).stdout
    stamp, text = stamped.rstrip("\n").split(" ", 1)
    assert text == "four" and stamp.endswith("Z") and len(stamp) == len("2024-01-01T00:00:00.000000000Z")
    assert node.kubectl("logs", "-n", pns, "talk", "--since=1h", version=version).stdout.count("\n") == 4
    # A wrong container name is a clear error.
    bad = node.kubectl("logs", "-n", pns, "talk", "-c", "nope", version=version, check=False)
    assert bad.returncode != 0 and "container nope is not valid for pod talk" in bad.stderr


def test_logs_follow_ends_with_the_container(node, pns):
    apply(node, pns, pod_yaml("slow", ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 1; done"], restart="Never"))
    wait_until(lambda: status_of(node, pns, "slow").get("state", {}).get("running"), what="slow running")
    t0 = time.time()
    out = node.kubectl("logs", "-f", "-n", pns, "slow", timeout=30).stdout
    assert out.splitlines() == ["line 1", "line 2", "line 3"]
    assert time.time() - t0 < 20


def test_logs_previous_and_all_containers(node, pns):
    extra = """  - name: side
    image: busybox:test
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo from-side; sleep 3600"]
"""
    apply(node, pns, pod_yaml("twice", ["sh", "-c", "echo run-$(cat /proc/uptime | cut -d' ' -f1); sleep 1; exit 1"],
                              extra=extra))
    wait_until(lambda: status_of(node, pns, "twice").get("restartCount", 0) >= 1, what="a restart")
    prev = node.kubectl("logs", "-n", pns, "twice", "-c", "main", "--previous").stdout
    assert prev.startswith("run-")
    both = node.kubectl("logs", "-n", pns, "twice", "--all-containers").stdout
    assert "from-side" in both and "run-" in both
    none = node.kubectl("logs", "-n", pns, "twice", "-c", "side", "--previous", check=False)
    assert none.returncode != 0 and "previous terminated container" in none.stderr


# ----- exec, port-forward ----------------------------------------------------------------------

def test_exec(node, pns, version):
    apply(node, pns, pod_yaml("shell", ["sleep", "3600"]))
    wait_running(node, pns, "shell")
    r = node.kubectl("exec", "-n", pns, "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                     version=version, check=False)
    assert r.returncode == 3
    assert r.stdout == "out\n"
    assert "err" in r.stderr and "command terminated with exit code 3" in r.stderr
    r = node.kubectl("exec", "-i", "-n", pns, "shell", "--", "sh", "-c", "tr a-z A-Z; exit 0",
                     input="hello stdin\n", version=version)
    assert r.stdout == "HELLO STDIN\n"
    # The command runs in the container, as its user, in its namespaces.
    r = node.kubectl("exec", "-n", pns, "shell", "--", "sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '",
                     version=version)
    assert r.stdout.splitlines() == ["shell", "sleep 3600 "]
    bad = node.kubectl("exec", "-n", pns, "shell", "--", "no-such-binary", version=version, check=False)
    assert bad.returncode != 0


def run_in_pty(argv, keys, wait=6.0, size=(33, 101), when=b"#"):
    """Run argv with a terminal of `size` rows x cols, type `keys` once `when` shows, return
    (output, exit code)."""
    import fcntl
    import struct
    import termios
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        os.execvp(argv[0], argv)
    out = b""
    end = time.time() + wait
    sent = False
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and when in out:
            os.write(fd, keys)
            sent = True
    # A client that does not end by itself fails the test rather than hanging it.
    status = None
    for _ in range(50):
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.1)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        out += b"\n[still running: killed]"
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_exec_with_a_terminal(node, pns, version):
    apply(node, pns, pod_yaml("term", ["sleep", "3600"]))
    wait_running(node, pns, "term")
    argv = [kubectl_binary(version), "--kubeconfig", node.kubeconfig, "exec", "-it", "-n", pns, "term", "--", "sh"]
    out, code = run_in_pty(argv, b"tty; stty size; exit 4\r")
    assert "/dev/pts/0" in out, out
    assert "33 101" in out, out
    assert code == 4


def test_attach_follows_output(node, pns, version):
    apply(node, pns, pod_yaml("ticker", ["sh", "-c", "i=0; while [ $i -lt 8 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done"],
                              restart="Never"))
    wait_running(node, pns, "ticker")
    r = node.kubectl("attach", "-n", pns, "ticker", version=version, timeout=30)
    ticks = [l for l in r.stdout.splitlines() if l.startswith("tick ")]
    # What it writes from the attach on, to its end; earlier lines are in the log only.
    assert ticks and ticks[-1] == "tick 7", r.stdout
    assert "tick 0" not in ticks or len(ticks) == 8


def test_run_interactive_feeds_stdin_and_removes_the_pod(node, pns, version):
    r = node.kubectl("run", "-i", "--rm", "--restart=Never", "-n", pns, "upper", "--image=busybox:test",
                     "--image-pull-policy=IfNotPresent", "--", "sh", "-c", "tr a-z A-Z; echo after-eof",
                     input="hello from stdin\n", version=version, timeout=60)
    assert "HELLO FROM STDIN\nafter-eof" in r.stdout, r.stdout + r.stderr
    # stdinOnce: the end of kubectl's input was the end of the container's stdin, it exited,
    # and --rm deleted the pod.
    wait_until(lambda: node.kubectl("get", "pod", "-n", pns, "upper", check=False).returncode != 0,
               timeout=30, what="pod removed")


def test_attach_with_a_terminal(node, pns, version):
    apply(node, pns, pod_yaml("tty", ["sh"], restart="Never", extra="    stdin: true\n    tty: true\n"))
    wait_running(node, pns, "tty")
    argv = [kubectl_binary(version), "--kubeconfig", node.kubeconfig, "attach", "-it", "-n", pns, "tty"]
    # The shell's prompt came before the attach: type once kubectl says it is attached. kubectl
    # sends the size one larger and then the real one (to make a running program redraw), on
    # its own stream beside stdin: the shell waits a moment so that both have arrived.
    out, _ = run_in_pty(argv, b"sleep 1; stty size; exit 5\r", size=(31, 97), when=b"pressing enter",
                        wait=15)
    assert "31 97" in out, out
    wait_phase(node, pns, "tty", "Failed")
    assert status_of(node, pns, "tty")["state"]["terminated"]["exitCode"] == 5
    # A terminal's output is the container's stdout, in its log too.
    assert "31 97" in node.kubectl("logs", "-n", pns, "tty").stdout


def test_port_forward(node, pns, version):
    apply(node, pns, pod_yaml("web", ["httpd", "-f", "-p", "8080", "-h", "/var/www"]))
    wait_running(node, pns, "web")
    port = free_port()
    proc = subprocess.Popen([kubectl_binary(version), "--kubeconfig", node.kubeconfig, "port-forward", "-n", pns,
                             "pod/web", f"{port}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def fetch():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
                    return r.read()
            except OSError:
                return None
        assert wait_until(fetch, timeout=20, what="a response through port-forward") == b"hello from berth\n"
        # Several connections share one session.
        for _ in range(3):
            assert fetch() == b"hello from berth\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def read_to_end(port, timeout=10):
    """Connect, say nothing, and read until the other side closes; None if it never does."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(timeout)
        out = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    return out
                out += b
        except socket.timeout:
            return None


def test_port_forward_passes_the_pods_close_on(node, pns, version):
    # A server that answers and closes, with no length to tell the client where the end is.
    apply(node, pns, pod_yaml("closer", ["nc", "-ll", "-p", "9090", "-e", "echo", "no-length"]))
    wait_running(node, pns, "closer")
    port = free_port()
    proc = subprocess.Popen([kubectl_binary(version), "--kubeconfig", node.kubeconfig, "port-forward", "-n", pns,
                             "pod/closer", f"{port}:9090"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: "Forwarding from" in (proc.stdout.readline() or ""), timeout=20, what="port-forward ready")
        for _ in range(2):
            assert read_to_end(port) == b"no-length\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ----- restarts, OOM, probes --------------------------------------------------------------------

def test_crash_loop_backoff_grows(node, pns):
    apply(node, pns, pod_yaml("crash", ["sh", "-c", "echo crashing; exit 1"]))
    starts = {}
    reasons = set()
    deadline = time.time() + 90
    while time.time() < deadline and len(starts) < 4:
        s = status_of(node, pns, "crash")
        n = s.get("restartCount", 0)
        starts.setdefault(n, time.time())
        reasons.add((s.get("state", {}).get("waiting") or {}).get("reason"))
        time.sleep(0.2)
    assert len(starts) >= 4, f"only {len(starts)} attempts seen: {starts}"
    assert "CrashLoopBackOff" in reasons
    gaps = [starts[i + 1] - starts[i] for i in range(3)]
    # Kubernetes' back-off: 10 s, then 20 s (the first restart is at once).
    assert gaps[1] >= 8, gaps
    assert gaps[2] >= gaps[1] * 1.5, gaps
    s = status_of(node, pns, "crash")
    assert s["lastState"]["terminated"]["exitCode"] == 1
    events = node.kubectl("get", "events", "-n", pns, "--field-selector", "involvedObject.name=crash").stdout
    assert "BackOff" in events


def zombies_of(pid):
    """Children of `pid` that ended and were never waited for."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and fields[1] == str(pid):
            out.append(int(entry))
    return out


def test_a_container_that_cannot_start_backs_off_and_leaves_no_zombies(node, pns):
    # A typo in the command: the container is created but cannot start.
    apply(node, pns, pod_yaml("typo", ["/nonexistent"]))
    wait_until(lambda: status_of(node, pns, "typo").get("restartCount", 0) >= 2, timeout=40,
               what="two retries")
    s = status_of(node, pns, "typo")
    last = s["lastState"]["terminated"]
    assert last["reason"] == "StartError" and last["exitCode"] == 128
    assert "nonexistent" in last["message"]
    # Waiting out the back-off, as a crashing container does.
    wait_until(lambda: (status_of(node, pns, "typo")["state"].get("waiting") or {}).get("reason")
               == "CrashLoopBackOff", what="CrashLoopBackOff")
    time.sleep(15)
    # With 10 s and then 20 s between retries, 30-odd seconds allow a handful, not hundreds.
    assert status_of(node, pns, "typo")["restartCount"] <= 5
    assert "CrashLoopBackOff" in node.kubectl("get", "pod", "typo", "-n", pns).stdout
    assert zombies_of(node.proc.pid) == []


def test_privileged_containers_get_the_hosts_capabilities_and_devices(node, pns):
    extra = """    securityContext: {privileged: true}
"""
    script = "grep CapEff /proc/self/status; ls /dev/loop-control; grep ' /sys ' /proc/mounts; " \
             "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted"
    apply(node, pns, pod_yaml("priv", ["sh", "-c", script], restart="Never", extra=extra))
    wait_phase(node, pns, "priv", "Succeeded")
    out = node.kubectl("logs", "-n", pns, "priv").stdout
    host = [l for l in open("/proc/self/status") if l.startswith("CapBnd:")][0].split()[1]
    assert f"CapEff:\t{host}" in out, out
    assert "/dev/loop-control" in out and "mounted" in out, out
    assert " rw," in [l for l in out.splitlines() if " /sys " in l][0], out


def test_host_path_volumes_create_or_check_as_kubernetes_does(node, pns):
    base = tempfile.mkdtemp(prefix="berth-hostpath-")
    created = os.path.join(base, "made/by/berth")
    manifest = f"""apiVersion: v1
kind: Pod
metadata: {{name: unset}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo hi > /logs/out.txt"]
    volumeMounts: [{{name: logs, mountPath: /logs}}]
  volumes:
  - {{name: logs, hostPath: {{path: {created}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: strict}}
spec:
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
    volumeMounts: [{{name: d, mountPath: /d}}]
  volumes:
  - {{name: d, hostPath: {{path: {base}/absent, type: Directory}}}}
"""
    apply(node, pns, manifest)
    wait_phase(node, pns, "unset", "Succeeded")
    assert open(os.path.join(created, "out.txt")).read() == "hi\n"

    def failed_mount():
        ev = node.kubectl("get", "events", "-n", pns, "--field-selector", "involvedObject.name=strict").stdout
        return "FailedMount" in ev and f"hostPath type check failed: {base}/absent is not a directory" in ev
    wait_until(failed_mount, timeout=30, what="a FailedMount event naming the path")
    assert not os.path.exists(f"{base}/absent")


def test_a_second_delete_with_a_shorter_grace_period_kills_sooner(node, pns):
    # The container ignores SIGTERM, so only the kill at the end of the grace period stops it.
    yaml = pod_yaml("stubborn", ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]).replace(
        "terminationGracePeriodSeconds: 1", "terminationGracePeriodSeconds: 60")
    apply(node, pns, yaml)
    wait_running(node, pns, "stubborn")
    node.kubectl("delete", "pod", "stubborn", "-n", pns, "--wait=false")
    time.sleep(2)
    assert get_pod(node, pns, "stubborn")["metadata"]["deletionGracePeriodSeconds"] == 60
    t0 = time.time()
    node.kubectl("delete", "pod", "stubborn", "-n", pns, "--grace-period=1", "--wait=false")
    wait_until(lambda: node.kubectl("get", "pod", "stubborn", "-n", pns, check=False).returncode != 0,
               timeout=30, what="the pod gone after the shorter grace period")
    assert time.time() - t0 < 20


def test_oom_kill_is_reported(node, pns):
    extra = """    resources:
      limits: {memory: 32Mi}
"""
    apply(node, pns, pod_yaml("hog", ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived"],
                              restart="Never", extra=extra))
    wait_phase(node, pns, "hog", "Failed", timeout=60)
    t = status_of(node, pns, "hog")["state"]["terminated"]
    assert t["reason"] == "OOMKilled" and t["exitCode"] == 137
    assert "OOMKilled" in node.kubectl("get", "pod", "hog", "-n", pns).stdout


def test_liveness_restarts_and_readiness_flips(node, pns):
    extra = """    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
    readinessProbe:
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 1
"""
    apply(node, pns, pod_yaml("probed", ["sh", "-c", "touch /tmp/healthy; httpd -p 8080 -h /var/www; exec sleep 3600"],
                              extra=extra))

    def ready():
        conds = {c["type"]: c["status"] for c in get_pod(node, pns, "probed")["status"].get("conditions", [])}
        return conds.get("Ready")
    wait_until(lambda: ready() == "True", what="Ready=True")
    node.kubectl("exec", "-n", pns, "probed", "--", "mv", "/var/www/index.html", "/var/www/gone")
    wait_until(lambda: ready() == "False", what="Ready=False after the readiness probe fails")
    assert status_of(node, pns, "probed")["ready"] is False
    node.kubectl("exec", "-n", pns, "probed", "--", "mv", "/var/www/gone", "/var/www/index.html")
    wait_until(lambda: ready() == "True", what="Ready=True again")
    first = status_of(node, pns, "probed")["containerID"]
    node.kubectl("exec", "-n", pns, "probed", "--", "rm", "/tmp/healthy")
    wait_until(lambda: status_of(node, pns, "probed").get("restartCount", 0) == 1, what="a restart by liveness")
    assert status_of(node, pns, "probed")["containerID"] != first
    events = node.kubectl("describe", "pod", "probed", "-n", pns).stdout
    assert "Liveness probe failed" in events and "Readiness probe failed" in events


# ----- volumes and configuration ---------------------------------------------------------------

def test_volumes_env_and_security(node, pns):
    manifest = """apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {app.conf: "answer=42\\n", mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Pod
metadata: {name: conf, labels: {app: conf}}
spec:
  restartPolicy: Never
  initContainers:
  - name: init
    image: busybox:test
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo init-was-here > /work/init.txt"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox:test
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c"]
    args:
    - |
      echo "init=$(cat /work/init.txt)"; echo "keys=$(ls /etc/cfg | tr '\\n' ' ')"; echo "conf=$(cat /etc/cfg/app.conf)"
      echo "item=$(cat /etc/one/renamed)"; echo "secret=$(cat /etc/sec/password)"; echo "env=$MODE $PASS $POD_NAME $NODE"
      echo "labels=$(cat /etc/info/labels)"; echo "user=$(id -u):$(id -g)"; echo "cwd=$(pwd)"
      touch /rootfs-write 2>/dev/null && echo rw=yes || echo rw=no
      echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"; echo "quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
      echo "sub=$(cat /sub/init.txt)"; echo "fast=$(stat -f -c %T /fast)"
    workingDir: /tmp
    env:
    - {name: MODE, valueFrom: {configMapKeyRef: {name: cfg, key: mode}}}
    - {name: PASS, valueFrom: {secretKeyRef: {name: sec, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    securityContext: {runAsUser: 1000, runAsGroup: 2000, readOnlyRootFilesystem: true}
    resources: {limits: {memory: 64Mi, cpu: 500m}}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: work, mountPath: /sub/init.txt, subPath: init.txt}
    - {name: cfg, mountPath: /etc/cfg}
    - {name: one, mountPath: /etc/one}
    - {name: sec, mountPath: /etc/sec}
    - {name: info, mountPath: /etc/info}
    - {name: fast, mountPath: /fast}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: fast, emptyDir: {medium: Memory}}
  - {name: cfg, configMap: {name: cfg}}
  - {name: one, configMap: {name: cfg, items: [{key: mode, path: renamed}]}}
  - {name: sec, secret: {secretName: sec}}
  - name: info
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
"""
    apply(node, pns, manifest)
    wait_phase(node, pns, "conf", "Succeeded")
    out = dict(l.split("=", 1) for l in node.kubectl("logs", "-n", pns, "conf", "-c", "main").stdout.splitlines())
    assert out["init"] == "init-was-here"
    assert out["keys"].split() == ["app.conf", "mode"]
    assert out["conf"] == "answer=42"
    assert out["item"] == "fast"
    assert out["secret"] == "hunter2"
    assert out["env"] == f"fast hunter2 conf {node.json('get', 'nodes')['items'][0]['metadata']['name']}"
    assert out["labels"] == 'app="conf"'
    assert out["user"] == "1000:2000"
    assert out["cwd"] == "/tmp"
    assert out["rw"] == "no"
    assert out["mem"] == str(64 * 1024 * 1024)
    assert out["quota"] == "50000"
    assert out["sub"] == "init-was-here"
    assert out["fast"] == "tmpfs"
    init = get_pod(node, pns, "conf")["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["reason"] == "Completed"


def test_missing_configmap_blocks_the_start(node, pns):
    extra = """    env:
    - {name: X, valueFrom: {configMapKeyRef: {name: absent, key: k}}}
"""
    apply(node, pns, pod_yaml("blocked", ["sleep", "3600"], extra=extra))
    wait_until(lambda: (status_of(node, pns, "blocked").get("state", {}).get("waiting") or {}).get("reason")
               == "CreateContainerConfigError", what="CreateContainerConfigError")
    node.kubectl("create", "configmap", "absent", "-n", pns, "--from-literal=k=v")
    wait_running(node, pns, "blocked", timeout=40)


# ----- scheduling -------------------------------------------------------------------------------

def test_unschedulable_pod_says_why_and_starts_once_a_node_fits(node, pns):
    apply(node, pns, pod_yaml("picky", ["sleep", "3600"], extra="  nodeSelector: {disk: ssd}\n"))

    def waiting_reason():
        for c in get_pod(node, pns, "picky")["status"].get("conditions", []):
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return c["message"]
        return None
    wait_until(lambda: waiting_reason() is not None, what="PodScheduled=False")
    assert waiting_reason() == "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    described = node.kubectl("describe", "pod", "-n", pns, "picky").stdout
    assert "FailedScheduling" in described and "didn't match Pod's node affinity/selector" in described
    name = node.kubectl("get", "nodes", "-o", "name").stdout.split()[0]
    node.kubectl("label", name, "disk=ssd")
    try:
        # A node change puts waiting pods back in line at once.
        wait_running(node, pns, "picky", timeout=30)
        assert get_pod(node, pns, "picky")["spec"]["nodeName"] == name.split("/")[1]
        events = node.kubectl("get", "events", "-n", pns, "--field-selector", "reason=Scheduled").stdout
        assert f"Successfully assigned {pns}/picky to {name.split('/')[1]}" in events
    finally:
        node.kubectl("label", name, "disk-")


# ----- deletion ---------------------------------------------------------------------------------

def traces_of(uid):
    """Everything on the host that still belongs to the pod with `uid`."""
    found = []
    for line in open("/proc/self/mountinfo"):
        if uid in line:
            found.append("mount " + line.split()[4])
    for pattern in ["/run/berth*/containers/*", "/run/berth*/ns/*", "/run/berth*/net/*", "/sys/fs/cgroup/*/berth/*"]:
        found += [p for p in glob.glob(pattern) if uid in p]
    return found


def test_delete_leaves_nothing_behind(node, pns, version):
    extra = """  - name: second
    image: busybox:test
    imagePullPolicy: IfNotPresent
    command: ["sleep", "7331"]
    volumeMounts: [{name: mem, mountPath: /mem}]
  volumes:
  - {name: mem, emptyDir: {medium: Memory}}
"""
    apply(node, pns, pod_yaml("doomed", ["sleep", "7330"], extra=extra), version=version)
    wait_running(node, pns, "doomed")
    uid = get_pod(node, pns, "doomed")["metadata"]["uid"]
    assert traces_of(uid), "a running pod has mounts, bundles and cgroups"
    assert subprocess.run(["pgrep", "-f", "sleep 7331"], capture_output=True).returncode == 0
    node.kubectl("delete", "pod", "doomed", "-n", pns, version=version)
    assert node.kubectl("get", "pod", "doomed", "-n", pns, check=False, version=version).returncode != 0
    wait_until(lambda: not traces_of(uid), timeout=10, what=f"no traces of {uid}: {traces_of(uid)}")
    for marker in ["sleep 7330", "sleep 7331"]:
        assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1, marker
    assert not [p for p in os.listdir(node.data / "pods") if p == uid]
    assert not [p for p in os.listdir(node.data / "logs") if uid in p]


# ----- agent restart ----------------------------------------------------------------------------

def test_agent_sigkill_keeps_pods_running():
    with tempfile.TemporaryDirectory(prefix="berth-restart-") as d:
        c = Cluster(d, role="up").start()
        try:
            c.import_image(Image(cmd=("sh",)), "busybox:test")
            apply(c, "default", pod_yaml("keeper", ["sh", "-c", "echo started; exec sleep 8642"]))
            wait_running(c, "default", "keeper")
            before = status_of(c, "default", "keeper")
            pid = subprocess.run(["pgrep", "-f", "sleep 8642"], capture_output=True, text=True).stdout.split()
            assert len(pid) == 1
            c.kill9()
            time.sleep(1)
            assert os.path.exists(f"/proc/{pid[0]}"), "the container outlives the agent"
            c.start()
            wait_until(lambda: c.node_ready(), what="node ready again")
            time.sleep(2)
            after = status_of(c, "default", "keeper")
            assert after["containerID"] == before["containerID"]
            assert after["restartCount"] == 0 and "running" in after["state"]
            assert subprocess.run(["pgrep", "-f", "sleep 8642"], capture_output=True, text=True).stdout.split() == pid
            assert c.kubectl("exec", "keeper", "--", "echo", "still here").stdout == "still here\n"
            assert c.kubectl("logs", "keeper").stdout == "started\n"
            c.kubectl("delete", "pod", "keeper")
            wait_until(lambda: subprocess.run(["pgrep", "-f", "sleep 8642"]).returncode == 1, what="container gone")
        finally:
            c.teardown()


def test_pods_deleted_while_the_agent_is_down_are_cleaned_up():
    with tempfile.TemporaryDirectory(prefix="berth-orphan-") as d:
        c = Cluster(d, role="up").start()
        try:
            c.import_image(Image(cmd=("sh",)), "busybox:test")
            apply(c, "default", pod_yaml("orphan", ["sleep", "9753"]))
            wait_running(c, "default", "orphan")
            uid = get_pod(c, "default", "orphan")["metadata"]["uid"]
            c.kill9()
            # While no agent runs, the pod is removed from the API (as a node failure would).
            c.role = "server"
            c.start()
            c.kubectl("delete", "pod", "orphan", "--grace-period=0", "--force")
            c.stop()
            c.role = "up"
            c.start()
            wait_until(lambda: subprocess.run(["pgrep", "-f", "sleep 9753"]).returncode == 1, timeout=20,
                       what="the orphaned container killed")
            wait_until(lambda: not traces_of(uid), timeout=10, what="no traces of the orphan")
        finally:
            c.teardown()


# ----- images -------------------------------------------------------------------------------------

def test_pull_from_a_registry(node, pns, registry):
    node.reach_host(registry.port)
    digest = Image(cmd=("sh", "-c", "echo pulled-image-ran")).push(registry.addr, "apps/hello", "v1")
    apply(node, pns, pod_yaml("pulled", image=f"{registry.addr}/apps/hello:v1", restart="Never")
          .replace("imagePullPolicy: IfNotPresent", "imagePullPolicy: Always"))
    wait_phase(node, pns, "pulled", "Succeeded", timeout=60)
    assert node.kubectl("logs", "-n", pns, "pulled").stdout == "pulled-image-ran\n"
    s = status_of(node, pns, "pulled")
    assert s["imageID"].endswith(digest)
    events = node.kubectl("get", "events", "-n", pns).stdout
    assert "Pulling" in events and "Successfully pulled image" in events


def test_missing_image_backs_off(node, pns, registry):
    node.reach_host(registry.port)
    apply(node, pns, pod_yaml("ghost", image=f"{registry.addr}/apps/ghost:none"))
    seen = set()

    def reason():
        r = (status_of(node, pns, "ghost").get("state", {}).get("waiting") or {}).get("reason")
        seen.add(r)
        return r == "ImagePullBackOff" and "ErrImagePull" in seen
    wait_until(reason, timeout=60, interval=0.2, what="ErrImagePull then ImagePullBackOff")
    msg = status_of(node, pns, "ghost")["state"]["waiting"].get("message", "")
    assert "ghost" in msg or "pull" in msg.lower()
    assert "ImagePullBackOff" in node.kubectl("get", "pod", "ghost", "-n", pns).stdout
    never = pod_yaml("never", image="busybox:never-imported").replace("IfNotPresent", "Never")
    apply(node, pns, never)
    wait_until(lambda: (status_of(node, pns, "never").get("state", {}).get("waiting") or {}).get("reason")
               == "ErrImageNeverPull", what="ErrImageNeverPull")


def test_corrupt_layer_is_rejected(node, pns, registry):
    node.reach_host(registry.port)
    img = Image(layers=[busybox_layer(extra={"marker": b"corrupt me"})], cmd=("true",))
    img.push(registry.addr, "apps/corrupt", "v1")
    blob = registry.blob_file("sha256:" + __import__("hashlib").sha256(img.blobs[0]).hexdigest())
    data = bytearray(open(blob, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(blob, "wb").write(bytes(data))
    apply(node, pns, pod_yaml("tampered", image=f"{registry.addr}/apps/corrupt:v1"))
    wait_until(lambda: (status_of(node, pns, "tampered").get("state", {}).get("waiting") or {}).get("reason")
               in ("ErrImagePull", "ImagePullBackOff"), timeout=60, what="the pull to fail")
    events = node.kubectl("get", "events", "-n", pns, "--field-selector", "involvedObject.name=tampered").stdout
    assert "digest" in events.lower()
    assert f"{registry.addr}/apps/corrupt:v1" not in node.berth("image", "ls").stdout


# ----- the Python client ------------------------------------------------------------------------

def test_kubectl_debug_adds_an_ephemeral_container(node, pns, version):
    apply(node, pns, pod_yaml("app", ["sh", "-c", "exec sleep 3600"]), version=version)
    wait_running(node, pns, "app")
    # Interactively, with the target's processes in view.
    r = node.kubectl("debug", "-n", pns, "app", "-i", "--image=busybox:test", "--target=main",
                     "-c", "dbg", "--", "sh", input="echo from-debug; ps; exit\n", version=version, timeout=90)
    assert "from-debug" in r.stdout, r.stdout + r.stderr
    assert "sleep 3600" in r.stdout, r.stdout
    pod = get_pod(node, pns, "app")
    assert pod["spec"]["ephemeralContainers"][0]["name"] == "dbg"

    def debug_state():
        statuses = get_pod(node, pns, "app")["status"].get("ephemeralContainerStatuses", [])
        return next((s["state"] for s in statuses if s["name"] == "dbg"), {})
    # An ephemeral container runs once: it is not restarted, and the pod stays Running.
    wait_until(lambda: "terminated" in debug_state(), what="the debug container ended")
    time.sleep(2)
    assert "terminated" in debug_state()
    assert get_pod(node, pns, "app")["status"]["phase"] == "Running"
    assert node.kubectl("logs", "-n", pns, "app", "-c", "dbg", version=version).stdout.startswith("from-debug")


def test_kubectl_debug_node_mounts_the_host(node, pns, version):
    # kubectl 1.33 sends this pod as protobuf; its /host hostPath must arrive whole.
    name = node.json("get", "nodes")["items"][0]["metadata"]["name"]
    out = node.kubectl("debug", "-n", pns, f"node/{name}", "--image=busybox:test", "--",
                       "cat", "/host/etc/hostname", version=version).stdout
    pod_name = out.split("Creating debugging pod ")[1].split()[0]
    pod = get_pod(node, pns, pod_name)
    host = [v for v in pod["spec"]["volumes"] if v.get("hostPath")]
    assert host and host[0]["hostPath"]["path"] == "/", pod["spec"]["volumes"]
    wait_phase(node, pns, pod_name, "Succeeded")
    assert node.kubectl("logs", "-n", pns, pod_name).stdout == open("/etc/hostname").read()


def test_a_job_from_a_cronjob_keeps_its_volumes(node, pns, version):
    cron = """apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: busybox:test
            imagePullPolicy: IfNotPresent
            command: ["cat", "/cfg/greeting"]
            volumeMounts: [{name: cfg, mountPath: /cfg}]
          volumes:
          - name: cfg
            configMap: {name: greeting}
"""
    node.kubectl("create", "configmap", "greeting", "-n", pns, "--from-literal=greeting=hello-from-cm")
    apply(node, pns, cron, version=version)
    node.kubectl("create", "job", "now", "-n", pns, "--from=cronjob/nightly", version=version)
    job = node.json("get", "job", "now", "-n", pns)
    assert job["spec"]["template"]["spec"]["volumes"] == [
        {"name": "cfg", "configMap": {"name": "greeting", "defaultMode": 420}}]
    wait_until(lambda: node.json("get", "job", "now", "-n", pns).get("status", {}).get("succeeded") == 1,
               timeout=60, what="the job done")
    pods = node.json("get", "pods", "-n", pns, "-l", "job-name=now")["items"]
    assert node.kubectl("logs", "-n", pns, pods[0]["metadata"]["name"]).stdout == "hello-from-cm"


def test_python_client_logs_and_exec(node, pns):
    from kubernetes import client, config
    from kubernetes.stream import stream
    apply(node, pns, pod_yaml("py", ["sh", "-c", "echo a; echo b; exec sleep 3600"]))
    wait_running(node, pns, "py")
    api = client.CoreV1Api(config.new_client_from_config(config_file=node.kubeconfig))
    wait_until(lambda: api.read_namespaced_pod_log("py", pns) == "a\nb\n", what="logs")
    assert api.read_namespaced_pod_log("py", pns, tail_lines=1) == "b\n"
    out = stream(api.connect_get_namespaced_pod_exec, "py", pns, command=["sh", "-c", "echo exec-ok"],
                 stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "exec-ok\n"
    ws = stream(api.connect_get_namespaced_pod_exec, "py", pns, command=["sh", "-c", "exit 7"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=10)
    assert ws.returncode == 7
    # Stdin written as text (the client sends str as WebSocket text messages) is read too.
    ws = stream(api.connect_get_namespaced_pod_exec, "py", pns, command=["cat"],
                stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    ws.write_stdin("typed as text\n")
    got = ""
    deadline = time.time() + 10
    while time.time() < deadline and "typed as text" not in got:
        ws.update(timeout=1)
        got += ws.read_stdout() if ws.peek_stdout() else ""
    ws.close()
    assert got == "typed as text\n"


def test_host_network(node, pns):
    extra = "  hostNetwork: true\n"
    # Pods' veths come and go with other tests' pods: count the node's other interfaces.
    yaml = pod_yaml("onhost", ["sh", "-c", "hostname; ls /sys/class/net | grep -vc '^veth'"], restart="Never")
    yaml = yaml.replace("  containers:", extra + "  containers:")
    apply(node, pns, yaml)
    wait_phase(node, pns, "onhost", "Succeeded")
    lines = node.kubectl("logs", "-n", pns, "onhost").stdout.splitlines()
    assert lines[0] == node.json("get", "nodes")["items"][0]["metadata"]["name"]
    # The node's interfaces: those of the namespace it runs in.
    node_links = node.in_netns("ip", "-o", "link", "show", capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in node_links.splitlines()]
    assert int(lines[1]) == len([n for n in names if not n.startswith("veth")])
    ip = get_pod(node, pns, "onhost")["status"]["podIP"]
    assert ip == get_pod(node, pns, "onhost")["status"]["hostIP"]


def test_image_verbs_say_when_the_node_uses_another_data_dir(node, tmp_path):
    from conftest import BERTH
    other = tmp_path / "elsewhere"
    r = subprocess.run([BERTH, "image", "--data-dir", str(other), "ls"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"runs on {node.data}" in r.stderr and "--data-dir" in r.stderr, r.stderr
    # On the node's own data dir there is nothing to say.
    same = subprocess.run([BERTH, "image", "--data-dir", str(node.data), "ls"], capture_output=True, text=True,
                          timeout=60)
    assert "note:" not in same.stderr
