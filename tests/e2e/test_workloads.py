"""Workloads on `berth up`, driven by the real kubectl: Deployments (create, scale, rollouts,
undo, pause/resume, restart, history), ReplicaSets, and deletion that cascades (or orphans)
through ownerReferences. Pods run as real containers. Needs root (scripts/test.sh runs it so)."""

import json
import time

import pytest

from conftest import wait_until
from images import Image


@pytest.fixture
def wns(node, request):
    """A namespace of its own for one test, on the node cluster."""
    base = request.node.originalname.lower().replace("_", "-").removeprefix("test-")[:40].rstrip("-")
    param = getattr(getattr(request.node, "callspec", None), "id", "")
    name = f"w-{base}-{param.replace('.', '-')}".rstrip("-")
    node.kubectl("create", "namespace", name)
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(c, ns, name):
    return c.json("get", "deployment", name, "-n", ns)


def replicasets(c, ns, selector):
    return c.json("get", "rs", "-n", ns, "-l", selector)["items"]


def pods(c, ns, selector):
    return c.json("get", "pods", "-n", ns, "-l", selector)["items"]


def live(items):
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def images_of(items):
    return sorted({p["spec"]["containers"][0]["image"] for p in items})


def rolled_out(c, ns, name, version="1.33", timeout=90):
    out = c.kubectl("rollout", "status", f"deployment/{name}", "-n", ns, f"--timeout={timeout}s",
                    version=version, timeout=timeout + 10)
    assert "successfully rolled out" in out.stdout, out.stdout + out.stderr
    return out.stdout


