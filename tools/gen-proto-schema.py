#!/usr/bin/env python3
"""Generate crates/api/src/proto/schema.rs: the protobuf wire schema of the served kinds.

Kubernetes clients (kubectl 1.32+ typed creates) may send request bodies as Kubernetes
protobuf. Decoding them needs, per message, each field's number, wire type and JSON name.
The field numbers and types come from the k8s-pb crate (prost code generated from upstream
.proto files); the JSON names come from k8s-openapi (the serde field names). Both are joined
on module path and case-folded type name, starting from the kinds berth serves.

Run from the repository root: python3 tools/gen-proto-schema.py
"""
import json
import os
import re
import subprocess
import sys
import tempfile

PB = "0.9.0"
OPENAPI = "0.29.0"
K8S = "v1_33"

ROOTS = [
    "api.core.v1." + k for k in
    ["Namespace", "Pod", "Node", "Service", "Endpoints", "ConfigMap", "Secret", "ServiceAccount", "Event", "Binding"]
] + ["api.apps.v1." + k for k in ["Deployment", "ReplicaSet", "DaemonSet", "StatefulSet"]] + [
    "api.batch.v1.Job", "api.batch.v1.CronJob", "api.coordination.v1.Lease",
    "api.autoscaling.v1.Scale", "apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "api.core.v1.ResourceQuota", "api.core.v1.LimitRange",
    "api.policy.v1.PodDisruptionBudget", "api.policy.v1.Eviction",
    "api.scheduling.v1.PriorityClass", "api.autoscaling.v2.HorizontalPodAutoscaler",
    "api.apps.v1.ControllerRevision",
]

# Messages the decoder knows by heart: their JSON form is not an object of their fields.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration",
    "apimachinery.pkg.api.resource.Quantity",
    "apimachinery.pkg.util.intstr.IntOrString",
    "apimachinery.pkg.runtime.RawExtension",
    "apimachinery.pkg.apis.meta.v1.FieldsV1",
}


def crate_dirs():
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "Cargo.toml"), "w") as f:
            f.write(f"""[package]
name = "probe"
version = "0.0.0"
edition = "2021"
[dependencies]
k8s-pb = "={PB}"
k8s-openapi = {{ version = "={OPENAPI}", features = ["{K8S}"] }}
""")
        os.makedirs(os.path.join(d, "src"))
        open(os.path.join(d, "src", "lib.rs"), "w").close()
        meta = json.loads(subprocess.check_output(
            ["cargo", "metadata", "--format-version", "1"], cwd=d))
    dirs = {}
    for p in meta["packages"]:
        if p["name"] in ("k8s-pb", "k8s-openapi"):
            dirs[p["name"]] = os.path.dirname(p["manifest_path"])
    return dirs["k8s-pb"], dirs["k8s-openapi"]


def openapi_names(root):
    """(module, lowercased type) -> {rust field: json name}"""
    out = {}
    base = os.path.join(root, "src", K8S)
    for dirpath, _, files in os.walk(base):
        module = os.path.relpath(dirpath, base).replace(os.sep, ".")
        for fn in files:
            if not fn.endswith(".rs") or fn == "mod.rs":
                continue
            text = open(os.path.join(dirpath, fn)).read()
            m = re.search(r"^pub (?:struct|enum) (\w+)", text, re.M)
            if not m:
                continue
            # Keywords get a trailing underscore on both sides (`type_`, `r#type`).
            fields = dict((rust.rstrip("_"), js) for js, rust in
                          re.findall(r'"([^"]+)" => Field::Key_(\w+),', text))
            out[(module, m.group(1).lower())] = fields
    return out


ATTR = re.compile(r'#\[prost\(([^\]]*)\)\]')


