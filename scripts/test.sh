#!/usr/bin/env bash
# Runs every test: unit, property and doc tests of each crate, and the
# integration tests that start real nats-server and herald processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats.sh
cargo build --quiet -p herald
export HERALD_BIN="$PWD/target/debug/herald"
cargo test --workspace "$@"
