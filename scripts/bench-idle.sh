#!/usr/bin/env bash
# Idle memory per connection of `herald serve` (issue #8): starts nats-server -js
# on a free port with a temporary store, `herald setup`, `herald serve`, then
# bench/idle-conns.mjs, which opens the connections and reads the edge's VmRSS
# before and after. Prints its JSON line; stops everything it started.
#
#   cargo build --release -p herald && scripts/bench-peers-setup.sh
#   scripts/bench-idle.sh [--conns 10000] [--procs 4] [other idle-conns.mjs options]
#
# HERALD_BIN (default target/release/herald) picks the binary; HERALD_* variables
# in the environment pass through to the edge (e.g. to compare settings).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${HERALD_BIN:-$PWD/target/release/herald}"
work="$(mktemp -d -t herald-idle-XXXXXX)"
pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

nats_port="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "Server is ready" "$work/nats.log" && break
  sleep 0.1
done

export HERALD_NATS__URL="nats://127.0.0.1:$nats_port"
export HERALD_AUTH__HS256_SECRET="${HERALD_AUTH__HS256_SECRET:-idle-bench-secret-0123456789abcdef}"
# Every connection joins one shared room: its kind is "quiet", as CONFIG.md advises
# for big rooms, so 10,000 joins do not announce themselves to every member.
export HERALD_PRESENCE__QUIET_KINDS="${HERALD_PRESENCE__QUIET_KINDS:-bench}"
export HERALD_LOG__LEVEL="${HERALD_LOG__LEVEL:-warn}"
edge_port="$(free_port)"
export HERALD_LISTEN="127.0.0.1:$edge_port"
"$bin" setup >"$work/setup.log" 2>&1
"$bin" serve >"$work/herald.log" 2>&1 &
edge=$!
pids+=($edge)
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$edge_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
# A first connection and close, so one-time allocations are in the "before" figure.
node bench/idle-conns.mjs --url "ws://127.0.0.1:$edge_port/ws" --conns 1 --procs 1 --settle 0 >/dev/null
sleep 1
node bench/idle-conns.mjs --url "ws://127.0.0.1:$edge_port/ws" --pid "$edge" "$@"
if grep -qiE "error|panic" "$work/herald.log"; then
  echo "--- herald log (errors) ---" >&2
  grep -iE "error|panic" "$work/herald.log" | head -20 >&2
fi
