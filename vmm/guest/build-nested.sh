#!/usr/bin/env bash
# Builds the L1 guest of the nested test (control/tests/vm_nested.rs): a Linux guest that
# QEMU runs with TCG and an emulated AMD SVM, which loads KVM and runs vnfhost's own `kvm`
# backend inside. That is how a Linux boot under the `kvm` backend is tested on hosts whose
# KVM has no hardware virtualization.
#
#   build-nested.sh --vnfhost BIN --scenario FILE [--extra DIR] --out INITRD
#
# INITRD is three concatenated newc archives, which the kernel unpacks in order:
#  1. the base, cached in ${VNFHOST_CACHE:-/var/cache/vnfhost}/nested/ and rebuilt only
#     when its stamp (hash of this script, the L2 guest image, the kernel package and
#     busybox) changes: busybox-static with applet links; irqbypass, kvm, kvm-amd and tun
#     from the Debian cloud kernel package that build-guest.sh cached (the L1 kernel is
#     that package's, so modules and kernel match); the L2 guest image of build-guest.sh
#     as /l2/vmlinuz and /l2/initramfs.cpio.gz; and /init, which mounts, loads the
#     modules, prints VNFHOST-L1-READY, runs `sh /scenario`, prints
#     `VNFHOST-L1-EXIT status=N` and powers off (`VNFHOST-L1-FAILED: why` if it cannot);
#  2. BIN as /bin/vnfhost (debug info stripped when objcopy exists) and the shared
#     libraries `ldd` lists for it, at the same paths (made every time: a fraction of a
#     second);
#  3. FILE as /scenario;
#  4. with --extra, the tree under DIR at / (files the scenario needs: an image store, a
#     built ext4 image).
# Uncompressed: the L2 images are compressed already, and gunzip is slow under TCG.
# Quiet on success: prints only
#   VNFHOST_NESTED_KERNEL=<path>
#   VNFHOST_NESTED_INITRD=<INITRD>
# Needs what build-guest.sh needs (it runs it first).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${VNFHOST_CACHE:-/var/cache/vnfhost}"
out="$cache/nested"
busybox_bin="${VNFHOST_BUSYBOX:-/bin/busybox}"
# Loaded in this order by the L1 /init (each one's dependencies come first).
modules=(kvm-amd tun)

die() { echo "build-nested.sh: $*" >&2; exit 1; }

vnfhost="" scenario="" initrd="" extra=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --vnfhost) vnfhost="${2:-}"; shift 2 ;;
        --scenario) scenario="${2:-}"; shift 2 ;;
        --extra) extra="${2:-}"; shift 2 ;;
        --out) initrd="${2:-}"; shift 2 ;;
        *) die "usage: $0 --vnfhost BIN --scenario FILE [--extra DIR] --out INITRD" ;;
    esac
done
[[ -x "$vnfhost" ]] || die "--vnfhost: ${vnfhost:-(missing)} is not an executable"
[[ -f "$scenario" ]] || die "--scenario: ${scenario:-(missing)} is not a file"
[[ -n "$initrd" ]] || die "--out INITRD is required"
[[ -z "$extra" || -d "$extra" ]] || die "--extra: $extra is not a directory"
for tool in cpio depmod modprobe dpkg ldd sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

# The L2 guest (builds it if needed; also caches the kernel package).
guest="$(bash "$here/build-guest.sh")" || die "build-guest.sh failed"
l2_kernel="$(sed -n 's/^VNFHOST_GUEST_KERNEL=//p' <<<"$guest")"
l2_initrd="$(sed -n 's/^VNFHOST_GUEST_INITRD=//p' <<<"$guest")"
[[ -f "$l2_kernel" && -f "$l2_initrd" ]] || die "build-guest.sh printed no image paths"
deb="$(ls "$cache/guest/debs/"linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n1 || true)"
[[ -n "$deb" ]] || die "no kernel package in $cache/guest/debs (build-guest.sh caches it)"
kpkg="$(basename "$deb")"
kpkg="${kpkg%%_*}"
kver="${kpkg#linux-image-}"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

