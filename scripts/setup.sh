#!/usr/bin/env bash
# Installs what vnfhost and its tests need on Debian 12 (run as root), idempotently:
# the peers' packages (DPDK testpmd, QEMU, BusyBox, OVS-DPDK, containerd with runc and the
# CNI plugins, etcd), ACPICA's iasl (checks the VMM's ACPI tables), hugepages, the guest
# image, a Python venv with a CRI client for the containerd tests, and kube-apiserver
# built from Debian's source package (10-15 minutes the first time, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
      qemu-system-x86 busybox-static kmod cpio iproute2 procps
      openvswitch-switch-dpdk acpica-tools
      containerd runc containernetworking-plugins etcd-server python3-venv util-linux
      e2fsprogs tar iputils-ping ethtool)

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (it installs packages and reserves hugepages)" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Hugepages: 512 x 2 MiB for the switch's buffers and the tests. Never lower a larger
# reservation someone else made.
want=${VNFHOST_HUGEPAGES:-512}
have=$(cat /proc/sys/vm/nr_hugepages)
if [ "$have" -lt "$want" ]; then
    echo "$want" > /proc/sys/vm/nr_hugepages || true
    now=$(cat /proc/sys/vm/nr_hugepages)
    if [ "$now" -lt "$want" ]; then
        echo "setup: warning: only $now of $want hugepages could be reserved; vnfhost falls back to normal pages" >&2
    fi
fi

# The Linux guest image for QEMU pods (kernel + BusyBox initramfs), cached outside the repo.
vmm/guest/build-guest.sh >/dev/null
# A CRI client for the containerd tests (gRPC stubs from PyPI), in a venv in the cache.
cache=${VNFHOST_CACHE:-/var/cache/vnfhost}
if ! "$cache/venv/bin/python" -c 'import grpc, cri_api.v1.api_pb2_grpc' 2>/dev/null; then
    echo "setup: creating $cache/venv with the CRI client"
    mkdir -p "$cache"
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install -q container-runtime-interface-api
fi

# kube-apiserver for the Kubernetes tests; cached, so only the first run builds it.
scripts/build-kube-apiserver.sh >/dev/null

echo "setup: ok (hugepages: $(cat /proc/sys/vm/nr_hugepages) x 2 MiB, guest image in ${VNFHOST_CACHE:-/var/cache/vnfhost}/guest)"
