#!/usr/bin/env bash
# Tests the Helm chart in helm/herald with Helm's own engine (helm-python-sdk):
# lint, render with several value sets, Kubernetes schema validation,
# values.schema.json, and a render-and-run test that starts the rendered NATS
# cluster and edges on loopback. Needs python3 with pip (the Python packages go
# into a virtualenv under target/helm-venv), nats-server 2.15.1 (installed by
# scripts/ensure-nats.sh) and the herald binary (target/debug/herald, built by
# scripts/test.sh; built here when missing). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="target/helm-venv"
req="helm/tests/requirements.txt"
mkdir -p target
pip_target=()
if [ -x "$venv/bin/python" ] || { [ ! -d "$venv/pylib" ] && python3 -m venv "$venv" >/dev/null 2>&1; }; then
  py="$venv/bin/python"
else
  # No venv module (e.g. Debian without python3-venv): install into a plain directory.
  rm -rf "$venv/bin"
  mkdir -p "$venv/pylib"
  export PYTHONPATH="$PWD/$venv/pylib${PYTHONPATH:+:$PYTHONPATH}"
  py=python3
  pip_target=(--target "$PWD/$venv/pylib")
fi
stamp="$venv/.requirements"
if ! cmp -s "$req" "$stamp"; then
  "$py" -m pip install --quiet --disable-pip-version-check ${pip_target[@]+"${pip_target[@]}"} -r "$req"
  cp "$req" "$stamp"
fi
scripts/ensure-nats.sh
if [ -z "${HERALD_BIN:-}" ] && [ ! -x target/debug/herald ]; then
  cargo build --quiet -p herald
fi
export HERALD_BIN="${HERALD_BIN:-$PWD/target/debug/herald}"
export HELM_TESTS_REQUIRE_RUN=1
exec "$py" -m pytest -q -p no:cacheprovider helm/tests "$@"
