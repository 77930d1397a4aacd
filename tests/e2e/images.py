"""Test images built from the busybox-static package, as OCI layouts, `docker save` archives or
pushes to a registry. No image comes from the internet."""

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request

MTIME = 1_700_000_000


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _add(t, name, data=b"", mode=0o644, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    else:
        t.addfile(info)


def busybox_layer(extra=None):
    """An uncompressed rootfs tar: static busybox, its applets, /etc/passwd and friends."""
    busybox = os.path.realpath(shutil.which("busybox") or "/bin/busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d, mode in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("proc", 0o555),
                        ("sys", 0o555), ("dev", 0o755), ("var", 0o755), ("var/www", 0o755), ("usr", 0o755)]:
            _add(t, d, mode=mode, kind=tarfile.DIRTYPE)
        _add(t, "bin/busybox", open(busybox, "rb").read(), mode=0o755)
        for a in sorted(set(applets)):
            if a != "busybox":
                _add(t, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox")
        _add(t, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        _add(t, "etc/group", b"root:x:0:\nnobody:x:65534:\n")
        _add(t, "var/www/index.html", b"hello from berth\n")
        for path, data in (extra or {}).items():
            _add(t, path, data, mode=0o755)
    return buf.getvalue()


def config(diff_ids, cmd=("sh",), entrypoint=None, env=None, workdir=None, user=None):
    c = {"Env": list(env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]), "Cmd": list(cmd)}
    if entrypoint:
        c["Entrypoint"] = list(entrypoint)
    if workdir:
        c["WorkingDir"] = workdir
    if user:
        c["User"] = user
    return json.dumps({"architecture": "amd64", "os": "linux", "config": c,
                       "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}, sort_keys=True).encode()


class Image:
    """Layers (uncompressed tars) and a config; compressed with gzip when shipped."""

    def __init__(self, layers=None, **config_args):
        self.layers = layers or [busybox_layer()]
        self.config = config([sha256(l) for l in self.layers], **config_args)
        self.blobs = [gzip.compress(l, mtime=0) for l in self.layers]

    def manifest(self):
        return json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(self.config), "size": len(self.config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(b), "size": len(b)} for b in self.blobs],
        }, sort_keys=True).encode()

    def oci_layout(self, name):
        """An OCI image layout as a tar, naming the image with the ref.name annotation."""
        m = self.manifest()
        index = json.dumps({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(m), "size": len(m),
            "annotations": {"org.opencontainers.image.ref.name": name}}]}).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            _add(t, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            _add(t, "index.json", index)
            for blob in [m, self.config, *self.blobs]:
                _add(t, f"blobs/sha256/{sha256(blob)[7:]}", blob)
        return buf.getvalue()

    def docker_save(self, name):
        """A `docker save` archive (layers as plain tars)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            cfg = f"{sha256(self.config)[7:]}.json"
            _add(t, cfg, self.config)
            paths = []
            for i, l in enumerate(self.layers):
                p = f"layer{i}/layer.tar"
                _add(t, p, l)
                paths.append(p)
            _add(t, "manifest.json", json.dumps([{"Config": cfg, "RepoTags": [name], "Layers": paths}]).encode())
        return buf.getvalue()

    def push(self, registry, repo, tag):
        """Push to a registry over HTTP; returns the manifest digest."""
        for blob in [self.config, *self.blobs]:
            req = urllib.request.Request(f"http://{registry}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
            with urllib.request.urlopen(req) as r:
                location = r.headers["Location"]
            if location.startswith("/"):
                location = f"http://{registry}{location}"
            sep = "&" if "?" in location else "?"
            put = urllib.request.Request(f"{location}{sep}digest={sha256(blob)}", method="PUT", data=blob,
                                         headers={"Content-Type": "application/octet-stream"})
            urllib.request.urlopen(put).close()
        m = self.manifest()
        put = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}", method="PUT", data=m,
                                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        urllib.request.urlopen(put).close()
        return sha256(m)


class Registry:
    """Debian's docker-registry (Distribution), on loopback, storing in a temp dir."""

    def __init__(self, workdir):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.root = os.path.join(workdir, "registry")
        cfg = os.path.join(workdir, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.root}\n"
                    f"  delete:\n    enabled: true\nhttp:\n  addr: {self.addr}\n")
        binary = shutil.which("docker-registry")
        if not binary:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        self.proc = subprocess.Popen([binary, "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/").close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    def blob_file(self, digest):
        h = digest[7:]
        return os.path.join(self.root, "docker/registry/v2/blobs/sha256", h[:2], h, "data")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
