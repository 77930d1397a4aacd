#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit and integration tests, and end-to-end
# tests that start the real binary and drive it with the real kubectl and Python client.
# Installs what the tests need first (Debian packages, a Python virtualenv), and says what it
# needs but cannot install. Safe to run on a fresh Debian 12 machine, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"

step() { printf '\n== %s\n' "$*"; }
need() { echo "the tests need $1" >&2; exit 1; }

step "test dependencies"
# Root first: the tests run containers, and apt needs it too.
[ "$(id -u)" = 0 ] || need "root: they run containers (run: sudo $0)"
command -v cargo >/dev/null || need "a Rust toolchain (1.90 or newer; see https://rustup.rs)"
command -v kubectl >/dev/null || need "kubectl on PATH (the tests drive kubectl 1.27 and 1.33: kubectl.1.27 beside it)"
# Debian packages: the OCI runtime, nftables (the pod network's masquerade and host ports),
# iproute2 (the network tests make namespaces), dnsutils (dig) and musl-tools (a resolving
# client for test pods) for the DNS tests, busybox for test images, a local registry, libseccomp for
# the in-process runtime, openssl for certificates, etcd (the HA store's tests run a real
# cluster), protoc (the etcd client's build compiles etcd's protocol), and Python's venv. apt
# can report failure for unrelated packages left half-configured on a machine, so success is
# judged by what ends up installed.
packages=(runc nftables iproute2 dnsutils musl-tools busybox-static docker-registry libseccomp-dev openssl curl
          etcd-server etcd-client protobuf-compiler)
# Debian's Python needs python3-venv for virtualenvs; another Python (pyenv) brings its own.
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" || true
  for p in "${missing[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need "the Debian package $p, which could not be installed"; done
fi
# Python packages go into a virtualenv of their own: Debian's pip refuses to install into the
# system's Python (PEP 668), and the tests should not change it anyway.
venv="$HOME/.cache/berth/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || need "Python's venv module (apt-get install python3-venv)"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --workspace --locked

step "end-to-end tests"
cargo build --locked -p berth
# kube-rs programs (their own workspace): a client run against berth by test_crds.py, and an
# admission webhook server test_webhooks.py runs in a pod.
cargo build --locked --manifest-path tests/kube-rs/Cargo.toml
BERTH_BIN="$CARGO_TARGET_DIR/debug/berth" KUBE_RS_CHECK="$CARGO_TARGET_DIR/debug/kube-rs-check" \
  KUBE_RS_WEBHOOK="$CARGO_TARGET_DIR/debug/kube-rs-webhook" \
  "$venv/bin/python" -m pytest -q tests/e2e
