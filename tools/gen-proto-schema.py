#!/usr/bin/env python3
"""Generate crates/api/src/proto/schema.rs: the protobuf wire schema of the served kinds.

Kubernetes clients (kubectl 1.32+ typed creates) may send request bodies as Kubernetes
protobuf. Decoding them needs, per message, each field's number, wire type and JSON name.
The field numbers and types come from the k8s-pb crate (prost code generated from upstream
.proto files); the JSON names come from k8s-openapi (the serde field names). Both are joined
on module path and case-folded type name, starting from the kinds berth serves.

The table keeps each message's fields in their .proto order, which is the Go struct's
declaration order (go-to-protobuf preserves it), so it also says in which order Kubernetes
writes an object's JSON fields. Go structs embedded inline (a Volume's VolumeSource, a
Probe's ProbeHandler) are a field of their own in protobuf but flattened in JSON: they are
marked `Inline`, and their fields belong to the enclosing object.

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
    "api.core.v1.ReplicationController", "api.core.v1.PersistentVolume",
    "api.core.v1.PersistentVolumeClaim", "api.events.v1.Event",
    "api.networking.v1.Ingress", "api.networking.v1.IngressClass",
    "api.networking.v1.NetworkPolicy",
    "api.autoscaling.v1.HorizontalPodAutoscaler", "apimachinery.pkg.apis.meta.v1.Status",
    "apimachinery.pkg.apis.meta.v1.PartialObjectMetadata",
    "apimachinery.pkg.apis.meta.v1.PartialObjectMetadataList",
    "api.storage.v1.StorageClass", "api.discovery.v1.EndpointSlice",
    "api.storage.v1.CSIDriver", "api.storage.v1.CSINode", "api.storage.v1.VolumeAttachment",
    "api.storage.v1.CSIStorageCapacity",
    "api.rbac.v1.Role", "api.rbac.v1.ClusterRole", "api.rbac.v1.RoleBinding",
    "api.rbac.v1.ClusterRoleBinding",
    "api.authorization.v1.SelfSubjectAccessReview", "api.authorization.v1.SelfSubjectRulesReview",
    "api.authorization.v1.SubjectAccessReview", "api.authorization.v1.LocalSubjectAccessReview",
    "api.authentication.v1.SelfSubjectReview", "api.authentication.v1.TokenReview",
    "api.authentication.v1.TokenRequest",
    "api.certificates.v1.CertificateSigningRequest",
    # Discovery documents, legacy and aggregated.
    "apimachinery.pkg.apis.meta.v1.APIGroupList", "apimachinery.pkg.apis.meta.v1.APIGroup",
    "apimachinery.pkg.apis.meta.v1.APIResourceList", "apimachinery.pkg.apis.meta.v1.APIVersions",
    "api.apidiscovery.v2.APIGroupDiscoveryList", "api.apidiscovery.v2beta1.APIGroupDiscoveryList",
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
    "apimachinery.pkg.apis.meta.v1.Verbs",
    "api.authentication.v1.ExtraValue",
    "api.authorization.v1.ExtraValue",
    "api.certificates.v1.ExtraValue",
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
            # Keyed by the Rust name without underscores: the two crates split acronyms
            # differently (`pod_cidrs` here, `pod_cid_rs` in k8s-pb).
            fields = dict((norm(rust), js) for js, rust in
                          re.findall(r'"([^"]+)" => Field::Key_(\w+),', text))
            out[(module, m.group(1).lower())] = fields
    return out


def norm(rust):
    return rust.rstrip("_").replace("_", "")


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
                fields.append((tag, norm(rust), kind, shape, target))
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


def key_of(m):
    module, tname = m.rsplit(".", 1)
    return (module, tname.lower())


def json_names_of(names, m):
    found = names.get(key_of(m))
    if found is None and (m.startswith("api.apidiscovery.") or m.endswith(".GroupVersionKind")):
        # k8s-openapi has no discovery types; their JSON names are the proto names.
        return DISCOVERY_NAMES
    return found


class CamelNames(dict):
    """Rust field name (without underscores) -> JSON name, for the discovery types."""
    KNOWN = ["metadata", "items", "versions", "version", "resources", "freshness", "resource",
             "responseKind", "scope", "singularResource", "verbs", "shortNames", "categories",
             "subresources", "subresource", "acceptedTypes", "group", "kind"]

    def __init__(self):
        super().__init__((k.lower(), k) for k in self.KNOWN)


DISCOVERY_NAMES = CamelNames()


def inline(msgs, names, m, rust):
    """Whether field `rust` of message `m` is a Go struct embedded inline: k8s-openapi has no
    field of that name, and every field of the embedded message it knows is a field of the
    enclosing type there."""
    outer = json_names_of(names, m) or {}
    if rust in outer:
        return False
    field = next((f for f in msgs[m] if f[1] == rust), None)
    if field is None or field[2] != "message" or field[3] != "Single":
        return False
    # k8s-openapi flattens these types away (there is no VolumeSource there): judge by the
    # embedded message's own fields, most of which the enclosing type must have.
    fields = [f[1] for f in msgs[field[4]]]
    return bool(fields) and 2 * sum(f in outer for f in fields) > len(fields)


def main():
    pb_dir, openapi_dir = crate_dirs()
    names = openapi_names(openapi_dir)
    msgs = pb_messages(pb_dir)
    # Each kind's list, for the order of list replies (k8s-openapi has one generic List).
    roots = list(ROOTS)
    for r in ROOTS:
        if r + "List" in msgs:
            roots.append(r + "List")
            names.setdefault(key_of(r + "List"), {"metadata": "metadata", "items": "items"})
    names.setdefault(key_of("apimachinery.pkg.apis.meta.v1.PartialObjectMetadataList"),
                     {"metadata": "metadata", "items": "items"})
    names.setdefault(key_of("apimachinery.pkg.apis.meta.v1.PartialObjectMetadata"),
                     {"metadata": "metadata"})
    seen, order, queue = set(), [], roots
    while queue:
        m = queue.pop(0)
        if m in seen or m in SPECIAL:
            continue
        if m not in msgs:
            sys.exit(f"message {m} not found in k8s-pb")
        seen.add(m)
        order.append(m)
        known = json_names_of(names, m)
        if known is None:
            sys.exit(f"no k8s-openapi type for {m}")
        # Fields of newer Kubernetes versions than the one served are not followed.
        for (_, rust, kind, _, target) in msgs[m]:
            if target and inline(msgs, names, m, rust):
                # Its fields are the enclosing type's in JSON.
                names.setdefault(key_of(target), known)
            if target and target not in seen and (rust in known or inline(msgs, names, m, rust)):
                queue.append(target)
    out = ["// @generated by tools/gen-proto-schema.py from k8s-pb "
           f"{PB} (field numbers) and k8s-openapi {OPENAPI} (JSON names). Do not edit.",
           "", "use super::{Field, Message, Shape::*, Ty::*};", "",
           "pub(super) static MESSAGES: &[Message] = &["]
    kinds = {"string": "Str", "bytes": "Bytes", "bool": "Bool", "int32": "I32",
             "int64": "I64", "double": "F64"}
    skipped = []
    for m in sorted(order):
        json_names = json_names_of(names, m)
        if json_names is None:
            sys.exit(f"no k8s-openapi type for {m}")
        out.append(f"    Message {{ name: {json.dumps(m)}, fields: &[")
        for (tag, rust, kind, shape, target) in msgs[m]:
            js = json_names.get(rust)
            if js is None and inline(msgs, names, m, rust):
                js, shape = "", "Inline"
            elif js is None:
                skipped.append(f"{m}.{rust}")
                continue
            ty = f"Msg({json.dumps(target)})" if kind == "message" else kinds[kind]
            out.append(f"        Field {{ tag: {tag}, json: {json.dumps(js)}, ty: {ty}, shape: {shape} }},")
        out.append("    ] },")
    out.append("];")
    path = os.path.join("crates", "api", "src", "proto", "schema.rs")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"{path}: {len(order)} messages; fields newer than the served API skipped:")
    for f in skipped:
        print(f"  {f}")


if __name__ == "__main__":
    main()
