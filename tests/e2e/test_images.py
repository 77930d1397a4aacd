"""`berth image`: import, pull, list, remove, on a node's image store."""

import os
import subprocess

import pytest

from conftest import BERTH
from images import Image


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def berth(data_dir, *args, check=True):
    r = subprocess.run([BERTH, "image", "--data-dir", data_dir, *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"berth image {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r


def listed(data_dir):
    lines = berth(data_dir, "ls").stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "SIZE", "PINNED"]
    return {l.split()[0]: l.split()[1] for l in lines[1:]}


def pinned(data_dir):
    """Which images garbage collection must keep, by name."""
    lines = berth(data_dir, "ls").stdout.splitlines()
    return {l.split()[0]: l.split()[-1] == "true" for l in lines[1:]}


def test_import_oci_layout_and_docker_save(data_dir, tmp_path):
    img = Image(cmd=["echo", "hi"])
    oci = tmp_path / "busybox-oci.tar"
    oci.write_bytes(img.oci_layout("test.local/busybox:oci"))
    out = berth(data_dir, "import", str(oci)).stdout
    assert "imported test.local/busybox:oci sha256:" in out
    saved = tmp_path / "busybox-save.tar"
    saved.write_bytes(img.docker_save("test.local/busybox:saved"))
    out = berth(data_dir, "import", str(saved)).stdout
    assert "imported test.local/busybox:saved" in out
    images = listed(data_dir)
    assert set(images) == {"test.local/busybox:oci", "test.local/busybox:saved"}
    # Imported by hand, so kept under disk pressure: there may be no registry to pull from.
    assert pinned(data_dir) == {"test.local/busybox:oci": True, "test.local/busybox:saved": True}
    # The unpacked layer is shared: one copy of busybox on disk.
    layers = os.listdir(os.path.join(data_dir, "images", "l"))
    assert len(layers) == 1
    assert os.path.islink(os.path.join(data_dir, "images", "l", layers[0], "bin", "sh"))
    assert "unpinned test.local/busybox:saved" in berth(data_dir, "unpin", "test.local/busybox:saved").stdout
    # One image under two names: the pin is the image's.
    assert pinned(data_dir) == {"test.local/busybox:oci": False, "test.local/busybox:saved": False}
    berth(data_dir, "pin", "test.local/busybox:oci")
    assert pinned(data_dir) == {"test.local/busybox:oci": True, "test.local/busybox:saved": True}
    missing = berth(data_dir, "pin", "test.local/nothing:1", check=False)
    assert missing.returncode != 0 and "nothing" in missing.stderr
    out = berth(data_dir, "rm", "test.local/busybox:oci").stdout
    assert "untagged test.local/busybox:oci" in out or "deleted" in out
    assert set(listed(data_dir)) == {"test.local/busybox:saved"}


def test_import_rejects_garbage(data_dir, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    r = berth(data_dir, "import", str(junk), check=False)
    assert r.returncode != 0 and r.stderr.strip()
    assert berth(data_dir, "ls").stdout.splitlines()[1:] == []


def test_pull_by_tag_and_digest(data_dir, registry):
    img = Image(cmd=["sh"])
    digest = img.push(registry.addr, "tools/busybox", "1.0")
    out = berth(data_dir, "pull", f"{registry.addr}/tools/busybox:1.0").stdout
    assert f"{registry.addr}/tools/busybox:1.0 sha256:" in out
    out = berth(data_dir, "pull", f"{registry.addr}/tools/busybox@{digest}").stdout
    assert digest in out
    images = listed(data_dir)
    assert f"{registry.addr}/tools/busybox:1.0" in images
    # A registry can serve it again: garbage collection may take it when it is unused.
    assert pinned(data_dir)[f"{registry.addr}/tools/busybox:1.0"] is False
    missing = berth(data_dir, "pull", f"{registry.addr}/tools/nothing:here", check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_pull_rejects_a_corrupt_layer(data_dir, registry):
    img = Image(layers=[Image().layers[0] + b"\0" * 1024], cmd=["sh"])
    img.push(registry.addr, "tools/corrupt", "1.0")
    blob = registry.blob_file("sha256:" + __import__("hashlib").sha256(img.blobs[0]).hexdigest())
    data = bytearray(open(blob, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(blob, "wb").write(bytes(data))
    r = berth(data_dir, "pull", f"{registry.addr}/tools/corrupt:1.0", check=False)
    assert r.returncode != 0 and "does not match its digest" in r.stderr
    assert f"{registry.addr}/tools/corrupt:1.0" not in listed(data_dir)


def test_dead_registry(data_dir):
    r = berth(data_dir, "pull", "127.0.0.1:1/nothing:1", check=False)
    assert r.returncode != 0 and "127.0.0.1:1/nothing:1" in r.stderr


def test_mirrors_and_rewrites_serve_an_unreachable_registry(data_dir, registry):
    # An offline site: images name a registry nobody can reach, a local mirror has them under
    # another repository.
    img = Image(cmd=["sh"])
    img.push(registry.addr, "mirrored/team/app", "1.4")
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "registries.yaml"), "w") as f:
        f.write(f"""mirrors:
  registry.example.com:
    endpoint: ["http://127.0.0.1:1", "http://{registry.addr}"]
    rewrite:
      "^team/(.*)": "mirrored/team/$1"
""")
    out = berth(data_dir, "pull", "registry.example.com/team/app:1.4")
    assert "registry.example.com/team/app:1.4 sha256:" in out.stdout
    # Docker Hub's images, mirrored under docker.io (the name k3s' files use).
    img.push(registry.addr, "hub/busybox", "9.9")
    with open(os.path.join(data_dir, "registries.yaml"), "a") as f:
        f.write(f"""  docker.io:
    endpoint: ["http://{registry.addr}"]
    rewrite:
      "^library/(.*)": "hub/$1"
""")
    hub = berth(data_dir, "pull", "busybox:9.9")
    assert "docker.io/library/busybox:9.9 sha256:" in hub.stdout
    # Stored under the name asked for; the dead first endpoint was passed over.
    assert "registry.example.com/team/app:1.4" in listed(data_dir)
    assert "127.0.0.1:1" in out.stderr
    # A broken configuration is a clear error, not a silent pull from elsewhere.
    with open(os.path.join(data_dir, "registries.yaml"), "w") as f:
        f.write("mirrors:\n  registry.example.com:\n    endpoints: [x]\n")
    bad = berth(data_dir, "pull", "registry.example.com/team/app:1.4", check=False)
    assert bad.returncode != 0 and "not a valid registries.yaml" in bad.stderr


def test_tag_gives_an_imported_image_any_name(data_dir, tmp_path):
    tar = tmp_path / "img.tar"
    tar.write_bytes(Image(cmd=["sh"]).oci_layout("local/busybox:1"))
    berth(data_dir, "import", str(tar))
    out = berth(data_dir, "tag", "local/busybox:1", "nginx:1.27").stdout
    assert out.startswith("tagged docker.io/library/nginx:1.27 sha256:")
    images = listed(data_dir)
    assert images["docker.io/library/nginx:1.27"] == images["docker.io/local/busybox:1"]
    missing = berth(data_dir, "tag", "nope:1", "x:1", check=False)
    assert missing.returncode != 0 and "nope:1" in missing.stderr
