#!/usr/bin/env bash
# CI smoke run of the benchmark harness (issue #8): builds herald and herald-bench
# (debug), then runs a tiny broadcast (50 connections, 2 workers, 2 s at 100 ev/s)
# against herald, ceiling and nats-ws, plus socketio and socketio-redis when
# scripts/bench-peers-setup.sh can prepare them (node on PATH). Fails if Herald
# lost or duplicated any event, or if any target delivered nothing, or failed.
# A smoke run checks the harness works end to end; its numbers mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-nats.sh
cargo build --quiet -p herald -p herald-bench
targets="herald,ceiling,nats-ws"
if [ -x scripts/bench-peers-setup.sh ] && command -v node >/dev/null 2>&1; then
  scripts/bench-peers-setup.sh
  targets="$targets,socketio,socketio-redis"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
target/debug/herald-bench compare --check \
  --targets "$targets" \
  --herald-bin target/debug/herald \
  --conns 50 --workers 2 --rate 100 --duration 2 --warmup 0 --drain 10 \
  --max-p99-ms 60000 --out-dir "$out"
echo "bench smoke: ok ($targets)"