def test_create_deployment_reaches_its_replicas_and_tables_say_so(node, wns, version):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=5", "-n", wns,
                 "--", "sleep", "3600", version=version)
    rolled_out(node, wns, "web", version=version)
    d = deployment(node, wns, "web")
    st = d["status"]
    assert (st["replicas"], st["readyReplicas"], st["availableReplicas"], st["updatedReplicas"]) == (5, 5, 5, 5)
    assert st["observedGeneration"] == d["metadata"]["generation"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"
    ps = pods(node, wns, "app=web")
    assert len(ps) == 5 and all(p["status"]["phase"] == "Running" for p in ps)
    # Pods are named after their ReplicaSet, which is named after the deployment and hash.
    [rs] = replicasets(node, wns, "app=web")
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{h}"
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert all(p["metadata"]["name"].startswith(f"web-{h}-") for p in ps)
    assert all(p["metadata"]["ownerReferences"][0]["name"] == rs["metadata"]["name"] for p in ps)
    table = node.kubectl("get", "deployment", "web", "-n", wns, version=version).stdout.split("\n")
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:4] == ["web", "5/5", "5", "5"]
    rs_table = node.kubectl("get", "rs", "-n", wns, version=version).stdout.split("\n")
    assert rs_table[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert rs_table[1].split()[:4] == [f"web-{h}", "5", "5", "5"]
    described = node.kubectl("describe", "deployment", "web", "-n", wns, version=version).stdout
    assert f"NewReplicaSet:   web-{h} (5/5 replicas created)" in described, described
    assert f"Scaled up replica set web-{h} from 0 to 5" in described, described


def test_scale_up_and_down(node, wns):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600")
    rolled_out(node, wns, "web")
    node.kubectl("scale", "deployment", "web", "--replicas=4", "-n", wns)
    rolled_out(node, wns, "web")
    assert len(live(pods(node, wns, "app=web"))) == 4
    node.kubectl("scale", "deployment", "web", "--replicas=1", "-n", wns)
    wait_until(lambda: len(live(pods(node, wns, "app=web"))) == 1, timeout=30, what="scale down to 1")
    rolled_out(node, wns, "web")
    d = deployment(node, wns, "web")
    assert d["status"]["replicas"] == 1 and d["status"]["availableReplicas"] == 1
    # Scaling the ReplicaSet behind the deployment's back is undone by the deployment.
    [rs] = replicasets(node, wns, "app=web")
    node.kubectl("scale", "rs", rs["metadata"]["name"], "--replicas=3", "-n", wns)
    wait_until(lambda: node.json("get", "rs", rs["metadata"]["name"], "-n", wns)["spec"]["replicas"] == 1,
               timeout=30, what="the deployment to restore its size")


def test_set_image_rolls_out_and_undo_rolls_back(node, wns, version):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=3", "-n", wns,
                 "--", "sleep", "3600", version=version)
    rolled_out(node, wns, "web", version=version)
    node.import_image(Image(cmd=("sh",), env=["PATH=/bin:/usr/bin", "IMAGE=v2"]), "busybox:v2")
    node.kubectl("set", "image", "deployment/web", "busybox=busybox:v2", "-n", wns, version=version)
    # Annotated after the change, as Kubernetes' docs advise: the cause goes to the new set.
    node.kubectl("annotate", "deployment", "web", "-n", wns, "kubernetes.io/change-cause=to v2", version=version)
    rolled_out(node, wns, "web", version=version)
    assert images_of(live(pods(node, wns, "app=web"))) == ["busybox:v2"]
    sets = replicasets(node, wns, "app=web")
    assert sorted(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] for rs in sets) == ["1", "2"]
    by_rev = {rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs for rs in sets}
    assert by_rev["1"]["spec"]["replicas"] == 0 and by_rev["2"]["spec"]["replicas"] == 3
    history = node.kubectl("rollout", "history", "deployment/web", "-n", wns, version=version).stdout
    lines = [l.split(None, 1) for l in history.strip().split("\n")[2:]]
    assert lines == [["1", "<none>"], ["2", "to v2"]], history

    node.kubectl("rollout", "undo", "deployment/web", "-n", wns, version=version)
    rolled_out(node, wns, "web", version=version)
    wait_until(lambda: images_of(live(pods(node, wns, "app=web"))) == ["busybox:test"], timeout=30,
               what="pods of the first template only")
    assert len(live(pods(node, wns, "app=web"))) == 3
    # The old set came back (same name) as revision 3; no third set was made.
    sets = replicasets(node, wns, "app=web")
    assert len(sets) == 2
    assert by_rev["1"]["metadata"]["name"] in [
        rs["metadata"]["name"] for rs in sets
        if rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"]
    assert deployment(node, wns, "web")["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_rolling_update_keeps_availability(node, wns):
    """maxUnavailable 0: during the whole rollout at least `replicas` pods are ready."""
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=3", "-n", wns,
                 "--", "sleep", "3600")
    node.kubectl("patch", "deployment", "web", "-n", wns, "-p",
                 json.dumps({"spec": {"strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                                      "template": {"spec": {"terminationGracePeriodSeconds": 1}}}}))
    rolled_out(node, wns, "web")
    node.kubectl("set", "env", "deployment/web", "VERSION=2", "-n", wns)
    lowest = 99
    highest = 0
    deadline = time.time() + 90
    while time.time() < deadline:
        st = deployment(node, wns, "web")["status"]
        ready = [p for p in pods(node, wns, "app=web")
                 if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
                 and not p["metadata"].get("deletionTimestamp")]
        lowest = min(lowest, len(ready))
        highest = max(highest, len(live(pods(node, wns, "app=web"))))
        if st.get("updatedReplicas") == 3 and st.get("availableReplicas") == 3 and st.get("replicas") == 3:
            break
        time.sleep(0.05)
    rolled_out(node, wns, "web")
    assert lowest >= 3, f"availability fell to {lowest} ready pods"
    assert highest <= 4, f"maxSurge 1 exceeded: {highest} pods"
    envs = [p["spec"]["containers"][0].get("env") for p in live(pods(node, wns, "app=web"))]
    assert envs == [[{"name": "VERSION", "value": "2"}]] * 3


def test_recreate_stops_old_pods_before_new_ones(node, wns):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600")
    node.kubectl("patch", "deployment", "web", "-n", wns, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/strategy", "value": {"type": "Recreate"}},
        {"op": "add", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 1}]))
    rolled_out(node, wns, "web")
    old = {p["metadata"]["name"] for p in pods(node, wns, "app=web")}
    node.kubectl("set", "env", "deployment/web", "VERSION=2", "-n", wns)
    mixed = False
    deadline = time.time() + 60
    while time.time() < deadline:
        ps = pods(node, wns, "app=web")
        names = {p["metadata"]["name"] for p in ps}
        if names & old and names - old:
            mixed = True
        st = deployment(node, wns, "web")["status"]
        if not names & old and st.get("availableReplicas") == 2 and st.get("updatedReplicas") == 2:
            break
        time.sleep(0.05)
    rolled_out(node, wns, "web")
    assert not mixed, "old and new pods existed at the same time"


def test_pause_resume_and_restart(node, wns, version):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600", version=version)
    rolled_out(node, wns, "web", version=version)
    node.kubectl("rollout", "pause", "deployment/web", "-n", wns, version=version)
    node.kubectl("set", "env", "deployment/web", "VERSION=2", "-n", wns, version=version)
    time.sleep(2)
    assert len(replicasets(node, wns, "app=web")) == 1, "a paused deployment rolled out"
    conds = {c["type"]: c for c in deployment(node, wns, "web")["status"]["conditions"]}
    assert conds["Progressing"]["reason"] == "DeploymentPaused"
    node.kubectl("rollout", "resume", "deployment/web", "-n", wns, version=version)
    rolled_out(node, wns, "web", version=version)
    assert len(replicasets(node, wns, "app=web")) == 2
    before = {p["metadata"]["name"] for p in live(pods(node, wns, "app=web"))}
    node.kubectl("rollout", "restart", "deployment/web", "-n", wns, version=version)
    rolled_out(node, wns, "web", version=version)
    wait_until(lambda: len(live(pods(node, wns, "app=web"))) == 2, timeout=30, what="two pods")
    after = {p["metadata"]["name"] for p in live(pods(node, wns, "app=web"))}
    assert not before & after, "restart kept old pods"


def test_progress_deadline_exceeded_is_reported(node, wns):
    node.kubectl("create", "deployment", "stuck", "--image=busybox:nowhere", "--replicas=1", "-n", wns)
    node.kubectl("patch", "deployment", "stuck", "-n", wns, "-p", '{"spec":{"progressDeadlineSeconds":3}}')
    out = node.kubectl("rollout", "status", "deployment/stuck", "-n", wns, "--timeout=60s", check=False, timeout=70)
    assert out.returncode != 0
    assert 'deployment "stuck" exceeded its progress deadline' in out.stderr, out.stderr
    conds = {c["type"]: c for c in deployment(node, wns, "stuck")["status"]["conditions"]}
    assert conds["Progressing"]["status"] == "False"
    assert conds["Progressing"]["reason"] == "ProgressDeadlineExceeded"
    assert conds["Available"]["status"] == "False"


def test_delete_deployment_removes_its_replicasets_and_pods(node, wns, version):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600", version=version)
    node.kubectl("patch", "deployment", "web", "-n", wns, "-p",
                 '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":1}}}}', version=version)
    rolled_out(node, wns, "web", version=version)
    node.kubectl("delete", "deployment", "web", "-n", wns, version=version)
    wait_until(lambda: not replicasets(node, wns, "app=web") and not pods(node, wns, "app=web"),
               timeout=60, what="replica sets and pods to go")


def test_foreground_deletion_waits_for_dependents(node, wns):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600")
    node.kubectl("patch", "deployment", "web", "-n", wns, "-p",
                 '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":1}}}}')
    rolled_out(node, wns, "web")
    out = node.kubectl("delete", "deployment", "web", "-n", wns, "--cascade=foreground", timeout=90)
    assert 'deployment.apps "web" deleted' in out.stdout
    # kubectl waited for the deployment itself, which went only after its dependents.
    assert not replicasets(node, wns, "app=web")
    assert not pods(node, wns, "app=web")
    assert node.kubectl("get", "deployment", "web", "-n", wns, check=False).returncode != 0


def test_orphan_deletion_keeps_replicasets_and_a_new_deployment_adopts_them(node, wns):
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600")
    rolled_out(node, wns, "web")
    [rs] = replicasets(node, wns, "app=web")
    names = {p["metadata"]["name"] for p in pods(node, wns, "app=web")}
    node.kubectl("delete", "deployment", "web", "-n", wns, "--cascade=orphan")
    wait_until(lambda: node.kubectl("get", "deployment", "web", "-n", wns, check=False).returncode != 0,
               what="the deployment to go")
    time.sleep(1)
    [kept] = replicasets(node, wns, "app=web")
    assert kept["metadata"]["name"] == rs["metadata"]["name"]
    assert not kept["metadata"].get("ownerReferences")
    assert {p["metadata"]["name"] for p in pods(node, wns, "app=web")} == names
    # The same deployment again adopts the set and its pods: nothing new starts.
    node.kubectl("create", "deployment", "web", "--image=busybox:test", "--replicas=2", "-n", wns,
                 "--", "sleep", "3600")
    rolled_out(node, wns, "web")
    [adopted] = replicasets(node, wns, "app=web")
    assert adopted["metadata"]["name"] == rs["metadata"]["name"]
    assert adopted["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert {p["metadata"]["name"] for p in pods(node, wns, "app=web")} == names


def test_replicaset_replaces_a_deleted_pod_and_adopts_orphans(node, wns):
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "front"},
          "spec": {"replicas": 2, "selector": {"matchLabels": {"tier": "front"}},
                   "template": {"metadata": {"labels": {"tier": "front"}},
                                "spec": {"terminationGracePeriodSeconds": 1,
                                         "containers": [{"name": "c", "image": "busybox:test",
                                                         "command": ["sleep", "3600"]}]}}}}
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(rs))
    wait_until(lambda: node.json("get", "rs", "front", "-n", wns).get("status", {}).get("readyReplicas") == 2,
               timeout=30, what="2 ready replicas")
    victim = pods(node, wns, "tier=front")[0]["metadata"]["name"]
    node.kubectl("delete", "pod", victim, "-n", wns, "--wait=false")
    wait_until(lambda: len(live(pods(node, wns, "tier=front"))) == 2
               and victim not in {p["metadata"]["name"] for p in live(pods(node, wns, "tier=front"))},
               timeout=30, what="a replacement pod")
    # A bare pod that matches a new set's selector is adopted: the set makes only the rest.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"tier": "back"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": "busybox:test", "command": ["sleep", "3600"]}]}}
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(bare))
    back = json.loads(json.dumps(rs).replace("front", "back"))
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(back))
    wait_until(lambda: node.json("get", "pod", "stray", "-n", wns)["metadata"].get("ownerReferences"),
               timeout=30, what="the stray pod to be adopted")
    owner = node.json("get", "pod", "stray", "-n", wns)["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ReplicaSet", "back", True)
    wait_until(lambda: node.json("get", "rs", "back", "-n", wns).get("status", {}).get("readyReplicas") == 2,
               timeout=30, what="2 ready replicas")
    assert len(live(pods(node, wns, "tier=back"))) == 2


