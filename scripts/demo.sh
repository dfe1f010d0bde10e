#!/usr/bin/env bash
# The default deployment, topology.yaml, brought up by the daemon: `vnfhost daemon`
# starts the switch on core 1 (two tenant networks on VLANs 10 and 20 with port
# security, a router between them) and two Linux pods on core 0 (QEMU microvm with TCG
# where the CPU has no vmx/svm, vnfhost's own KVM monitor where it has). pod-b pings
# pod-a across the router (one hop: TTL 63), and `vnfhost status` shows the traffic.
#
#   scripts/demo.sh          bring it up, show it, bring it down again
#   scripts/demo.sh --keep   leave it running (then: vnfhost status --watch; vnfhost down)
#
# Run scripts/setup.sh first. Exit status 0 when the pings went through.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (hugepages, pinning)" >&2; exit 1; }
keep=0
[ "${1:-}" = --keep ] && keep=1

cargo build --release --quiet -p control
eval "$(vmm/guest/build-guest.sh --print)"
export VNFHOST_GUEST_KERNEL VNFHOST_GUEST_INITRD
vnfhost=target/release/vnfhost
run=${VNFHOST_RUN_DIR:-/run/vnfhost}
api=$run/api.sock
mkdir -p "$run"

daemon_pid=
if $vnfhost status --api "$api" >/dev/null 2>&1; then
    echo "demo: using the daemon already running on $api"
else
    $vnfhost daemon --run-dir "$run" >>"$run/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do [ -S "$api" ] && break; sleep 0.1; done
    echo "demo: daemon started (pid $daemon_pid, log $run/daemon.log)"
fi
finish() {
    if [ $keep = 0 ]; then
        $vnfhost down --api "$api" || true
        [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    fi
    true
}
trap finish EXIT

$vnfhost up topology.yaml --api "$api"
console=$run/pods/pod-b/console.log
echo "demo: waiting for pod-b's pings to pod-a to come back across the router"
ok=0
for _ in $(seq 1200); do
    if [ "$(grep -c 'bytes from 10.0.0.1.*ttl=63' "$console" 2>/dev/null)" -ge 5 ]; then ok=1; break; fi
    sleep 0.1
done
echo "--- pod-b console ($console)"
grep -E "bytes from|PING" "$console" | tail -6 || true
sleep 1.5   # two counter samples, for rates
echo "--- vnfhost status"
$vnfhost status --api "$api"
if [ $ok = 1 ]; then
    echo "demo: ok, pod-b reached pod-a across the router"
    if [ $keep = 1 ]; then
        echo "demo: still running; vnfhost status --watch, then vnfhost down"
    fi
else
    echo "demo: FAILED, see $run (daemon.log, pods/*/console.log, switch.log)"
    exit 1
fi
