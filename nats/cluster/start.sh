#!/usr/bin/env bash
# Starts the three nodes in the background (stores under ./data), and prints the
# URL list for HERALD_NATS__URL. Stop them with: pkill -f nats/cluster/n
set -euo pipefail
cd "$(dirname "$0")"
for n in 1 2 3; do
  nats-server -c "n$n.conf" >"n$n.log" 2>&1 &
done
echo "HERALD_NATS__URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
echo "then: HERALD_STREAM__REPLICAS=3 HERALD_PRESENCE__REPLICAS=3 herald setup"