def job_yaml(name, command, extra_spec=None, restart="Never"):
    spec = {"template": {"spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1,
                                  "containers": [{"name": "c", "image": "busybox:test",
                                                  "command": ["sh", "-c", command]}]}}}
    spec.update(extra_spec or {})
    return json.dumps({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})


def condition(obj, kind):
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == kind and c["status"] == "True":
            return c
    return None


def test_job_runs_to_completion(node, wns, version):
    node.kubectl("apply", "-n", wns, "-f", "-", version=version,
                 input=job_yaml("count", "echo done-$RANDOM", {"completions": 3, "parallelism": 2}))
    out = node.kubectl("wait", "--for=condition=complete", "job/count", "-n", wns, "--timeout=60s",
                       version=version, timeout=70)
    assert "condition met" in out.stdout
    job = node.json("get", "job", "count", "-n", wns)
    assert job["status"]["succeeded"] == 3
    assert job["status"].get("active", 0) == 0
    assert job["status"]["completionTime"] >= job["status"]["startTime"]
    ps = pods(node, wns, "job-name=count")
    assert len(ps) == 3 and all(p["status"]["phase"] == "Succeeded" for p in ps)
    logs = node.kubectl("logs", "job/count", "-n", wns, version=version).stdout
    assert logs.startswith("done-")
    table = node.kubectl("get", "job", "count", "-n", wns, version=version).stdout.split("\n")
    assert table[0].split()[:3] == ["NAME", "STATUS", "COMPLETIONS"] or table[0].split()[:2] == ["NAME", "COMPLETIONS"]
    assert "3/3" in table[1]


