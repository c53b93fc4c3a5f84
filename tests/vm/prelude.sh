#!/bin/busybox sh
# The start of every test guest's /init (the test's own steps follow it).
# Guests report on the serial console, one line each:
#   CHECK <name> ok <detail>     CHECK <name> FAIL <detail>     RESULT <key>=<value>
# and end with CHECKS-DONE; the host side turns these into pass/fail.
echo '# init: start'
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /mnt /sys/kernel/debug
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname guest
ip link set lo up 2>/dev/null

ok() { echo "CHECK $1 ok ${2:-}"; }
fail() { echo "CHECK $1 FAIL ${2:-}"; }
# check NAME COMMAND...: runs COMMAND, reports NAME ok or FAIL with its output's last line.
check() {
    name=$1; shift
    if out=$("$@" 2>&1); then ok "$name" "$(echo "$out" | tail -n 1)"; else fail "$name" "$(echo "$out" | tail -n 1)"; fi
}
finish() { echo CHECKS-DONE; sync; poweroff -f; }
# rand_hex N: N random bytes from the guest's own RNG, as hex.
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# A guest that fails before finish() still ends: the kernel panics on init's exit (panic=-1).
