#!/usr/bin/env bash
# Builds the node agent's image, docker.io/vnfhost/node:VERSION (VERSION: the workspace's
# Cargo.toml), as an OCI archive that `ctr images import` takes. No registry and no
# container engine (docker, buildah, podman): the root file system is assembled here and
# written by deploy/oci_archive.py. The network is used only for Rust crates (cargo) and,
# the first time, Debian's kernel package (vmm/guest/build-guest.sh).
#
#   deploy/build-node-image.sh [--out PATH] [--bin-dir DIR]
#   ctr -n k8s.io images import target/vnfhost-node-0.1.0.oci.tar     # on every node
#
# --out PATH     the archive (default: target/vnfhost-node-VERSION.oci.tar in the repository)
# --bin-dir DIR  take the four binaries from DIR (e.g. target/debug) instead of running
#                `cargo build --release` for them
#
# The image, one layer, from scratch (no distribution, no package manager):
#   /usr/local/bin/            vnfhost (daemon, switch, VM monitor), vnfhost-cni,
#                              vnfhost-k8s, containerd-shim-vnfhost-v2; debug info stripped
#   /usr/share/vnfhost/guest/  vmlinuz, initramfs.cpio.gz: the pods' guest kernel and init,
#                              from vmm/guest/build-guest.sh (cached in
#                              ${VNFHOST_CACHE:-/var/cache/vnfhost}/guest); the image's Env
#                              sets VNFHOST_GUEST_KERNEL/VNFHOST_GUEST_INITRD to them
#   /etc/vnfhost/10-vnfhost.conflist
#                              the CNI conflist of deploy/02-daemonset.yaml's ConfigMap
#   /bin/busybox               busybox-static as sh, cp, mv, ...: the DaemonSet's
#                              install-cni init container, and a shell for debugging
#   /usr/bin/tar, /usr/sbin/mkfs.ext4
#                              what the daemon runs for pods with a container image
#                              (topology `image:`, `vnfhost run`)
#   the shared libraries of all of these (as ldd finds them, at the same paths) and the
#   dynamic loader.
# Not in it: QEMU (qemu-system-x86_64 with its libraries and firmware is about 60 MB). The
# daemon's pods under `hypervisor: qemu` (the default for topology pods) need an image
# that adds it; `hypervisor: kvm` pods need only /dev/kvm.
#
# Cmd: `vnfhost daemon`. The archive is deterministic: the same binaries and guest give the
# same digests (entries sorted, owned by root, mtime SOURCE_DATE_EPOCH or 0).
#
# Runs as root on Debian 12 (any user who can write the guest cache will do). Needs:
# python3, ldd, busybox-static, tar, e2fsprogs, strip (binutils; without it the binaries
# keep their debug info), cargo unless --bin-dir, and what build-guest.sh needs.
# VNFHOST_BUSYBOX names another static busybox, as for build-guest.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
busybox_bin="${VNFHOST_BUSYBOX:-/bin/busybox}"
bins=(vnfhost vnfhost-cni vnfhost-k8s containerd-shim-vnfhost-v2)
# busybox applets linked in /bin: the init container's `sh -c "cp ... && mv ..."`, and
# enough to look around in `kubectl exec ... -- sh`. Not tar: the daemon needs GNU tar.
applets=(sh cp mv rm ln mkdir cat ls chmod echo test sleep env ps)
# Programs the daemon runs, found in PATH, copied at the path where they are found.
tools=(tar mkfs.ext4)
guest_dir=/usr/share/vnfhost/guest

die() { echo "build-node-image.sh: $*" >&2; exit 1; }

