#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit and integration tests, and end-to-end
# tests that start the real binary and drive it with the real kubectl and Python client.
# Installs what the tests need first. Safe to run on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/berth/target}"

step() { printf '\n== %s\n' "$*"; }

step "test dependencies"
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