def pb_messages(root):
    """full name -> list of (tag, rust name, kind, shape, value type path)"""
    msgs = {}
    base = os.path.join(root, "src")
    for dirpath, _, files in os.walk(base):
        if "mod.rs" not in files:
            continue
        module = os.path.relpath(dirpath, base).replace(os.sep, ".")
        text = open(os.path.join(dirpath, "mod.rs")).read()
        for sm in re.finditer(r"::prost::Message\)\]\npub struct (\w+) \{\n(.*?)\n\}", text, re.S):
            name, body = sm.group(1), sm.group(2) + "\n"
            fields = []
            for am in ATTR.finditer(body):
                attr = am.group(1)
                rest = body[am.end():]
                fm = re.match(r"\s*pub (r#)?(\w+):", rest)
                rust, ty = fm.group(2), field_type(rest[fm.end():])
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                kind = attr.split(",")[0].strip()
                if kind.startswith("btree_map") or kind.startswith("map"):
                    value = re.search(r'map = "string, (\w+)"', attr).group(1)
                    shape, kind = "Map", value
                elif "repeated" in attr:
                    shape = "Repeated"
                else:
                    shape = "Single"
                if kind.startswith("bytes"):
                    kind = "bytes"
                target = None
                if kind == "message":
                    target = resolve(module, message_path(ty))
                fields.append((tag, rust.rstrip("_"), kind, shape, target))
            msgs[f"{module}.{name}"] = fields
    return msgs


def field_type(text):
    """The Rust type up to the comma that ends the field (commas inside <> do not)."""
    depth = 0
    for i, c in enumerate(text):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            return " ".join(text[:i].split())
    raise SystemExit(f"unterminated field type: {text[:80]!r}")


def message_path(ty):
    """The message type inside a field's Rust type (past Option, Vec, Box and map keys)."""
    wrappers = ("::core::option::Option", "::prost::alloc::vec::Vec", "::prost::alloc::boxed::Box",
                "::prost::alloc::collections::BTreeMap", "::prost::alloc::string::String")
    paths = [p for p in re.findall(r"[\w:]+", ty) if p not in wrappers]
    if not paths:
        raise SystemExit(f"no message type in {ty!r}")
    return paths[-1]


def resolve(module, path):
    parts = module.split(".")
    segs = path.split("::")
    while segs and segs[0] == "super":
        parts.pop()
        segs.pop(0)
    if segs and segs[0] == "":
        segs.pop(0)
    return ".".join(parts + segs) if segs[:-1] == [] or path.startswith("super") else ".".join(segs)


def main():
    pb_dir, openapi_dir = crate_dirs()
    names = openapi_names(openapi_dir)
    msgs = pb_messages(pb_dir)
    seen, order, queue = set(), [], list(ROOTS)
    while queue:
        m = queue.pop(0)
        if m in seen or m in SPECIAL:
            continue
        if m not in msgs:
            sys.exit(f"message {m} not found in k8s-pb")
        seen.add(m)
        order.append(m)
        module, tname = m.rsplit(".", 1)
        known = names.get((module, tname.lower()))
        if known is None:
            sys.exit(f"no k8s-openapi type for {m}")
        # Fields of newer Kubernetes versions than the one served are not followed.
        for (_, rust, kind, _, target) in msgs[m]:
            if target and target not in seen and rust in known:
                queue.append(target)
    out = ["// @generated by tools/gen-proto-schema.py from k8s-pb "
           f"{PB} (field numbers) and k8s-openapi {OPENAPI} (JSON names). Do not edit.",
           "", "use super::{Field, Message, Shape::*, Ty::*};", "",
           "pub(super) static MESSAGES: &[Message] = &["]
    kinds = {"string": "Str", "bytes": "Bytes", "bool": "Bool", "int32": "I32",
             "int64": "I64", "double": "F64"}
    skipped = 0
    for m in sorted(order):
        module, tname = m.rsplit(".", 1)
        json_names = names.get((module, tname.lower()))
        if json_names is None:
            sys.exit(f"no k8s-openapi type for {m}")
        out.append(f"    Message {{ name: {json.dumps(m)}, fields: &[")
        for (tag, rust, kind, shape, target) in sorted(msgs[m]):
            js = json_names.get(rust)
            if js is None:
                skipped += 1
                continue
            ty = f"Msg({json.dumps(target)})" if kind == "message" else kinds[kind]
            out.append(f"        Field {{ tag: {tag}, json: {json.dumps(js)}, ty: {ty}, shape: {shape} }},")
        out.append("    ] },")
    out.append("];")
    path = os.path.join("crates", "api", "src", "proto", "schema.rs")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"{path}: {len(order)} messages; {skipped} fields newer than the served API skipped")


if __name__ == "__main__":
    main()