def test_failing_job_stops_at_its_backoff_limit(node, wns):
    node.kubectl("apply", "-n", wns, "-f", "-", input=job_yaml("fails", "exit 3", {"backoffLimit": 1}))
    out = node.kubectl("wait", "--for=condition=failed", "job/fails", "-n", wns, "--timeout=90s", timeout=100)
    assert "condition met" in out.stdout
    job = node.json("get", "job", "fails", "-n", wns)
    assert condition(job, "Failed")["reason"] == "BackoffLimitExceeded"
    # backoffLimit 1: the first try and one retry, then no more.
    assert job["status"]["failed"] == 2
    time.sleep(2)
    assert len(pods(node, wns, "job-name=fails")) == 2
    described = node.kubectl("describe", "job", "fails", "-n", wns).stdout
    assert "BackoffLimitExceeded" in described


def test_indexed_job_and_deadline(node, wns):
    node.kubectl("apply", "-n", wns, "-f", "-",
                 input=job_yaml("idx", "echo index=$JOB_COMPLETION_INDEX",
                                {"completions": 3, "parallelism": 3, "completionMode": "Indexed"}))
    node.kubectl("wait", "--for=condition=complete", "job/idx", "-n", wns, "--timeout=60s", timeout=70)
    job = node.json("get", "job", "idx", "-n", wns)
    assert job["status"]["completedIndexes"] == "0-2"
    outputs = sorted(node.kubectl("logs", p["metadata"]["name"], "-n", wns).stdout.strip()
                     for p in pods(node, wns, "job-name=idx"))
    assert outputs == ["index=0", "index=1", "index=2"]
    node.kubectl("apply", "-n", wns, "-f", "-",
                 input=job_yaml("slow", "sleep 600", {"activeDeadlineSeconds": 2}))
    node.kubectl("wait", "--for=condition=failed", "job/slow", "-n", wns, "--timeout=60s", timeout=70)
    assert condition(node.json("get", "job", "slow", "-n", wns), "Failed")["reason"] == "DeadlineExceeded"
    wait_until(lambda: not live(pods(node, wns, "job-name=slow")) or
               all(p["status"]["phase"] in ("Failed", "Succeeded") for p in pods(node, wns, "job-name=slow")),
               timeout=30, what="the deadline to stop the pod")


