#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit and integration tests, and end-to-end
# tests that start the real binary and drive it with the real kubectl and Python client.
# Installs what the tests need first. Safe to run on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"

step() { printf '\n== %s\n' "$*"; }

step "test dependencies"
# Debian packages: the OCI runtime, busybox for test images, a local registry, and
# libseccomp for the in-process runtime. apt can report failure for unrelated packages left
# half-configured on a machine, so success is judged by what ends up installed.
packages=(runc busybox-static docker-registry libseccomp-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" || true
  for p in "${missing[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || { echo "could not install $p" >&2; exit 1; }; done
fi
[ "$(id -u)" = 0 ] || { echo "the tests run containers and need root" >&2; exit 1; }
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  -r tests/e2e/requirements.txt
command -v kubectl >/dev/null || { echo "kubectl is required on PATH" >&2; exit 1; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --workspace --locked

step "end-to-end tests"
cargo build --locked -p berth
BERTH_BIN="$CARGO_TARGET_DIR/debug/berth" python3 -m pytest -q tests/e2e
