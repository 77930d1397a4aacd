"""The README's tour, run as written (on a machine with no internet): what a new user types
first must work."""

import os
import re
import subprocess
import tempfile

from conftest import BERTH, kubectl_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tour():
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"<!-- tour -->\n```sh\n(.*?)```\n<!-- /tour -->", text, re.S)
    assert m, "the README has no tour block"
    return m.group(1)


def test_the_readme_tour_runs_as_written(node):
    with tempfile.TemporaryDirectory(prefix="berth-tour-") as d:
        bin_dir = os.path.join(d, "bin")
        os.mkdir(bin_dir)
        os.symlink(BERTH, os.path.join(bin_dir, "berth"))
        os.symlink(kubectl_binary("1.33"), os.path.join(bin_dir, "kubectl"))
        # The tests run as root already; the tour's `sudo` keeps its environment.
        with open(os.path.join(bin_dir, "sudo"), "w") as f:
            f.write('#!/bin/sh\nexec "$@"\n')
        os.chmod(os.path.join(bin_dir, "sudo"), 0o755)
        os.symlink(os.path.join(ROOT, "scripts"), os.path.join(d, "scripts"))
        script = os.path.join(d, "tour.sh")
        with open(script, "w") as f:
            f.write("set -euxo pipefail\n" + tour())
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", KUBECONFIG=node.kubeconfig,
                   BERTH_DATA_DIR=str(node.data))
        r = subprocess.run(["bash", script], cwd=d, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"the tour failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        assert "hello from berth" in r.stdout