def test_finished_job_is_deleted_after_its_ttl(node, wns):
    node.kubectl("apply", "-n", wns, "-f", "-",
                 input=job_yaml("brief", "true", {"ttlSecondsAfterFinished": 2}))
    node.kubectl("wait", "--for=condition=complete", "job/brief", "-n", wns, "--timeout=60s", timeout=70)
    wait_until(lambda: node.kubectl("get", "job", "brief", "-n", wns, check=False).returncode != 0,
               timeout=30, what="the job to expire")
    wait_until(lambda: not pods(node, wns, "job-name=brief"), timeout=30, what="its pods to go")


def test_cronjob_fires_and_keeps_its_history(node, wns, version):
    cj = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
          "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 3,
                   "jobTemplate": {"spec": {"template": {"spec": {
                       "restartPolicy": "Never",
                       "containers": [{"name": "c", "image": "busybox:test", "command": ["echo", "tick"]}]}}}}}}
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(cj), version=version)
    # The first minute boundary may be up to 60 s away.
    jobs = wait_until(lambda: [j for j in node.json("get", "jobs", "-n", wns)["items"] if condition(j, "Complete")],
                      timeout=100, interval=1, what="a completed job from the cron job")
    job = jobs[0]
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    assert job["metadata"]["name"].startswith("tick-")
    got = node.json("get", "cronjob", "tick", "-n", wns)
    assert got["status"]["lastScheduleTime"] and got["status"]["lastSuccessfulTime"]
    table = node.kubectl("get", "cronjob", "tick", "-n", wns, version=version).stdout.split("\n")
    assert table[0].split()[:3] == ["NAME", "SCHEDULE", "TIMEZONE"] or table[0].split()[:2] == ["NAME", "SCHEDULE"]
    # A manual run from the template, as `kubectl create job --from` does.
    node.kubectl("create", "job", "manual", "--from=cronjob/tick", "-n", wns, version=version)
    node.kubectl("wait", "--for=condition=complete", "job/manual", "-n", wns, "--timeout=60s", timeout=70)
    assert node.kubectl("logs", "job/manual", "-n", wns).stdout.strip() == "tick"
    # Deleting the cron job takes its jobs and their pods along.
    node.kubectl("delete", "cronjob", "tick", "-n", wns, version=version)
    wait_until(lambda: not [j for j in node.json("get", "jobs", "-n", wns)["items"]
                            if j["metadata"]["name"].startswith("tick-")],
               timeout=30, what="the cron job's jobs to go")


def revisions_listed(c, ns, what, version):
    """The revision numbers `kubectl rollout history` lists, in its order."""
    out = c.kubectl("rollout", "history", what, "-n", ns, version=version).stdout
    lines = out.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("REVISION"))
    return [l.split()[0] for l in lines[start + 1:] if l.strip()]


