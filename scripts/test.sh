#!/usr/bin/env bash
# Runs every test: unit, property and doc tests of each crate, and the
# integration tests that start real nats-server and herald processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats.sh
cargo build --quiet -p herald
export HERALD_BIN="$PWD/target/debug/herald"
# A Python with nats-py, for the "publish from another language" example test.
if [ ! -x target/py-venv/bin/python ] || ! target/py-venv/bin/python -c "import nats" 2>/dev/null; then
  python3 -m venv target/py-venv
  target/py-venv/bin/pip install --quiet --disable-pip-version-check "nats-py>=2.9,<3"
fi
export HERALD_PYTHON="$PWD/target/py-venv/bin/python"
# Rustdoc of the service SDK builds without warnings (every public item documented,
# no broken links), with its optional features.
RUSTDOCFLAGS="-D warnings" cargo doc --quiet -p herald-publish --no-deps --all-features
cargo test --workspace "$@"
# The Helm chart: lint, render, schemas, and the rendered cluster run on loopback;
# the browser client: unit tests and the demo page in headless Chromium
# (both skipped when arguments select particular cargo tests).
if [ $# -eq 0 ]; then
  scripts/test-helm.sh
  scripts/test-js.sh
  # The benchmark harness, tiny: every target answers and Herald loses nothing
  # (BENCHMARKS.md has the real runs).
  scripts/bench-smoke.sh
fi
