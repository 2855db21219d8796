#!/usr/bin/env bash
# The baseline a user would write instead of netscenario: the corrected tutorial
# (scenarios/linux-bridge-fixed.toml) as a plain script, with `ping -c1 -W1` for each
# check. Run it only inside a private namespace (ci/bench/run does).
set -e
if [ "$(ip -o link | wc -l)" -ne 1 ]; then
  echo "naive-linux-bridge.sh: not in a fresh network namespace; run it through ci/bench/run" >&2
  exit 2
fi
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1
iptables -P FORWARD DROP
ip link add br0 type bridge
ip link set br0 up
ip netns add ns1
ip netns add ns2
ip link add veth0 type veth peer br-veth0
ip link add veth1 type veth peer br-veth1
ip link set veth0 netns ns1
ip link set veth1 netns ns2
ip link set br-veth0 master br0
ip link set br-veth1 master br0
ip link set br-veth0 up
ip link set br-veth1 up
ip netns exec ns1 ip link set veth0 up
ip netns exec ns2 ip link set veth1 up
ip netns exec ns1 ifconfig veth0 192.168.1.61/24
ip netns exec ns1 ifconfig lo up
ip netns exec ns2 ifconfig veth1 192.168.1.62/24
ip netns exec ns2 ifconfig lo up
ip netns exec ns2 ping -c1 -W1 192.168.1.62 >/dev/null            # ok
if ip netns exec ns1 ping -c1 -W1 192.168.1.62 >/dev/null; then exit 1; fi   # FORWARD DROP: must fail
iptables -A FORWARD -i br0 -j ACCEPT
ip netns exec ns1 ping -c1 -W1 192.168.1.62 >/dev/null || ip netns exec ns1 ping -c1 -W1 192.168.1.62 >/dev/null   # ok (one retry for ARP)
