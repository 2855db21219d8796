#!/usr/bin/env bash
# The baseline a user would write instead of ci/bench/gen-hosts.sh's scenario: N hosts
# h1..hN (10.0.0.I/24) on one bridge br0 built with `ip` commands, then `ping -c1 -W1`
# for each ordered pair, one after another. `reachable`: every ping must succeed (one
# retry, for ARP). `dropped`: bridged IPv4 traverses iptables, the FORWARD policy is
# DROP, and every ping must fail (each costs its whole 1 s timeout).
# Exits 1 if any cell is not as expected. Run it only inside a private network and
# mount namespace with its own /run (ci/bench/run does).
# Usage: ci/bench/naive-hosts.sh N reachable|dropped
set -euo pipefail
n=${1:?usage: naive-hosts.sh N reachable|dropped}
mode=${2:?usage: naive-hosts.sh N reachable|dropped}
case $mode in reachable | dropped) ;; *) echo "naive-hosts.sh: bad mode '$mode'" >&2; exit 2 ;; esac
if [[ $(ip -o link | wc -l) -ne 1 ]]; then
  echo "naive-hosts.sh: not in a fresh network namespace; run it through ci/bench/run" >&2
  exit 2
fi

ip link add br0 type bridge
ip link set br0 up
for i in $(seq 1 "$n"); do
  ip netns add "h$i"
  ip link add "veth$i" type veth peer eth0 netns "h$i"
  ip link set "veth$i" master br0
  ip link set "veth$i" up
  ip netns exec "h$i" ip addr add "10.0.0.$i/24" dev eth0
  ip netns exec "h$i" ip link set eth0 up
  ip netns exec "h$i" ip link set lo up
done
if [[ $mode == dropped ]]; then
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  iptables -P FORWARD DROP
fi

wrong=0
for i in $(seq 1 "$n"); do
  for j in $(seq 1 "$n"); do
    (( i == j )) && continue
    if [[ $mode == reachable ]]; then
      ip netns exec "h$i" ping -c1 -W1 "10.0.0.$j" >/dev/null ||
        ip netns exec "h$i" ping -c1 -W1 "10.0.0.$j" >/dev/null ||
        { echo "h$i -> h$j: expected ok, observed drop"; wrong=$((wrong + 1)); }
    else
      ! ip netns exec "h$i" ping -c1 -W1 "10.0.0.$j" >/dev/null ||
        { echo "h$i -> h$j: expected drop, observed ok"; wrong=$((wrong + 1)); }
    fi
  done
done
if (( wrong > 0 )); then
  echo "naive-hosts.sh $n $mode: $wrong of $((n * (n - 1))) cells wrong" >&2
  exit 1
fi