base="$out/base.cpio"
kernel="$out/vmlinuz"
stamp="$( { sha256sum "$0" "$l2_kernel" "$l2_initrd" "$busybox_bin" | cut -d' ' -f1
            echo "$(basename "$deb")"; } | sha256sum | cut -d' ' -f1)"
work="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if ! [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" && -f "$base" && -f "$kernel" ]]
then
    root="$work/kroot"
    dpkg -x "$deb" "$root" || die "dpkg -x $deb failed"
    [[ -f "$root/boot/vmlinuz-$kver" ]] || die "no boot/vmlinuz-$kver in $deb"
    depmod -b "$root" "$kver" || die "depmod failed"

    ird="$work/base"
    mkdir -p "$ird"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,l2,lib/modules}
    cp "$busybox_bin" "$ird/bin/busybox"
    while read -r applet; do
        applet="${applet#/}"
        [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
        mkdir -p "$ird/$(dirname "$applet")"
        [[ -e "$ird/$applet" ]] || ln -s /bin/busybox "$ird/$applet"
    done < <("$busybox_bin" --list-full)
    [[ -e "$ird/bin/sh" ]] || ln -s busybox "$ird/bin/sh"

    order="$ird/lib/modules/load-order"
    : >"$order"
    for m in "${modules[@]}"; do
        deps="$(modprobe -d "$root" -S "$kver" --show-depends "$m" 2>/dev/null)" \
            || die "module $m not found in $kpkg"
        while read -r kind path _; do
            [[ "$kind" == insmod ]] || continue
            name="$(basename "$path")"
            case "$name" in
                *.ko.xz) cmd=(xz -dc) ;;
                *.ko.zst) cmd=(zstd -dc) ;;
                *.ko.gz) cmd=(gzip -dc) ;;
                *.ko) cmd=(cat) ;;
                *) die "unexpected module file $path" ;;
            esac
            name="${name%%.ko*}.ko"
            grep -qx "$name" "$order" && continue
            "${cmd[@]}" "$path" >"$ird/lib/modules/$name"
            echo "$name" >>"$order"
        done <<<"$deps"
    done

    cp "$l2_kernel" "$ird/l2/vmlinuz"
    cp "$l2_initrd" "$ird/l2/initramfs.cpio.gz"
    cat >"$ird/init" <<'EOF'
#!/bin/sh
# L1 of vnfhost's nested test (vmm/guest/build-nested.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
fail() {
    echo "VNFHOST-L1-FAILED: $*"
    poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m"
done </lib/modules/load-order
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm-amd (does the CPU model have svm?)"
ip link set lo up
echo VNFHOST-L1-READY
sh /scenario
echo "VNFHOST-L1-EXIT status=$?"
poweroff -f
EOF
    chmod 0755 "$ird/init"
    mknod -m 600 "$ird/dev/console" c 5 1 2>/dev/null || true
    (cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
        >"$work/base.cpio"
    cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
    mv -f "$work/vmlinuz" "$kernel"
    mv -f "$work/base.cpio" "$base"
    echo "$stamp" >"$out/stamp"
fi

# 2. vnfhost and its libraries.
bin="$work/bin"
mkdir -p "$bin/bin"
if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$vnfhost" "$bin/bin/vnfhost"
else
    cp "$vnfhost" "$bin/bin/vnfhost"
fi
# `ldd` lines: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
# `/lib64/ld-linux-x86-64.so.2 (0x...)`.
while read -r lib; do
    [[ -n "$lib" ]] || continue
    mkdir -p "$bin$(dirname "$lib")"
    cp -L "$lib" "$bin$lib"
done < <(ldd "$vnfhost" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p')

# 3. The scenario.
mkdir -p "$work/scenario"
cp "$scenario" "$work/scenario/scenario"

mkdir -p "$(dirname "$initrd")"
{
    cat "$base"
    (cd "$bin" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet)
    (cd "$work/scenario" && echo scenario | cpio -o -H newc --quiet)
    if [[ -n "$extra" ]]; then
        (cd "$extra" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
            | cpio --null -o -H newc --quiet)
    fi
} >"$initrd.tmp"
mv -f "$initrd.tmp" "$initrd"
echo "VNFHOST_NESTED_KERNEL=$kernel"
echo "VNFHOST_NESTED_INITRD=$initrd"
