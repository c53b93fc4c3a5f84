#!/bin/sh
# In-VM NUMA and placement checks of the pagelessfs kernel module (driver/kmod), run from the
# initramfs /init before kmod-checks.sh (same helpers, same CHECK line format).
#
# Contract (what the host-side harness must provide):
#   QEMU           two NUMA nodes: -m 6G, node 0 with the first 1152M of RAM ([0,0x48000000)),
#                  node 1 with the rest ([0x48000000,3G) and [4G,7G) on QEMU's pc machine):
#                  -object memory-backend-ram,id=m0,size=1152M -object memory-backend-ram,id=m1,
#                  size=4992M -numa node,nodeid=0,memdev=m0,cpus=0 -numa node,nodeid=1,
#                  memdev=m1,cpus=1
#   kernel cmdline memmap=256M$1G (split by the node boundary at 0x48000000) and memmap=1G$4G
#                  (node 1's only 1 GiB-aligned GiB, above its 128 MiB at 0x48000000)
#   /pageless.ko   the module (override: PAGELESS_KO=path); pageless-guest on PATH
# The module is unloaded at the end.
set -u
KO=${PAGELESS_KO:-/pageless.ko}
G=pageless-guest
M=/mnt/numa
N0=128M@0x40000000
N1=128M@0x48000000,1G@0x100000000
RANGES=256M@0x40000000,1G@0x100000000

. /checks-lib.sh
total_kib() { df -k "$1" | tail -n 1 | sed 's/  */ /g' | cut -d' ' -f2; }
free_kib() { df -k "$1" | tail -n 1 | sed 's/  */ /g' | cut -d' ' -f4; }
wait_scrubbed() {
	for i in $(seq 300); do [ "$(cat /sys/fs/pagelessfs/scrubbing_bytes)" = 0 ] && return; sleep 0.1; done
}

echo "# numa-checks: $(ls -d /sys/devices/system/node/node* | wc -l) node(s); ranges=$RANGES"
dmesg_mark
if insmod "$KO" ranges="$RANGES"; then
	check numa-load ok "insmod ranges=$RANGES: $(dmesg_new | grep -c 'is on node') node range(s)"
else
	check numa-load FAIL "insmod ranges=$RANGES: $(dmesg_new | tail -n 3 | tr '\n' ' ')"
fi
# The top 2 MiB of 256M@0x40000000 hold the module's metadata (persist.c): node 1's part is
# 2 MiB short.
want="0x40000000 134217728 0
0x48000000 132120576 1
0x100000000 1073741824 1"
got=$(cat /sys/fs/pagelessfs/ranges 2>&1)
if [ "$got" = "$want" ]; then check numa-ranges ok "$(echo "$got" | tr '\n' ';')"; else
	check numa-ranges FAIL "ranges: '$(echo "$got" | tr '\n' ';')', want '$(echo "$want" | tr '\n' ';')'"; fi
wait_scrubbed
got=$(cat /sys/fs/pagelessfs/node0/capacity_bytes /sys/fs/pagelessfs/node0/free_bytes \
	/sys/fs/pagelessfs/node1/capacity_bytes /sys/fs/pagelessfs/node1/free_bytes 2>&1 | tr '\n' ' ')
if [ "$got" = "134217728 134217728 1205862400 1205862400 " ] && [ ! -e /sys/fs/pagelessfs/node2 ]; then
	check numa-sysfs-nodes ok "node0 and node1 capacity/free: $got"
else
	check numa-sysfs-nodes FAIL "node0/node1 capacity free: $got"
fi

mkdir -p $M/n0 $M/n1 $M/g1 $M/any
expect numa-mount "node=0 and node=1 mounts (2M), a node=1 1G mount, a mount of any node" sh -c "
	mount -t pagelessfs -o pagesize=2M,node=0 none $M/n0 &&
	mount -t pagelessfs -o pagesize=2M,node=1 none $M/n1 &&
	mount -t pagelessfs -o pagesize=1G,node=1 none $M/g1 &&
	mount -t pagelessfs -o pagesize=4K none $M/any"
