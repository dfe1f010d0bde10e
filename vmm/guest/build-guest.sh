#!/usr/bin/env bash
# Builds (and caches) the Linux guest used by vnfhost's QEMU integration tests:
#   ${VNFHOST_CACHE:-/var/cache/vnfhost}/guest/vmlinuz
#   ${VNFHOST_CACHE:-/var/cache/vnfhost}/guest/initramfs.cpio.gz
#
# Kernel: Debian's linux-image-cloud-amd64 (the dependency linux-image-6.1.*-cloud-amd64),
# fetched with `apt-get download` and unpacked with `dpkg -x` (nothing is installed).
# Initramfs: busybox-static with applet symlinks, the virtio modules for virtio-mmio
# (QEMU -M microvm) and virtio-pci, and /init: vnfhost-init (the `init/` crate next to
# this script), built here as a static binary with cargo (target dir in the cache).
#
# Idempotent: rebuilds only when a stamp (hash of this script, the init crate's sources, the
# resolved kernel package name and the busybox binary) changes. Quiet on success: prints only
#   VNFHOST_GUEST_KERNEL=<path>
#   VNFHOST_GUEST_INITRD=<path>
# `--print` prints those lines without building (fails if the image is not built yet).
# Needs: apt-get, apt-cache, dpkg, depmod/modprobe (kmod), cpio, gzip, xz, busybox-static,
# cargo (found in PATH, then in ~/.cargo/bin and the sudo user's ~/.cargo/bin).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${VNFHOST_CACHE:-/var/cache/vnfhost}"
out="$cache/guest"
kernel="$out/vmlinuz"
initrd="$out/initramfs.cpio.gz"
init_srcs=("$here/init/Cargo.toml" "$here/init/src/"*.rs "$here/agent/Cargo.toml" "$here/agent/src/"*.rs)
busybox_bin="${VNFHOST_BUSYBOX:-/bin/busybox}"
meta_pkg="linux-image-cloud-amd64"
# Loaded in this order by /init (each one's dependencies come first).
modules=(virtio_ring virtio failover net_failover virtio_net virtio_mmio
         virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         virtio_console virtio_blk overlay erofs virtio_balloon)

print_paths() {
    echo "VNFHOST_GUEST_KERNEL=$kernel"
    echo "VNFHOST_GUEST_INITRD=$initrd"
}

die() { echo "build-guest.sh: $*" >&2; exit 1; }

# Runs a command quietly; shows its output only if it fails.
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "failed: $*"
    fi
    rm -f "$log"
}

if [[ "${1:-}" == "--print" ]]; then
    [[ -f "$kernel" && -f "$initrd" ]] || die "guest image not built yet (run $0)"
    print_paths
    exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--print]"

for f in "${init_srcs[@]}"; do [[ -f "$f" ]] || die "missing $f"; done
cargo_bin="$(command -v cargo || true)"
[[ -n "$cargo_bin" || ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]] \
    || cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
if [[ -z "$cargo_bin" && -n "${SUDO_USER:-}" ]]; then
    # Under sudo, PATH drops the user's ~/.cargo/bin: use their toolchain, with its homes
    # (rustup's proxy looks for toolchains in RUSTUP_HOME, which would default to root's).
    user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
    if [[ -x "$user_home/.cargo/bin/cargo" ]]; then
        cargo_bin="$user_home/.cargo/bin/cargo"
        export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
        export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
    fi
fi
[[ -n "$cargo_bin" ]] || die "cargo not found (needed to build vnfhost-init; install Rust)"
[[ -x "$busybox_bin" ]] || die "missing $busybox_bin (apt-get install busybox-static)"
# A dynamically linked busybox would not run inside the initramfs.
if ldd "$busybox_bin" >/dev/null 2>&1; then
    die "$busybox_bin is dynamically linked; install busybox-static"
fi
for tool in apt-get apt-cache dpkg depmod modprobe cpio gzip xz sha256sum readelf; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

mkdir -p "$out"
# Serialise concurrent builds (tests running in parallel).
exec 9>"$out/.lock"
flock 9

