#!/usr/bin/env bash
# Fuzzes Herald's parsers with cargo-fuzz (nightly), one target at a time, on
# one core: `scripts/fuzz.sh [seconds per target] [target...]` (default 600 s,
# every target). Each run starts from the committed corpus, and what it found
# is merged back minimized into fuzz/corpus/<target>. A crash stops that
# target's run; the input is in fuzz/artifacts/<target>/ — fix the code, then
# copy the input into fuzz/regressions/<target>/ so the stable replay test
# (tests/fuzz_corpus.rs) keeps it fixed. Figures of past runs: docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frame room user token)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# A stable toolchain works too, with RUSTC_BOOTSTRAP=1 (cargo-fuzz uses -Z flags).
toolchain="+nightly"
rustup toolchain list | grep -q '^nightly' || { toolchain=""; export RUSTC_BOOTSTRAP=1; }
cargo $toolchain fuzz build -O
mkdir -p logs
for t in "${targets[@]}"; do
  work="work/$t"
  rm -rf "$work" && mkdir -p "$work" "corpus/$t"
  cp -r "corpus/$t/." "$work/"
  max_len=4096
  [ "$t" = frame ] && max_len=16384
  echo "== $t: ${secs}s"
  set +e
  cargo $toolchain fuzz run -O "$t" "$work" -- \
    -max_total_time="$secs" -max_len="$max_len" -rss_limit_mb=2048 \
    -jobs=1 -workers=1 -print_final_stats=1 >"logs/$t.run" 2>&1
  status=$?
  set -e
  cp fuzz-0.log "logs/$t.log" 2>/dev/null || true
  rm -f fuzz-0.log
  # Minimize: keep only inputs that add coverage.
  rm -rf "min/$t" && mkdir -p "min/$t"
  cargo $toolchain fuzz run -O "$t" "min/$t" "$work" -- -merge=1 -max_len="$max_len" >"logs/$t.merge" 2>&1 || true
  rm -rf "corpus/$t" && mv "min/$t" "corpus/$t"
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs" "logs/$t.log" | tail -3 || true
  echo "== $t: exit $status, corpus $(ls "corpus/$t" | wc -l) files, $(cat "corpus/$t"/* | wc -c) bytes"
done
