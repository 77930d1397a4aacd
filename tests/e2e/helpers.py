"""Raw HTTPS requests to the API server, for checks the clients would hide."""

import base64
import json
import ssl
import tempfile
import urllib.error
import urllib.request

import yaml


def credentials(kubeconfig):
    cfg = yaml.safe_load(open(kubeconfig))
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    return cluster["server"], ca, user["token"]


def request(kubeconfig, method, path, body=None, content_type="application/json", token=True, headers=None):
    """Send one request; returns (status, parsed JSON body or raw text)."""
    server, ca, tok = credentials(kubeconfig)
    with tempfile.NamedTemporaryFile("w", suffix=".crt", delete=False) as f:
        f.write(ca)
    ctx = ssl.create_default_context(cafile=f.name)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token is True:
        req.add_header("Authorization", f"Bearer {tok}")
    elif token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")
