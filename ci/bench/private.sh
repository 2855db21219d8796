#!/usr/bin/env bash
# Runs CMD in private pid, network and mount namespaces: its own /proc (Mininet's
# cleanup kills processes by name), /run with an empty /run/netns (`ip netns add`
# names nothing on the machine), /sys (sysfs shows this namespace's links), /tmp and
# HOME=/tmp (Mininet's cleanup deletes /tmp/*.log, /tmp/*.out and ~/.ssh/mn/*).
# When CMD ends, or this is killed (--kill-child), the kernel kills every process left
# in the namespace (mnexec, Mininet's host shells) and frees its links and rules.
# The current directory is bind-mounted at /run/bench and CMD runs there, so that a
# clone under /tmp stays reachable under the new /tmp: give CMD and its files as paths
# relative to the current directory. Usage: ci/bench/private.sh CMD [ARG...]
set -euo pipefail
# shellcheck disable=SC2016 # the inner script expands its own variables
exec unshare --pid --net --mount --kill-child --mount-proc bash -c '
  set -e
  mount --make-rprivate /
  here=$(pwd -P)
  mount -t tmpfs tmpfs /run
  mkdir /run/netns /run/bench
  mount --bind "$here" /run/bench
  mount -t sysfs sysfs /sys
  mount -t tmpfs tmpfs /tmp
  cd /run/bench
  export HOME=/tmp
  exec "$@"' private "$@"