expect numa-mount-options "node=N in /proc/mounts, none without node=" sh -c "
	grep -q ' $M/n0 pagelessfs .*pagesize=2M,node=0' /proc/mounts &&
	grep -q ' $M/n1 pagelessfs .*pagesize=2M,node=1' /proc/mounts &&
	grep -q ' $M/g1 pagelessfs .*pagesize=1G,node=1' /proc/mounts &&
	! grep ' $M/any pagelessfs ' /proc/mounts | grep -q node="
dmesg_mark
if mount -t pagelessfs -o node=2 none $M/any 2>/dev/null; then
	check numa-bad-node FAIL "mount -o node=2 succeeded"
	umount $M/any
else
	msg=$(dmesg_new | grep pagelessfs | tail -n 1)
	if echo "$msg" | grep -q 'node=2: no pagelessfs range on that node'; then
		check numa-bad-node ok "mount -o node=2 refused: $msg"
	else
		check numa-bad-node FAIL "mount -o node=2 refused, but dmesg lacks the reason: $msg"
	fi
fi
got="$(total_kib $M/n0) $(total_kib $M/n1) $(total_kib $M/g1) $(total_kib $M/any)"
if [ "$got" = "131072 1177600 1048576 1308672" ]; then
	check numa-statfs ok "df total KiB: node=0 2M, node=1 2M, node=1 1G, any 4K: $got"
else
	check numa-statfs FAIL "df total KiB node=0 2M, node=1 2M, node=1 1G, any 4K: $got (want 131072 1177600 1048576 1308672)"
fi

# Placement (issue #9): a live 4 MiB file of 2M pages must not take node 1's only free aligned
# GiB (the module's old first fit put it at the top: there); a 1 GiB file of 1G pages then finds it.
expect numa-placement "4M file on the node=1 2M mount alive, then a 1G file on the node=1 1G mount" sh -c "
	truncate -s 4M $M/n1/small && truncate -s 1G $M/g1/big"
$G extents-within numa-placement-small 128M@0x48000000 $M/n1/small
$G extents-within numa-placement-big 1G@0x100000000 $M/g1/big

# Each mount's files stay on its node; statfs counts only that node.
truncate -s 64M $M/n1/a && truncate -s 64M $M/n0/a
$G extents-within numa-extents-node0 $N0 $M/n0/a
$G extents-within numa-extents-node1 $N1 $M/n1/small $M/n1/a $M/g1/big
got="$(free_kib $M/n0) $(free_kib $M/n1)"
# node 0: 128M - 64M = 64M; node 1: 1150M - 4M - 1G - 64M = 58M
if [ "$got" = "65536 59392" ]; then
	check numa-statfs-free ok "df free KiB node=0, node=1: $got"
else
	check numa-statfs-free FAIL "df free KiB node=0, node=1: $got (want 65536 59392)"
fi
# node 1 full: ENOSPC there although node 0 has room.
truncate -s 122M $M/n1/a
if truncate -s 2M $M/n1/c 2>/tmp/enospc; then
	check numa-enospc-node FAIL "a 2M file on the full node=1 mount was created"
elif ! grep -q 'No space left' /tmp/enospc || [ "$(free_kib $M/n1)" != 0 ]; then
	check numa-enospc-node FAIL "node=1 full: $(cat /tmp/enospc), df free $(free_kib $M/n1) KiB"
elif truncate -s 2M $M/n0/c; then
	check numa-enospc-node ok "node=1 full (ENOSPC, df free 0) while node 0 has room: $(free_kib $M/n0) KiB after its 2M file"
else
	check numa-enospc-node FAIL "node=0 refused a 2M file with $(free_kib $M/n0) KiB free"
fi
# A mount without node= allocates from any node.
truncate -s 8M $M/any/a
$G extents-within numa-extents-any $RANGES $M/any/a
for d in n0 n1 g1 any; do rm -f $M/$d/*; umount $M/$d; done
expect numa-unload "rmmod after the NUMA checks" rmmod pageless
