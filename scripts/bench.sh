#!/usr/bin/env bash
# One command for a comparison (issue #8): builds herald and herald-bench in
# release mode, prepares nats-server and the Socket.IO peers, then runs
# `herald-bench compare` for the scenario against every target and prints the
# tables with the ratios against Herald. Results go to bench/results/.
#
#   scripts/bench.sh broadcast                      # the documented defaults below
#   scripts/bench.sh broadcast --conns 5000 --rate 50,100
#   scripts/bench.sh idle --conns 10000
#
# Arguments after the scenario go to `herald-bench compare` (later flags win).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:-broadcast}"
shift || true
scripts/ensure-nats.sh
scripts/bench-peers-setup.sh
cargo build --release -p herald -p herald-bench
case "$scenario" in
  broadcast) defaults=(--conns 2000 --size 1024 --rate 10,25,50,100,200,300,400,600,800 --duration 5 --drain 10 --repeat 3) ;;
  targeted) defaults=(--conns 2000 --size 1024 --rate 500,1000,2000,4000,8000 --duration 5 --drain 10) ;;
  idle) defaults=(--conns 10000 --connect-concurrency 50 --idle-secs 10) ;;
  churn) defaults=(--conns 1000 --churn-rate 200 --duration 10) ;;
  reconnect-storm) defaults=(--conns 10000 --missed 100 --targets herald) ;;
  *) echo "unknown scenario $scenario (broadcast, targeted, idle, churn, reconnect-storm)" >&2; exit 2 ;;
esac
exec target/release/herald-bench compare --scenario "$scenario" "${defaults[@]}" "$@"
