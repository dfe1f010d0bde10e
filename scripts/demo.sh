#!/usr/bin/env bash
# The default deployment of topology.yaml, brought up by hand until `vnfhost up` exists:
# `vnfhost switch` on core 1 with two tenant networks (VLANs 10 and 20, one pod port each,
# with port security) and a router between them, and two Linux pods (`vnfhost vm run`,
# core 0: QEMU microvm with TCG where the CPU has no vmx/svm, vnfhost's own KVM monitor
# where it has) whose virtio-net NICs are those ports. pod-a pings pod-b across the
# router (one hop: TTL 63);
# pod-b through the switch; the switch prints its per-port rates every second.
# Run scripts/setup.sh first. Exit status 0 when the ping went through.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (hugepages, pinning)" >&2; exit 1; }

cargo build --release --quiet -p control
eval "$(vmm/guest/build-guest.sh --print)"
run=$(mktemp -d /tmp/vnfhost-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

ncpu=$(nproc)
core=$(( ncpu > 1 ? 1 : 0 ))
echo "demo: switch on core $core, pods on core 0; logs in $run"
target/release/vnfhost switch --core "$core" --hugepages --stats \
    --port "pod-a,vhost-user=$run/pod-a.sock,vlan=10,mac=52:54:00:00:00:0a,ip=10.0.0.1" \
    --port "pod-b,vhost-user=$run/pod-b.sock,vlan=20,mac=52:54:00:00:00:0b,ip=10.0.1.1" \
    --router-if "vlan=10,ip=10.0.0.254/24" --router-if "vlan=20,ip=10.0.1.254/24" \
    >"$run/switch.out" 2>"$run/switch.log" &
switch_pid=$!
pids+=("$switch_pid")
for _ in $(seq 100); do [ -S "$run/pod-b.sock" ] && break; sleep 0.1; done
[ -S "$run/pod-b.sock" ] || { cat "$run/switch.log"; exit 1; }

pod() { # name mac ip gateway
    local name=$1 mac=$2 ip=$3 gw=$4
    mkfifo "$run/$name.in"
    target/release/vnfhost vm run --cpus 0 --mem 256M \
        --kernel "$VNFHOST_GUEST_KERNEL" --initrd "$VNFHOST_GUEST_INITRD" --append "vnf.ip=$ip vnf.gw=$gw" \
        --net "vhost-user=$run/$name.sock,client,mac=$mac" \
        <"$run/$name.in" >"$run/$name.console" 2>"$run/$name.log" &
    pids+=("$!")
    exec {fd}>"$run/$name.in"   # keep the console's input open
    eval "${name//-/_}_in=$fd"
}
pod pod-a 52:54:00:00:00:0a 10.0.0.1/24 10.0.0.254
pod pod-b 52:54:00:00:00:0b 10.0.1.1/24 10.0.1.254

for name in pod-a pod-b; do
    for _ in $(seq 1200); do grep -q VNFHOST-GUEST-READY "$run/$name.console" && break; sleep 0.1; done
    grep -q VNFHOST-GUEST-READY "$run/$name.console" || { echo "demo: $name did not boot:"; tail -20 "$run/$name.console" "$run/$name.log"; exit 1; }
    echo "demo: $name booted ($(grep -o 'hypervisor: .*' "$run/$name.log" | head -1))"
done

# pod-b greets its gateway first, so the router already knows where 10.0.1.1 is.
echo "ping -c 1 -W 2 10.0.1.254" >&"$pod_b_in"
sleep 2
echo "ping -c 5 -W 2 10.0.1.1; echo DEMO-PING-DONE" >&"$pod_a_in"
for _ in $(seq 300); do grep -q DEMO-PING-DONE "$run/pod-a.console" && break; sleep 0.1; done
echo "--- pod-a console"
grep -E "bytes from|packets transmitted|round-trip" "$run/pod-a.console" || true
echo "--- switch, last seconds"
tail -3 "$run/switch.out"
ok=0
grep -q " 0% packet loss" "$run/pod-a.console" && ok=1

echo "poweroff -f" >&"$pod_a_in"
echo "poweroff -f" >&"$pod_b_in"
sleep 1
kill -TERM "$switch_pid"; wait "$switch_pid" || true
echo "--- switch totals"
grep -E "^(port|bridge|router)" "$run/switch.out" || true
if [ $ok = 1 ]; then echo "demo: ok, pod-a reached pod-b across the router"; else echo "demo: FAILED, see $run"; exit 1; fi