# Resolve the real kernel package behind the meta package (local apt lists, no network).
kpkg="$(apt-cache depends "$meta_pkg" 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1)"
if [[ -z "$kpkg" ]]; then
    # No apt lists (e.g. offline): fall back to the kernel package cached earlier.
    cached="$(ls "$out/debs/"linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n1 || true)"
    [[ -n "$cached" ]] || die "cannot resolve the kernel package of $meta_pkg (apt-get update?)"
    kpkg="$(basename "$cached")"
    kpkg="${kpkg%%_*}"
fi
kver="${kpkg#linux-image-}"

stamp="$( { sha256sum "$0" "${init_srcs[@]}" "$busybox_bin" | cut -d' ' -f1; echo "$kpkg"; } \
          | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" && -f "$kernel" && -f "$initrd" ]]
then
    print_paths
    exit 0
fi

work="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. Kernel package (cached; apt-get download writes into the current directory).
debs="$out/debs"
mkdir -p "$debs"
deb="$(ls "$debs/${kpkg}_"*.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$deb" ]]; then
    (cd "$work" && quiet apt-get download "$kpkg")
    deb="$(ls "$work/${kpkg}_"*.deb 2>/dev/null | head -n1 || true)"
    [[ -n "$deb" ]] || die "apt-get download $kpkg produced no .deb"
    # Drop older kernels from the cache, keep this one.
    rm -f "$debs"/linux-image-*.deb
    mv "$deb" "$debs/"
    deb="$debs/$(basename "$deb")"
fi
root="$work/kroot"
quiet dpkg -x "$deb" "$root"
[[ -f "$root/boot/vmlinuz-$kver" ]] || die "no boot/vmlinuz-$kver in $deb"
# The package ships no modules.dep (its postinst runs depmod): make one for modprobe.
quiet depmod -b "$root" "$kver"

# 2. Initramfs tree.
ird="$work/initramfs"
mkdir -p "$ird"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,lib/modules}
cp "$busybox_bin" "$ird/bin/busybox"
# Applet symlinks (what `busybox --install -s` would do at boot, done here once).
while read -r applet; do
    applet="${applet#/}"    # busybox --list-full prints e.g. `usr/bin/[`
    [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
    mkdir -p "$ird/$(dirname "$applet")"
    [[ -e "$ird/$applet" ]] || ln -s /bin/busybox "$ird/$applet"
done < <("$busybox_bin" --list-full)
[[ -L "$ird/bin/setsid" || -L "$ird/usr/bin/setsid" ]] || die "busybox applet links missing"
[[ -e "$ird/bin/sh" ]] || ln -s busybox "$ird/bin/sh"

# Modules in dependency order: modprobe --show-depends prints `insmod PATH` lines.
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
        base="${name%%.ko*}.ko"
        grep -qx "$base" "$order" && continue
        # Decompress here so that busybox insmod never has to.
        "${cmd[@]}" "$path" >"$ird/lib/modules/$base"
        echo "$base" >>"$order"
    done <<<"$deps"
done

# /init: vnfhost-init, static (the initramfs has no libc). Its own target directory, in
# the cache, keeps this build out of the workspace's (and of a running `cargo test`'s lock).
init_target="$cache/init-target"
RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" quiet "$cargo_bin" build --release -q \
    --manifest-path "$here/../../Cargo.toml" -p vnfhost-init \
    --target x86_64-unknown-linux-gnu --target-dir "$init_target"
init_bin="$init_target/x86_64-unknown-linux-gnu/release/vnfhost-init"
if readelf -l "$init_bin" | grep -q INTERP; then
    die "$init_bin is dynamically linked"
fi
cp "$init_bin" "$ird/init"
chmod 0755 "$ird/init"
echo "root:x:0:0:root:/root:/bin/sh" >"$ird/etc/passwd"
echo "root:x:0:" >"$ird/etc/group"
# The kernel opens /dev/console for /init before /init mounts devtmpfs. Debian's kernel
# has its own built-in initramfs with that node; add one anyway when we can (root).
mknod -m 600 "$ird/dev/console" c 5 1 2>/dev/null || true
(cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
    | gzip -9n >"$work/initramfs.cpio.gz"

# 3. Publish atomically.
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$kernel"
mv -f "$work/initramfs.cpio.gz" "$initrd"
echo "$stamp" >"$out/stamp"
print_paths