def test_daemonset_runs_one_pod_per_node_and_rolls(node, wns, version):
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
          "spec": {"selector": {"matchLabels": {"app": "agent"}},
                   "template": {"metadata": {"labels": {"app": "agent"}},
                                "spec": {"terminationGracePeriodSeconds": 1,
                                         "containers": [{"name": "c", "image": "busybox:test",
                                                         "command": ["sleep", "3600"]}]}}}}
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(ds), version=version)
    out = node.kubectl("rollout", "status", "ds/agent", "-n", wns, "--timeout=60s", version=version, timeout=70)
    assert "successfully rolled out" in out.stdout
    nodes = [n["metadata"]["name"] for n in node.json("get", "nodes")["items"]]
    ps = live(pods(node, wns, "app=agent"))
    assert sorted(p["spec"]["nodeName"] for p in ps) == sorted(nodes)
    st = node.json("get", "ds", "agent", "-n", wns)["status"]
    assert st["desiredNumberScheduled"] == len(nodes) == st["numberReady"] == st["updatedNumberScheduled"]
    table = node.kubectl("get", "ds", "agent", "-n", wns, version=version).stdout.split("\n")
    assert table[0].split()[:6] == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"]
    # A template change replaces the daemon.
    old = {p["metadata"]["name"] for p in ps}
    node.kubectl("set", "env", "ds/agent", "V=2", "-n", wns, version=version)
    node.kubectl("rollout", "status", "ds/agent", "-n", wns, "--timeout=60s", version=version, timeout=70)
    wait_until(lambda: {p["metadata"]["name"] for p in live(pods(node, wns, "app=agent"))}.isdisjoint(old)
               and len(live(pods(node, wns, "app=agent"))) == len(nodes), timeout=30, what="new daemons")
    # Each template is a numbered ControllerRevision; undo brings the first back as the third.
    assert revisions_listed(node, wns, "ds/agent", version) == ["1", "2"]
    revs = node.kubectl("get", "controllerrevisions", "-n", wns, version=version).stdout.splitlines()
    assert revs[0].split() == ["NAME", "CONTROLLER", "REVISION", "AGE"]
    assert sorted(l.split()[1:3] for l in revs[1:]) == [["daemonset.apps/agent", "1"], ["daemonset.apps/agent", "2"]]
    node.kubectl("rollout", "undo", "ds/agent", "-n", wns, version=version)
    node.kubectl("rollout", "status", "ds/agent", "-n", wns, "--timeout=60s", version=version, timeout=70)
    assert "env" not in node.json("get", "ds", "agent", "-n", wns)["spec"]["template"]["spec"]["containers"][0]
    wait_until(lambda: revisions_listed(node, wns, "ds/agent", version) == ["2", "3"], timeout=20,
               what="the first revision renumbered")
    wait_until(lambda: all("env" not in p["spec"]["containers"][0] for p in live(pods(node, wns, "app=agent")))
               and len(live(pods(node, wns, "app=agent"))) == len(nodes), timeout=30, what="daemons rolled back")
    # A node selector that matches no node: the daemons go.
    node.kubectl("patch", "ds", "agent", "-n", wns, "-p",
                 '{"spec":{"template":{"spec":{"nodeSelector":{"role":"nowhere"}}}}}', version=version)
    wait_until(lambda: not live(pods(node, wns, "app=agent")), timeout=30, what="daemons to leave")
    assert node.json("get", "ds", "agent", "-n", wns)["status"]["desiredNumberScheduled"] == 0


