#!/usr/bin/env bash
# Tests the browser client in clients/js: builds it with tsc (strict), checks that
# the copy the edge serves at /herald.js is up to date with the sources, runs the
# unit tests (node's test runner, against a fake socket), type-checks
# examples/ts/check.ts (the types generated from the Rust catalog), and the end-to-end tests
# (the demo page in headless Chromium, driven by playwright-core, against a real
# `herald dev` and nats-server).
#
# On a fresh machine it installs what is missing: the node packages (npm ci, from
# the committed package-lock.json), Debian's chromium (apt-get, needs root) and
# nats-server (scripts/ensure-nats.sh); it builds target/debug/herald when
# HERALD_BIN is not set. Needs Node.js >= 20 and npm.
# `scripts/test-js.sh unit` runs only the build and the unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."

major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$major" -lt 20 ]; then
  echo "test-js: Node.js >= 20 is needed (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

cd clients/js
if ! cmp -s package-lock.json node_modules/.installed-lock 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.installed-lock
fi
npm run --silent build
node scripts/check-bundle.mjs
npm run --silent build:test
# The TypeScript types generated from the Rust event catalog (examples/ts) compile
# with the client's typed event map, and wrong payloads do not.
node_modules/.bin/tsc -p ../../examples/ts/tsconfig.json
node --test build/test/unit/
if [ "${1:-}" = "unit" ]; then
  exit 0
fi

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "test-js: installing Debian's chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
../../scripts/ensure-nats.sh
if [ -z "${HERALD_BIN:-}" ]; then
  (cd ../.. && cargo build --quiet -p herald)
  export HERALD_BIN="$PWD/../../target/debug/herald"
fi
rm -rf test-artifacts
node --test --test-concurrency=1 build/test/e2e/
echo "test-js: screenshot of the demo in clients/js/test-artifacts/demo.png"
