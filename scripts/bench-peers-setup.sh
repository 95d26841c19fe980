#!/usr/bin/env bash
# Prepares the benchmark peers (issue #8): the Socket.IO 4.8 app server's npm
# dependencies (bench/peers/socketio, from its package-lock.json) and Debian's
# redis-server for the two-node Redis adapter setup. Idempotent; quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=bench/peers/socketio
# npm ci only when node_modules is missing or older than the lockfile.
# (npm writes node_modules/.package-lock.json on every install.)
stamp="$dir/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
  echo "bench-peers-setup: npm ci in $dir" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "bench-peers-setup: installing redis-server (apt-get)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package starts a system service on Debian; the benchmarks start their own.
fi
redis-server --version >&2
