#!/usr/bin/env bash
# Install what netscenario's tests and the verbatim tutorials need on Debian 12.
# Idempotent: packages already present are skipped, apt-get update runs only when
# something is missing. Touches nothing in the machine's network namespace.
set -euo pipefail

packages=(
  iproute2        # ip: the tutorials' own commands
  iptables        # iptables/ip6tables (nf_tables backend) for steps and the iptables crate
  nftables        # nft, for scenarios with nftables rulesets
  iputils-ping    # ping, typed verbatim in tutorials
  bridge-utils    # brctl, typed verbatim in tutorials
  net-tools       # ifconfig, typed verbatim in tutorials
  tcpdump         # reading the pcap files the runner writes
  libpcap-dev     # the pcap crate links against libpcap
  pkg-config
  build-essential
  ca-certificates
  curl
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "ci/install.sh: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    :
  else
    echo "ci/install.sh: installing the Rust toolchain with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  fi
fi
echo "ci/install.sh: all dependencies present"
