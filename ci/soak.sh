#!/usr/bin/env bash
# Flake measurement: run every scenario many times with both cores busy and several
# runners in parallel, and count the probe cells that came out wrong. A wrong cell is
# a bug (in the runner or its windows), never noise.
#
#   ci/soak.sh [ROUNDS] [PARALLEL]     (defaults: 10 rounds, 2 runners at once)
#
# Needs root. Installs stress-ng if missing. Prints one line per runner and a total.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
parallel=${2:-2}
command -v stress-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq stress-ng; }
cargo build --release -q
bin=target/release/netscenario
out=$(mktemp -d)
stress-ng --cpu "$(nproc)" --timeout 0 >/dev/null 2>&1 &
stress=$!
trap 'kill $stress 2>/dev/null || true; rm -rf "$out"' EXIT
start=$(date +%s)
for r in $(seq 1 "$rounds"); do
  pids=()
  for p in $(seq 1 "$parallel"); do
    ( "$bin" run -q --out "$out/r$r-p$p" scenarios/ > "$out/r$r-p$p.log" 2>&1; echo "exit status $?" >> "$out/r$r-p$p.log" ) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
done
kill $stress 2>/dev/null || true
elapsed=$(( $(date +%s) - start ))
cells=0; wrong=0; runs=0; failed=0
for log in "$out"/*.log; do
  while read -r w c; do
    cells=$((cells + c)); wrong=$((wrong + w)); runs=$((runs + 1))
  done < <(grep -o '[0-9]* of [0-9]* probed cells wrong' "$log" | awk '{print $1, $3}')
  if grep -q 'result: FAILED' "$log" || ! grep -q '^exit status 0$' "$log"; then
    failed=$((failed + 1))
    echo "== $log"; grep -B2 -A6 '^\s*\* \|error' "$log" | head -40 || tail -5 "$log"
  fi
done
echo "soak: $rounds rounds x $parallel parallel runners under stress-ng --cpu $(nproc), ${elapsed}s"
echo "soak: $runs scenario runs, $cells probed cells, $wrong wrong cells, $failed runner invocations with a failure"
[ "$wrong" -eq 0 ] && [ "$failed" -eq 0 ]
