#!/usr/bin/env bash
# Runs every test: unit, property and doc tests of each crate, and the
# integration tests that start real nats-server and herald processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats.sh
cargo build --quiet -p herald
export HERALD_BIN="$PWD/target/debug/herald"
cargo test --workspace "$@"
# The Helm chart: lint, render, schemas, and the rendered cluster run on loopback
# (skipped when arguments select particular cargo tests).
if [ $# -eq 0 ]; then
  scripts/test-helm.sh
fi
