#!/bin/sh
# /init of the vnfhost test guest (BusyBox, built into the initramfs by build-guest.sh).
#
# Kernel command line words it reads (from /proc/cmdline: the kernel does not pass dotted
# words to init's environment):
#   vnf.ip=ADDR/PREFIX   address of eth0 (eth0 and lo are brought up)
#   vnf.gw=ADDR          optional default gateway
#   vnf.echo=1           keep the console's echo on (off by default so that a program
#                        driving the console reads only command output)
# Prints `VNFHOST-GUEST-READY` once the network is configured (or
# `VNFHOST-GUEST-FAILED: reason`), then runs an interactive shell on the console with
# empty prompts. `poweroff -f` ends the VM.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname vnfguest

fail() {
    echo "VNFHOST-GUEST-FAILED: $*"
}

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m" || fail "insmod $m"
done </lib/modules/load-order

ip_addr=""
gw=""
echo_on=0
set -f
for w in $(cat /proc/cmdline); do
    case "$w" in
        vnf.ip=*) ip_addr="${w#vnf.ip=}" ;;
        vnf.gw=*) gw="${w#vnf.gw=}" ;;
        vnf.echo=*) echo_on="${w#vnf.echo=}" ;;
    esac
done
set +f

ip link set lo up
ok=1
if [ -n "$ip_addr" ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if [ ! -e /sys/class/net/eth0 ]; then
        fail "no eth0 (virtio-net device missing?)"
        ok=0
    elif ! ip addr add "$ip_addr" dev eth0 || ! ip link set eth0 up; then
        fail "cannot configure eth0 with $ip_addr"
        ok=0
    elif [ -n "$gw" ] && ! ip route add default via "$gw"; then
        fail "cannot add default route via $gw"
        ok=0
    fi
fi

# Shell settings for a program driving the console: no prompts, no job-control chatter,
# no echo (set again by every shell: a restarted shell must not fall back to line editing).
{
    echo "PS1=''"
    echo "PS2=''"
    echo "set +m"
    [ "$echo_on" = 1 ] || echo "stty -echo 2>/dev/null"
} >/etc/shrc
[ "$echo_on" = 1 ] || stty -echo 2>/dev/null
[ "$ok" = 1 ] && echo "VNFHOST-GUEST-READY"

# The shell reads its commands from the console as a script file (a second open of the
# tty), not as its stdin: an interactive ash reading stdin with echo off uses fgets(), and
# a SIGCHLD (a background job ending) while it waits for input makes it see EOF and exit.
# Reading a file it retries on EINTR. `-i` keeps it interactive: a syntax error or Ctrl-C
# does not end it, and it reads $ENV.
export ENV=/etc/shrc
while :; do
    setsid cttyhack sh -i /proc/self/fd/0
    echo "VNFHOST-GUEST-SHELL-EXITED status=$?"
    sleep 1
done