def test_statefulset_makes_ordered_stable_pods(node, wns, version):
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
           "spec": {"serviceName": "db", "replicas": 3, "selector": {"matchLabels": {"app": "db"}},
                    "template": {"metadata": {"labels": {"app": "db"}},
                                 "spec": {"terminationGracePeriodSeconds": 1,
                                          "containers": [{"name": "c", "image": "busybox:test",
                                                          "command": ["sh", "-c", "hostname; sleep 3600"]}]}}}}
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(sts), version=version)
    out = node.kubectl("rollout", "status", "sts/db", "-n", wns, "--timeout=90s", version=version, timeout=100)
    assert "roll out complete" in out.stdout or "rolling update complete" in out.stdout, out.stdout
    ps = {p["metadata"]["name"]: p for p in live(pods(node, wns, "app=db"))}
    assert sorted(ps) == ["db-0", "db-1", "db-2"]
    # Ordered: each started after the one before it.
    starts = [ps[f"db-{i}"]["metadata"]["creationTimestamp"] for i in range(3)]
    assert starts == sorted(starts)
    assert ps["db-1"]["spec"]["hostname"] == "db-1" and ps["db-1"]["spec"]["subdomain"] == "db"
    assert node.kubectl("logs", "db-2", "-n", wns).stdout.strip() == "db-2"
    # A deleted member comes back under the same name.
    uid = ps["db-1"]["metadata"]["uid"]
    node.kubectl("delete", "pod", "db-1", "-n", wns, version=version)
    wait_until(lambda: (p := node.kubectl("get", "pod", "db-1", "-n", wns, "-o", "json", check=False)).returncode == 0
               and json.loads(p.stdout)["metadata"]["uid"] != uid
               and json.loads(p.stdout)["status"].get("phase") == "Running",
               timeout=60, what="db-1 to come back")
    node.kubectl("scale", "sts", "db", "--replicas=1", "-n", wns, version=version)
    wait_until(lambda: sorted(p["metadata"]["name"] for p in pods(node, wns, "app=db")) == ["db-0"],
               timeout=60, what="scale down to db-0")
    st = node.json("get", "sts", "db", "-n", wns)["status"]
    assert st["replicas"] == 1 and st["readyReplicas"] == 1
    # Template changes are revisions too, and undo rolls the set back.
    node.kubectl("set", "env", "sts/db", "V=2", "-n", wns, version=version)
    node.kubectl("rollout", "status", "sts/db", "-n", wns, "--timeout=60s", version=version, timeout=70)
    assert revisions_listed(node, wns, "sts/db", version) == ["1", "2"]
    node.kubectl("rollout", "undo", "sts/db", "-n", wns, version=version)
    node.kubectl("rollout", "status", "sts/db", "-n", wns, "--timeout=60s", version=version, timeout=70)
    assert "env" not in node.json("get", "sts", "db", "-n", wns)["spec"]["template"]["spec"]["containers"][0]
    wait_until(lambda: revisions_listed(node, wns, "sts/db", version) == ["2", "3"], timeout=20,
               what="the first revision renumbered")
    wait_until(lambda: [("env" in p["spec"]["containers"][0]) for p in live(pods(node, wns, "app=db"))] == [False],
               timeout=60, what="db-0 rolled back")


def test_cordon_and_drain_respect_a_disruption_budget(node, wns, version):
    [name] = [n["metadata"]["name"] for n in node.json("get", "nodes")["items"]]
    node.kubectl("create", "deployment", "drained", "--image=busybox:test", "--replicas=3", "-n", wns,
                 "--", "sleep", "3600", version=version)
    node.kubectl("patch", "deployment", "drained", "-n", wns, "-p",
                 '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":1}}}}', version=version)
    rolled_out(node, wns, "drained", version=version)
    node.kubectl("create", "pdb", "keep-two", "--selector=app=drained", "--min-available=2", "-n", wns,
                 version=version)
    pdb = wait_until(lambda: (b := node.json("get", "pdb", "keep-two", "-n", wns)).get("status", {})
                     .get("observedGeneration") == b["metadata"]["generation"]
                     and b["status"].get("currentHealthy") == 3 and b,
                     timeout=30, what="the budget's status")
    assert pdb["status"]["disruptionsAllowed"] == 1 and pdb["status"]["desiredHealthy"] == 2
    table = node.kubectl("get", "pdb", "keep-two", "-n", wns, version=version).stdout.split("\n")
    assert table[0].split() == ["NAME", "MIN", "AVAILABLE", "MAX", "UNAVAILABLE", "ALLOWED", "DISRUPTIONS", "AGE"]
    assert table[1].split()[:4] == ["keep-two", "2", "N/A", "1"]
    try:
        node.kubectl("cordon", name, version=version)
        nodes = node.kubectl("get", "nodes", version=version).stdout
        assert "Ready,SchedulingDisabled" in nodes, nodes
        # The budget lets one pod go; the drain then waits on the rest and gives up.
        out = node.kubectl("drain", name, "--pod-selector=app=drained", "--timeout=8s", check=False,
                           version=version, timeout=60)
        assert out.returncode != 0
        assert "disruption budget" in out.stdout + out.stderr, out.stdout + out.stderr
        running = live(pods(node, wns, "app=drained"))
        bound = [p for p in running if p["spec"].get("nodeName")]
        assert len(bound) == 2, [p["metadata"]["name"] for p in running]
        # The replacement waits: the only node is cordoned.
        pending = [p for p in running if not p["spec"].get("nodeName")]
        assert len(pending) == 1
        # Without the budget the drain completes.
        node.kubectl("delete", "pdb", "keep-two", "-n", wns, version=version)
        out = node.kubectl("drain", name, "--pod-selector=app=drained", "--timeout=60s",
                           version=version, timeout=90)
        assert f"node/{name} drained" in out.stdout, out.stdout
        assert not [p for p in live(pods(node, wns, "app=drained")) if p["spec"].get("nodeName")]
    finally:
        node.kubectl("uncordon", name, version=version)
    rolled_out(node, wns, "drained", version=version)
    assert len(live(pods(node, wns, "app=drained"))) == 3


