#!/usr/bin/env bash
# Builds herald and runs `herald dev`: a local NATS with JetStream, an edge and
# the demo page. Extra arguments go to `herald dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats.sh
exec cargo run --quiet -p herald -- dev "$@"