out=""
bin_dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || die "--out needs a path"; out="$2"; shift 2 ;;
        --bin-dir) [[ $# -ge 2 ]] || die "--bin-dir needs a directory"; bin_dir="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (usage: $0 [--out PATH] [--bin-dir DIR])" ;;
    esac
done

version="$(awk '/^\[workspace\.package\]/ { s = 1; next } /^\[/ { s = 0 }
                s && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$repo/Cargo.toml")"
[[ -n "$version" ]] || die "no version in $repo/Cargo.toml's [workspace.package]"
name="docker.io/vnfhost/node:$version"
out="${out:-$repo/target/vnfhost-node-$version.oci.tar}"

for tool in python3 ldd awk "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ -x "$busybox_bin" ]] || die "missing $busybox_bin (apt-get install busybox-static)"
if ldd "$busybox_bin" >/dev/null 2>&1; then
    die "$busybox_bin is dynamically linked; install busybox-static"
fi

# 1. The binaries.
if [[ -z "$bin_dir" ]]; then
    cargo_bin="$(command -v cargo || true)"
    [[ -n "$cargo_bin" ]] || cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
    [[ -x "$cargo_bin" ]] || die "cargo not found (put it in PATH, or pass --bin-dir DIR)"
    (cd "$repo" && nice "$cargo_bin" build --release --quiet \
        -p control -p vnfhost-cni -p vnfhost-k8s -p containerd-shim-vnfhost)
    bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
fi
for b in "${bins[@]}"; do
    [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b is missing"
done

# 2. The guest kernel and initramfs (cached; quiet when they are up to date).
guest="$(bash "$repo/vmm/guest/build-guest.sh")" || die "vmm/guest/build-guest.sh failed"
kernel="$(sed -n 's/^VNFHOST_GUEST_KERNEL=//p' <<<"$guest")"
initrd="$(sed -n 's/^VNFHOST_GUEST_INITRD=//p' <<<"$guest")"
[[ -f "$kernel" && -f "$initrd" ]] || die "build-guest.sh printed no guest image: $guest"

# 3. The root file system.
root="$(mktemp -d "${TMPDIR:-/tmp}/vnfhost-node-image.XXXXXX")"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,etc/vnfhost,proc,root,run,sys,tmp,usr/local/bin,var/lib/vnfhost} \
    "$root/var/cache/vnfhost" "$root$guest_dir"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

elves=()
for b in "${bins[@]}"; do
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$root/usr/local/bin/$b" "$bin_dir/$b"
    else
        cp "$bin_dir/$b" "$root/usr/local/bin/$b"
    fi
    chmod 0755 "$root/usr/local/bin/$b"
    elves+=("$root/usr/local/bin/$b")
done
for t in "${tools[@]}"; do
    p="$(command -v "$t")"
    mkdir -p "$root$(dirname "$p")"
    cp -L "$p" "$root$p"
    elves+=("$root$p")
done
cp "$busybox_bin" "$root/bin/busybox"
for a in "${applets[@]}"; do
    ln -s busybox "$root/bin/$a"
done

# Shared libraries and the loader, at the paths ldd resolves them to on this host (the
# loader's default directories, so the image needs no ld.so.cache).
for e in "${elves[@]}"; do
    libs="$(ldd "$e")" || die "ldd $e failed"
    if grep -q "not found" <<<"$libs"; then die "$e: a library is missing: $libs"; fi
    while read -r lib; do
        [[ -n "$lib" && ! -e "$root$lib" ]] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs")
done

cp "$kernel" "$root$guest_dir/vmlinuz"
cp "$initrd" "$root$guest_dir/initramfs.cpio.gz"
chmod 0644 "$root$guest_dir"/*

# The conflist has one text, the DaemonSet's ConfigMap: the lines under its key, less
# their indentation.
conflist="$root/etc/vnfhost/10-vnfhost.conflist"
awk '/^ *10-vnfhost\.conflist: *\| *$/ { match($0, /^ */); key = RLENGTH; on = 1; next }
     on && /^ *$/ { print ""; next }
     on { match($0, /^ */); if (RLENGTH <= key) exit; if (!ind) ind = RLENGTH
          print substr($0, ind + 1) }' "$here/02-daemonset.yaml" >"$conflist"
python3 -m json.tool "$conflist" >/dev/null 2>&1 \
    || die "no JSON 10-vnfhost.conflist in deploy/02-daemonset.yaml's ConfigMap"

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# 4. The archive.
mkdir -p "$(dirname "$out")"
python3 "$here/oci_archive.py" --out "$out" --name "$name" --layer "$root" \
    --cmd vnfhost --cmd daemon \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env "VNFHOST_GUEST_KERNEL=$guest_dir/vmlinuz" \
    --env "VNFHOST_GUEST_INITRD=$guest_dir/initramfs.cpio.gz" \
    --label "org.opencontainers.image.title=vnfhost node agent" \
    --label "org.opencontainers.image.version=$version"
echo "$name: $out ($(( $(stat -c %s "$out") / 1048576 )) MiB)"
echo "on every node: ctr -n k8s.io images import $out"