def test_top_and_an_autoscaler_that_scales_up_and_back_down(node, wns, version):
    # Each pod burns a core until told to stop: the autoscaler sees the load come and go.
    burn = "while [ ! -e /tmp/stop ]; do :; done; sleep 3600"
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burn"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burn"}},
                  "template": {"metadata": {"labels": {"app": "burn"}},
                               "spec": {"terminationGracePeriodSeconds": 1,
                                        "containers": [{"name": "c", "image": "busybox:test",
                                                        "command": ["sh", "-c", burn],
                                                        "resources": {"requests": {"cpu": "100m"}}}]}}}}
    node.kubectl("apply", "-n", wns, "-f", "-", input=json.dumps(d), version=version)
    rolled_out(node, wns, "burn", version=version)

    def busy():
        r = node.kubectl("top", "pod", "-n", wns, check=False, version=version)
        rows = [l.split() for l in r.stdout.strip().split("\n")[1:]] if r.returncode == 0 else []
        return r.stdout if rows and int(rows[0][1].rstrip("m")) > 300 else None
    # kubectl top: usage of the node and of the pod, once two samples exist.
    top = wait_until(busy, timeout=60, interval=2, what="kubectl top pod to show a busy pod")
    assert top.split("\n")[0].split()[:3] == ["NAME", "CPU(cores)", "MEMORY(bytes)"], top
    nodes = node.kubectl("top", "node", version=version).stdout
    assert "CPU(cores)" in nodes.split("\n")[0] and "%" in nodes.split("\n")[1], nodes
    # kubectl 1.27 writes autoscaling/v1 here, later versions autoscaling/v2: both are served.
    node.kubectl("autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=3", "-n", wns,
                 version=version)
    v1 = node.kubectl("get", "horizontalpodautoscalers.v1.autoscaling", "burn", "-n", wns, "-o",
                      "jsonpath={.apiVersion} {.spec.targetCPUUtilizationPercentage}", version=version).stdout
    assert v1 == "autoscaling/v1 50", v1
    node.kubectl("patch", "hpa", "burn", "-n", wns, "--type=merge", "-p",
                 '{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":0}}}}', version=version)
    wait_until(lambda: deployment(node, wns, "burn")["spec"]["replicas"] == 3, timeout=90, interval=2,
               what="the autoscaler to scale up to 3")
    hpa = node.json("get", "hpa", "burn", "-n", wns)
    assert hpa["status"]["desiredReplicas"] == 3
    table = node.kubectl("get", "hpa", "burn", "-n", wns, version=version).stdout.split("\n")
    assert table[0].split()[:2] == ["NAME", "REFERENCE"], table
    assert "Deployment/burn" in table[1] and "%/50%" in table[1], table
    described = node.kubectl("describe", "hpa", "burn", "-n", wns, version=version).stdout
    assert "SuccessfulRescale" in described and "New size: 3" in described, described
    # The loops end; the autoscaler comes back down to the minimum.
    for p in live(pods(node, wns, "app=burn")):
        node.kubectl("exec", p["metadata"]["name"], "-n", wns, "--", "touch", "/tmp/stop", check=False)
    wait_until(lambda: deployment(node, wns, "burn")["spec"]["replicas"] == 1, timeout=150, interval=2,
               what="the autoscaler to scale back down to 1")


@pytest.mark.parametrize("mode", [[], ["--after-create"]])
def test_the_simulator_places_every_pod_and_reports_its_figures(mode):
    import subprocess
    from conftest import BERTH
    r = subprocess.run([BERTH, "sim", "--nodes", "50", "--pods", "400", "--templates", "3", "--zones", "3",
                        *mode], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {l[:44].strip(): l[44:].strip() for l in r.stdout.splitlines()}
    assert rows["pods bound"] == "400 of 400", r.stdout
    assert rows["nodes used"] == "50 of 50", r.stdout
    for figure in ["placements committed per second", "CPU (all threads) per placement",
                   "decision latency p50 / p99", "allocated CPU / memory"]:
        assert rows.get(figure), (figure, r.stdout)
