#!/usr/bin/env bash
# What capture costs: the flagship scenario with its capture and without it, run
# alternately, ROUNDS times each (default 7), in one go; prints min and median
# wall time of each and their ratio. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
cargo build --release -q
bin=target/release/netscenario
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
with=scenarios/linux-bridge-fixed.toml
without=$tmp/linux-bridge-nocapture.toml
# The same scenario without its capture table (and without the packet expectations
# that need it).
python3 - "$with" "$without" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
s = re.sub(r'capture = \{ on = \[.*?\] \}\n', '', s, flags=re.S)
s = re.sub(r'expect\.packets = \[.*?\]\n', '', s, flags=re.S)
s = s.replace('name = "linux-bridge-fixed"', 'name = "linux-bridge-nocapture"')
open(sys.argv[2], 'w').write(s)
PY
t() { local s e; s=$(date +%s%N); "$bin" run -q --out "$tmp/out" "$1" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
a=(); b=()
for _ in $(seq 1 "$rounds"); do a+=("$(t "$with")"); b+=("$(t "$without")"); done
stats() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {printf "min %d ms, median %d ms", v[1], v[int((NR+1)/2)]}'; }
echo "with capture:    $(stats "${a[@]}")"
echo "without capture: $(stats "${b[@]}")"
ma=$(printf '%s\n' "${a[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
mb=$(printf '%s\n' "${b[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "median ratio with/without: %.3f (%+d ms)\n", a/b, a-b}'
