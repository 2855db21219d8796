#!/usr/bin/env bash
# Mininet's own all-pairs test on N hosts on one Linux bridge, no controller:
#   mn --topo single,N --switch lxbr --controller none --test pingall
# Exits 0 only when Mininet reports every one of the N*(N-1) pings received (its
# "0% dropped" is rounded: 9894/9900 received prints as 0%). Run it only inside
# private pid, network and mount namespaces with their own /proc, /run, /sys and /tmp
# (ci/bench/run does): Mininet's start and its cleanup act on the whole machine.
# Usage: ci/bench/mininet-pingall.sh N
set -euo pipefail
n=${1:?usage: mininet-pingall.sh N}
if [[ $(ip -o link | wc -l) -ne 1 ]]; then
  echo "mininet-pingall.sh: not in a fresh network namespace; run it through ci/bench/run" >&2
  exit 2
fi
out=$(mn --topo "single,$n" --switch lxbr --controller none --test pingall 2>&1) || {
  echo "$out"
  exit 1
}
want=$(( n * (n - 1) ))
if ! grep -qE "^\*\*\* Results: 0% dropped \($want/$want received\)" <<<"$out"; then
  echo "$out" | grep -E 'Results|Error|Exception|No buffer' | sort | uniq -c | head -n 5
  echo "mininet-pingall.sh: not all $want pings received" >&2
  exit 1
fi
